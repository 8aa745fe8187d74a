"""Δ-learning on top of a prior: physics of the priors and of the sum, residual targets, model
files that carry the prior, clear errors for a missing or different prior, the on-disk cache."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from test_training import tiny_config, write_tiny_extxyz

from piwsl.calculator import PiwslCalculator
from piwsl.config import config_from_dict, load_config
from piwsl.data import Frame, frames_to_batch, read_frames
from piwsl.errors import ConfigError, PriorError
from piwsl.models import build_model, load_model, save_model
from piwsl.priors import make_prior, prior_values
from piwsl.priors.base import Prior
from piwsl.priors.cache import CACHE_FOLDER, cache_path

torch.set_num_threads(1)

#: ZBL reaching into bonded distances, so that equilibrium molecules feel it
WIDE_ZBL = {"inner": 0.6, "outer": 1.2}


@pytest.fixture(autouse=True)
def private_user_cache(tmp_path, monkeypatch) -> Path:
    """Keep the tests' prior caches out of the real ~/.cache."""
    home = tmp_path / "xdg_cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home / "piwsl" / "priors"


def compressed_ethanol(seed: int = 0, squeeze: float = 0.75) -> Atoms:
    """Ethanol shrunk to ``squeeze`` of its size: pairs inside, across and beyond the switch."""
    atoms = molecule("CH3CH2OH")
    atoms.positions *= squeeze
    atoms.rattle(0.03, seed=seed)
    return atoms


def numerical_forces(energy, positions: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """−∂E/∂R by central differences of ``energy(positions)``."""
    out = np.zeros_like(positions)
    for a in range(positions.shape[0]):
        for c in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[a, c] += h
            minus[a, c] -= h
            out[a, c] = -(energy(plus) - energy(minus)) / (2 * h)
    return out


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("schnet", elements=[1, 6, 8], cutoff=3.0, features=8, n_rbf=8)
    model.energy_model.set_reference({1: -13.6, 6: -1029.5, 8: -2041.3}, shift=0.1, scale=2.0)
    return model.double().eval()


def learned_part(model, atoms: Atoms) -> tuple[float, np.ndarray]:
    batch = frames_to_batch([Frame.from_atoms(atoms)], model.cutoff, dtype=torch.float64)
    out = model(batch)
    return float(out["energy"][0]), out["forces"].detach().numpy()


# ------------------------------------------------------------------------------------ physics
@pytest.mark.parametrize("periodic", [False, True])
def test_zbl_forces_are_minus_the_energy_gradient(periodic):
    atoms = compressed_ethanol()
    if periodic:
        atoms.set_cell([[3.2, 0.0, 0.0], [0.4, 3.0, 0.0], [0.0, 0.3, 3.4]])
        atoms.pbc = True
    prior = make_prior("zbl", settings=WIDE_ZBL)
    frame = Frame.from_atoms(atoms)
    energy, forces = prior.compute_one(frame)
    assert energy > 0 and np.abs(forces).max() > 0.1  # the test exercises the repulsion

    def e_of(pos: np.ndarray) -> float:
        moved = Frame(numbers=frame.numbers, positions=pos, cell=frame.cell, pbc=frame.pbc)
        return prior.compute_one(moved)[0]

    reference = numerical_forces(e_of, frame.positions, h=1e-5)
    np.testing.assert_allclose(forces, reference, atol=2e-6 * max(1.0, np.abs(forces).max()))
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-9)  # Newton's third law


