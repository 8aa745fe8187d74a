"""Device-correct training: no host synchronisation in the step; CUDA training and MD.

The synchronisation check runs everywhere: on the CPU it counts the operations that would make a
GPU wait (reading a value back: ``.item()``, ``bool(tensor)``, ``int(tensor)``; sizes that depend
on values: boolean indexing, ``nonzero``). The CUDA tests run where a GPU exists and are skipped
elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import tiny_config, write_tiny_extxyz
from torch.utils._python_dispatch import TorchDispatchMode

from piwsl.config import config_from_dict
from piwsl.data import read_frames
from piwsl.data.batch import Graph, collate
from piwsl.models import build_model
from piwsl.models.base import trusted_species
from piwsl.objective import EnergyTerm, ForcesTerm, Objective, SpatialTerm, TaylorTerm
from piwsl.physics import PhysicsConfig

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

aten = torch.ops.aten
#: operations that read a value back to the host, or whose output size depends on values
SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.repeat_interleave.Tensor}


class SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCING:
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def training_batch(device: str = "cpu", n: int = 6):
    frames = read_frames("builtin:ethanol_train")[:n]
    frames[1].forces = None  # mixed labels: masks select, nothing reads them back
    frames[2].energy = None
    graphs = [Graph.from_frame(f, 4.0, 0.2, frame_id=k) for k, f in enumerate(frames)]
    return collate(graphs).to(device=device)


def piwsl_objective(physics: bool = True, anchor_to_labels: bool = False, **copies) -> Objective:
    """Energy 1, forces 10; PITC 1.2 and PISC 0.01 second order; the skin check marked done
    (it runs once per run, on the host)."""
    terms = [EnergyTerm(1.0), ForcesTerm(10.0)]
    if not physics:
        return Objective(terms)
    terms += [
        TaylorTerm(1.2, second_order=True, anchor_to_labels=anchor_to_labels),
        SpatialTerm(0.01, second_order=True),
    ]
    objective = Objective(terms, PhysicsConfig(**copies))
    objective.displacements.verified = True
    return objective


def model_on(name: str, device: str, **hparams):
    torch.manual_seed(0)
    model = build_model(name, elements=[1, 6, 8], cutoff=4.0, **hparams)
    model.energy_model.set_reference({}, shift=-467.7, scale=1.0)
    return model.to(device).train()


@pytest.mark.parametrize(
    ("name", "hparams", "physics"),
    [
        ("schnet", {"features": 8, "interactions": 1, "n_rbf": 6}, {}),
        ("schnet", {"features": 8, "interactions": 1, "n_rbf": 6}, {"anchor_to_labels": True}),
        ("painn", {"features": 8, "interactions": 1, "n_rbf": 6, "forces": "direct"}, {}),
    ],
)
def test_training_step_reads_nothing_back(name, hparams, physics):
    """Objective + physics terms (second order) + backward: no host synchronisation."""
    model = model_on(name, "cpu", **hparams)
    objective = piwsl_objective(**physics)
    batch = training_batch()
    counter = SyncCounter()
    with trusted_species(), counter:
        objective(model, batch).total.backward()
    assert counter.calls == []


def test_a_reduced_physics_fraction_reads_the_subset_size_back():
    """The documented exception: the chosen structures' atoms and edges are counted on the host
    (three reads per step)."""
    model = model_on("schnet", "cpu", features=8, interactions=1, n_rbf=6)
    objective = piwsl_objective(fraction=0.5)
    batch = training_batch()
    counter = SyncCounter()
    with trusted_species(), counter:
        objective(model, batch).total.backward()
    assert counter.calls == ["aten.nonzero.default"] * 3


@cuda
@pytest.mark.parametrize("physics", [False, True])
def test_cuda_training_step_is_sync_free(physics):
    model = model_on("painn", "cuda", features=8, interactions=1, n_rbf=6)
    objective = piwsl_objective(physics)
    batch = training_batch("cuda")
    objective(model, batch).total.backward()  # warm-up (allocator, kernels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with trusted_species():
            loss = objective(model, batch).total
            loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)


@cuda
@pytest.mark.parametrize("compile_mode", [False, "aot_eager"])
def test_cuda_training_and_md(tmp_path, compile_mode):
    """Train on the GPU (float32, PIWSL second order), then run MD with the model there."""
    from piwsl.md.cli import make_calculator
    from piwsl.training import train

    data = write_tiny_extxyz(tmp_path / "tiny.xyz")
    cfg = config_from_dict(
        tiny_config(
            data,
            tmp_path / "run",
            training={"accelerator": "cuda", "devices": 1, "compile": compile_mode},
            physics={"taylor_weight": 1.2, "spatial_weight": 0.01, "second_order": True},
        )
    )
    result = train(cfg)
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert np.isfinite(summary["best_score"])
    if compile_mode:
        assert summary["compile"]["compiled_calls"] > 0
    from ase.io import read
    from ase.md.verlet import VelocityVerlet

    atoms = read(data, index=0)
    atoms.calc = make_calculator(result.best_model, device="cuda")
    VelocityVerlet(atoms, timestep=0.5 * 0.09822694788464063).run(5)  # 0.5 fs
    assert np.isfinite(atoms.get_potential_energy())
