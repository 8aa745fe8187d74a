"""SchNet (Schütt et al., J. Chem. Phys. 148, 241722 (2018)): continuous-filter convolutions.

Conservative: energies only; forces come from :class:`~piwsl.models.forces.ForceField`.
"""

from __future__ import annotations

from torch import nn

from piwsl.data.batch import Batch, edge_vectors
from piwsl.models.base import EnergyModel
from piwsl.models.layers import CosineCutoff, GaussianRBF, ShiftedSoftplus, safe_norm
from piwsl.models.registry import register_model


class Interaction(nn.Module):
    """x_i ← x_i + Dense(σ(Dense(Σ_j W(r_ij) ⊙ Dense(x_j))))."""

    def __init__(self, features: int, filters: int, n_rbf: int) -> None:
        super().__init__()
        self.filter_net = nn.Sequential(
            nn.Linear(n_rbf, filters), ShiftedSoftplus(), nn.Linear(filters, filters)
        )
        self.in2f = nn.Linear(features, filters, bias=False)
        self.f2out = nn.Sequential(
            nn.Linear(filters, features), ShiftedSoftplus(), nn.Linear(features, features)
        )

    def forward(self, x, rbf, fcut, i, j):
        W = self.filter_net(rbf) * fcut.unsqueeze(-1)
        messages = self.in2f(x)[j] * W
        aggregated = messages.new_zeros(x.shape[0], W.shape[1]).index_add(0, i, messages)
        return x + self.f2out(aggregated)


class SchNet(EnergyModel):
    direct_forces = False

    def __init__(
        self,
        elements: list[int],
        cutoff: float = 5.0,
        features: int = 64,
        filters: int | None = None,
        interactions: int = 3,
        n_rbf: int = 32,
    ) -> None:
        super().__init__(elements, cutoff)
        filters = filters or features
        self.embedding = nn.Embedding(self.n_species, features)
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.fcut = CosineCutoff(cutoff)
        self.interactions = nn.ModuleList(
            Interaction(features, filters, n_rbf) for _ in range(interactions)
        )
        self.readout = nn.Sequential(
            nn.Linear(features, features // 2), ShiftedSoftplus(), nn.Linear(features // 2, 1)
        )

    def atomic_outputs(self, batch: Batch):
        i, j = batch.edge_index
        r = safe_norm(edge_vectors(batch))
        rbf, fcut = self.rbf(r), self.fcut(r)
        x = self.embedding(self.species(batch.numbers))
        for block in self.interactions:
            x = block(x, rbf, fcut, i, j)
        return self.readout(x).squeeze(-1), None


@register_model("schnet")
def build_schnet(**hparams) -> SchNet:
    return SchNet(**hparams)