def test_zbl_is_short_ranged_and_continuous():
    prior = make_prior("zbl")  # defaults: switched off beyond 0.8 × covalent-radius sum

    def pair(r: float) -> Frame:
        return Frame(numbers=[6, 1], positions=[[0, 0, 0], [r, 0, 0]])

    r_out = 0.8 * (0.76 + 0.31)
    assert prior.compute_one(pair(r_out + 1e-3))[0] == 0.0
    assert prior.compute_one(pair(r_out - 1e-2))[0] > 0.0
    energies = [prior.compute_one(pair(r))[0] for r in np.linspace(0.3, 1.0, 200)]
    assert np.all(np.diff(energies) <= 1e-12)  # purely repulsive, monotone in r
    # the bare Coulomb limit at very short range: E → k Z1 Z2 / r (φ → 1)
    assert prior.compute_one(pair(1e-4))[0] == pytest.approx(14.399645 * 6 / 1e-4, rel=1e-2)


def test_sum_model_forces_match_finite_differences_of_its_energy(tmp_path):
    model = tiny_model()
    prior = make_prior("zbl", settings=WIDE_ZBL)
    model.prior_spec = prior.spec()
    path = tmp_path / "delta.pt"
    save_model(model, path)
    calc = PiwslCalculator(path)
    assert calc.prior is None and len(calc.model.priors) == 1  # ZBL runs inside the model
    atoms = compressed_ethanol(squeeze=0.9)
    atoms.calc = calc
    forces = atoms.get_forces()

    def e_of(pos: np.ndarray) -> float:
        atoms.positions = pos
        return atoms.get_potential_energy()

    start = atoms.positions.copy()
    reference = numerical_forces(e_of, start)
    atoms.positions = start
    np.testing.assert_allclose(forces, reference, atol=1e-6)
    # and the sum is the sum: prior + learned part
    e_model, f_model = learned_part(model, atoms)
    e_prior, f_prior = prior.compute_one(Frame.from_atoms(atoms))
    assert atoms.get_potential_energy() == pytest.approx(e_model + e_prior, abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), f_model + f_prior, atol=1e-10)
    assert abs(e_prior) > 1e-3  # the prior contributes


# ----------------------------------------------------------------- ZBL inside the model
def zbl_frames() -> list[Frame]:
    """Compressed molecules of different sizes, one of them periodic."""
    frames = [
        Frame.from_atoms(compressed_ethanol(seed=k, squeeze=0.8 + 0.05 * k)) for k in range(3)
    ]
    water = molecule("H2O")
    water.positions *= 0.7
    frames.append(Frame.from_atoms(water))
    box = compressed_ethanol(seed=7)
    box.set_cell([[3.2, 0.0, 0.0], [0.4, 3.0, 0.0], [0.0, 0.3, 3.4]])
    box.pbc = True
    frames.append(Frame.from_atoms(box))
    return frames


def test_torch_zbl_gives_the_energies_and_forces_of_the_old_numpy_code():
    from zbl_numpy_reference import numpy_zbl

    prior = make_prior("zbl", settings=WIDE_ZBL)
    for frame in zbl_frames():
        energy, forces = prior.compute_one(frame)
        old_energy, old_forces = numpy_zbl(frame, **WIDE_ZBL)
        assert old_energy > 1.0  # the repulsion acts
        assert energy == pytest.approx(old_energy, rel=1e-12)
        np.testing.assert_allclose(forces, old_forces, rtol=1e-9, atol=1e-9)


