"""The shipped materials data set (benchmarks/materials_data.py): every frame carries what the
provenance file says, the stress is a symmetric tensor in eV/Å³, and the relaxed reference cells
are relaxed (forces and stress near zero) — the cell-relaxation check compares against them."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from piwsl.config import load_config
from piwsl.data import read_frames

DATASETS = resources.files("piwsl") / "datasets"


@pytest.fixture(scope="module")
def provenance() -> dict:
    return json.loads((DATASETS / "materials_gfn1.provenance.json").read_text())


@pytest.mark.parametrize("split", ["train", "test"])
def test_snapshots_have_energy_forces_and_symmetric_stress(split, provenance):
    frames = read_frames(f"builtin:materials_gfn1_{split}")
    assert len(frames) == provenance[f"n_{split}"]
    for frame in frames:
        assert frame.pbc.all() and abs(np.linalg.det(frame.cell)) > 100.0  # Å³
        assert frame.energy is not None and frame.forces.shape == (len(frame.numbers), 3)
        assert frame.stress.shape == (3, 3)
        np.testing.assert_allclose(frame.stress, frame.stress.T, atol=1e-12)
        # eV/Å and eV/Å³, not Hartree/Bohr or GPa: uncorrelated thermal displacements give forces
        # of a few eV/Å (up to 37 eV/Å on two 900 K rutile frames) and stresses up to ~30 GPa
        assert 0.1 < np.abs(frame.forces).max() < 50.0
        assert 1e-4 < np.abs(frame.stress).max() < 0.3


def test_relaxed_reference_cells_are_relaxed(provenance):
    import ase.io

    path = DATASETS / "materials_gfn1_relaxed.extxyz"
    relaxed = ase.io.read(str(path), ":")
    assert sorted(a.info["material"] for a in relaxed) == sorted(provenance["materials"])
    for atoms in relaxed:
        cellpar = provenance["relaxed_cellpar_A_deg"][atoms.info["material"]]
        np.testing.assert_allclose(atoms.cell.cellpar(), cellpar, atol=1e-3)
        assert np.abs(atoms.arrays["REF_forces"]).max() < 0.01  # eV/Å (relaxed to 0.005)
        assert np.abs(np.asarray(atoms.info["REF_stress"])).max() < 1e-3  # eV/Å³


def test_materials_config_reads_the_shipped_data():
    cfg = load_config("builtin:materials")
    assert cfg.data.train == ["builtin:materials_gfn1_train"]
    assert cfg.data.test == ["builtin:materials_gfn1_test"]
    assert cfg.loss.terms["stress"].weight > 0


def test_materials_config_trains_with_the_benchmark_recipe(monkeypatch):
    """``piwsl train builtin:materials`` uses the schedule benchmarks/materials.py measured (the
    plateau protocol chosen on validation data), not a recipe of its own: every training setting
    the benchmark passes for an E+F+S run on the whole pool (as the config trains) is the config's."""
    import importlib
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    monkeypatch.setattr(sys, "argv", ["materials.py"])
    materials = importlib.import_module("materials")
    args = materials.parse_args()
    args.pool = len(read_frames("builtin:materials_gfn1_train"))
    args.n_train = args.pool - args.n_val  # the config trains on the whole pool
    settings = dict(
        o.split("=", 1) for o in materials.overrides_of("EFS", 0, args) if o.startswith("training.")
    )
    training = load_config("builtin:materials").training
    assert training.scheduler == settings["training.scheduler"] == "plateau"
    assert training.max_epochs is None and settings["training.max_epochs"] == "null"
    for key in (
        "batch_size",
        "max_steps",
        "plateau_patience",
        "early_stopping_patience",
        "val_every_n_epochs",
    ):
        assert getattr(training, key) == int(settings[f"training.{key}"]), key
    for key in ("lr", "plateau_factor", "plateau_threshold", "stop_lr", "ema_decay", "min_lr"):
        assert getattr(training, key) == pytest.approx(float(settings[f"training.{key}"])), key
