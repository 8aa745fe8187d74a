"""PaiNN (Schütt, Unke & Gastegger, ICML 2021): polarizable atom interaction neural network.

Each atom carries scalar features ``s`` [N, F] and vector features ``v`` [N, 3, F] (vectors along
dim 1, so that ``nn.Linear`` mixes feature channels without touching the spatial axis and the
model stays rotation-equivariant). An interaction is a *message* block (continuous filters on a
Bessel radial basis times a cosine cutoff, so that neighbour-list "skin" edges beyond the cutoff
contribute exactly zero) followed by an *update* block (per-atom scalar/vector mixing through
norms and scalar products). Per-atom energies come from an MLP on ``s``.

Two force heads, chosen with ``forces=``:

- ``"conservative"`` (default): energies only; :class:`~piwsl.models.forces.ForceField` takes
  F = −∂E/∂R by autograd.
- ``"direct"``: two gated equivariant blocks map (s, v) to one vector per atom, the force [N, 3]
  (eV/Å, before the energy scale); the energy head is kept for energy labels.

Registered as ``"painn"`` (``forces`` hyper-parameter) and as the aliases ``"painn_conservative"``
and ``"painn_direct"``.
"""

from __future__ import annotations

import torch
from torch import nn

from piwsl.data.batch import Batch, edge_vectors, scatter_sum
from piwsl.errors import ConfigError
from piwsl.models.base import EnergyModel
from piwsl.models.layers import BesselRBF, CosineCutoff, safe_norm
from piwsl.models.registry import register_model
from piwsl.registry import suggest

FORCE_HEADS = ("conservative", "direct")


