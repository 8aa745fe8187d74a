"""Parts defined outside piwsl: a loss term, a model backend and a prior (tests/test_objective.py
registers them through a config's plugins list and trains with them)."""

from __future__ import annotations

import numpy as np
import torch

from piwsl.models import register_model
from piwsl.objective import Needs, Term, register_term
from piwsl.priors import Prior, register_prior


@register_model("schnet_small")
def build_schnet_small(**hparams):
    """SchNet with 8 features and one interaction unless told otherwise."""
    from piwsl.models.schnet import SchNet

    return SchNet(**{"features": 8, "interactions": 1, **hparams})


@register_prior("per_atom_constant")
class PerAtomConstant(Prior):
    """E = c × N_atoms (eV), no forces: a baseline as simple as they come."""

    name = "per_atom_constant"
    method = "per-atom constant"
    program = "tests"

    def __init__(self, charge: int = 0, multiplicity: int = 1, settings: dict | None = None):
        super().__init__(charge, multiplicity)
        self.c = float((settings or {}).get("c", -100.0))

    def program_version(self) -> str:
        return "1"

    def settings(self) -> dict:
        return {"c": self.c}

    def compute_one(self, frame):
        return self.c * frame.n_atoms, np.zeros((frame.n_atoms, 3))


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
