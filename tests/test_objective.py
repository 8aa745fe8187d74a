"""The supervised terms: masks and units of the objective."""

from __future__ import annotations

import math

import torch

from piwsl.data import Frame, frames_to_batch
from piwsl.objective import EnergyTerm, ForcesTerm
from piwsl.units import KCAL_MOL


def _batch():
    frames = [
        Frame(numbers=[1, 1], positions=[[0, 0, 0], [0.8, 0, 0]], energy=-1.0, forces=None),
        Frame(numbers=[8, 1, 1], positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
        Frame(
            numbers=[6, 8],
            positions=[[0, 0, 0], [1.13, 0, 0]],
            energy=-2.0,
            forces=[[0.1, 0, 0], [-0.1, 0, 0]],
        ),
    ]
    return frames_to_batch(frames, cutoff=3.0, dtype=torch.float64)


def _output(batch):
    # predictions off by +0.3 eV and +0.2 eV in energy, forces off by 0.05 eV/Å in x
    energy = torch.tensor([-0.7, 123.0, -1.8], dtype=torch.float64)
    forces = torch.zeros_like(batch.positions)
    forces[5:7] = torch.tensor([[0.15, 0, 0], [-0.05, 0, 0]], dtype=torch.float64)
    return {"energy": energy, "forces": forces}


def test_default_units_are_per_atom_ev_and_masked():
    batch = _batch()
    out = _output(batch)
    energy, forces = EnergyTerm(), ForcesTerm()
    # structure 1 has no energy: its (absurd) prediction must not enter
    expected = ((0.3 / 2) ** 2 + (0.2 / 2) ** 2) / 2
    assert math.isclose(float(energy.loss(out, batch)), expected, rel_tol=1e-12)
    # only the last structure carries forces: 6 components, two of them off by 0.05 eV/Å
    assert math.isclose(float(forces.loss(out, batch)), 2 * 0.05**2 / 6, rel_tol=1e-9)
    # validation averages over these counts
    assert int(energy.count(batch)) == 2 and int(forces.count(batch)) == 6


def test_kcal_mol_total_energy_convention():
    batch = _batch()
    out = _output(batch)
    energy = EnergyTerm(unit="kcal/mol", per_atom=False)
    expected = ((0.3 / KCAL_MOL) ** 2 + (0.2 / KCAL_MOL) ** 2) / 2
    assert math.isclose(float(energy.loss(out, batch)), expected, rel_tol=1e-12)
    expected_f = 2 * (0.05 / KCAL_MOL) ** 2 / 6
    assert math.isclose(
        float(ForcesTerm(unit="kcal/mol").loss(out, batch)), expected_f, rel_tol=1e-9
    )
