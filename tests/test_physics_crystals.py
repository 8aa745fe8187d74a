"""PITC/PISC on crystals: atoms displaced at fixed cell, on periodic batches of mixed cell sizes.

- a periodic harmonic potential (springs along the neighbour list, images included): closed-form
  residuals ½ dᵀHd, zero at second order;
- an anharmonic periodic potential (ASE's Lennard-Jones): first-order residuals shrink as δ²,
  second-order ones as δ³;
- periodic images: a 2×2×1 supercell with the cell's displacement field repeated has 4× the
  cell's residuals (a nonlinear network);
- a mixed batch of crystals gives each crystal's residuals alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from piwsl.data.batch import Batch, Graph, collate
from piwsl.data.frames import Frame
from piwsl.models import ForceField, build_model
from piwsl.objective import Objective, SpatialTerm, TaylorTerm
from piwsl.physics import (
    PhysicsConfig,
    evaluate_copies,
    sample_displacements,
    spatial_residual,
    taylor_residual,
)
from piwsl.testing import random_crystal
from piwsl.testing.analytic import HarmonicModel, LennardJonesModel

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

CUTOFF = 3.0
SKIN = 0.3
ELEMENTS = [8, 14, 22]


def crystals() -> list[Frame]:
    """Periodic cells of 2, 8 and 5 atoms: rattled diamond Si (conventional and primitive) and a
    random triclinic cell, some smaller than the cutoff (atoms see their own images)."""
    rng = np.random.default_rng(7)
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    si.rattle(0.05, seed=1)
    prim = bulk("Si", "diamond", a=5.43)
    prim.rattle(0.05, seed=2)
    tri = random_crystal(rng, 5, ELEMENTS, lengths=(2.9, 3.3, 3.6), min_distance=1.2)
    frames = [Frame.from_atoms(prim, index=0), Frame.from_atoms(si, index=1)]
    return [*frames, Frame(tri.numbers, tri.positions, tri.cell, tri.pbc, index=2)]


def make_batch(frames: list[Frame], ids: list[int] | None = None) -> Batch:
    ids = list(range(len(frames))) if ids is None else ids
    return collate(
        [
            Graph.from_frame(f, CUTOFF, SKIN, torch.float64, frame_id=k)
            for f, k in zip(frames, ids, strict=True)
        ]
    )


def block(batch: Batch, x: torch.Tensor, s: int) -> torch.Tensor:
    return x[int(batch.ptr[s]) : int(batch.ptr[s + 1])].reshape(-1)


def test_periodic_harmonic_closed_forms_on_mixed_cells():
    frames = crystals()
    batch = make_batch(frames)
    assert all(bool(batch.pbc[s].all()) for s in range(3))
    assert int((batch.edge_shift.abs().sum(1) > 0).sum()) > 0  # image pairs are springs too
    model = ForceField(HarmonicModel(ELEMENTS, CUTOFF, well=0.0, spring=0.4))
    d1, d2 = sample_displacements(batch, 0.05, seed=3, step=0)
    out = evaluate_copies(model, batch, d1, d2)
    # springs only: the energy is periodic-translation invariant, forces sum to zero per cell
    per_cell = torch.zeros(3, 3, dtype=torch.float64).index_add(0, batch.batch, out.forces["A"])
    assert float(per_cell.abs().max()) < 1e-12
    expect_t, expect_s = [], []
    for s in range(batch.n_structures):
        H = model.energy_model.hessian(batch, s)
        x, y = block(batch, d1, s), block(batch, d1 - d2, s)
        expect_t.append(0.5 * x @ H @ x)
        expect_s.append(0.5 * y @ H @ y)
    expect_t, expect_s = torch.stack(expect_t), torch.stack(expect_s)
    assert bool((expect_t > 1e-5).all()) and bool((expect_s > 1e-5).all())
    torch.testing.assert_close(taylor_residual(out, batch), expect_t, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(spatial_residual(out, batch), expect_s, rtol=1e-10, atol=1e-14)
    for fn in (taylor_residual, spatial_residual):
        assert float(fn(out, batch, second_order=True).abs().max()) < 1e-12


def test_anharmonic_crystal_residuals_shrink_as_delta_squared_and_cubed():
    """ASE's Lennard-Jones on a sheared, rattled fcc cell: the Taylor residual of the first-order
    term is O(δ²), of the second-order (trapezoid) term O(δ³)."""
    atoms = bulk("Ar", "fcc", a=3.4).repeat((2, 2, 1))
    atoms.rattle(0.1, seed=4)
    frame = Frame.from_atoms(atoms)
    batch = collate([Graph.from_frame(frame, 6.0, 0.5, torch.float64)])
    model = ForceField(LennardJonesModel([18], cutoff=6.0, sigma=2.0)).eval()
    rng = np.random.default_rng(5)
    u = torch.as_tensor(rng.uniform(-1, 1, size=(frame.n_atoms, 3)))
    v = torch.as_tensor(rng.uniform(-1, 1, size=(frame.n_atoms, 3)))
    first, second = [], []
    for delta in (0.02, 0.01):
        out = evaluate_copies(model, batch, delta * u, delta * v)
        first.append(abs(float(taylor_residual(out, batch)[0])))
        second.append(abs(float(spatial_residual(out, batch, second_order=True)[0])))
    assert first[0] / first[1] == pytest.approx(4.0, rel=0.05)
    assert second[0] / second[1] == pytest.approx(8.0, rel=0.1)


def tiny_schnet() -> ForceField:
    torch.manual_seed(0)
    return build_model(
        "schnet", elements=ELEMENTS, cutoff=CUTOFF, features=8, interactions=2, n_rbf=8
    ).double()


def test_supercell_residuals_are_the_cells_times_the_number_of_copies():
    """A 2×2×1 supercell whose displacement fields repeat the cell's: energies, and so the
    PITC/PISC residuals, are 4× the cell's — the displaced atoms see the right images."""
    cell = crystals()[2]
    reps = np.array([[i, j, 0] for i in range(2) for j in range(2)])
    super_frame = Frame(
        numbers=np.tile(cell.numbers, 4),
        positions=np.concatenate([cell.positions + r @ cell.cell for r in reps]),
        cell=cell.cell * np.array([[2], [2], [1]]),
        pbc=True,
    )
    model = tiny_schnet()
    small, big = make_batch([cell]), make_batch([super_frame])
    d1, d2 = sample_displacements(small, 0.05, seed=9, step=0)
    out_small = evaluate_copies(model, small, d1, d2)
    out_big = evaluate_copies(model, big, d1.repeat(4, 1), d2.repeat(4, 1))
    for second_order in (False, True):
        for fn in (taylor_residual, spatial_residual):
            r_small = fn(out_small, small, second_order=second_order)
            r_big = fn(out_big, big, second_order=second_order)
            assert abs(float(r_small[0])) > 1e-8
            assert float(r_big[0]) == pytest.approx(4 * float(r_small[0]), rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("second_order", [False, True])
def test_mixed_crystal_batch_equals_each_crystal_alone(second_order):
    frames = crystals()
    model = tiny_schnet()
    objective = Objective(
        [TaylorTerm(1.2, "kcal/mol", second_order), SpatialTerm(0.01, "kcal/mol", second_order)],
        PhysicsConfig(),
    )
    together = objective(model, make_batch(frames), step=3)
    for s, frame in enumerate(frames):
        alone = objective(model, make_batch([frame], ids=[s]), step=3)
        for name in ("taylor", "spatial"):
            assert float(alone.residuals[name][0]) == pytest.approx(
                float(together.residuals[name][s]), rel=1e-9, abs=1e-13
            )
    # the loss reaches the weights through the forces of the periodic copies
    total = together.total
    grads = torch.autograd.grad(
        total, [p for p in model.parameters() if p.requires_grad], allow_unused=True
    )
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
