"""Compiled training (``training.compile``): the traced and compiled force field against eager.

Most checks use the ``aot_eager`` backend: the graph is traced and differentiated exactly as for
``inductor`` (the part where a compiled force field can go wrong: the unrolled autograd, detached
saved outputs, symbolic batch sizes), but not code-generated, which keeps these tests fast. One
test compiles with ``inductor``.
"""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch

from piwsl.data import read_frames
from piwsl.data.batch import Batch, Graph, collate, edge_vectors
from piwsl.data.frames import Frame
from piwsl.models import ForceField, build_model
from piwsl.models.base import EnergyModel
from piwsl.models.compiled import CompiledForceField
from piwsl.objective import EnergyTerm, ForcesTerm, Objective, SpatialTerm, TaylorTerm
from piwsl.physics import PhysicsConfig
from piwsl.testing import random_crystal

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

CUTOFF = 3.0
SKIN = 0.25
ELEMENTS = [1, 6, 8]
SHIFT = -4209.0 / 9  # eV per atom, about ethanol's
TINY = {
    "schnet": ("schnet", {"features": 8, "interactions": 1, "n_rbf": 6}),
    "painn_conservative": ("painn", {"features": 8, "interactions": 1, "n_rbf": 6}),
    "painn_direct": ("painn", {"features": 8, "interactions": 1, "n_rbf": 6, "forces": "direct"}),
}


def sub_frame(frame: Frame, n_atoms: int, index: int) -> Frame:
    return Frame(
        numbers=frame.numbers[:n_atoms],
        positions=frame.positions[:n_atoms],
        energy=frame.energy,
        forces=frame.forces[:n_atoms],
        index=index,
    )


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    """Ethanol (9 atoms), smaller molecules cut from it, and labelled periodic crystals."""
    ethanol = read_frames("builtin:ethanol_train")[:10]
    rng = np.random.default_rng(0)
    out = list(ethanol[:6])
    sizes = (5, 7, 4, 6)
    out += [sub_frame(f, n, 6 + k) for k, (f, n) in enumerate(zip(ethanol[6:], sizes, strict=True))]
    for k in range(2):
        crystal = random_crystal(rng, 4, ELEMENTS)
        crystal.energy = SHIFT * 4 + rng.normal()
        crystal.forces = rng.normal(size=(4, 3))
        crystal.index = 10 + k
        out.append(crystal)
    return out


def batches(frames: list[Frame]) -> list[Batch]:
    """Mixed sizes and kinds, a lone structure and a short last batch."""
    graphs = [Graph.from_frame(f, CUTOFF, SKIN, frame_id=k) for k, f in enumerate(frames)]
    groups = [[0, 1, 2, 3], [4, 6, 7, 10], [8], [5, 9, 11, 2], [3, 7]]
    return [collate([graphs[k] for k in g]) for g in groups]


def tiny_model(key: str, seed: int = 0) -> ForceField:
    name, hparams = TINY[key]
    torch.manual_seed(seed)
    model = build_model(name, elements=ELEMENTS, cutoff=CUTOFF, **hparams)
    model.energy_model.set_reference({}, shift=SHIFT, scale=1.0)
    return model.train()


def objective(physics: bool) -> Objective:
    """Energy 1 and forces 10 (eV), with PITC 1.2 and PISC 0.01 (kcal/mol, second order)."""
    terms = [EnergyTerm(1.0), ForcesTerm(10.0)]
    if not physics:
        return Objective(terms)
    terms += [TaylorTerm(1.2, second_order=True), SpatialTerm(0.01, second_order=True)]
    return Objective(terms, PhysicsConfig(evaluation="fused"))


