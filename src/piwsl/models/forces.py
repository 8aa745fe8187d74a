"""Forces: the one wrapper that turns any energy model into a force field.

:class:`ForceField` is what training, evaluation, the physics losses and the calculator call. For a
conservative model it computes F = −∂E/∂R by autograd, keeping the graph (``create_graph``) while
training so that losses on forces can be differentiated; for a direct-force model it returns the
model's own force head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from piwsl.data.batch import Batch
from piwsl.models.base import EnergyModel


def conservative_forces(
    energy: torch.Tensor, positions: torch.Tensor, create_graph: bool
) -> torch.Tensor:
    """F = −∂(Σ E)/∂R; ``create_graph=True`` keeps the graph for losses on forces."""
    (grad,) = torch.autograd.grad(
        energy.sum(), positions, create_graph=create_graph, retain_graph=create_graph
    )
    return -grad


class ForceField(nn.Module):
    """Energy model (+ analytic priors) + forces: ``forward(batch) -> {"energy": [S],
    "forces": [N, 3]}``.

    ``priors``: differentiable, parameter-free potentials (``module(batch) -> E [S]`` float64,
    e.g. :class:`~piwsl.models.zbl.ZBLRepulsion`) added to the learned energy; their forces come
    from autograd (for a direct-force model, added to the force head's). ``create_graph=None``
    (default) keeps the graph while ``self.training``; pass ``True`` to differentiate forces in
    eval mode (tests, gradient checks).
    """

    #: the prior potential this model was trained on top of (Δ-learning), as recorded by
    #: :meth:`piwsl.priors.Prior.spec`; None: the model predicts the whole energy. An analytic
    #: prior (ZBL) is part of the model (:attr:`priors`); an external one (xTB, ASE) is added by
    #: inference from its cache (:mod:`piwsl.priors`).
    prior_spec: dict[str, Any] | None = None

    def __init__(self, energy_model: EnergyModel, priors: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.energy_model = energy_model
        self.priors = nn.ModuleList(priors or [])

    def set_priors(self, priors: list[nn.Module]) -> None:
        """Replace the analytic priors (no parameters, so no weights change)."""
        self.priors = nn.ModuleList(priors)

    # metadata of the contract, forwarded from the energy model
    @property
    def cutoff(self) -> float:
        return self.energy_model.cutoff

    @property
    def elements(self) -> list[int]:
        return self.energy_model.elements

    @property
    def direct_forces(self) -> bool:
        return self.energy_model.direct_forces

    @property
    def hparams(self) -> dict[str, Any]:
        return self.energy_model.hparams

    def forward(
        self,
        batch: Batch,
        compute_forces: bool = True,
        create_graph: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        if create_graph is None:
            create_graph = self.training
        if not compute_forces:
            out = self.energy_model(batch)
            out.pop("forces", None)
            return self._add_priors(out, batch)
        if self.direct_forces and not len(self.priors):
            return self.energy_model(batch)
        with torch.enable_grad():
            positions = batch.positions
            if not positions.requires_grad:
                positions = positions.detach().requires_grad_(True)
                batch = batch.with_positions(positions)
            if self.direct_forces:  # the head's forces plus the priors' gradient forces
                out = self.energy_model(batch)
                prior = self._prior_energy(batch)
                if prior.requires_grad:
                    out["forces"] = out["forces"] + conservative_forces(
                        prior, positions, create_graph
                    ).to(out["forces"].dtype)
                out["energy"] = out["energy"] + prior
            else:
                out = self._add_priors(self.energy_model(batch), batch)
                out["forces"] = conservative_forces(out["energy"], positions, create_graph)
        if not create_graph:
            out = {k: v.detach() for k, v in out.items()}
        return out

    def _prior_energy(self, batch: Batch) -> torch.Tensor:
        energy = torch.zeros(batch.n_structures, dtype=torch.float64, device=batch.ptr.device)
        for prior in self.priors:
            energy = energy + prior(batch)
        return energy

    def _add_priors(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        if len(self.priors):
            out["energy"] = out["energy"] + self._prior_energy(batch)
        return out
