"""The objective: named, weighted loss terms (supervised energy and forces, physics terms).

``Objective(model, batch)`` returns an :class:`ObjectiveResult` holding the total loss, the model
output at the training structures, and every term raw and weighted, for logging. Supervised terms
are masked to the structures that carry that label; a term with weight 0 costs nothing (energy-only
training computes no forces unless a physics term needs them).

Loss units: energies enter as eV per atom, forces as eV/Å (mean squared errors); the physics terms
(``taylor``, ``spatial``, ``taylor_two_point``) are mean squared residuals of total energies in
``PhysicsConfig.weight_energy_unit``² (kcal²/mol² by default), see
:class:`piwsl.physics.PhysicsConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from piwsl.data.batch import Batch


@dataclass
class ObjectiveResult:
    total: torch.Tensor
    output: dict[str, torch.Tensor]
    raw: dict[str, torch.Tensor] = field(default_factory=dict)
    weighted: dict[str, torch.Tensor] = field(default_factory=dict)


def energy_mse(
    output: dict[str, torch.Tensor], batch: Batch, unit: float = 1.0, per_atom: bool = True
) -> torch.Tensor:
    """Mean over structures with an energy of ((E − E_ref)[/N_atoms] / unit)².

    Defaults: per-atom energies in eV (eV²/atom²). ``unit`` is the size of the loss's energy unit
    in eV (e.g. :data:`piwsl.units.KCAL_MOL`).
    """
    # masked by torch.where, not by indexing: nothing is read back from the device
    mask = batch.energy_mask
    diff = torch.where(mask, output["energy"] - batch.energy, 0.0) / unit
    if per_atom:
        diff = diff / batch.n_atoms
    return (diff**2).sum() / mask.sum().clamp_min(1)


def forces_mse(output: dict[str, torch.Tensor], batch: Batch, unit: float = 1.0) -> torch.Tensor:
    """Mean over force components of atoms whose structure has forces of ((F − F_ref)/unit)².

    Default (eV/Å)²; ``unit`` is the energy unit in eV (forces in unit/Å).
    """
    mask = batch.atom_forces_mask.unsqueeze(1)
    diff = torch.where(mask, output["forces"] - batch.forces, 0.0) / unit
    return (diff**2).sum() / (3 * mask.sum()).clamp_min(1)


class Objective:
    """w_E·ℓ_E + w_F·ℓ_F (+ physics terms from :func:`piwsl.physics.build_physics`).

    With physics terms, the model is evaluated once, fused over A and the displaced copies; the
    supervised terms use the A part of that output (no separate supervised forward pass).
    """

    def __init__(
        self,
        energy_weight: float = 1.0,
        force_weight: float = 10.0,
        physics=None,
        energy_unit: str = "eV",
        per_atom_energy: bool = True,
    ):
        from piwsl.units import energy_factor

        self.energy_weight = float(energy_weight)
        self.force_weight = float(force_weight)
        self.physics = physics  # a piwsl.physics.PhysicsTerms, or None
        self.unit = energy_factor(energy_unit)
        self.per_atom_energy = per_atom_energy

    def energy_loss(self, output: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The supervised energy term in this objective's units (see the module docstring)."""
        return energy_mse(output, batch, self.unit, self.per_atom_energy)

    def forces_loss(self, output: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The supervised force term in this objective's units."""
        return forces_mse(output, batch, self.unit)

    def needs_forces(self, batch: Batch) -> bool:
        return self.force_weight > 0 and batch.has_forces

    def __call__(self, model, batch: Batch) -> ObjectiveResult:
        need_forces = self.needs_forces(batch)
        physics_raw: dict[str, torch.Tensor] = {}
        physics_weighted: dict[str, torch.Tensor] = {}
        if self.physics is not None and self.physics.enabled:
            result = self.physics(model, batch, need_forces)
            output, physics_raw, physics_weighted = result.output, result.raw, result.weighted
        else:
            output = model(batch, compute_forces=need_forces)
        raw: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}
        if self.energy_weight > 0:
            raw["energy"] = self.energy_loss(output, batch)
            weighted["energy"] = self.energy_weight * raw["energy"]
        if need_forces:
            raw["forces"] = self.forces_loss(output, batch)
            weighted["forces"] = self.force_weight * raw["forces"]
        raw.update(physics_raw)
        weighted.update(physics_weighted)
        total = sum(weighted.values(), output["energy"].new_zeros(()))
        return ObjectiveResult(total=total, output=output, raw=raw, weighted=weighted)