def test_zbl_in_a_batch_equals_each_structure_alone_and_forces_are_gradients():
    from piwsl.models.zbl import ZBLRepulsion

    module = ZBLRepulsion(**WIDE_ZBL)
    frames = zbl_frames()
    cutoff = 3.0
    batch = frames_to_batch(frames, cutoff, dtype=torch.float64)
    together = module(batch)
    assert together.dtype == torch.float64 and together.shape == (len(frames),)
    for k, frame in enumerate(frames):
        alone = module(frames_to_batch([frame], cutoff, dtype=torch.float64))
        assert float(alone[0]) == pytest.approx(float(together[k]), rel=1e-13)
    # inside a force field (here a direct-force PaiNN): the head's forces plus −∂E_ZBL/∂R
    torch.manual_seed(0)
    model = build_model("painn", elements=[1, 6, 8], cutoff=cutoff, features=8, forces="direct")
    model = model.double().eval()
    plain = model(batch)
    model.set_priors([module])
    total = model(batch)
    torch.testing.assert_close(total["energy"] - plain["energy"], together, rtol=1e-12, atol=0)
    zbl_forces = (total["forces"] - plain["forces"]).detach().numpy()
    frame = frames[0]
    n = frame.n_atoms

    def e_of(pos: np.ndarray) -> float:
        moved = Frame(numbers=frame.numbers, positions=pos, cell=frame.cell, pbc=frame.pbc)
        return float(module(frames_to_batch([moved], cutoff, dtype=torch.float64))[0])

    reference = numerical_forces(e_of, frame.positions, h=1e-5)
    np.testing.assert_allclose(zbl_forces[:n], reference, atol=2e-6 * np.abs(reference).max())
    # a float32 model keeps the energies float64
    assert model.float()(batch.to(dtype=torch.float32))["energy"].dtype == torch.float64


def test_zbl_must_fit_inside_the_model_cutoff():
    model = build_model("schnet", elements=[1, 6, 8], cutoff=1.5, features=8)
    from piwsl.priors import attach_prior

    with pytest.raises(ConfigError, match=r"beyond the model cutoff 1\.5 Å"):
        attach_prior(model, make_prior("zbl", settings=WIDE_ZBL).spec())


def test_delta_zbl_run_keeps_its_labels_and_carries_zbl_in_the_model(tmp_path):
    """prior.name=zbl: labels stay whole, E0s and normalisation are fitted to E_ref − E_ZBL, the
    saved model predicts the total, and nothing adds ZBL a second time at inference."""
    from piwsl.training import prepare_data, train
    from piwsl.training.data import reference_statistics, subtract_prior

    path = write_tiny_extxyz(tmp_path / "tiny.xyz", n=10, unlabelled_every=0)
    zbl = {"name": "zbl", "settings": WIDE_ZBL}
    cfg = config_from_dict(
        tiny_config(path, tmp_path / "run", data={"n_val": 2, "n_test": 2}, prior=zbl)
    )
    plain = prepare_data(cfg.data)
    data = prepare_data(cfg.data, prior=cfg.prior)
    assert [f.energy for f in data.train] == [f.energy for f in plain.train]
    assert data.val_reference is None and data.prior.in_model
    residual = subtract_prior(data.train, PriorValuesOf(data.prior, data.train))
    assert (data.shift, data.scale) == pytest.approx(reference_statistics(residual, data.e0s))
    assert data.scale != pytest.approx(plain.scale)  # the RMS of the residual forces
    result = train(
        cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_epochs": 1})})
    )
    model = load_model(result.final_model)
    assert len(model.priors) == 1 and model.prior_spec["name"] == "zbl"
    frame = data.test[0]
    atoms = frame.to_atoms()
    atoms.calc = PiwslCalculator(result.final_model)
    total = float(model(frames_to_batch([frame], model.cutoff))["energy"][0])
    assert atoms.get_potential_energy() == pytest.approx(total, rel=1e-6)
    model.set_priors([])
    learned = float(model(frames_to_batch([frame], model.cutoff))["energy"][0])
    e_zbl = make_prior("zbl", settings=WIDE_ZBL).compute_one(frame)[0]
    assert total - learned == pytest.approx(e_zbl, rel=1e-5) and e_zbl > 0.1


def PriorValuesOf(prior, frames):
    from piwsl.priors import PriorValues

    energies, forces = prior.compute(frames)
    return PriorValues(energies, forces)


