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
    """Energy model + forces: ``forward(batch) -> {"energy": [S], "forces": [N, 3]}``.

    ``create_graph=None`` (default) keeps the graph while ``self.training``; pass ``True`` to
    differentiate forces in eval mode (tests, gradient checks).
    """

    #: the prior potential this model was trained on top of (Δ-learning), as recorded by
    #: :meth:`piwsl.priors.Prior.spec`; None: the model predicts the whole energy. The model
    #: itself computes the learned part only; inference adds the prior (:mod:`piwsl.priors`).
    prior_spec: dict[str, Any] | None = None

    def __init__(self, energy_model: EnergyModel) -> None:
        super().__init__()
        self.energy_model = energy_model

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
        if self.direct_forces or not compute_forces:
            out = self.energy_model(batch)
            if not compute_forces:
                out.pop("forces", None)
            return out
        with torch.enable_grad():
            positions = batch.positions
            if not positions.requires_grad:
                positions = positions.detach().requires_grad_(True)
                batch = batch.with_positions(positions)
            out = self.energy_model(batch)
            out["forces"] = conservative_forces(out["energy"], positions, create_graph)
        if not create_graph:
            out = {k: v.detach() for k, v in out.items()}
        return out
