"""Data layer: readers and units, partial labels and masks, ASE databases, E0s, splits, coverage."""

from __future__ import annotations

from importlib import resources

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.units import Bohr

from piwsl.data import (
    Frame,
    LabelKeys,
    fit_e0s,
    frames_to_batch,
    isolated_atom_e0s,
    label_coverage,
    parse_e0s,
    read_frames,
    resolve_e0s,
    split_indices,
)
from piwsl.errors import ConfigError, DataError
from piwsl.units import KCAL_MOL, energy_factor

torch.set_num_threads(1)


def labelled_images(n: int = 4, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        atoms = molecule(["H2O", "CH4", "CH3OH"][k % 3])
        atoms.rattle(0.02, seed=k)
        atoms.info["REF_energy"] = float(rng.normal(-50.0, 5.0))
        atoms.arrays["REF_forces"] = rng.normal(size=(len(atoms), 3))
        images.append(atoms)
    return images


# --- rMD17 -------------------------------------------------------------------------------------


def test_kcal_per_mol_constant():
    assert pytest.approx(0.0433641, rel=1e-6) == KCAL_MOL
    assert energy_factor("kcal/mol") == KCAL_MOL
    assert energy_factor("eV") == 1.0


def test_rmd17_builtin_is_converted_to_eV():
    frames = read_frames("builtin:ethanol_train")
    path = resources.files("piwsl.datasets") / "rmd17_ethanol_train_01.npz"
    raw = np.load(str(path))
    assert len(frames) == raw["coords"].shape[0] == 1000
    for k in (0, 17, 999):
        frame = frames[k]
        np.testing.assert_array_equal(frame.numbers, raw["nuclear_charges"])
        np.testing.assert_allclose(frame.positions, raw["coords"][k])
        assert frame.energy == pytest.approx(raw["energies"][k] * 0.0433641, rel=1e-6)
        np.testing.assert_allclose(frame.forces, raw["forces"][k] * 0.0433641, rtol=1e-6)
        assert frame.index == k and frame.source == "builtin:ethanol_train"
    # sanity: ethanol at PBE/def2-SVP is about −4209 eV, nowhere near the kcal/mol number
    assert -4300 < frames[0].energy < -4100
    assert not frames[0].pbc.any()


def test_mp2cbs_builtin_sets_are_rmd17_positions_with_consistent_high_level_labels():
    import ase.io

    from piwsl.data.readers import resolve_path

    train, test = (
        read_frames("builtin:ethanol_mp2cbs_train"),
        read_frames("builtin:ethanol_mp2cbs_test"),
    )
    pbe_train, pbe_test = read_frames("builtin:ethanol_train"), read_frames("builtin:ethanol_test")
    assert (len(train), len(test)) == (350, 100)
    for frames, pbe in ((train, pbe_train), (test, pbe_test)):
        for k in (0, 57, len(frames) - 1):
            np.testing.assert_allclose(frames[k].positions, pbe[k].positions, atol=1e-8)
            np.testing.assert_array_equal(frames[k].numbers, pbe[k].numbers)
    assert all(f.has_energy and not f.has_forces for f in train)  # energy-only training pool
    assert all(f.has_energy and f.has_forces for f in test)
    # relative energies track PBE/def2-SVP (measured r = 0.88; shuffled frames would give r ≈ 0)
    e_high = np.array([f.energy for f in train])
    e_pbe = np.array([pbe_train[k].energy for k in range(len(train))])
    assert np.corrcoef(e_high, e_pbe)[0, 1] > 0.8
    assert 0.05 < np.std(e_high) < 1.0  # eV: thermal spread of a 9-atom molecule
    # finite-difference forces of an invariant energy: no net force, no net torque (eV/Å, eV)
    for f in test:
        assert np.abs(f.forces.sum(axis=0)).max() < 5e-3
        torque = np.cross(f.positions - f.positions.mean(axis=0), f.forces).sum(axis=0)
        assert np.abs(torque).max() < 5e-3
        assert np.abs(f.forces).max() > 0.5  # real thermal forces, not zeros
    # forces at the two levels are related but not equal (that gap is what fine-tuning closes)
    gap = np.mean([np.abs(f.forces - pbe_test[k].forces).mean() for k, f in enumerate(test)])
    assert 0.02 < gap < 1.0
    # provenance travels with every frame
    info = ase.io.read(resolve_path("builtin:ethanol_mp2cbs_test"), index=0).info
    assert info["REF_method"] == "MP2/CBS(cc-pvdz,cc-pvtz)"
    assert info["REF_forces_method"] == "central finite differences of the energy"


# --- extxyz --------------------------------------------------------------------------------------


def test_extxyz_roundtrip_ref_keys(tmp_path):
    images = labelled_images()
    path = tmp_path / "ref.xyz"
    ase.io.write(path, images, format="extxyz")
    frames = read_frames(path)
    assert len(frames) == len(images)
    for k, (frame, atoms) in enumerate(zip(frames, images, strict=True)):
        assert frame.energy == pytest.approx(atoms.info["REF_energy"], abs=1e-10)
        np.testing.assert_allclose(frame.forces, atoms.arrays["REF_forces"], atol=1e-8)
        np.testing.assert_allclose(frame.positions, atoms.positions, atol=1e-8)
        np.testing.assert_array_equal(frame.numbers, atoms.numbers)
        assert frame.index == k and frame.source == str(path)


def test_extxyz_plain_energy_and_forces_from_single_point_calculator(tmp_path):
    images = []
    for atoms in labelled_images():
        atoms.calc = SinglePointCalculator(
            atoms, energy=atoms.info.pop("REF_energy"), forces=atoms.arrays.pop("REF_forces")
        )
        images.append(atoms)
    expected = [(a.get_potential_energy(), a.get_forces()) for a in images]
    path = tmp_path / "plain.extxyz"
    ase.io.write(path, images)
    frames = read_frames(path)
    for frame, (energy, forces) in zip(frames, expected, strict=True):
        assert frame.energy == pytest.approx(energy)
        np.testing.assert_allclose(frame.forces, forces, atol=1e-8)


def test_ref_keys_win_over_plain_keys(tmp_path):
    atoms = molecule("H2O")
    atoms.info["REF_energy"] = -1.0
    atoms.arrays["REF_forces"] = np.full((3, 3), 0.5)
    atoms.calc = SinglePointCalculator(atoms, energy=-2.0, forces=np.full((3, 3), 0.25))
    ase.io.write(tmp_path / "both.xyz", atoms)
    (frame,) = read_frames(tmp_path / "both.xyz")
    assert frame.energy == -1.0
    np.testing.assert_allclose(frame.forces, 0.5)
    (frame,) = read_frames(
        tmp_path / "both.xyz", LabelKeys(energy_key="energy", forces_key="forces")
    )
    assert frame.energy == -2.0
    np.testing.assert_allclose(frame.forces, 0.25)


def test_custom_keys_and_units(tmp_path):
    images = labelled_images(3)
    for atoms in images:
        atoms.info["dft_E"] = atoms.info.pop("REF_energy")
        atoms.arrays["dft_F"] = atoms.arrays.pop("REF_forces")
    path = tmp_path / "custom.xyz"
    ase.io.write(path, images)
    # default keys find nothing: labels are None, not zero
    assert all(f.energy is None and f.forces is None for f in read_frames(path))
    keys = LabelKeys(energy_key="dft_E", forces_key="dft_F", energy_unit="kcal/mol")
    frames = read_frames(path, keys)
    for frame, atoms in zip(frames, images, strict=True):
        assert frame.energy == pytest.approx(atoms.info["dft_E"] * KCAL_MOL)
        np.testing.assert_allclose(frame.forces, atoms.arrays["dft_F"] * KCAL_MOL, atol=1e-10)
    # Hartree and Bohr: positions × Bohr, forces × Hartree/Bohr
    keys = LabelKeys(
        energy_key="dft_E", forces_key="dft_F", energy_unit="Hartree", length_unit="Bohr"
    )
    frames = read_frames(path, keys)
    hartree = energy_factor("Hartree")
    assert hartree == pytest.approx(27.211386, rel=1e-6)
    for frame, atoms in zip(frames, images, strict=True):
        np.testing.assert_allclose(frame.positions, atoms.positions * Bohr, atol=1e-8)
        assert frame.energy == pytest.approx(atoms.info["dft_E"] * hartree)
        np.testing.assert_allclose(frame.forces, atoms.arrays["dft_F"] * hartree / Bohr, atol=1e-8)


def test_unknown_unit_is_explained(tmp_path):
    ase.io.write(tmp_path / "a.xyz", labelled_images(1))
    with pytest.raises(ValueError, match="did you mean 'kcal/mol'"):
        read_frames(tmp_path / "a.xyz", LabelKeys(energy_unit="kcal/mole"))


def test_periodic_cell_and_fixed_atoms_survive(tmp_path):
    atoms = molecule("CH4", cell=[4.0, 4.5, 5.0], pbc=True)
    atoms.center()
    atoms.set_constraint(FixAtoms(indices=[0, 2]))
    atoms.calc = SinglePointCalculator(atoms, energy=-3.0, forces=np.zeros((5, 3)))
    (frame,) = read_frames(_write(tmp_path / "pbc.xyz", [atoms]))
    np.testing.assert_allclose(frame.cell, np.diag([4.0, 4.5, 5.0]))
    assert frame.pbc.all()
    np.testing.assert_array_equal(frame.fixed, [True, False, True, False, False])
    # and back to ASE
    back = frame.to_atoms()
    assert back.get_potential_energy() == -3.0
    assert back.constraints and list(back.constraints[0].index) == [0, 2]


def _write(path, images):
    ase.io.write(path, images, format="extxyz")
    return path


# --- partial labels ------------------------------------------------------------------------------


def test_partial_labels_are_none_masked_and_nan(tmp_path):
    images = labelled_images(4)
    del images[1].info["REF_energy"]
    del images[2].arrays["REF_forces"]
    del images[3].info["REF_energy"]
    del images[3].arrays["REF_forces"]
    frames = read_frames(
        _write(tmp_path / "partial.xyz", images),
        LabelKeys(energy_key="REF_energy", forces_key="REF_forces"),
    )
    assert [f.has_energy for f in frames] == [True, False, True, False]
    assert [f.has_forces for f in frames] == [True, True, False, False]
    assert frames[1].energy is None and frames[2].forces is None
    batch = frames_to_batch(frames, cutoff=3.0)
    assert batch.energy_mask.tolist() == [True, False, True, False]
    assert batch.forces_mask.tolist() == [True, True, False, False]
    assert torch.isnan(batch.energy[~batch.energy_mask]).all()
    assert torch.isfinite(batch.energy[batch.energy_mask]).all()
    missing = ~batch.atom_forces_mask
    assert int(missing.sum()) == frames[2].n_atoms + frames[3].n_atoms
    assert torch.isnan(batch.forces[missing]).all()
    assert torch.isfinite(batch.forces[~missing]).all()
    assert not bool((batch.forces[missing] == 0).any())  # never zero-filled
    coverage = label_coverage(frames)
    assert (coverage.n_frames, coverage.n_energy, coverage.n_forces) == (4, 2, 2)
    assert (coverage.n_both, coverage.n_none) == (1, 1)
    assert "4 frames" in coverage.summary("train") and "unlabelled 1" in coverage.summary()


# --- ASE databases -------------------------------------------------------------------------------


def test_ase_db_with_calculator_labels(tmp_path):
    images = labelled_images(3)
    path = tmp_path / "calc.db"
    with ase.db.connect(path) as db:
        for atoms in images:
            labelled = atoms.copy()
            labelled.calc = SinglePointCalculator(
                labelled, energy=atoms.info["REF_energy"], forces=atoms.arrays["REF_forces"]
            )
            db.write(labelled)
    frames = read_frames(path)
    assert len(frames) == 3
    for frame, atoms in zip(frames, images, strict=True):
        assert frame.energy == pytest.approx(atoms.info["REF_energy"])
        np.testing.assert_allclose(frame.forces, atoms.arrays["REF_forces"])
        np.testing.assert_allclose(frame.positions, atoms.positions)


def test_ase_db_with_key_value_pairs_and_data(tmp_path):
    """REF_energy as a key-value pair and REF_forces (per atom) in the row's data."""
    images = labelled_images(3)
    path = tmp_path / "kv.db"
    with ase.db.connect(path) as db:
        for atoms in images:
            bare = Atoms(numbers=atoms.numbers, positions=atoms.positions)
            db.write(
                bare,
                key_value_pairs={"REF_energy": atoms.info["REF_energy"]},
                data={"REF_forces": atoms.arrays["REF_forces"]},
            )
    frames = read_frames(path)
    for frame, atoms in zip(frames, images, strict=True):
        assert frame.energy == pytest.approx(atoms.info["REF_energy"])
        assert frame.forces is not None
        np.testing.assert_allclose(frame.forces, atoms.arrays["REF_forces"])


# --- E0s -----------------------------------------------------------------------------------------


def test_e0_fit_recovers_per_element_energies():
    true = {1: -13.6, 6: -1029.5, 8: -2041.3}
    rng = np.random.default_rng(1)
    frames = []
    for _ in range(12):
        counts = {
            1: int(rng.integers(1, 7)),
            6: int(rng.integers(0, 4)),
            8: int(rng.integers(0, 3)),
        }
        numbers = np.concatenate([[z] * c for z, c in counts.items()])
        energy = sum(true[z] * c for z, c in counts.items())
        frames.append(
            Frame(
                numbers=numbers,
                positions=rng.normal(size=(numbers.size, 3)) * 3,
                energy=energy + rng.normal(0, 1e-4),
            )
        )
    frames.append(Frame(numbers=[1, 1], positions=[[0, 0, 0], [0, 0, 0.7]]))  # unlabelled: ignored
    e0s = fit_e0s(frames, elements=[1, 6, 8])
    for z, value in true.items():
        assert e0s[z] == pytest.approx(value, abs=1e-3)
    assert resolve_e0s("fit", frames, [1, 6, 8]) == e0s


def test_e0_fit_single_composition_reproduces_mean_energy():
    frames = read_frames("builtin:ethanol_test")[:20]
    e0s = fit_e0s(frames, elements=[1, 6, 8])
    predicted = sum(e0s[int(z)] for z in frames[0].numbers)
    assert predicted == pytest.approx(np.mean([f.energy for f in frames]), abs=1e-6)


def test_e0_fit_needs_energies():
    frames = [Frame(numbers=[1], positions=[[0, 0, 0]])]
    with pytest.raises(DataError, match="energy"):
        fit_e0s(frames, [1])


def test_isolated_atom_e0s():
    frames = [
        Frame(numbers=[1], positions=[[0, 0, 0]], energy=-13.6),
        Frame(numbers=[8], positions=[[0, 0, 0]], energy=-2041.3),
        Frame(numbers=[8], positions=[[0, 0, 0]], energy=-1.0, cell=np.eye(3) * 5, pbc=True),
        Frame(numbers=[6], positions=[[0, 0, 0]]),  # no energy: skipped
        Frame(numbers=[1, 8], positions=[[0, 0, 0], [0, 0, 1]], energy=-2060.0),
    ]
    assert isolated_atom_e0s(frames) == {1: -13.6, 8: -2041.3}
    assert resolve_e0s("isolated", frames, [1, 8]) == {1: -13.6, 8: -2041.3}
    with pytest.raises(DataError, match=r"\[6\]"):
        resolve_e0s("isolated", frames, [1, 6, 8])


def test_user_e0s_by_symbol_or_number():
    assert parse_e0s({"H": -13.6, 8: -2041.3, "6": -1029.5}) == {1: -13.6, 8: -2041.3, 6: -1029.5}
    assert resolve_e0s({"H": -1.0, "O": -2.0}, [], [1, 8]) == {1: -1.0, 8: -2.0}
    with pytest.raises(ConfigError, match=r"\[8\]"):
        resolve_e0s({"H": -1.0}, [], [1, 8])
    with pytest.raises(ConfigError, match="Xx"):
        parse_e0s({"Xx": 1.0})
    assert resolve_e0s("zero", [], [1, 8]) == {1: 0.0, 8: 0.0}
    with pytest.raises(ConfigError, match="fitted"):
        resolve_e0s("fitted", [], [1])


# --- splits --------------------------------------------------------------------------------------


def test_splits_are_seeded_disjoint_and_sized():
    train, val, test = split_indices(100, 50, 20, 10, seed=3)
    assert (len(train), len(val), len(test)) == (50, 20, 10)
    union = np.concatenate([train, val, test])
    assert len(set(union.tolist())) == 80 and union.min() >= 0 and union.max() < 100
    again = split_indices(100, 50, 20, 10, seed=3)
    for a, b in zip((train, val, test), again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = split_indices(100, 50, 20, 10, seed=4)
    assert not np.array_equal(train, other[0])


def test_splits_by_fraction_and_rest():
    train, val, test = split_indices(200, None, 0.1, 0.25, seed=0)
    assert (len(val), len(test)) == (20, 50)
    assert len(train) == 130  # None: everything that is left
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    train, val, _ = split_indices(10, 0.5, 0.2)
    assert (len(train), len(val)) == (5, 2)


def test_splits_errors():
    with pytest.raises(ConfigError, match="only 10 exist"):
        split_indices(10, 8, 2, 1)
    with pytest.raises(ConfigError, match="empty"):
        split_indices(10, None, 5, 5)
    with pytest.raises(ConfigError, match="n_val"):
        split_indices(10, 5, -1)
    with pytest.raises(ConfigError, match="n_train"):
        split_indices(10, 2.5, 1)
