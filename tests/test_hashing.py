"""Content hashes (piwsl.io.hashing): the keys of the labelling journal and the prior cache, and of
a model file copied between machines."""

from __future__ import annotations

import numpy as np

from piwsl.io.hashing import file_hash, structure_hash


def test_structure_hash_sees_every_input():
    numbers, positions = np.array([1, 8]), np.zeros((2, 3))
    base = structure_hash(numbers, positions)
    assert base == structure_hash(numbers.tolist(), positions.astype(np.float32))
    assert base != structure_hash(numbers, positions + 1e-9)
    assert base != structure_hash(numbers, positions, cell=np.eye(3))
    assert base != structure_hash(numbers, positions, pbc=[True, False, False])


def test_file_hash_is_the_content_not_the_name(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"x" * (3 << 20))  # more than one block
    b.write_bytes(a.read_bytes())
    assert file_hash(a) == file_hash(b) and len(file_hash(a)) == 16
    b.write_bytes(a.read_bytes() + b"y")
    assert file_hash(a) != file_hash(b)