def train_steps(model, batches: list[Batch], physics: bool) -> list[float]:
    """Loss of each Adam step, the model updated in place."""
    params = list(model.model.parameters() if hasattr(model, "stats") else model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    goal = objective(physics)
    losses = []
    for batch in batches:
        optimizer.zero_grad()
        loss = goal(model, batch).total
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("key", list(TINY))
def test_compiled_training_equals_eager(key, frames):
    """Several steps of PIWSL (2nd order) + supervised training: the same losses and weights,
    one traced graph for every batch shape (mixed molecules, crystals, a short last batch)."""
    eager = tiny_model(key)
    compiled = CompiledForceField(copy.deepcopy(eager), backend="aot_eager")
    data = batches(frames)
    expected = train_steps(eager, data, physics=True)
    got = train_steps(compiled, data, physics=True)
    assert got == pytest.approx(expected, rel=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    stats = compiled.stats
    assert stats.graphs == 1 and stats.recompiles == 0
    assert stats.compiled_calls == len(data) and stats.eager_calls == 0
    # supervised only: the lone structure runs eagerly (sizes 0/1 would be specialised)
    assert train_steps(compiled, data[1:3], physics=False)
    assert stats.eager_reasons == {"fewer than 2 structures, atoms or edges": 1}
    assert stats.graphs == 1 and stats.recompiles == 0


def test_compiled_gradient_includes_saved_outputs(frames):
    """PaiNN's sqrt in the norms saves its output for the backward; traced naively (detached)
    the parameter gradient of a force loss was 30 % off. Checked against finite differences."""
    model = tiny_model("painn_conservative").double()
    compiled = CompiledForceField(model, backend="aot_eager")
    batch = batches(frames)[1].to(dtype=torch.float64)
    param = model.energy_model.updates[0].V.weight

    def loss(net) -> torch.Tensor:
        return (net(batch)["forces"] ** 2).sum()

    (grad,) = torch.autograd.grad(loss(compiled), param)
    (eager,) = torch.autograd.grad(loss(model), param)  # double backward
    assert torch.allclose(grad, eager, rtol=1e-9, atol=1e-12)
    for index in ((0, 0), (3, 5)):
        h, old = 1e-5, float(param[index])
        with torch.no_grad():
            param[index] = old + h
            plus = float(loss(compiled))
            param[index] = old - h
            minus = float(loss(compiled))
            param[index] = old
        assert float(grad[index]) == pytest.approx((plus - minus) / (2 * h), rel=1e-6)


class _DataDependent(EnergyModel):
    """A model with data-dependent control flow, which cannot become one graph."""

    def __init__(self) -> None:
        super().__init__(ELEMENTS, CUTOFF)
        self.weight = torch.nn.Parameter(torch.tensor(0.5))
        self.hparams = {}

    def atomic_outputs(self, batch: Batch):
        r = edge_vectors(batch).norm(dim=-1)
        e = torch.zeros_like(batch.positions[:, 0]).index_add(0, batch.edge_index[0], r)
        if bool((r > 2.0).any()):  # reads a value: not traceable with symbolic sizes
            e = e * 2
        return self.weight * e, None


def test_untraceable_model_trains_eagerly_with_a_warning(frames, caplog):
    model = ForceField(_DataDependent()).train()
    compiled = CompiledForceField(model, backend="aot_eager")
    batch = batches(frames)[0]
    with caplog.at_level(logging.WARNING, logger="piwsl.models.compiled"):
        out = compiled(batch)
        again = compiled(batch)
    assert "_DataDependent (energy + forces) cannot be traced into one graph" in caplog.text
    assert "these calls run eagerly" in caplog.text
    expected = model(batch)
    assert torch.allclose(out["forces"], expected["forces"])
    assert torch.allclose(again["energy"], expected["energy"])
    assert compiled.stats.graphs == 0 and compiled.stats.eager_calls == 2


def test_no_gradient_calls_run_eagerly(frames):
    compiled = CompiledForceField(tiny_model("schnet"), backend="aot_eager")
    with torch.no_grad():
        out = compiled(batches(frames)[0], create_graph=False)
    assert set(out) == {"energy", "forces"} and compiled.stats.graphs == 0
    assert compiled.stats.eager_reasons == {"no gradient": 1}


@pytest.mark.parametrize("key", list(TINY))
def test_inference_calls_run_compiled_when_asked(key, frames):
    """``inference=True`` (``piwsl md --compile``): calls without a gradient run one compiled
    forward graph for every batch size, energies and forces equal to the eager model's; a lone
    structure still runs eagerly."""
    eager = tiny_model(key).eval()
    compiled = CompiledForceField(copy.deepcopy(eager), backend="aot_eager", inference=True)
    data = batches(frames)
    with torch.no_grad():
        for batch in data:
            got = compiled(batch, create_graph=False)
            expected = eager(batch, create_graph=False)
            torch.testing.assert_close(got["energy"], expected["energy"], rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(got["forces"], expected["forces"], rtol=1e-4, atol=1e-5)
    assert compiled.stats.graphs == 1 and compiled.stats.compiled_calls == len(data) - 1
    assert compiled.stats.eager_reasons == {"fewer than 2 structures, atoms or edges": 1}


def test_inductor_compiled_steps_equal_eager(frames):
    """The real code path: inductor-generated kernels, forward and compiled backward.

    Inductor specialises a few size ranges (a small matrix product is decomposed below about 30
    atoms): batches of 36, 25, 28, 16 and 36 atoms compile twice, not at every new size.
    """
    eager = tiny_model("schnet")
    compiled = CompiledForceField(copy.deepcopy(eager), backend="inductor")
    data = batches(frames)
    data = [data[0], data[1], data[3], data[4], data[0]]
    expected = train_steps(eager, data, physics=False)
    got = train_steps(compiled, data, physics=False)
    assert got == pytest.approx(expected, rel=1e-5)
    for a, b in zip(eager.parameters(), compiled.model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert compiled.stats.graphs == 1 and compiled.stats.recompiles <= 1
    assert compiled.stats.compiled_calls == 5 and compiled.stats.compile_time_s > 0


def test_train_with_compile_option(tmp_path):
    """``training.compile`` end to end: Lightning steps through the compiled wrapper, the run
    reports what was compiled, checkpoints hold the plain model."""
    from test_training import tiny_config, write_tiny_extxyz

    from piwsl.config import config_from_dict
    from piwsl.models import load_model
    from piwsl.training import train

    data = write_tiny_extxyz(tmp_path / "tiny.xyz")
    overrides = {"compile": "aot_eager", "max_epochs": 2}
    cfg = config_from_dict(
        tiny_config(
            data,
            tmp_path / "run",
            model={"hparams": {"features": 8, "interactions": 1, "n_rbf": 6}},
            training=overrides,
            physics={"taylor_weight": 1.2, "spatial_weight": 0.01, "second_order": True},
        )
    )
    result = train(cfg)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    stats = summary["compile"]
    assert stats["graphs"] == 1 and stats["compiled_calls"] >= 2
    assert stats["recompiles"] == 0 and stats["compile_time_s"] > 0
    model = load_model(result.best_model)
    assert sorted(k for k, _ in model.named_parameters())[0].startswith("energy_model.")
