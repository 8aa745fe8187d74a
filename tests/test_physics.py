"""Tests of the physics-informed terms (PITC/PISC), their variants, sampling, metrics and DDP."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from piwsl.data import read_frames
from piwsl.data.batch import Batch, Graph, collate
from piwsl.data.frames import Frame
from piwsl.errors import ConfigError
from piwsl.models import ForceField, build_model
from piwsl.objective import (
    EnergyConvention,
    EnergyTerm,
    ForcesTerm,
    Objective,
    SpatialTerm,
    TaylorTerm,
    TwoPointTerm,
)
from piwsl.physics import (
    PhysicsConfig,
    check_skin,
    evaluate_copies,
    required_skin,
    sample_displacements,
    spatial_residual,
    taylor_residual,
    two_point_residual,
)
from piwsl.physics.displacements import frame_uniform
from piwsl.physics.metrics import circulation, force_curl
from piwsl.testing.analytic import HarmonicModel, RotationalModel
from piwsl.units import KCAL_MOL

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

CUTOFF = 3.0
SKIN = 0.25
ELEMENTS = [1, 6, 8]


@pytest.fixture(scope="module")
def ethanol() -> list[Frame]:
    return read_frames("builtin:ethanol_train")[:6]


def sub_frame(frame: Frame, atoms: list[int], index: int) -> Frame:
    """A smaller molecule made of some atoms of ``frame`` (to get mixed sizes)."""
    return Frame(
        numbers=frame.numbers[atoms],
        positions=frame.positions[atoms],
        energy=frame.energy,
        forces=None if frame.forces is None else frame.forces[atoms],
        index=index,
    )


def make_batch(frames: list[Frame], dtype=torch.float64, ids: list[int] | None = None) -> Batch:
    ids = list(range(len(frames))) if ids is None else ids
    return collate(
        [
            Graph.from_frame(f, CUTOFF, SKIN, dtype, frame_id=k)
            for f, k in zip(frames, ids, strict=True)
        ]
    )


@pytest.fixture(scope="module")
def mixed(ethanol) -> list[Frame]:
    """Three molecules of 9, 5 and 7 atoms."""
    return [
        ethanol[0],
        sub_frame(ethanol[1], [0, 1, 2, 3, 4], 1),
        sub_frame(ethanol[2], list(range(7)), 2),
    ]


def tiny_schnet(seed: int = 0) -> ForceField:
    torch.manual_seed(seed)
    model = build_model(
        "schnet", elements=ELEMENTS, cutoff=CUTOFF, features=8, interactions=2, n_rbf=8
    )
    return model.double()


def tiny_painn(forces: str, seed: int = 0) -> ForceField:
    torch.manual_seed(seed)
    model = build_model(
        "painn",
        elements=ELEMENTS,
        cutoff=CUTOFF,
        features=8,
        interactions=2,
        n_rbf=6,
        forces=forces,
    )
    return model.double()


def make_model(kind: str) -> ForceField:
    if kind == "schnet":
        return tiny_schnet()
    if kind == "rotational":
        return ForceField(RotationalModel(ELEMENTS, CUTOFF))
    return tiny_painn(kind.split("_")[1])


def physics(
    taylor: float = 1.2,
    spatial: float = 0.01,
    two_point: bool = False,
    second_order: bool = False,
    anchor_to_labels: bool = False,
    unit: str = "kcal/mol",
    supervised: tuple[float, float] | None = None,
    **displacements,
) -> Objective:
    """An objective with the physics terms (weights as in the paper by default), optionally the
    supervised terms (energy, forces weights), and displacement settings ``displacements``."""
    terms = []
    if supervised is not None:
        terms += [EnergyTerm(supervised[0]), ForcesTerm(supervised[1])]
    if taylor:
        terms.append(TaylorTerm(taylor, unit, second_order, anchor_to_labels))
    if spatial:
        terms.append(SpatialTerm(spatial, unit, second_order))
    if two_point:
        terms.append(TwoPointTerm(taylor, unit, second_order, anchor_to_labels))
    return Objective(terms, PhysicsConfig(**displacements))


def blocks(batch: Batch, x: torch.Tensor, s: int) -> torch.Tensor:
    lo, hi = int(batch.ptr[s]), int(batch.ptr[s + 1])
    return x[lo:hi].reshape(-1)


# ------------------------------------------------------------------------------ displacements
def test_displacements_centred_bounded_fixed_reproducible(ethanol, mixed):
    frames = [*mixed, ethanol[3]]
    fixed = np.zeros(9, dtype=bool)
    fixed[[0, 4]] = True
    frames[3] = Frame(
        numbers=ethanol[3].numbers, positions=ethanol[3].positions, fixed=fixed, index=3
    )
    batch = make_batch(frames)
    delta = 0.05
    d1, d2 = sample_displacements(batch, delta, seed=3, step=7)
    for d in (d1, d2):
        assert not d.requires_grad
        # zero on fixed atoms, mean zero per structure (over the movable atoms)
        assert torch.all(d[batch.fixed] == 0)
        for s in range(batch.n_structures):
            lo, hi = int(batch.ptr[s]), int(batch.ptr[s + 1])
            assert torch.allclose(d[lo:hi].sum(0), torch.zeros(3, dtype=d.dtype), atol=1e-15)
            # pairwise differences below 2δ per component (the centring cancels): the skin rule
            diff = d[lo:hi].unsqueeze(0) - d[lo:hi].unsqueeze(1)
            assert float(diff.abs().max()) < 2 * delta
        assert float(d.abs().max()) < 2 * delta
        assert float(d.abs().max()) > 0.5 * delta  # not degenerate
    # uncentred draws lie in [-1, 1) with the moments of Uniform[-1, 1)
    big = make_batch([ethanol[k % 6] for k in range(60)], ids=list(range(60)))
    u = frame_uniform(big, seed=0, step=0, stream=0)
    assert float(u.min()) >= -1 and float(u.max()) < 1
    assert abs(float(u.mean())) < 0.05
    assert abs(float(u.var()) - 1 / 3) < 0.03
    v = frame_uniform(big, seed=0, step=0, stream=1)
    assert abs(float(torch.corrcoef(torch.stack([u.reshape(-1), v.reshape(-1)]))[0, 1])) < 0.08
    # same seed and step: identical; another step or seed: different
    e1, e2 = sample_displacements(batch, delta, seed=3, step=7)
    assert torch.equal(d1, e1) and torch.equal(d2, e2)
    assert not torch.allclose(d1, sample_displacements(batch, delta, seed=3, step=8)[0])
    assert not torch.allclose(d1, sample_displacements(batch, delta, seed=4, step=7)[0])
    assert not torch.allclose(d1, d2)
    # a frame's field does not depend on the rest of the batch (DDP ranks draw alike)
    alone = make_batch([frames[1]], ids=[1])
    f1, _ = sample_displacements(alone, delta, seed=3, step=7)
    assert torch.equal(f1, d1[int(batch.ptr[1]) : int(batch.ptr[2])])


def test_local_fraction_displaces_only_a_subset(ethanol):
    batch = make_batch([ethanol[k % 6] for k in range(40)], ids=list(range(40)))
    d1, d2 = sample_displacements(batch, 0.05, seed=1, step=0, local_fraction=0.3)
    moved = d1.abs().sum(-1) > 0
    assert torch.equal(moved, d2.abs().sum(-1) > 0)  # same atoms in both copies
    assert 0.2 < float(moved.double().mean()) < 0.4
    for s in range(batch.n_structures):
        lo, hi = int(batch.ptr[s]), int(batch.ptr[s + 1])
        assert torch.allclose(d1[lo:hi].sum(0), torch.zeros(3, dtype=d1.dtype), atol=1e-15)


def test_generator_sampler_state_roundtrip(ethanol):
    batch = make_batch(ethanol[:2])
    objective = physics(sampler="generator", seed=5)
    sampler = objective.displacements
    sampler.sample(batch)
    state = objective.state_dict()
    a = sampler.sample(batch)
    objective.load_state_dict(state)
    b = sampler.sample(batch)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], sampler.sample(batch)[0])
    # frame sampler: the state is the step counter, advanced in training mode only
    objective = physics()
    model = tiny_schnet()
    model.eval()
    objective(model, batch)
    assert objective.state_dict()["step"] == 0
    model.train()
    objective(model, batch)
    objective(model, batch)
    assert objective.state_dict()["step"] == 2


def test_skin_rule():
    assert required_skin(0.05) == pytest.approx(2 * math.sqrt(3) * 0.05)
    with pytest.raises(ConfigError, match="skin"):
        check_skin(0.1, 0.05)
    check_skin(0.2, 0.05)
    assert not physics(taylor=0, spatial=0).displaces
    with pytest.raises(ValueError, match="unknown energy unit"):
        EnergyConvention(physics_unit="kcal")
    # the weights moved to loss.terms: the old keys say where
    with pytest.raises(ValueError, match=r"loss\.terms"):
        PhysicsConfig(taylor_weight=1)


def test_too_small_skin_is_detected_on_first_call(ethanol):
    frames = ethanol[:2]
    model = tiny_schnet()
    objective = physics(perturbation_scale=0.3)
    tight = collate(
        [Graph.from_frame(f, CUTOFF, 0.0, torch.float64, frame_id=k) for k, f in enumerate(frames)]
    )
    with pytest.raises(ConfigError, match="skin"):
        objective(model, tight)
    wide = collate(
        [Graph.from_frame(f, CUTOFF, 2.0, torch.float64, frame_id=k) for k, f in enumerate(frames)]
    )
    objective = physics(perturbation_scale=0.3)
    objective(model, wide)
    assert objective.displacements.verified


# -------------------------------------------------------------------- analytic closed forms
def test_quadratic_potential_closed_forms(mixed):
    batch = make_batch(mixed)
    model = ForceField(HarmonicModel(ELEMENTS, CUTOFF))
    d1, d2 = sample_displacements(batch, 0.05, seed=0, step=0)
    out = evaluate_copies(model, batch, d1, d2)
    # the analytic model's forces are right (so the checks below test the losses)
    assert torch.allclose(out.forces["A"], model.energy_model.analytic_forces(batch), atol=1e-12)
    expect_t, expect_s = [], []
    for s in range(batch.n_structures):
        H = model.energy_model.hessian(batch, s)
        x, y = blocks(batch, d1, s), blocks(batch, d1 - d2, s)
        expect_t.append(0.5 * x @ H @ x)
        expect_s.append(0.5 * y @ H @ y)
    expect_t, expect_s = torch.stack(expect_t), torch.stack(expect_s)
    assert bool((expect_t > 1e-4).all())
    assert torch.allclose(taylor_residual(out, batch), expect_t, rtol=1e-10, atol=1e-14)
    assert torch.allclose(spatial_residual(out, batch), expect_s, rtol=1e-10, atol=1e-14)
    # two-point (C back to A): E(A) − E(C) − d1·F(C) = ½ d1ᵀHd1 too
    assert torch.allclose(two_point_residual(out, batch), expect_t, rtol=1e-10, atol=1e-14)
    # second order (trapezoid) is exact for a quadratic: zero to round-off
    for fn in (taylor_residual, spatial_residual, two_point_residual):
        assert float(fn(out, batch, second_order=True).abs().max()) < 1e-12
    # the loss is the mean over structures of the squared residual in kcal/mol
    result = physics(two_point=True)(model, batch, displacements=(d1, d2))
    assert float(result.raw["taylor"]) == pytest.approx(
        float(((expect_t / KCAL_MOL) ** 2).mean()), rel=1e-10
    )
    assert float(result.raw["spatial"]) == pytest.approx(
        float(((expect_s / KCAL_MOL) ** 2).mean()), rel=1e-10
    )
    assert float(result.weighted["taylor"]) == pytest.approx(1.2 * float(result.raw["taylor"]))
    assert float(result.weighted["spatial"]) == pytest.approx(0.01 * float(result.raw["spatial"]))
    assert "taylor_two_point" in result.raw
    second = physics(second_order=True, two_point=True)
    result2 = second(model, batch, displacements=(d1, d2))
    assert all(float(v) < 1e-20 for v in result2.raw.values())


def rotational_residual(batch, d1, d2, omega):
    """PISC second order for F = −∇E + ω×r with quadratic E: Σ (d1−d2)·ω×½(b + c)."""
    pos = batch.positions
    mid = pos + 0.5 * (d1 + d2)
    rot = torch.linalg.cross(torch.as_tensor(omega, dtype=pos.dtype).expand_as(mid), mid, dim=-1)
    per_atom = ((d1 - d2) * rot).sum(-1)
    return torch.zeros(batch.n_structures, dtype=pos.dtype).index_add(0, batch.batch, per_atom)


def test_rotational_field_pisc_grows_with_omega(mixed):
    batch = make_batch(mixed)
    d1, d2 = sample_displacements(batch, 0.05, seed=2, step=0)
    objective = physics(second_order=True, taylor=0.0, spatial=1.0)
    losses = []
    for w in (0.0, 0.1, 0.2):
        omega = (0.3 * w, -0.5 * w, w)
        model = ForceField(RotationalModel(ELEMENTS, CUTOFF, omega=omega))
        result = objective(model, batch, displacements=(d1, d2))
        expect = rotational_residual(batch, d1, d2, omega)
        assert torch.allclose(result.residuals["spatial"], expect, rtol=1e-9, atol=1e-12)
        losses.append(float(result.raw["spatial"]))
    assert losses[0] < 1e-24
    assert losses[1] > 1e-8
    assert losses[2] == pytest.approx(4 * losses[1], rel=1e-9)  # ∝ ω²


# ------------------------------------------------------------------- batching and fusing
def test_mixed_batch_equals_each_structure_alone(mixed):
    model = tiny_schnet()
    objective = physics(second_order=False, two_point=True)
    batch = make_batch(mixed)
    together = objective(model, batch, step=4)
    for s, frame in enumerate(mixed):
        alone = objective(model, make_batch([frame], ids=[s]), step=4)
        for name in ("taylor", "spatial", "taylor_two_point"):
            assert float(alone.residuals[name][0]) == pytest.approx(
                float(together.residuals[name][s]), rel=1e-9, abs=1e-13
            )
    # and the batch loss is the mean of the per-structure squared residuals
    r = together.residuals["taylor"] / KCAL_MOL
    assert float(together.raw["taylor"]) == pytest.approx(float((r**2).mean()), rel=1e-12)


@pytest.mark.parametrize("kind", ["schnet", "rotational", "painn_conservative", "painn_direct"])
@pytest.mark.parametrize(
    "variants", [{}, {"second_order": True, "two_point": True, "anchor_to_labels": True}]
)
def test_fused_equals_three_passes(mixed, kind, variants):
    batch = make_batch(mixed)

    def run(evaluation):
        model = make_model(kind)
        objective = physics(evaluation=evaluation, supervised=(1.0, 10.0), **variants)
        result = objective(model, batch)
        result.total.backward()
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        return result, grads

    fused, g_fused = run("fused")
    names = {"energy", "forces", "taylor", "spatial"}
    assert set(fused.raw) == (names | {"taylor_two_point"} if variants else names)
    assert float(g_fused.abs().max()) > 0
    for other in ("three_pass", "split"):
        result, grads = run(other)
        for name in fused.raw:
            assert float(fused.raw[name]) == pytest.approx(
                float(result.raw[name]), rel=1e-9, abs=1e-15
            )
        assert torch.allclose(g_fused, grads, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------------------ invariance
def test_rotation_and_permutation_invariance(ethanol):
    model = tiny_schnet()
    objective = physics(two_point=True)
    frame = ethanol[0]
    batch = make_batch([frame])
    d1, d2 = sample_displacements(batch, 0.05, seed=1, step=0)
    ref = objective(model, batch, displacements=(d1, d2)).residuals
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    perm = torch.randperm(frame.n_atoms, generator=g)
    moved = Frame(
        numbers=frame.numbers[perm.numpy()],
        positions=(torch.as_tensor(frame.positions)[perm] @ Q.T).numpy(),
        index=0,
    )
    tb = make_batch([moved])
    out = objective(model, tb, displacements=(d1[perm] @ Q.T, d2[perm] @ Q.T)).residuals
    for name, value in ref.items():
        assert abs(float(value)) > 1e-8
        assert float(out[name]) == pytest.approx(float(value), rel=1e-9, abs=1e-14)
    # a different field changes the loss (the check above is not vacuous)
    other = objective(model, tb, displacements=(d1 @ Q.T, d2 @ Q.T)).residuals
    assert float(other["taylor"]) != pytest.approx(float(ref["taylor"]), rel=1e-6)


# ------------------------------------------------------------------------------- gradients
def _finite_difference(loss_fn, param: torch.Tensor, index: int, h: float = 1e-5) -> float:
    flat = param.data.view(-1)
    old = float(flat[index])
    flat[index] = old + h
    plus = float(loss_fn())
    flat[index] = old - h
    minus = float(loss_fn())
    flat[index] = old
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("second_order", [False, True])
def test_gradient_reaches_parameters_through_forces(mixed, second_order):
    batch = make_batch(mixed)
    model = tiny_schnet()
    model.eval()  # create_graph follows torch.is_grad_enabled(), not the training flag
    objective = physics(taylor=1.0, spatial=1.0, second_order=second_order, unit="meV")
    d = sample_displacements(batch, 0.05, seed=0, step=0)

    def loss():
        r = objective(model, batch, displacements=d)
        return r.weighted["taylor"] + r.weighted["spatial"]

    # a parameter that enters E only through the interactions: its gradient needs the
    # double backward through the forces in the targets
    param = model.energy_model.interactions[0].filter_net[0].weight
    model.zero_grad()
    loss().backward()
    for index in (0, 5):
        # h = 1e-3: the residuals are differences of nearly equal energies, so the loss carries
        # rounding noise that a step of 1e-5 amplifies (1.8e-4 relative on one CPU, passing on
        # another); at 1e-3 the central difference agrees with autograd to ~1e-7
        fd = _finite_difference(loss, param, index, h=1e-3)
        assert float(param.grad.view(-1)[index]) == pytest.approx(fd, rel=1e-5, abs=1e-12)
        assert abs(fd) > 1e-8


def test_gradient_direct_forces_and_target_not_detached(mixed):
    """For a direct model the loss depends on ω only through the force head."""
    batch = make_batch(mixed)
    model = ForceField(RotationalModel(ELEMENTS, CUTOFF, omega=(0.1, 0.2, -0.1)))
    objective = physics(taylor=0.0, spatial=1.0, second_order=True)
    d = sample_displacements(batch, 0.05, seed=0, step=0)

    def loss():
        return objective(model, batch, displacements=d).weighted["spatial"]

    loss().backward()
    omega = model.energy_model.omega
    for index in range(3):
        fd = _finite_difference(loss, omega, index)
        assert float(omega.grad[index]) == pytest.approx(fd, rel=1e-6, abs=1e-12)
    assert float(omega.grad.abs().max()) > 0


def test_anchor_to_labels_uses_reference_where_both_labels_exist(mixed):
    model = ForceField(HarmonicModel(ELEMENTS, CUTOFF))
    batch = make_batch(mixed)
    with torch.no_grad():
        exact = model(batch)
    offset = torch.tensor([0.3, 0.5, -0.2], dtype=torch.float64)
    batch.energy = exact["energy"] + offset
    batch.forces = exact["forces"].clone()
    batch.energy_mask = torch.tensor([True, True, True])
    batch.forces_mask = torch.tensor([True, False, True])
    batch.forces[batch.batch == 1] = float("nan")
    d1, d2 = sample_displacements(batch, 0.05, seed=0, step=0)
    out = evaluate_copies(model, batch, d1, d2)
    plain = taylor_residual(out, batch)
    anchored = taylor_residual(out, batch, anchor_to_labels=True)
    # exact labels shifted by `offset` shift the residual by −offset; structure 1 lacks forces
    assert torch.allclose(anchored, plain - torch.tensor([0.3, 0.0, -0.2]), atol=1e-12)
    assert bool(torch.isfinite(anchored).all())
    two = two_point_residual(out, batch, anchor_to_labels=True)
    assert torch.allclose(two, two_point_residual(out, batch) + offset, atol=1e-12)


# ------------------------------------------------------------------------------- objective
def test_objective_energy_only_and_supervised_output(ethanol):
    batch = make_batch(ethanol[:3])
    model = tiny_schnet()
    objective = physics(supervised=(1.0, 0.0))
    result = objective(model, batch)
    assert set(result.raw) == {"energy", "taylor", "spatial"}
    assert set(result.weighted) == set(result.raw)
    total = sum(result.weighted.values())
    assert float(result.total) == pytest.approx(float(total))
    # the A part of the fused pass is the plain model output
    plain = model(batch, compute_forces=True)
    assert torch.allclose(result.output["energy"], plain["energy"], rtol=1e-12)
    assert torch.allclose(result.output["forces"], plain["forces"], atol=1e-12)
    state = objective.state_dict()
    with_forces_terms = [EnergyTerm(1.0), ForcesTerm(10.0), *objective.terms[2:]]
    with_forces = Objective(with_forces_terms, objective.displacements)(model, batch)
    assert "forces" in with_forces.raw
    objective.load_state_dict(state)  # same step → same displacements
    # validation runs without grad: the terms are still computed (for logging), without graph
    with torch.no_grad():
        logged = Objective(with_forces_terms, objective.displacements)(model, batch)
    assert not logged.total.requires_grad
    assert float(logged.raw["taylor"]) == pytest.approx(float(with_forces.raw["taylor"]), rel=1e-9)


def test_curl_metrics_vanish_for_conservative_and_measure_omega(mixed):
    batch = make_batch(mixed)
    harmonic = ForceField(HarmonicModel(ELEMENTS, CUTOFF))
    assert float(force_curl(harmonic, batch).max()) < 1e-12
    assert float(circulation(harmonic, batch).curl_ev_a2.max()) < 1e-9
    assert float(force_curl(tiny_schnet(), batch).max()) < 1e-10
    assert float(force_curl(tiny_painn("conservative"), batch).max()) < 1e-10
    assert float(force_curl(tiny_painn("direct"), batch).min()) > 1e-6
    omega = (0.0, 0.0, 0.1)
    rot = ForceField(RotationalModel(ELEMENTS, CUTOFF, omega=omega))
    curl = force_curl(rot, batch, n_planes=3, seed=0)
    circ = circulation(rot, batch, radius=0.01, n_loops=3, seed=0)
    assert float(curl.min()) > 1e-3
    assert torch.allclose(circ.curl_ev_a2, curl, rtol=1e-6)
    # |qᵀ(J − Jᵀ)p| ≤ 2|ω| for unit p, q (J − Jᵀ = 2[ω]× on every atom)
    assert float(curl.max()) <= 2 * 0.1 + 1e-12
    doubled = ForceField(RotationalModel(ELEMENTS, CUTOFF, omega=(0.0, 0.0, 0.2)))
    assert torch.allclose(force_curl(doubled, batch, n_planes=3, seed=0), 2 * curl, rtol=1e-9)


# ------------------------------------------------------------------------------------- DDP
DDP_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    from test_physics import ddp_setup
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, objective, batches = ddp_setup(world)
    ddp = DDP(model)
    ddp.train()
    result = objective(ddp, batches[rank])
    result.total.backward()
    grads = [p.grad.reshape(-1).tolist() for p in model.parameters()]
    if rank == 0:
        with open(os.environ["OUT"], "w") as fh:
            json.dump(grads, fh)
    # Tear down in order: the reducer's pending gloo work first, then both ranks together, and
    # leave without interpreter finalisation, where gloo's threads can still abort the process
    # ("terminate called without an active exception", seen once in CI on torch 2.13).
    del ddp
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
    """
)


def ddp_setup(world: int):
    """The same model, objective and data on every rank; batches[r] is rank r's share."""
    frames = read_frames("builtin:ethanol_train")[:4]
    model = tiny_schnet(seed=1)
    objective = physics(second_order=False, supervised=(1.0, 10.0))
    ids = list(range(len(frames)))
    share = len(frames) // world
    batches = [
        make_batch(frames[r * share : (r + 1) * share], ids=ids[r * share : (r + 1) * share])
        for r in range(world)
    ]
    return model, objective, batches


def test_ddp_two_processes_match_one_process_on_the_union(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "grads.json"
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        OUT=str(out),
        # the workers import this module's ddp_setup
        PYTHONPATH=os.pathsep.join(
            p for p in (os.path.dirname(__file__), os.environ.get("PYTHONPATH")) if p
        ),
        OMP_NUM_THREADS="1",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DDP_WORKER],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    ddp_grads = torch.cat(
        [torch.tensor(g, dtype=torch.float64) for g in json.loads(out.read_text())]
    )

    model, objective, (union,) = ddp_setup(1)
    model.train()
    objective(model, union).total.backward()
    single = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert float(single.abs().max()) > 0
    assert torch.allclose(ddp_grads, single, rtol=1e-9, atol=1e-13)
