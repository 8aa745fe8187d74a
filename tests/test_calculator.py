"""The ASE calculator: agreement with the model, finite differences, BFGS, periodic cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces
from ase.optimize import BFGS

import piwsl
from piwsl.calculator import PiwslCalculator
from piwsl.data import Frame, frames_to_batch
from piwsl.errors import UnknownElementError
from piwsl.models import build_model, save_model

torch.set_num_threads(1)

ELEMENTS = [1, 6, 8]
E0S = {1: -13.6, 6: -1029.5, 8: -2041.3}


def tiny_model(dtype: torch.dtype = torch.float64, seed: int = 0, cutoff: float = 3.0):
    torch.manual_seed(seed)
    model = build_model(
        "schnet", elements=ELEMENTS, cutoff=cutoff, features=8, interactions=1, n_rbf=8
    )
    model.energy_model.set_reference(E0S, shift=0.1, scale=5.0)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def ethanol(seed: int = 0) -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def periodic_water(a: float = 2.6) -> Atoms:
    """One water molecule in a small, skewed periodic cell (images within the cutoff)."""
    atoms = molecule("H2O")
    atoms.set_cell([[a, 0.0, 0.0], [0.3, a, 0.0], [0.2, -0.1, a + 0.4]])
    atoms.pbc = True
    atoms.center()
    atoms.rattle(0.02, seed=3)
    return atoms


def direct(model, atoms: Atoms) -> tuple[float, np.ndarray]:
    frame = Frame(
        numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc
    )
    batch = frames_to_batch([frame], model.cutoff, dtype=torch.float64)
    out = model(batch)
    return float(out["energy"].detach()[0]), out["forces"].detach().numpy()


def test_exported_lazily_from_package():
    assert piwsl.PiwslCalculator is PiwslCalculator


def test_direct_force_model_agrees_with_its_own_forward():
    """The calculator runs without a parameter graph; a direct-force head must give the same."""
    torch.manual_seed(0)
    model = (
        build_model(
            "painn",
            elements=ELEMENTS,
            cutoff=3.0,
            features=8,
            interactions=1,
            n_rbf=8,
            forces="direct",
        )
        .to(torch.float64)
        .eval()
    )
    atoms = ethanol()
    atoms.calc = PiwslCalculator(model)
    e_ref, f_ref = direct(model, atoms)
    assert atoms.get_potential_energy() == pytest.approx(e_ref, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), f_ref, atol=1e-12)
    assert np.abs(f_ref).max() > 1e-6


def test_energy_and_forces_agree_with_model():
    model = tiny_model()
    atoms = ethanol()
    atoms.calc = PiwslCalculator(model)
    e_ref, f_ref = direct(model, atoms)
    assert atoms.get_potential_energy() == pytest.approx(e_ref, abs=1e-10)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(e_ref, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), f_ref, atol=1e-12)
    assert np.abs(atoms.get_forces()).max() > 1e-4  # forces are not trivially zero
    # with the network switched off (scale 0) only Σ (E0 + shift) remains, and no force
    model.energy_model.set_reference(E0S, shift=0.1, scale=0.0)
    atoms.calc = PiwslCalculator(model)
    e0_sum = sum(E0S[int(z)] + 0.1 for z in atoms.numbers)
    assert atoms.get_potential_energy() == pytest.approx(e0_sum, abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), 0.0, atol=1e-12)


@pytest.mark.parametrize("make", [ethanol, periodic_water], ids=["molecule", "periodic"])
def test_forces_match_finite_differences(make):
    atoms = make()
    atoms.calc = PiwslCalculator(tiny_model())
    analytic = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.abs(analytic).max() > 5e-3
    # central differences: O(eps²) truncation plus ~1e-16·|E|/eps rounding (|E| ≈ 4000 eV)
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=1e-6)


def test_geometry_optimisation_lowers_energy():
    atoms = ethanol(seed=1)
    atoms.rattle(0.1, seed=7)
    # the untrained model pulls two atoms closer than 0.5 Å: no geometry warning wanted here
    atoms.calc = PiwslCalculator(tiny_model(), min_distance=0.0)
    e_start = atoms.get_potential_energy()
    start = atoms.positions.copy()
    opt = BFGS(atoms, logfile=None)
    opt.run(fmax=1e-6, steps=5)
    assert opt.nsteps == 5
    assert not np.allclose(atoms.positions, start)
    assert atoms.get_potential_energy() < e_start


def test_periodic_energy_is_extensive_and_forces_tile():
    """A 2x2x1 supercell of a periodic cell smaller than the cutoff: E ×4, forces repeated."""
    model = tiny_model()
    atoms = periodic_water()
    assert min(np.linalg.norm(atoms.cell.array, axis=1)) < model.cutoff
    atoms.calc = PiwslCalculator(model)
    e1, f1 = atoms.get_potential_energy(), atoms.get_forces()
    big = atoms.repeat((2, 2, 1))
    big.calc = PiwslCalculator(model)
    assert big.get_potential_energy() == pytest.approx(4 * e1, rel=1e-10)
    np.testing.assert_allclose(big.get_forces(), np.tile(f1, (4, 1)), atol=1e-10)
    # translation invariance under the periodic boundary: shift by a lattice vector
    moved = atoms.copy()
    moved.positions[0] += atoms.cell.array[1]
    moved.calc = PiwslCalculator(model)
    assert moved.get_potential_energy() == pytest.approx(e1, abs=1e-9)


def test_periodic_differs_from_open_boundary():
    model = tiny_model()
    atoms = periodic_water()
    atoms.calc = PiwslCalculator(model)
    open_atoms = atoms.copy()
    open_atoms.pbc = False
    open_atoms.calc = PiwslCalculator(model)
    assert abs(atoms.get_potential_energy() - open_atoms.get_potential_energy()) > 1e-6


@pytest.mark.parametrize("make", [ethanol, periodic_water], ids=["molecule", "periodic"])
def test_neighbour_list_reuse_with_skin_is_exact(make):
    model = tiny_model()
    fresh = PiwslCalculator(model, skin=0.0)
    reuse = PiwslCalculator(model, skin=0.6)
    atoms = make()
    rng = np.random.default_rng(0)
    start = atoms.positions.copy()
    for step in range(4):
        # each atom moves less than skin/2 = 0.3 Å from where the list was built
        atoms.positions = start + rng.uniform(-0.1, 0.1, size=start.shape)
        reuse.calculate(atoms, ["energy", "forces"])
        fresh.calculate(atoms, ["energy", "forces"])
        assert reuse.results["energy"] == pytest.approx(fresh.results["energy"], abs=1e-12)
        np.testing.assert_allclose(reuse.results["forces"], fresh.results["forces"], atol=1e-12)
        assert reuse.n_neighbor_builds == 1, step
    assert fresh.n_neighbor_builds == 4
    atoms.positions = start + 0.5  # a rigid move > skin/2 forces a rebuild
    reuse.calculate(atoms, ["energy", "forces"])
    assert reuse.n_neighbor_builds == 2
    atoms.numbers = atoms.numbers[::-1]  # other elements at the same places: rebuild too
    reuse.calculate(atoms, ["energy", "forces"])
    fresh.calculate(atoms, ["energy", "forces"])
    assert reuse.n_neighbor_builds == 3
    assert reuse.results["energy"] == pytest.approx(fresh.results["energy"], abs=1e-12)


def test_loads_from_model_file(tmp_path):
    model = tiny_model(dtype=torch.float32)
    path = tmp_path / "model.pt"
    save_model(model, path)
    atoms = ethanol()
    atoms.calc = PiwslCalculator(path)
    e_file = atoms.get_potential_energy()
    atoms.calc = PiwslCalculator(model)
    assert e_file == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
    assert atoms.get_forces().dtype == np.float64


def test_unknown_element_raises():
    atoms = molecule("CH3CN")  # nitrogen is not among the model's elements
    atoms.calc = PiwslCalculator(tiny_model())
    with pytest.raises(UnknownElementError, match=r"N \(Z=7\)"):
        atoms.get_potential_energy()


def test_negative_skin_is_rejected():
    with pytest.raises(ValueError, match="skin"):
        PiwslCalculator(tiny_model(), skin=-0.1)


def test_dtype_option_converts_a_copy():
    model = tiny_model(dtype=torch.float32)
    atoms = ethanol()
    atoms.calc = PiwslCalculator(model, dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
    assert atoms.calc.dtype == torch.float64
    e64 = atoms.get_potential_energy()
    atoms.calc = PiwslCalculator(model)
    assert atoms.calc.dtype == torch.float32
    # same weights, so float32 and float64 agree to float32 round-off on ~4000 eV
    assert atoms.get_potential_energy() == pytest.approx(e64, abs=2e-3)
