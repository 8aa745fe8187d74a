"""A torch ``Dataset`` of precomputed graphs (neighbour lists built once, with a skin)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from piwsl.data.batch import Batch, Graph, collate
from piwsl.data.frames import Frame


class GraphDataset(Dataset):
    """Frames turned into :class:`Graph` objects once, at construction."""

    def __init__(
        self,
        frames: list[Frame],
        cutoff: float,
        skin: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.frames = frames
        self.cutoff = cutoff
        self.skin = skin
        self.graphs = [
            Graph.from_frame(f, cutoff, skin, dtype, frame_id=k) for k, f in enumerate(frames)
        ]

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> Graph:
        return self.graphs[index]

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0, **kwargs) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=collate,
            generator=generator,
            **kwargs,
        )


def all_in_one_batch(dataset: GraphDataset) -> Batch:
    return collate(list(dataset.graphs))
