"""Analytic :class:`~piwsl.models.EnergyModel` s for tests of the physics terms.

- :class:`HarmonicModel` (conservative): E = Σ_i ½ k_{Z_i} |r_i|² + Σ_{(i,j)} ¼ κ |r_j − r_i|²
  over the ordered pairs of the (fixed) neighbour list, i.e. E = ½ xᵀHx with a constant Hessian H
  (:meth:`HarmonicModel.hessian`). Energies in eV, k and κ in eV/Å².
- :class:`RotationalModel` (direct forces): the same energy, forces F = −∇E + ω × r_i, a field
  whose Jacobian has the antisymmetric part [ω]× on every atom (ω in eV/Å², a vector), so it is
  conservative only for ω = 0.
- :class:`LennardJonesModel` (conservative, periodic): ASE's smooth Lennard-Jones
  (:class:`ase.calculators.lj.LennardJones` with ``smooth=True``) term for term, an anharmonic pair
  potential with an fcc equilibrium lattice, whose energies, forces and stresses ASE computes
  independently.

All parameters are ``nn.Parameter`` s so that gradients of the losses can be checked.
"""

from __future__ import annotations

import torch
from torch import nn

from piwsl.data.batch import Batch, edge_vectors
from piwsl.models.base import EnergyModel


class HarmonicModel(EnergyModel):
    """E = ½ xᵀHx: harmonic wells at the origin plus springs along the neighbour list."""

    direct_forces = False

    def __init__(
        self,
        elements: list[int],
        cutoff: float = 5.0,
        well: float = 0.5,
        spring: float = 0.3,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(elements, cutoff)
        n = len(self.elements)
        # a different stiffness per element, so the Hessian is not a multiple of the identity
        wells = well * (1.0 + 0.25 * torch.arange(n, dtype=dtype))
        self.well = nn.Parameter(wells)
        self.spring = nn.Parameter(torch.tensor(spring, dtype=dtype))

    def atomic_outputs(self, batch: Batch):
        k = self.well[self.species(batch.numbers)]
        e = 0.5 * k * (batch.positions**2).sum(-1)
        vec = edge_vectors(batch)
        pair = 0.25 * self.spring * (vec**2).sum(-1)
        e = e.index_add(0, batch.edge_index[0], pair.to(e.dtype))
        return e, None

    def analytic_forces(self, batch: Batch) -> torch.Tensor:
        """−∂E/∂R in closed form, [N, 3] (eV/Å)."""
        k = self.well[self.species(batch.numbers)].unsqueeze(1)
        f = -k * batch.positions
        vec = edge_vectors(batch)
        i, j = batch.edge_index
        half = 0.5 * self.spring * vec
        f = f.index_add(0, i, half).index_add(0, j, -half)
        return f

    def hessian(self, batch: Batch, structure: int) -> torch.Tensor:
        """Dense Hessian [3n, 3n] (eV/Å²) of one structure, built from the formula."""
        lo, hi = int(batch.ptr[structure]), int(batch.ptr[structure + 1])
        n = hi - lo
        k = self.well[self.species(batch.numbers[lo:hi])].detach()
        H = torch.zeros(n, n, dtype=k.dtype)
        H += torch.diag(k)
        i, j = batch.edge_index
        inside = (i >= lo) & (i < hi)
        kappa = float(self.spring.detach())
        for a, b in zip((i[inside] - lo).tolist(), (j[inside] - lo).tolist(), strict=True):
            # ¼κ|r_b − r_a|² contributes ½κ to H_aa, H_bb and −½κ to H_ab, H_ba
            if a == b:
                continue  # a periodic self-image: r_b − r_a is a constant
            H[a, a] += 0.5 * kappa
            H[b, b] += 0.5 * kappa
            H[a, b] -= 0.5 * kappa
            H[b, a] -= 0.5 * kappa
        return torch.kron(H, torch.eye(3, dtype=k.dtype))


class RotationalModel(HarmonicModel):
    """Direct forces F = −∇E + ω × r_i: not conservative unless ω = 0."""

    direct_forces = True

    def __init__(
        self,
        elements: list[int],
        cutoff: float = 5.0,
        omega: tuple[float, float, float] = (0.0, 0.0, 0.1),
        **kwargs,
    ) -> None:
        super().__init__(elements, cutoff, **kwargs)
        self.omega = nn.Parameter(torch.tensor(omega, dtype=self.well.dtype))

    def atomic_outputs(self, batch: Batch):
        e, _ = super().atomic_outputs(batch)
        rot = torch.linalg.cross(self.omega.expand_as(batch.positions), batch.positions, dim=-1)
        return e, self.analytic_forces(batch) + rot


class LennardJonesModel(EnergyModel):
    """ASE's smooth Lennard-Jones potential: e_i = ½ Σ_j 4ε[(σ/r)¹² − (σ/r)⁶]·f(r²), with ASE's
    C¹ cutoff f (1 below ``ro``, 0 beyond ``rc = cutoff``); ε in eV, σ in Å."""

    direct_forces = False

    def __init__(
        self,
        elements: list[int],
        cutoff: float = 6.0,
        sigma: float = 2.0,
        epsilon: float = 0.1,
        ro: float | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(elements, cutoff)
        self.ro = 0.66 * cutoff if ro is None else float(ro)  # ASE's default
        self.sigma = nn.Parameter(torch.tensor(sigma, dtype=dtype))
        self.epsilon = nn.Parameter(torch.tensor(epsilon, dtype=dtype))

    def atomic_outputs(self, batch: Batch):
        r2 = (edge_vectors(batch) ** 2).sum(-1)
        rc2, ro2 = self.cutoff**2, self.ro**2
        inside = r2 < rc2
        c6 = torch.where(inside, (self.sigma**2 / torch.where(inside, r2, rc2)) ** 3, 0.0)
        switch = torch.where(
            r2 < ro2,
            torch.ones_like(r2),
            torch.where(inside, (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3, 0.0),
        )
        pair = 0.5 * 4 * self.epsilon * (c6**2 - c6) * switch
        e = torch.zeros(batch.positions.shape[0], dtype=pair.dtype, device=pair.device)
        return e.index_add(0, batch.edge_index[0], pair), None
