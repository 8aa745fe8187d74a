"""ZBL screened nuclear repulsion as a differentiable, batched torch component of a force field.

For every pair of atoms i, j at distance r (periodic images included)::

    E_ij(r) = k_e Z_i Z_j / r · φ(r / a_ij) · s(r),     a_ij = 0.46850 Å / (Z_i^0.23 + Z_j^0.23)
    φ(x) = 0.18175 e^(−3.19980 x) + 0.50986 e^(−0.94229 x) + 0.28022 e^(−0.40290 x)
           + 0.02817 e^(−0.20162 x)

with k_e = 14.399645 eV·Å (e²/4πε₀) and the universal screening length 0.8854 a₀ (Ziegler,
Biersack, Littmark, *The Stopping and Range of Ions in Solids*, 1985). The switch ``s`` is 1 below
``inner × (R_i + R_j)`` and 0 beyond ``outer × (R_i + R_j)`` (R: ASE's covalent radii), with the
C²-smooth quintic 1 − 10t³ + 15t⁴ − 6t⁵ in between, so the repulsion acts only at short range —
where atoms come closer than in a bond — and energy and forces are continuous. Defaults
``inner=0.5``, ``outer=0.8``: a C–H pair feels it below 0.86 Å (bond 1.09 Å), C–C below 1.22 Å.

:class:`ZBLRepulsion` reads the batch's neighbour list (every ordered pair once, so the energy is
½ Σ over edges), needs no parameters and returns float64 energies per structure; forces come from
the :class:`~piwsl.models.ForceField`'s autograd like the learned part's. The pair range
``outer × (R_i + R_j)`` must lie within the model cutoff (checked when it is built).
"""

from __future__ import annotations

import torch
from ase.data import covalent_radii
from torch import nn

from piwsl.data.batch import Batch, edge_vectors, scatter_sum
from piwsl.errors import ConfigError

#: e²/(4πε₀) in eV·Å.
COULOMB = 14.399645
#: 0.8854 Bohr in Å (the ZBL universal screening length prefactor).
SCREENING = 0.46850
#: (coefficient, exponent) pairs of the universal screening function φ.
PHI = ((0.18175, 3.19980), (0.50986, 0.94229), (0.28022, 0.40290), (0.02817, 0.20162))


def zbl_range(elements: list[int], outer: float) -> float:
    """The largest pair distance (Å) at which ZBL acts among ``elements``."""
    return outer * 2.0 * max(float(covalent_radii[int(z)]) for z in elements)


class ZBLRepulsion(nn.Module):
    """``forward(batch) -> E_ZBL`` per structure, float64 [S] eV (see the module docstring)."""

    def __init__(self, inner: float = 0.5, outer: float = 0.8) -> None:
        super().__init__()
        if not 0 <= inner < outer:
            raise ConfigError(
                f"prior 'zbl': need 0 ≤ inner < outer (fractions of the covalent-radius sum), "
                f"got inner={inner}, outer={outer}"
            )
        self.inner = float(inner)
        self.outer = float(outer)
        radii = torch.as_tensor(covalent_radii, dtype=torch.float64)
        self.register_buffer("radii", radii, persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # ``model.float()`` must not round the radii: the energies are float64 by contract
        kept = self._buffers["radii"]
        super()._apply(fn, recurse)
        self._buffers["radii"] = kept.to(device=self._buffers["radii"].device)
        return self

    def check_cutoff(self, elements: list[int], cutoff: float) -> None:
        """ConfigError if the repulsion reaches beyond ``cutoff`` (Å) for these elements."""
        reach = zbl_range(elements, self.outer)
        if reach > cutoff + 1e-12:
            raise ConfigError(
                f"prior 'zbl' acts up to outer × (R_i + R_j) = {reach:.3f} Å for these "
                f"elements, beyond the model cutoff {cutoff} Å; lower prior.settings.outer or "
                "raise model.cutoff"
            )

    def pair_energy(self, r: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
        """E_ij(r), eV, float64, for arrays of pair distances (Å) and atomic numbers."""
        zi, zj = zi.to(torch.float64), zj.to(torch.float64)
        a = SCREENING / (zi**0.23 + zj**0.23)
        x = r / a
        phi = sum(c * torch.exp(-b * x) for c, b in PHI)
        rcov = self.radii[zi.long()] + self.radii[zj.long()]
        r_in, r_out = self.inner * rcov, self.outer * rcov
        t = ((r - r_in) / (r_out - r_in)).clamp(0.0, 1.0)
        s = 1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t**2)
        return COULOMB * zi * zj / r * phi * s

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.edge_index.shape[1] == 0:
            return torch.zeros(batch.n_structures, dtype=torch.float64, device=batch.ptr.device)
        i, j = batch.edge_index
        zi, zj = batch.numbers[i], batch.numbers[j]
        with torch.no_grad():  # only pairs inside the switch's range cost anything
            reach = self.outer * (self.radii[zi] + self.radii[zj])
            near = edge_vectors(batch).norm(dim=-1).to(torch.float64) < reach
        if not bool(near.any()):
            return torch.zeros(batch.n_structures, dtype=torch.float64, device=batch.ptr.device)
        r = edge_vectors(batch, near).to(torch.float64).norm(dim=-1)
        energy = self.pair_energy(r, zi[near], zj[near])
        return 0.5 * scatter_sum(energy, batch.batch[i[near]], batch.n_structures)
