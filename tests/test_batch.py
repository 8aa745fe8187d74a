"""Batches and neighbour lists: collate offsets, Batch.repeat, brute-force pairs, edge vectors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from piwsl.data import Frame, Graph, collate, edge_vectors, frames_to_batch, neighbor_list
from piwsl.testing import random_crystal, random_molecule

torch.set_num_threads(1)
ELEMENTS = (1, 6, 8)


def brute_force_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> set[tuple[int, int, int, int, int]]:
    """All (i, j, S) with 0 < |r_j − r_i + S·cell| < cutoff, by enumerating every image."""
    pbc = np.asarray(pbc, bool)
    ranges = []
    if pbc.any():
        frac = positions @ np.linalg.inv(cell)
        recip = np.linalg.norm(np.linalg.inv(cell).T, axis=1)  # 1 / plane spacing
    for k in range(3):
        if not pbc[k]:
            ranges.append([0])
            continue
        spread = frac[:, k].max() - frac[:, k].min()
        n = math.ceil(cutoff * recip[k] + spread) + 1
        ranges.append(range(-n, n + 1))
    pairs = set()
    n_atoms = len(positions)
    for shift in itertools.product(*ranges):
        offset = np.asarray(shift, float) @ cell if pbc.any() else np.zeros(3)
        d = positions[None, :, :] - positions[:, None, :] + offset  # [i, j, 3]
        dist = np.linalg.norm(d, axis=-1)
        for i, j in zip(*np.nonzero(dist < cutoff), strict=True):
            if i == j and not any(shift):
                continue
            pairs.add((int(i), int(j), *shift))
    assert all(len(p) == 5 for p in pairs) and n_atoms > 0
    return pairs


def vesin_pairs(positions, cell, pbc, cutoff) -> set[tuple[int, int, int, int, int]]:
    edges, shifts = neighbor_list(positions, cell, np.asarray(pbc, bool), cutoff)
    out = {(int(i), int(j), *map(int, s)) for (i, j), s in zip(edges.T, shifts, strict=True)}
    assert len(out) == edges.shape[1], "duplicate edges in the neighbour list"
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbor_list_matches_brute_force_molecule(seed):
    rng = np.random.default_rng(seed)
    frame = random_molecule(rng, 9, ELEMENTS)
    for cutoff in (1.5, 3.0):
        expected = brute_force_pairs(frame.positions, frame.cell, frame.pbc, cutoff)
        assert expected, "test structure has no pairs"
        assert vesin_pairs(frame.positions, frame.cell, frame.pbc, cutoff) == expected


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "pbc", [(True, True, True), (True, True, False), (False, True, False)], ids=str
)
def test_neighbor_list_matches_brute_force_periodic(seed, pbc):
    """Triclinic cells smaller than the cutoff (many images), atoms partly outside the cell."""
    rng = np.random.default_rng(seed)
    cell = np.diag([2.6, 2.9, 3.3]) + rng.uniform(-0.4, 0.4, (3, 3)) * (1 - np.eye(3))
    positions = rng.uniform(-0.5, 1.5, (4, 3)) @ cell  # some atoms outside the cell
    cutoff = 3.5
    expected = brute_force_pairs(positions, cell, np.array(pbc), cutoff)
    got = vesin_pairs(positions, cell, pbc, cutoff)
    assert got == expected
    if all(pbc):  # an atom sees its own images
        assert any(i == j for i, j, *_ in got)


def test_neighbor_list_non_periodic_ignores_cell():
    rng = np.random.default_rng(3)
    positions = rng.uniform(0, 4, (6, 3))
    cutoff = 2.5
    expected = brute_force_pairs(positions, np.zeros((3, 3)), np.zeros(3, bool), cutoff)
    got = vesin_pairs(positions, np.eye(3) * 2.0, np.zeros(3, bool), cutoff)
    assert got == expected


def test_edge_vectors_convention():
    """edge vector = r_j − r_i + S·cell, with row 0 of edge_index the centre i."""
    frame = Frame(
        numbers=[1, 8],
        positions=[[0.5, 1.0, 1.0], [3.5, 1.0, 1.0]],
        cell=np.diag([4.0, 5.0, 5.0]),
        pbc=True,
    )
    batch = frames_to_batch([frame], cutoff=1.5, dtype=torch.float64)
    assert batch.edge_index.shape == (2, 2)
    vec = edge_vectors(batch)
    by_pair = {tuple(e): v for e, v in zip(batch.edge_index.T.tolist(), vec, strict=True)}
    # atom 1 seen from atom 0 across the boundary at x = 0: 3.5 − 0.5 − 4 = −1 Å
    torch.testing.assert_close(by_pair[(0, 1)], torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(by_pair[(1, 0)], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    shifts = {
        tuple(e): s for e, s in zip(batch.edge_index.T.tolist(), batch.edge_shift, strict=True)
    }
    assert shifts[(0, 1)].tolist() == [-1.0, 0.0, 0.0]
    # differentiable w.r.t. positions: d(vec_01)/d(r_1) = +1, d/d(r_0) = −1
    positions = batch.positions.clone().requires_grad_(True)
    v = edge_vectors(batch.with_positions(positions))
    (grad,) = torch.autograd.grad(v[0, 0], positions)
    i, j = batch.edge_index[:, 0].tolist()
    assert grad[j, 0] == 1.0 and grad[i, 0] == -1.0


def test_edge_vectors_match_neighbor_distances_in_batch():
    rng = np.random.default_rng(4)
    frames = [random_molecule(rng, 6, ELEMENTS), random_crystal(rng, 3, ELEMENTS)]
    cutoff = 3.0
    batch = frames_to_batch(frames, cutoff=cutoff, dtype=torch.float64)
    r = edge_vectors(batch).norm(dim=-1)
    assert bool((r < cutoff).all()) and bool((r > 0.5).all())
    # per structure: the multiset of distances equals the brute-force one
    for s, frame in enumerate(frames):
        pairs = brute_force_pairs(frame.positions, frame.cell, frame.pbc, cutoff)
        expected = sorted(
            np.linalg.norm(
                frame.positions[j] - frame.positions[i] + np.asarray(S, float) @ frame.cell
            )
            for i, j, *S in pairs
        )
        mask = batch.batch[batch.edge_index[0]] == s
        np.testing.assert_allclose(sorted(r[mask].tolist()), expected, atol=1e-12)


def _labelled(rng, n, energy=True, forces=True, pbc=False) -> Frame:
    frame = random_crystal(rng, n, ELEMENTS) if pbc else random_molecule(rng, n, ELEMENTS)
    return Frame(
        numbers=frame.numbers,
        positions=frame.positions,
        cell=frame.cell,
        pbc=frame.pbc,
        energy=float(rng.normal()) if energy else None,
        forces=rng.normal(size=(n, 3)) if forces else None,
    )


def test_collate_mixed_sizes():
    rng = np.random.default_rng(5)
    frames = [
        _labelled(rng, 3, energy=True, forces=False),
        _labelled(rng, 5, energy=False, forces=True),
        _labelled(rng, 2, pbc=True),
    ]
    graphs = [
        Graph.from_frame(f, cutoff=3.0, dtype=torch.float64, frame_id=k)
        for k, f in enumerate(frames)
    ]
    batch = collate(graphs)
    assert batch.ptr.tolist() == [0, 3, 8, 10]
    assert batch.batch.tolist() == [0] * 3 + [1] * 5 + [2] * 2
    assert batch.n_structures == 3 and batch.n_atoms.tolist() == [3, 5, 2]
    assert batch.cell.shape == (3, 3, 3) and batch.pbc.tolist()[2] == [True] * 3
    # edges: graph s's edges shifted by ptr[s]; both ends always in the same structure
    start = 0
    for s, g in enumerate(graphs):
        e = g.edge_index.shape[1]
        assert torch.equal(batch.edge_index[:, start : start + e], g.edge_index + batch.ptr[s])
        assert torch.equal(batch.edge_shift[start : start + e], g.edge_shift)
        start += e
    assert start == batch.edge_index.shape[1]
    assert torch.equal(batch.batch[batch.edge_index[0]], batch.batch[batch.edge_index[1]])
    # the collated edge vectors equal each graph's own
    for s, g in enumerate(graphs):
        single = collate([g])
        mask = batch.batch[batch.edge_index[0]] == s
        torch.testing.assert_close(edge_vectors(batch)[mask], edge_vectors(single))
    # labels: float64 energies, NaN + mask where missing
    assert batch.energy.dtype == torch.float64
    assert batch.energy_mask.tolist() == [True, False, True]
    assert batch.forces_mask.tolist() == [False, True, True]
    assert math.isnan(batch.energy[1]) and batch.energy[0] == frames[0].energy
    assert bool(torch.isnan(batch.forces[:3]).all())
    np.testing.assert_allclose(batch.forces[3:8].numpy(), frames[1].forces)
    assert batch.atom_forces_mask.tolist() == [False] * 3 + [True] * 7
    assert batch.frame_id.tolist() == [0, 1, 2]


def test_batch_to_keeps_energy_float64():
    rng = np.random.default_rng(6)
    batch = frames_to_batch([_labelled(rng, 4)], cutoff=3.0, dtype=torch.float64)
    low = batch.to(dtype=torch.float32)
    assert low.positions.dtype == torch.float32 and low.edge_shift.dtype == torch.float32
    assert low.energy.dtype == torch.float64 and low.numbers.dtype == torch.long


def test_batch_repeat():
    rng = np.random.default_rng(7)
    frames = [_labelled(rng, 4), _labelled(rng, 6, energy=False), _labelled(rng, 3, pbc=True)]
    batch = frames_to_batch(frames, cutoff=3.0, skin=0.5, dtype=torch.float64)
    N, S, E = batch.positions.shape[0], batch.n_structures, batch.edge_index.shape[1]
    displaced = [batch.positions + 0.1 * torch.randn_like(batch.positions) for _ in range(2)]
    positions = [batch.positions, *displaced]
    rep = batch.repeat(positions)
    k = len(positions)
    assert rep.n_structures == k * S and rep.positions.shape == (k * N, 3)
    assert rep.ptr.tolist() == [
        c * N + int(p) for c in range(k) for p in batch.ptr[(1 if c else 0) :]
    ]
    assert rep.batch.tolist() == [c * S + int(b) for c in range(k) for b in batch.batch]
    assert torch.equal(rep.numbers, batch.numbers.repeat(k))
    assert torch.equal(rep.energy_mask, batch.energy_mask.repeat(k))
    assert torch.equal(rep.cell, batch.cell.repeat(k, 1, 1))
    assert torch.equal(rep.batch[rep.edge_index[0]], rep.batch[rep.edge_index[1]])
    vec = edge_vectors(rep)
    for c, pos in enumerate(positions):
        block = vec[c * E : (c + 1) * E]
        expected = edge_vectors(batch.with_positions(pos))
        torch.testing.assert_close(block, expected, rtol=0, atol=1e-12)
        # the edges of copy c point into copy c's atoms
        assert bool((rep.edge_index[:, c * E : (c + 1) * E] // N == c).all())
    # copy 0 at the original positions equals the original exactly
    torch.testing.assert_close(vec[:E], edge_vectors(batch), rtol=0, atol=0)
