"""Stress and virial: the sign convention against ASE, an analytic periodic potential, the
calculator and a cell relaxation, stress labels in files, and the stress loss term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from piwsl import PiwslCalculator
from piwsl.data import Frame, LabelKeys, frames_to_batch, read_frames
from piwsl.data.batch import concat
from piwsl.errors import ConfigError, DataError
from piwsl.models import ForceField, build_model
from piwsl.objective import EnergyTerm, ForcesTerm, Objective, StressTerm
from piwsl.objective.supervised import stress_mse
from piwsl.testing.analytic import LennardJonesModel
from piwsl.testing.model_contract import strain_fd_stress, strained
from piwsl.units import stress_factor

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
LJ = {"sigma": 2.0, "epsilon": 0.1, "rc": 6.0, "smooth": True}
SHEAR = np.array([[0.01, 0.004, 0.0], [0.004, -0.02, 0.002], [0.0, 0.002, 0.006]])


def ase_lj():
    return LennardJones(**LJ)


def lj_field(training: bool = False) -> ForceField:
    """ASE's Lennard-Jones as a piwsl force field (eval mode: outputs without a graph)."""
    model = ForceField(LennardJonesModel([18], cutoff=LJ["rc"], sigma=LJ["sigma"]))
    return model.train(training)


def argon(reps=(2, 2, 2), a: float = 3.2, seed: int = 1, eps: np.ndarray = SHEAR):
    """A rattled, sheared fcc argon cell (stress with every component non-zero)."""
    atoms = bulk("Ar", "fcc", a=a).repeat(reps)
    atoms.rattle(0.05, seed=seed)
    positions, cell = strained(atoms.positions, atoms.cell.array, eps)
    atoms.set_cell(cell)
    atoms.positions = positions
    return atoms


def test_finite_difference_helper_has_ases_sign():
    """strain_fd_stress of EMT's energy is EMT's own (analytic) stress: the contract suite's
    finite-difference check uses ASE's convention, σ = (1/V) ∂E/∂ε, positive = tensile."""
    atoms = bulk("Cu", "fcc", a=3.7).repeat((2, 2, 1))
    atoms.rattle(0.03, seed=3)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + SHEAR), scale_atoms=True)
    atoms.calc = EMT()
    expected = atoms.get_stress(voigt=False)

    def energy(positions, cell):
        work = atoms.copy()
        work.set_cell(cell)
        work.positions = positions
        work.calc = EMT()
        return work.get_potential_energy()

    fd = strain_fd_stress(energy, atoms.positions, atoms.cell.array, h=1e-5)
    assert np.abs(expected).max() > 1e-3  # a stretched cell (a = 3.7 Å > 3.6 Å): tensile
    np.testing.assert_allclose(fd, expected, atol=2e-8 + 1e-5 * np.abs(expected).max())


def test_lj_model_is_ases_lennard_jones_energy_forces_and_stress():
    atoms = argon()
    atoms.calc = ase_lj()
    out = lj_field()(
        frames_to_batch([Frame.from_atoms(atoms)], 6.0, dtype=torch.float64), compute_stress=True
    )
    assert float(out["energy"][0]) == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(out["forces"].numpy(), atoms.get_forces(), atol=1e-10)
    stress = out["stress"][0].numpy()
    np.testing.assert_allclose(stress, atoms.get_stress(voigt=False), atol=1e-10)
    assert np.abs(stress).min() > 1e-4  # every component tested
    np.testing.assert_allclose(out["virial"][0].numpy(), -stress * atoms.get_volume(), atol=1e-9)


