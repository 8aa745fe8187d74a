"""Neighbour lists (vesin), built once per structure with a skin beyond the cutoff.

The list holds every pair closer than ``cutoff + skin``, so that displaced copies of a structure
(atoms moved by less than ``skin / 2``) can reuse it: the models apply a smooth cutoff and pairs
beyond ``cutoff`` contribute exactly zero. Only indices and integer cell shifts are stored; edge
vectors are recomputed from positions inside the model so autograd sees them.
"""

from __future__ import annotations

import numpy as np
from vesin import NeighborList

from piwsl.data.frames import Frame
from piwsl.errors import DataError


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (i, j), i != j or a periodic image, with |r_j - r_i + S·cell| < cutoff.

    Returns ``edge_index`` (int64 [2, n_edges]: row 0 the centre i, row 1 the neighbour j) and
    ``shifts`` (int64 [n_edges, 3]) such that the edge vector is
    ``positions[j] - positions[i] + shifts @ cell``.
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff} Å")
    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if not pbc.any():
        box = np.zeros((3, 3))
    i, j, S = NeighborList(cutoff=float(cutoff), full_list=True).compute(
        points=np.ascontiguousarray(positions, dtype=np.float64),
        box=box,
        periodic=pbc.tolist() if pbc.any() else False,
        quantities="ijS",
    )
    edge_index = np.stack([np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)])
    return edge_index, np.asarray(S, dtype=np.int64).reshape(-1, 3)


def frame_neighbor_list(frame: Frame, cutoff: float, skin: float = 0.0):
    """Neighbour list of a frame with ``cutoff + skin``; errors name the frame."""
    try:
        return neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff + skin)
    except (RuntimeError, ValueError) as err:
        raise DataError(
            f"neighbour list failed: {err}", file=frame.source, frame=frame.index, key="positions"
        ) from err
