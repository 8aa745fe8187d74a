"""Forces and stress: the one wrapper that turns any energy model into a force field.

:class:`ForceField` is what training, evaluation, the physics losses and the calculator call. For a
conservative model it computes F = −∂E/∂R by autograd, keeping the graph (``create_graph``) while
training so that losses on forces can be differentiated; for a direct-force model it returns the
model's own force head.

Stress and virial (``compute_stress=True``, conservative models): every structure s is strained
by a symmetric ε_s [3, 3] applied to positions and cell alike, R → R (1 + ε_s), cell → cell
(1 + ε_s) (rows are vectors), at ε = 0. One backward gives the forces and ∂E/∂ε; then

    virial  W_s = −∂E/∂ε_s                    (eV; for a finite system Σ_i r_i ⊗ F_i)
    stress  σ_s = (1/V_s) ∂E/∂ε_s = −W_s/V_s   (eV/Å³, ASE's sign: positive = tensile)

The stress of a structure that is not periodic in all three directions has no volume and is NaN
(the virial is defined); the gradient never sees that NaN.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from piwsl.data.batch import Batch
from piwsl.models.base import EnergyModel


def strain(batch: Batch) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """(strained batch, positions leaf, displacement leaf ε [S, 3, 3] at zero).

    The strain applied is the symmetric part of ε, to the positions and the cell of each
    structure; gradients w.r.t. the positions leaf are the forces' (the strain is zero).
    """
    positions = batch.positions
    if not positions.requires_grad:
        positions = positions.detach().requires_grad_(True)
    eps = torch.zeros(
        (batch.n_structures, 3, 3), dtype=positions.dtype, device=positions.device
    ).requires_grad_(True)
    sym = 0.5 * (eps + eps.transpose(1, 2))
    strained_positions = positions + torch.einsum("ni,nij->nj", positions, sym[batch.batch])
    cell = batch.cell.to(positions.dtype)
    strained_cell = cell + torch.bmm(cell, sym)
    return replace(batch, positions=strained_positions, cell=strained_cell), positions, eps


def stress_from_virial(virial: torch.Tensor, batch: Batch) -> torch.Tensor:
    """σ = −W/V per structure [S, 3, 3] (eV/Å³); NaN where a structure has no volume."""
    volume = batch.volume.to(virial.dtype)
    has_volume = volume > 0
    safe = torch.where(has_volume, volume, torch.ones_like(volume))
    stress = -virial / safe[:, None, None]
    return torch.where(has_volume[:, None, None], stress, torch.full_like(stress, float("nan")))


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
        compute_stress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``{"energy": [S] eV, "forces": [N, 3] eV/Å}``, with ``compute_stress`` also
        ``"stress"`` [S, 3, 3] (eV/Å³) and ``"virial"`` [S, 3, 3] (eV) (module docstring)."""
        if create_graph is None:
            create_graph = self.training
        if compute_stress:
            return self._with_stress(batch, create_graph)
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

    def _with_stress(self, batch: Batch, create_graph: bool) -> dict[str, torch.Tensor]:
        if self.direct_forces:
            from piwsl.errors import ConfigError

            raise ConfigError(
                f"{type(self.energy_model).__name__} predicts forces directly: its stress would "
                "not be the strain derivative of the energy its forces belong to. Stress needs a "
                "conservative model (e.g. PaiNN with forces: conservative)"
            )
        with torch.enable_grad():
            strained, positions, eps = strain(batch)
            out = self._add_priors(self.energy_model(strained), strained)
            grad_r, grad_eps = torch.autograd.grad(
                out["energy"].sum(),
                (positions, eps),
                create_graph=create_graph,
                retain_graph=create_graph,
            )
        out["forces"] = -grad_r
        out["virial"] = -grad_eps
        out["stress"] = stress_from_virial(out["virial"], batch)
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
