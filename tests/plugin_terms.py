"""A loss term defined outside piwsl (tests/test_objective.py registers and trains with it)."""

from __future__ import annotations

import torch

from piwsl.objective import Needs, Term, register_term


@register_term("energy_l1")
class EnergyL1(Term):
    """Mean absolute error of the per-atom energies of energy-labelled structures, eV/atom."""

    def __init__(self, weight: float = 1.0, scale: float = 1.0) -> None:
        super().__init__(weight)
        self.scale = float(scale)

    def needs(self) -> Needs:
        return Needs()

    def count(self, batch) -> torch.Tensor:
        return batch.energy_mask.sum()

    def __call__(self, out, batch) -> torch.Tensor:
        mask = batch.energy_mask
        if not bool(mask.any()):
            return out.energy["A"].new_zeros(())
        err = (out.energy["A"][mask] - batch.energy[mask]) / batch.n_atoms[mask]
        return self.scale * err.abs().mean()


class ForcesL1(Term):
    """Mean absolute force-component error, eV/Å; not registered here: the entry-point test
    registers it (``piwsl.terms`` group, ``plugin_terms:ForcesL1``)."""

    def needs(self) -> Needs:
        return Needs(forces_at=frozenset({"A"}))

    def active(self, batch) -> bool:
        return self.weight > 0 and bool(batch.forces_mask.any())

    def __call__(self, out, batch) -> torch.Tensor:
        mask = batch.atom_forces_mask
        return (out.forces["A"][mask] - batch.forces[mask]).abs().mean()
