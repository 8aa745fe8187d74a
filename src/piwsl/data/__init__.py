"""Data: readers, frames with per-frame label masks, E0s, splits, neighbour lists and batching."""

from piwsl.data.batch import Batch, Graph, collate, edge_vectors, frames_to_batch, scatter_sum
from piwsl.data.dataset import GraphDataset
from piwsl.data.e0 import fit_e0s, isolated_atom_e0s, parse_e0s, resolve_e0s
from piwsl.data.frames import Frame
from piwsl.data.neighbors import neighbor_list
from piwsl.data.readers import LabelKeys, label_coverage, read_frames, read_rmd17_npz
from piwsl.data.splits import split_indices

__all__ = [
    "Batch",
    "Frame",
    "Graph",
    "GraphDataset",
    "LabelKeys",
    "collate",
    "edge_vectors",
    "fit_e0s",
    "frames_to_batch",
    "isolated_atom_e0s",
    "label_coverage",
    "neighbor_list",
    "parse_e0s",
    "read_frames",
    "read_rmd17_npz",
    "resolve_e0s",
    "scatter_sum",
    "split_indices",
]