def test_gfn2_sum_model_forces_match_finite_differences():
    pytest.importorskip("tblite.interface")
    model = tiny_model()
    model.prior_spec = make_prior("gfn2-xtb").spec()
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    atoms.calc = PiwslCalculator(model)
    forces = atoms.get_forces()
    start = atoms.positions.copy()

    def e_of(pos: np.ndarray) -> float:
        atoms.positions = pos
        return atoms.get_potential_energy()

    reference = numerical_forces(e_of, start, h=1e-3)
    np.testing.assert_allclose(forces, reference, atol=2e-3)  # xTB's SCF convergence sets it


# ----------------------------------------------------------------------- registry and config
def test_prior_names_and_config():
    with pytest.raises(ConfigError, match="did you mean 'gfn2-xtb'"):
        make_prior("gfn2-xtbb")
    with pytest.raises(ConfigError, match="did you mean 'gfn2-xtb'"):
        load_config(None, ["prior.name=gfn2_xtb"])
    with pytest.raises(ConfigError, match=r"prior.nme.*did you mean 'prior.name'"):
        load_config(None, ["prior.nme=zbl"])
    with pytest.raises(ConfigError, match="unknown option of prior 'zbl'; did you mean 'outer'"):
        make_prior("zbl", settings={"outr": 1.0})
    cfg = load_config(None, ["prior.name=gfn2-xtb", "prior.workers=2"])
    assert (cfg.prior.name, cfg.prior.charge, cfg.prior.multiplicity) == ("gfn2-xtb", 0, 1)
    assert load_config(None).prior.name is None
    emt = make_prior("ase:ase.calculators.emt:EMT")
    assert emt.name == "ase:ase.calculators.emt.EMT" and emt.spec()["program"] == "ase"
    water = molecule("H2O")
    water.calc = emt.calculator()
    assert np.isfinite(water.get_potential_energy()) and water.get_forces().shape == (3, 3)


def test_xtb_prior_records_charge_and_spin():
    pytest.importorskip("tblite.interface")
    prior = make_prior("gfn2-xtb", charge=1, multiplicity=2)
    spec = prior.spec()
    assert (spec["charge"], spec["multiplicity"], spec["uhf"]) == (1, 2, 1)
    assert spec["program"] == "tblite" and spec["program_version"] not in ("", "unknown")
    cation = prior.compute([Frame.from_atoms(molecule("H2O"))])[0][0]
    neutral = make_prior("gfn2-xtb").compute([Frame.from_atoms(molecule("H2O"))])[0][0]
    assert cation - neutral > 5.0  # ionisation costs several eV
    with pytest.raises(ConfigError, match=r"prior\.multiplicity"):
        make_prior("gfn2-xtb", settings={"spin": 1})


# ------------------------------------------------------------------------------ data side
def test_training_labels_are_residuals_to_the_prior(tmp_path):
    pytest.importorskip("tblite.interface")
    from piwsl.training import prepare_data
    from piwsl.training.data import reference_statistics

    path = write_tiny_extxyz(tmp_path / "tiny.xyz", n=12, unlabelled_every=4)
    raw = {f.index: f for f in read_frames(str(path))}
    cfg = config_from_dict(
        tiny_config(
            path, tmp_path / "run", data={"n_val": 3, "n_test": 2}, prior={"name": "gfn2-xtb"}
        )
    )
    plain = prepare_data(cfg.data)
    data = prepare_data(cfg.data, prior=cfg.prior)
    gfn2 = make_prior("gfn2-xtb")
    assert data.prior is not None and data.prior.spec() == gfn2.spec()
    for split, frames in (("train", data.train), ("val", data.val)):
        for f in frames:
            ref = raw[f.index]
            assert f.has_energy == ref.has_energy and f.has_forces == ref.has_forces, split
            if not ref.has_energy:
                continue
            e, forces = gfn2.compute([ref])
            assert f.energy == pytest.approx(ref.energy - e[0], abs=1e-9)
            np.testing.assert_allclose(f.forces, ref.forces - forces[0], atol=1e-9)
    for f, ref in zip(data.test, plain.test, strict=True):  # the test set keeps its labels
        assert f.energy == ref.energy
    assert [f.energy for f in data.val_reference] == [f.energy for f in plain.val]
    # E0s, shift and scale are those of the residuals
    shift, scale = reference_statistics(data.train, data.e0s)
    assert (data.shift, data.scale) == pytest.approx((shift, scale))
    assert data.scale != pytest.approx(plain.scale)
    assert any("GFN2-xTB" in line for line in data.coverage)
    # the cache lives next to the data file and holds every labelled frame
    folder = tmp_path / CACHE_FOLDER
    assert [p.name for p in folder.iterdir()] == [cache_path(str(path), gfn2.spec()).name]


