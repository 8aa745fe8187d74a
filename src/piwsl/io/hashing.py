"""Hashes: the key of a structure in the labelling journal and the prior cache, and the content
hash of a file (a model file copied to another machine is the same model)."""

from __future__ import annotations

import hashlib
from pathlib import Path
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


def file_hash(path: str | Path) -> str:
    """SHA-256 (hex, 16 characters) of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