class PaiNNMessage(nn.Module):
    """Message block (paper eqs. 7-8).

    ``Δs_i = Σ_j φ_s(s_j) ∘ W_s(r_ij)``,
    ``Δv_i = Σ_j v_j ∘ φ_vv(s_j) ∘ W_vv(r_ij) + Σ_j φ_vs(s_j) ∘ W_vs(r_ij) r̂_ij``,
    with the filters W multiplied by the cosine cutoff.
    """

    def __init__(self, features: int, n_rbf: int) -> None:
        super().__init__()
        self.features = features
        self.phi = nn.Sequential(
            nn.Linear(features, features), nn.SiLU(), nn.Linear(features, 3 * features)
        )
        self.filter = nn.Linear(n_rbf, 3 * features)

    def forward(
        self,
        s: torch.Tensor,
        v: torch.Tensor | None,
        rbf: torch.Tensor,
        fcut: torch.Tensor,
        unit: torch.Tensor,
        i: torch.Tensor,
        j: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = s.shape[0]
        x = self.phi(s)[j] * (self.filter(rbf) * fcut.unsqueeze(-1))  # [E, 3F]
        ds, dvv, dvs = torch.split(x, self.features, dim=-1)
        dv = unit.unsqueeze(-1) * dvs.unsqueeze(1)  # [E, 3, F]
        if v is None:  # first interaction: v = 0, so the v_j term vanishes
            return s + scatter_sum(ds, i, n), scatter_sum(dv, i, n)
        dv = dv + v[j] * dvv.unsqueeze(1)
        return s + scatter_sum(ds, i, n), v + scatter_sum(dv, i, n)


class PaiNNUpdate(nn.Module):
    """Update block (paper eqs. 9-10).

    ``Δv_i = a_vv(s_i, ‖V v_i‖) ∘ U v_i``,
    ``Δs_i = a_sv(s_i, ‖V v_i‖) ∘ ⟨U v_i, V v_i⟩ + a_ss(s_i, ‖V v_i‖)``.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.U = nn.Linear(features, features, bias=False)
        self.V = nn.Linear(features, features, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * features, features), nn.SiLU(), nn.Linear(features, 3 * features)
        )

    def forward(self, s: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Uv, Vv = self.U(v), self.V(v)  # [N, 3, F]
        a = self.mlp(torch.cat([s, safe_norm(Vv, dim=1)], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, self.features, dim=-1)
        dot = (Uv * Vv).sum(dim=1)  # [N, F]
        return s + a_sv * dot + a_ss, v + a_vv.unsqueeze(1) * Uv


class GatedEquivariantBlock(nn.Module):
    """Gated equivariant block (paper fig. 3): (s, v) → (s', v') with v' = gate(s, ‖W₂v‖) ∘ W₁v."""

    def __init__(self, features_in: int, features_out: int, hidden: int, activation: bool) -> None:
        super().__init__()
        self.features_out = features_out
        self.mix = nn.Linear(features_in, 2 * features_out, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(features_in + features_out, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * features_out),
        )
        self.activation = nn.SiLU() if activation else nn.Identity()

    def forward(self, s: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        va, vb = torch.split(self.mix(v), self.features_out, dim=-1)
        out = self.mlp(torch.cat([s, safe_norm(vb, dim=1)], dim=-1))
        s_out, gate = torch.split(out, self.features_out, dim=-1)
        return self.activation(s_out), gate.unsqueeze(1) * va


class PaiNN(EnergyModel):
    """PaiNN energy model; ``forces="direct"`` adds an equivariant force head.

    Args:
        elements: atomic numbers the model knows.
        cutoff: radial cutoff (Å).
        features: width F of the scalar and vector features.
        interactions: number of message + update blocks.
        n_rbf: number of Bessel radial basis functions.
        forces: ``"conservative"`` (F = −∂E/∂R) or ``"direct"`` (gated equivariant head).
    """

    def __init__(
        self,
        elements: list[int],
        cutoff: float = 5.0,
        features: int = 128,
        interactions: int = 3,
        n_rbf: int = 20,
        forces: str = "conservative",
    ) -> None:
        super().__init__(elements, cutoff)
        if forces not in FORCE_HEADS:
            raise ConfigError(
                f"unknown PaiNN force head forces={forces!r}{suggest(forces, FORCE_HEADS)}"
            )
        if features < 2 or interactions < 1 or n_rbf < 1:
            raise ConfigError(
                "PaiNN needs features >= 2, interactions >= 1, n_rbf >= 1; got "
                f"features={features}, interactions={interactions}, n_rbf={n_rbf}"
            )
        self.features = features
        self.direct_forces = forces == "direct"  # per instance: the class default is False
        self.embedding = nn.Embedding(self.n_species, features)
        self.rbf = BesselRBF(n_rbf, cutoff)
        self.fcut = CosineCutoff(cutoff)
        self.messages = nn.ModuleList(PaiNNMessage(features, n_rbf) for _ in range(interactions))
        self.updates = nn.ModuleList(PaiNNUpdate(features) for _ in range(interactions))
        hidden = max(features // 2, 1)
        self.energy_head = nn.Sequential(
            nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )
        self.force_head: nn.ModuleList | None = None
        if self.direct_forces:
            self.force_head = nn.ModuleList(
                [
                    GatedEquivariantBlock(features, hidden, hidden, activation=True),
                    GatedEquivariantBlock(hidden, 1, hidden, activation=False),
                ]
            )

    def atomic_outputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        i, j = batch.edge_index
        vec = edge_vectors(batch)  # r_j - r_i (+ shift), [E, 3]
        r = safe_norm(vec)
        unit = vec / r.unsqueeze(-1)
        rbf, fcut = self.rbf(r), self.fcut(r)
        s = self.embedding(self.species(batch.numbers))
        v: torch.Tensor | None = None  # vector features start at zero
        for message, update in zip(self.messages, self.updates, strict=True):
            s, v = message(s, v, rbf, fcut, unit, i, j)
            s, v = update(s, v)
        e_atom = self.energy_head(s).squeeze(-1)
        if self.force_head is None:
            return e_atom, None
        for block in self.force_head:
            s, v = block(s, v)
        return e_atom, v[:, :, 0]


@register_model("painn")
def build_painn(**hparams) -> PaiNN:
    return PaiNN(**hparams)


def _alias(head: str):
    def build(**hparams) -> PaiNN:
        forces = hparams.pop("forces", head)
        if forces != head:
            raise ConfigError(
                f"model 'painn_{head}' has forces={head!r}, got forces={forces!r}; "
                f"use model 'painn' with forces={forces!r}"
            )
        return PaiNN(forces=head, **hparams)

    return build


register_model("painn_conservative")(_alias("conservative"))
register_model("painn_direct")(_alias("direct"))