def test_model_trained_with_a_prior_runs_as_prior_plus_model(tmp_path):
    pytest.importorskip("tblite.interface")
    from piwsl.training import train

    path = write_tiny_extxyz(tmp_path / "tiny.xyz", n=14, unlabelled_every=0)
    cfg = config_from_dict(
        tiny_config(
            path,
            tmp_path / "run",
            data={"n_val": 3, "n_test": 3},
            prior={"name": "gfn2-xtb"},
            training={"max_epochs": None, "max_steps": 2, "dtype": "float64"},
        )
    )
    result = train(cfg)
    gfn2 = make_prior("gfn2-xtb")
    for path_ in (result.best_model, result.final_model, result.best_checkpoint):
        assert load_model(path_).prior_spec == gfn2.spec()
    state = torch.load(result.final_model, weights_only=False)
    assert state["format_version"] == 2 and state["metadata"]["prior"] == gfn2.spec()

    # the calculator adds the prior: total = GFN2-xTB + learned part
    test_frames = read_frames(str(path))[-3:]  # any frames will do
    model = load_model(result.best_model)
    calc = PiwslCalculator(result.best_model)
    for frame in test_frames:
        atoms = frame.to_atoms()
        atoms.calc = calc
        e_model, f_model = learned_part(model, atoms)
        e_prior, f_prior = gfn2.compute([frame])
        assert atoms.get_potential_energy() == pytest.approx(e_model + e_prior[0], abs=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), f_model + f_prior[0], atol=1e-8)

    # the test metrics are errors of the total prediction against the full labels
    metrics = json.loads(result.test_metrics_path.read_text())
    raw = {f.index: f for f in read_frames(str(path))}
    from piwsl.training import prepare_data

    test = prepare_data(cfg.data).test
    errors = []
    for frame in test:
        atoms = frame.to_atoms()
        atoms.calc = calc
        errors.append(atoms.get_potential_energy() - raw[frame.index].energy)
    assert metrics["energy_mae_meV"] == pytest.approx(1e3 * np.mean(np.abs(errors)), rel=1e-6)
    assert metrics["prior"]["name"] == "gfn2-xtb"


# ---------------------------------------------------------------------------- clear errors
def delta_model_file(tmp_path: Path, spec: dict) -> Path:
    model = tiny_model()
    model.prior_spec = spec
    path = tmp_path / "delta.pt"
    save_model(model, path)
    return path


def test_missing_prior_backend_is_a_clear_error(tmp_path, monkeypatch):
    spec = {
        "name": "gfn2-xtb",
        "method": "GFN2-xTB",
        "program": "tblite",
        "program_version": "0.8.0",
        "charge": 0,
        "multiplicity": 1,
        "uhf": 0,
        "settings": {"accuracy": 1.0, "electronic_temperature": 300.0, "max_iterations": 250},
    }
    path = delta_model_file(tmp_path, spec)
    monkeypatch.setitem(sys.modules, "tblite", None)
    monkeypatch.setitem(sys.modules, "tblite.interface", None)
    pattern = r"trained on top of GFN2-xTB \(tblite 0\.8\.0\).*install tblite"
    with pytest.raises(PriorError, match=pattern) as info:
        PiwslCalculator(path)
    assert str(path) in str(info.value)
    with pytest.raises(PriorError, match=pattern):  # also with the opt-out: it cannot run
        PiwslCalculator(path, allow_prior_mismatch=True)
    from piwsl.evaluation import predict

    with pytest.raises(PriorError, match=pattern):
        predict(load_model(path), [Frame.from_atoms(molecule("H2O"))])


