"""Structure hashes: the key of a structure in the labelling journal and the prior cache."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def structure_hash(numbers: Any, positions: Any, cell: Any = None, pbc: Any = None) -> str:
    """SHA-256 (hex, 16 characters) of atomic numbers, positions (Å), cell and pbc."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(positions, dtype=np.float64).tobytes())
    h.update(
        np.ascontiguousarray(np.zeros((3, 3)) if cell is None else cell, dtype=np.float64).tobytes()
    )
    h.update(np.ascontiguousarray(np.zeros(3) if pbc is None else pbc, dtype=bool).tobytes())
    return h.hexdigest()[:16]


def atoms_hash(atoms: Any) -> str:
    """:func:`structure_hash` of an ``ase.Atoms``."""
    return structure_hash(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