def test_mixed_cell_sizes_batch_equals_single_and_supercell_stress():
    """Cells of 4, 8 and 32 atoms in one batch give each its own stress; a 2×2×2 supercell has
    the stress of its cell (intensive) and 8 × its virial."""
    small = argon((1, 1, 1), seed=2)
    medium = argon((2, 1, 1), seed=4)
    cell = argon((1, 1, 1), seed=5)
    big = cell.repeat((2, 2, 2))
    frames = [Frame.from_atoms(a) for a in (small, medium, big)]
    model = lj_field()
    together = model(frames_to_batch(frames, 6.0, dtype=torch.float64), compute_stress=True)
    for s, frame in enumerate(frames):
        alone = model(frames_to_batch([frame], 6.0, dtype=torch.float64), compute_stress=True)
        torch.testing.assert_close(together["stress"][s], alone["stress"][0], atol=1e-12, rtol=0)
    one = model(
        frames_to_batch([Frame.from_atoms(cell)], 6.0, dtype=torch.float64), compute_stress=True
    )
    torch.testing.assert_close(together["stress"][2], one["stress"][0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(together["virial"][2], 8 * one["virial"][0], atol=1e-10, rtol=1e-10)


def test_calculator_stress_is_voigt_eV_per_A3_and_relaxes_the_cell():
    """PiwslCalculator gives ASE's Voigt stress; FrechetCellFilter relaxes a cell strained by
    +4 % (and sheared) to the lattice constant ASE's own Lennard-Jones relaxes to."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = argon((2, 1, 1), seed=6)
    atoms.calc = PiwslCalculator(lj_field())
    ours = atoms.get_stress()
    atoms.calc = ase_lj()
    np.testing.assert_allclose(ours, atoms.get_stress(), atol=1e-10)
    assert ours.shape == (6,)

    def relaxed_a(calc) -> np.ndarray:
        start = bulk("Ar", "fcc", a=3.3 * 1.04, cubic=True)
        start.set_cell(start.cell.array @ (np.eye(3) + 0.5 * SHEAR), scale_atoms=True)
        start.calc = calc
        BFGS(FrechetCellFilter(start), logfile=None).run(fmax=1e-5, steps=300)
        return start.cell.cellpar()

    ref = relaxed_a(ase_lj())
    got = relaxed_a(PiwslCalculator(lj_field()))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert abs(ref[0] - 3.3 * 1.04) > 0.1  # the relaxation moved the cell


def test_calculator_refuses_stress_where_there_is_none():
    from ase.calculators.calculator import PropertyNotImplementedError

    molecule = bulk("Ar", "fcc", a=3.2).repeat((2, 1, 1))
    molecule.pbc = False
    molecule.calc = PiwslCalculator(lj_field())
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        molecule.get_stress()
    torch.manual_seed(0)
    direct = build_model(
        "painn", elements=[18], cutoff=4.0, features=8, interactions=1, n_rbf=4, forces="direct"
    )
    crystal = argon((1, 1, 1))
    crystal.calc = PiwslCalculator(direct)
    assert np.isfinite(crystal.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError, match="directly"):
        crystal.get_stress()
    batch = frames_to_batch([Frame.from_atoms(crystal)], 4.0)
    with pytest.raises(ConfigError, match="conservative"):
        direct(batch, compute_stress=True)


# ------------------------------------------------------------------------------ labels in files
def write_with_stress(path, value, key: str = "REF_stress", pbc: bool = True) -> None:
    import ase.io

    atoms = argon((1, 1, 1))
    atoms.pbc = pbc
    atoms.info["REF_energy"] = -1.0
    atoms.info[key] = value
    ase.io.write(str(path), [atoms], format="extxyz")


@pytest.mark.parametrize(
    "value",
    [
        np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),  # Voigt xx yy zz yz xz xy
        np.array([1.0, 6.0, 5.0, 6.0, 2.0, 4.0, 5.0, 4.0, 3.0]),  # 9, row by row
        np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]]),
    ],
)
def test_stress_labels_voigt_nine_or_matrix_in_declared_units(tmp_path, value):
    path = tmp_path / "s.extxyz"
    write_with_stress(path, value)
    expected = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    (frame,) = read_frames(path)
    np.testing.assert_allclose(frame.stress, expected)
    (in_gpa,) = read_frames(path, LabelKeys(stress_unit="GPa"))
    np.testing.assert_allclose(in_gpa.stress, expected / 160.21766208, rtol=1e-8)
    # unset: the energy unit per length unit cubed
    (hartree,) = read_frames(path, LabelKeys(energy_unit="Hartree", length_unit="Bohr"))
    np.testing.assert_allclose(hartree.stress, expected * stress_factor(None, "Hartree", "Bohr"))
    assert stress_factor(None, "Hartree", "Bohr") == pytest.approx(183.6315, rel=1e-6)


def test_stress_from_ase_calculator_results_and_ref_key_first(tmp_path):
    import ase.io

    atoms = argon((1, 1, 1))
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, stress=np.arange(1.0, 7.0))
    ase.io.write(str(tmp_path / "a.extxyz"), [atoms])
    (frame,) = read_frames(tmp_path / "a.extxyz")
    np.testing.assert_allclose(full_3x3_to_voigt_6_stress(frame.stress), np.arange(1.0, 7.0))


@pytest.mark.parametrize(
    ("value", "pbc", "message"),
    [
        (np.arange(4.0), True, "4 numbers"),
        (np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]), True, "not symmetric"),
        (np.arange(1.0, 7.0), False, "not periodic"),
    ],
)
def test_bad_stress_labels_name_file_frame_and_key(tmp_path, value, pbc, message):
    path = tmp_path / "bad.extxyz"
    write_with_stress(path, value, pbc=pbc)
    with pytest.raises(DataError, match=message) as info:
        read_frames(path)
    text = str(info.value)
    assert "bad.extxyz" in text and "frame 0" in text and "stress" in text


def test_missing_stress_key_is_an_error(tmp_path):
    path = tmp_path / "s.extxyz"
    write_with_stress(path, np.arange(1.0, 7.0))
    with pytest.raises(DataError, match="absent from every frame"):
        read_frames(path, LabelKeys(stress_key="virial"))


def test_data_units_per_file_declare_the_stress_unit():
    from piwsl.config import DataConfig

    cfg = DataConfig(
        train=["a.extxyz"],
        test=["b.extxyz"],
        stress_unit="GPa",
        units={"b.extxyz": {"stress": "kbar"}},
    )
    assert cfg.stress_unit_for("train", "a.extxyz") == "GPa"
    assert cfg.stress_unit_for("test", "b.extxyz") == "kbar"
    with pytest.raises(ValueError, match="unknown unit 'GPA'"):
        DataConfig(train=["a.extxyz"], stress_unit="GPA")


# ------------------------------------------------------------------------------ the loss term
def labelled_batch():
    """Two crystals with stress labels, one without, and a molecule (no stress possible)."""
    crystals = [argon((1, 1, 1), seed=s) for s in (1, 2, 3)]
    frames = []
    for k, atoms in enumerate(crystals):
        atoms.calc = ase_lj()
        stress = atoms.get_stress(voigt=False) * 1.1 if k < 2 else None
        frames.append(Frame.from_atoms(atoms, index=k))
        frames[-1].energy = atoms.get_potential_energy()
        frames[-1].stress = stress
    molecule = Frame(numbers=[18, 18], positions=[[0, 0, 0], [3.5, 0, 0]], energy=0.0, index=3)
    return frames_to_batch([*frames, molecule], 6.0, dtype=torch.float64), frames


def test_stress_term_is_masked_per_atom_virial_mse():
    batch, frames = labelled_batch()
    model = lj_field(training=True)
    out = model(batch, compute_stress=True)
    expected = []
    for s in (0, 1):
        v_per_atom = frames[s].volume / frames[s].n_atoms
        diff = (out["stress"][s].detach().numpy() - frames[s].stress) * v_per_atom
        expected.append(diff**2)
    assert float(stress_mse(out, batch)) == pytest.approx(float(np.mean(expected)), rel=1e-10)
    term = StressTerm(2.0)
    assert term.active(batch) and int(term.count(batch)) == 18
    result = Objective([EnergyTerm(1.0), StressTerm(2.0)])(model, batch)
    assert float(result.raw["stress"]) == pytest.approx(float(np.mean(expected)), rel=1e-10)
    assert "stress" in result.output
    # the loss reaches the parameters through the strain derivative (double backward)
    grads = torch.autograd.grad(result.weighted["stress"], [model.energy_model.sigma])
    assert float(grads[0].abs()) > 0
    no_stress = frames_to_batch([frames[2]], 6.0, dtype=torch.float64)
    assert not term.active(no_stress)
    assert Objective([EnergyTerm(1.0), ForcesTerm(10.0), term]).plan(no_stress)[1].stress is False


def test_stress_flag_is_a_host_flag_carried_by_select_and_concat():
    from dataclasses import replace

    batch, frames = labelled_batch()
    no_stress = frames_to_batch([frames[2]], 6.0, dtype=torch.float64)
    assert batch.any_stress is True and no_stress.any_stress is False
    # the term decides on the flag, not the mask (a flag that says no wins: no device read)
    assert not StressTerm(1.0).active(replace(batch, any_stress=False))
    assert no_stress.select(torch.tensor([0])).any_stress is False  # absent stays absent
    part = batch.select(torch.tensor([1, 3]))
    assert part.any_stress is None and part.has_stress  # present: read from the mask
    assert not batch.select(torch.tensor([2, 3])).has_stress
    assert concat([no_stress, batch]).any_stress is True
    assert concat([no_stress, no_stress]).any_stress is False
    unknown = concat([no_stress, part])
    assert unknown.any_stress is None and unknown.has_stress


def test_stress_term_with_displaced_copies_reads_stress_at_a():
    from piwsl.objective import TaylorTerm

    batch, _ = labelled_batch()
    model = lj_field()
    plain = Objective([StressTerm(1.0)])(model, batch)
    with_copies = Objective([StressTerm(1.0), TaylorTerm(1.0, second_order=True)])(
        model, batch, step=0
    )
    assert float(with_copies.raw["stress"]) == pytest.approx(float(plain.raw["stress"]), rel=1e-9)


# ------------------------------------------------------------------------------ training
def write_lj_crystals(path, n: int = 24, seed: int = 0) -> None:
    """Rattled, strained fcc argon cells of 4 and 8 atoms with ASE Lennard-Jones labels."""
    import ase.io

    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        eps = np.eye(3) * rng.uniform(-0.03, 0.03) + rng.uniform(-0.01, 0.01, (3, 3))
        atoms = argon((2, 1, 1) if k % 2 else (1, 1, 1), seed=k, eps=0.5 * (eps + eps.T))
        atoms.calc = ase_lj()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.info["REF_stress"] = atoms.get_stress()  # Voigt, eV/Å³
        atoms.calc = None
        images.append(atoms)
    ase.io.write(str(path), images, format="extxyz")


def test_training_on_stress_labels_logs_validates_and_evaluates_stress(tmp_path, caplog):
    from piwsl.config import config_from_dict
    from piwsl.training import train

    write_lj_crystals(tmp_path / "lj.extxyz")
    cfg = {
        "data": {"train": str(tmp_path / "lj.extxyz"), "n_val": 4, "n_test": 4},
        "model": {
            "name": "schnet",
            "cutoff": 4.0,
            "hparams": {"features": 8, "interactions": 1, "n_rbf": 6},
        },
        "loss": {"terms": {"stress": 1.0}},
        "training": {"batch_size": 4, "max_epochs": 2, "num_threads": 1, "lr": 3e-3},
        "output": {"run_dir": str(tmp_path / "run"), "progress_bar": False},
    }
    result = train(config_from_dict(cfg))
    import csv

    with open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert any(r.get("train_stress_raw") for r in rows)
    assert any(r.get("val_stress_mae_meV_per_A3") for r in rows)
    metrics = result.test_metrics
    assert metrics["n_frames_with_stress"] == 4 and metrics["stress_mae_meV_per_A3"] > 0
    # the trained model gives a stress through the calculator
    atoms = argon((1, 1, 1))
    atoms.calc = PiwslCalculator(result.best_model)
    assert np.isfinite(atoms.get_stress()).all()
    # stress labels without a stress term are reported, not silently dropped
    caplog.clear()
    cfg["loss"] = {}
    cfg["training"]["max_epochs"] = 1
    cfg["output"]["run_dir"] = str(tmp_path / "run2")
    train(config_from_dict(cfg), evaluate=False)
    assert "carry stress labels that are not trained on" in caplog.text


def test_stress_stored_in_gpa_but_read_as_eV_per_A3_is_warned_about(tmp_path):
    from piwsl.data.checks import check_read_file

    path = tmp_path / "gpa.extxyz"
    write_with_stress(path, np.array([12.0, 11.0, 13.0, 0.5, 0.2, 0.1]))  # GPa-like numbers
    frames = read_frames(path)
    (message,) = check_read_file(frames, str(path))
    assert "gpa.extxyz" in message and "GPa" in message and "stress_unit" in message
    assert check_read_file(read_frames(path, LabelKeys(stress_unit="GPa")), str(path)) == []