def test_mismatched_prior_spec_is_refused_unless_allowed(tmp_path, caplog):
    spec = make_prior("zbl", settings=WIDE_ZBL).spec()
    older = {**spec, "program_version": "0"}
    path = delta_model_file(tmp_path, older)
    with pytest.raises(PriorError, match=r"program_version: recorded '0', installed '1'") as info:
        PiwslCalculator(path)
    assert "allow_prior_mismatch" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="piwsl.priors.base"):
        calc = PiwslCalculator(path, allow_prior_mismatch=True)
    assert len(calc.model.priors) == 1 and "running anyway" in caplog.text
    # a setting the recorded spec lacks (added later with a default) is a difference too
    lacking = delta_model_file(tmp_path, {**spec, "settings": {"outer": 1.2}})
    with pytest.raises(PriorError, match=r"settings.inner: recorded None, now 0.5"):
        PiwslCalculator(lacking)
    unknown = delta_model_file(tmp_path, {**spec, "name": "zbl-2"})
    with pytest.raises(PriorError, match=r"cannot rebuild.*unknown prior 'zbl-2'"):
        PiwslCalculator(unknown)


def test_evaluate_refuses_a_mismatched_prior_and_scores_the_total(tmp_path, caplog):
    from piwsl.evaluation import evaluate_checkpoint

    spec = make_prior("zbl", settings=WIDE_ZBL).spec()
    path = delta_model_file(tmp_path, spec)
    data = write_tiny_extxyz(tmp_path / "eval.xyz", n=4, unlabelled_every=0)
    metrics, _, _ = evaluate_checkpoint(path, data, out_dir=tmp_path / "eval")
    totals = []
    calc = PiwslCalculator(path)
    for frame in read_frames(str(data)):
        atoms = frame.to_atoms()
        atoms.calc = calc
        totals.append(atoms.get_potential_energy() - frame.energy)
    assert metrics["energy_mae_meV"] == pytest.approx(1e3 * np.mean(np.abs(totals)), rel=1e-9)
    stale = delta_model_file(tmp_path, {**spec, "program_version": "0"})
    with pytest.raises(PriorError):
        evaluate_checkpoint(stale, data, out_dir=tmp_path / "eval2")
    with caplog.at_level(logging.WARNING, logger="piwsl.priors.base"):
        evaluate_checkpoint(stale, data, out_dir=tmp_path / "eval3", allow_prior_mismatch=True)
    assert caplog.text.count("running anyway") == 1  # the prior is built (and checked) once


def test_model_files_without_a_prior_keep_format_1(tmp_path):
    path = tmp_path / "plain.pt"
    save_model(tiny_model(), path)
    assert torch.load(path, weights_only=False)["format_version"] == 1
    assert load_model(path).prior_spec is None
    assert PiwslCalculator(path).prior is None


# ----------------------------------------------------------------------------------- cache
class CountingPrior(Prior):
    """ZBL that counts its calls and can be made to fail after ``fail_after`` frames."""

    name = "counting"
    method = "counting ZBL"

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.inner = make_prior("zbl", settings=WIDE_ZBL)
        self.calls = 0
        self.fail_after = fail_after

    def program_version(self) -> str:
        return "1"

    def settings(self) -> dict:
        return {}

    def compute_one(self, frame: Frame):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # a killed run
        self.calls += 1
        return self.inner.compute_one(frame)


@pytest.fixture
def frames() -> list[Frame]:
    return read_frames("builtin:ethanol_train")[:12]


