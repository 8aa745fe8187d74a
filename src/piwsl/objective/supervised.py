"""The supervised terms: energies, forces and stress against the labels, masked to labelled
structures.

Units follow the run's :class:`~piwsl.objective.EnergyConvention`: by default the energy term is
the mean over energy-labelled structures of ((E − E_ref)/N_atoms)² in eV²/atom², the force term
the mean over the force components of force-labelled structures of (F − F_ref)² in (eV/Å)²; the
paper's convention uses total energies in kcal/mol and forces in kcal/mol/Å. The stress term is
the mean over the 9 components of stress-labelled structures of ((σ − σ_ref)·V/N_atoms)², the
stress error as a per-atom virial, in the convention's energy unit (eV²/atom² by default): on the
scale of the per-atom energy error, whatever the cell size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from piwsl.data.batch import Batch
from piwsl.objective.base import Needs, Term, register_term
from piwsl.units import energy_factor

if TYPE_CHECKING:
    from piwsl.objective.config import EnergyConvention
    from piwsl.physics.terms import CopyOutputs


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
    # indices of the labelled atoms built on the host when the batch was collated: a gather,
    # nothing read back from the device
    atoms = batch.labelled_force_atoms
    if atoms.shape[0] == 0:
        return output["forces"].new_zeros(())
    return (((output["forces"][atoms] - batch.forces[atoms]) / unit) ** 2).mean()


class SupervisedTerm(Term):
    """A term against the labels at A, measured in an energy unit (``unit``, eV by default; the
    run's :class:`~piwsl.objective.EnergyConvention` gives it). ``weight`` defaults to the
    class's :attr:`default_weight`."""

    config_options = ()
    #: the weight of ``Term()`` without one
    default_weight: ClassVar[float] = 1.0

    def __init__(self, weight: float | None = None, unit: str = "eV") -> None:
        super().__init__(self.default_weight if weight is None else weight)
        self.unit = energy_factor(unit)

    @classmethod
    def from_config(cls, weight: float, convention: EnergyConvention, **options: Any) -> Term:
        return cls(weight, convention.energy_unit)


@register_term("energy")
class EnergyTerm(SupervisedTerm):
    """MSE of the energies of energy-labelled structures (per atom or total, in ``unit``)."""

    def __init__(
        self, weight: float | None = None, unit: str = "eV", per_atom: bool = True
    ) -> None:
        super().__init__(weight, unit)
        self.per_atom = per_atom

    @classmethod
    def from_config(cls, weight: float, convention: EnergyConvention, **options: Any) -> Term:
        return cls(weight, convention.energy_unit, convention.per_atom_energy)

    def needs(self) -> Needs:
        return Needs()

    def count(self, batch: Batch) -> torch.Tensor:
        return batch.energy_mask.sum()

    def loss(self, output: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The raw value from a plain model output (``{"energy": …}``)."""
        return energy_mse(output, batch, self.unit, self.per_atom)

    def __call__(self, out: CopyOutputs, batch: Batch) -> torch.Tensor:
        return self.loss({"energy": out.energy["A"]}, batch)


@register_term("forces")
class ForcesTerm(SupervisedTerm):
    """MSE of the force components of force-labelled structures (in ``unit``/Å).

    Active only on batches that carry force labels: a batch without them computes no forces.
    """

    default_weight = 10.0

    def needs(self) -> Needs:
        return Needs(forces_at=frozenset({"A"}))

    def active(self, batch: Batch) -> bool:
        return self.weight > 0 and batch.has_forces  # a host flag: no device read

    def count(self, batch: Batch) -> torch.Tensor:
        return 3 * batch.atom_forces_mask.sum()

    def loss(self, output: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The raw value from a plain model output (``{"forces": …}``)."""
        return forces_mse(output, batch, self.unit)

    def __call__(self, out: CopyOutputs, batch: Batch) -> torch.Tensor:
        return self.loss({"forces": out.forces["A"]}, batch)


def stress_mse(output: dict[str, torch.Tensor], batch: Batch, unit: float = 1.0) -> torch.Tensor:
    """Mean over the components of stress-labelled structures of ((σ − σ_ref)·V/N / unit)²
    (default eV²/atom²: the stress error as a per-atom virial)."""
    if not batch.has_stress:
        return output["energy"].new_zeros(())
    # masked by torch.where, as the energy term: nothing is read back from the device
    mask = batch.stress_mask[:, None, None]
    per_atom_volume = (batch.volume / batch.n_atoms).to(batch.stress.dtype)[:, None, None]
    diff = torch.where(mask, output["stress"] - batch.stress, 0.0) * per_atom_volume / unit
    return (diff**2).sum() / (9 * batch.stress_mask.sum()).clamp_min(1)


@register_term("stress")
class StressTerm(SupervisedTerm):
    """MSE of the stress of stress-labelled structures, as a per-atom virial (in ``unit``).

    Active only on batches that carry stress labels (periodic cells; a host flag, no device
    read); needs a conservative model (the stress is the strain derivative of the energy,
    :class:`~piwsl.models.ForceField`).
    """

    def needs(self) -> Needs:
        return Needs(forces_at=frozenset({"A"}), stress=True)

    def active(self, batch: Batch) -> bool:
        return self.weight > 0 and batch.has_stress

    def count(self, batch: Batch) -> torch.Tensor:
        if not batch.has_stress:
            return torch.zeros((), dtype=torch.long)
        return 9 * batch.stress_mask.sum()

    def loss(self, output: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The raw value from a plain model output (``{"stress": …}``)."""
        return stress_mse(output, batch, self.unit)

    def __call__(self, out: CopyOutputs, batch: Batch) -> torch.Tensor:
        return self.loss(out.output_a(), batch)