def test_cache_is_reused(tmp_path, frames, private_user_cache):
    prior = CountingPrior()
    first = prior_values(prior, frames)
    assert (first.n_computed, first.n_cached, prior.calls) == (12, 0, 12)
    assert first.files == [cache_path("builtin:ethanol_train", prior.spec())]
    assert first.files[0].parent == private_user_cache  # packaged data: the user cache
    again = prior_values(prior, frames)
    assert (again.n_computed, again.n_cached, prior.calls) == (0, 12, 12)
    np.testing.assert_array_equal(again.energies, first.energies)  # bit-identical
    for a, b in zip(again.forces, first.forces, strict=True):
        np.testing.assert_array_equal(a, b)
    # another spec is another cache
    other = make_prior("zbl")
    assert prior_values(other, frames[:2]).n_computed == 2


def test_cache_survives_an_interrupted_run(tmp_path, frames):
    with pytest.raises(KeyboardInterrupt):
        prior_values(CountingPrior(fail_after=5), frames, cache_dir=tmp_path)
    path = cache_path("builtin:ethanol_train", CountingPrior().spec(), tmp_path)
    with open(path, "ab") as handle:  # a writer killed mid-line
        handle.write(b'{"k": "abc", "e": 1.2')
    prior = CountingPrior()
    resumed = prior_values(prior, frames, cache_dir=tmp_path)
    assert (resumed.n_cached, resumed.n_computed, prior.calls) == (5, 7, 7)
    assert path.read_bytes().endswith(b"\n")  # the torn line was cut off before appending
    assert len(path.read_text().splitlines()) == 1 + 12
    fresh, _ = CountingPrior().compute(frames)
    np.testing.assert_array_equal(resumed.energies, fresh)


def test_parallel_workers_give_the_serial_values(tmp_path, frames):
    prior = make_prior("zbl", settings=WIDE_ZBL)
    parallel = prior_values(prior, frames, cache_dir=tmp_path / "a", workers=2)
    serial, forces = prior.compute(frames)
    np.testing.assert_array_equal(parallel.energies, serial)
    for a, b in zip(parallel.forces, forces, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cache_location(tmp_path, frames, private_user_cache):
    spec = make_prior("zbl").spec()
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.xyz").write_text("")
    assert cache_path(str(data / "x.xyz"), spec).parent == data / CACHE_FOLDER
    data.chmod(0o555)  # a read-only folder (also for root): the user cache
    try:
        assert cache_path(str(data / "x.xyz"), spec).parent == private_user_cache
    finally:
        data.chmod(0o755)
    assert cache_path(str(data / "x.xyz"), spec, tmp_path / "c").parent == tmp_path / "c"
    assert cache_path("<memory>", spec).parent == private_user_cache


def test_resume_refuses_another_prior(tmp_path):
    from piwsl.training import train

    path = write_tiny_extxyz(tmp_path / "tiny.xyz", n=10, unlabelled_every=0)
    run = tmp_path / "run"
    zbl = {"name": "zbl", "settings": WIDE_ZBL}
    cfg = config_from_dict(
        tiny_config(path, run, data={"n_val": 2}, prior=zbl, training={"max_epochs": 1})
    )
    train(cfg, evaluate=False)
    longer = {"max_epochs": 2}
    changed = tiny_config(path, run, data={"n_val": 2}, training=longer)
    with pytest.raises(
        ConfigError, match=r"belongs to another run: .*prior\.name: 'zbl' there, None now"
    ):
        train(config_from_dict(changed), resume=True)
    # a checkpoint written with another version of the prior's program
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    ckpt["piwsl_model"]["prior"]["program_version"] = "0"
    torch.save(ckpt, last)
    same = tiny_config(path, run, data={"n_val": 2}, prior=zbl, training=longer)
    with pytest.raises(PriorError, match=r"--resume.*recorded '0', installed '1'.*afresh"):
        train(config_from_dict(same), resume=True)
