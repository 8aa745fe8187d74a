"""The ``zbl`` prior: Ziegler–Biersack–Littmark screened nuclear repulsion, smoothly cut off.

For every pair of atoms i, j at distance r (periodic images included)::

    E_ij(r) = k_e Z_i Z_j / r · φ(r / a_ij) · s(r),     a_ij = 0.46850 Å / (Z_i^0.23 + Z_j^0.23)
    φ(x) = 0.18175 e^(−3.19980 x) + 0.50986 e^(−0.94229 x) + 0.28022 e^(−0.40290 x)
           + 0.02817 e^(−0.20162 x)

with k_e = 14.399645 eV·Å (e²/4πε₀) and the universal screening length 0.8854 a₀ (Ziegler,
Biersack, Littmark, *The Stopping and Range of Ions in Solids*, 1985). The switch ``s`` is 1 below
``inner × (R_i + R_j)`` and 0 beyond ``outer × (R_i + R_j)`` (R: ASE's covalent radii), with the
C²-smooth quintic 1 − 10t³ + 15t⁴ − 6t⁵ in between, so the prior acts only at short range — where
atoms come closer than in a bond — and energy and forces are continuous. Defaults ``inner=0.5``,
``outer=0.8``: a C–H pair feels it below 0.86 Å (bond 1.09 Å), C–C below 1.22 Å (bond 1.53 Å).

Forces are analytic, −∂E/∂R (checked against finite differences in the tests). The numbers depend
only on this file: its ``program_version`` is :data:`ZBL_VERSION`, raised whenever they change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.data import covalent_radii

from piwsl.data.frames import Frame
from piwsl.errors import ConfigError
from piwsl.priors.base import PRIORS, Prior

#: e²/(4πε₀) in eV·Å.
COULOMB = 14.399645
#: 0.8854 Bohr in Å (the ZBL universal screening length prefactor).
SCREENING = 0.46850
#: (coefficient, exponent) pairs of the universal screening function φ.
PHI = ((0.18175, 3.19980), (0.50986, 0.94229), (0.28022, 0.40290), (0.02817, 0.20162))
#: Version of this implementation (recorded by models trained on top of it).
ZBL_VERSION = "1"


def screening(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """φ(x) and dφ/dx."""
    phi = np.zeros_like(x)
    dphi = np.zeros_like(x)
    for c, b in PHI:
        term = c * np.exp(-b * x)
        phi += term
        dphi -= b * term
    return phi, dphi


def switch(r: np.ndarray, r_in: np.ndarray, r_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s(r) (1 below ``r_in``, 0 beyond ``r_out``, quintic between) and ds/dr."""
    width = r_out - r_in
    t = np.clip((r - r_in) / width, 0.0, 1.0)
    s = 1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t**2)
    ds = -30.0 * t**2 * (1.0 - t) ** 2 / width
    return s, ds


def pair_energy(
    r: np.ndarray, zi: np.ndarray, zj: np.ndarray, inner: float, outer: float
) -> tuple[np.ndarray, np.ndarray]:
    """E_ij(r) (eV) and dE_ij/dr (eV/Å) for arrays of pairs."""
    zi = zi.astype(np.float64)
    zj = zj.astype(np.float64)
    a = SCREENING / (zi**0.23 + zj**0.23)
    phi, dphi = screening(r / a)
    rcov = covalent_radii[zi.astype(np.int64)] + covalent_radii[zj.astype(np.int64)]
    s, ds = switch(r, inner * rcov, outer * rcov)
    bare = COULOMB * zi * zj / r
    energy = bare * phi * s
    d_energy = bare * (dphi / a - phi / r) * s + bare * phi * ds
    return energy, d_energy


class ZBLPrior(Prior):
    """Short-range ZBL repulsion (see the module docstring); numpy, analytic forces."""

    name = "zbl"
    method = "ZBL"
    program = "piwsl"
    OPTIONS = ("inner", "outer")

    def __init__(
        self, charge: int = 0, multiplicity: int = 1, settings: dict[str, Any] | None = None
    ) -> None:
        super().__init__(charge, multiplicity)
        if charge != 0 or multiplicity != 1:
            raise ConfigError(
                "prior 'zbl' is a bare nuclear repulsion: it has no charge or spin (leave "
                "prior.charge=0, prior.multiplicity=1)"
            )
        opts = dict(settings or {})
        unknown = sorted(set(opts) - set(self.OPTIONS))
        if unknown:
            from piwsl.registry import suggest

            raise ConfigError(
                f"prior.settings.{unknown[0]}: unknown option of prior 'zbl'"
                f"{suggest(unknown[0], self.OPTIONS)}"
            )
        try:
            self.inner = float(opts.get("inner", 0.5))
            self.outer = float(opts.get("outer", 0.8))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"prior.settings of 'zbl' must be numbers: {err}") from None
        if not 0 <= self.inner < self.outer:
            raise ConfigError(
                f"prior 'zbl': need 0 ≤ inner < outer (fractions of the covalent-radius sum), "
                f"got inner={self.inner}, outer={self.outer}"
            )

    def program_version(self) -> str:
        return ZBL_VERSION

    def settings(self) -> dict[str, Any]:
        return {"inner": self.inner, "outer": self.outer}

    def compute_one(self, frame: Frame) -> tuple[float, np.ndarray]:
        from piwsl.data.neighbors import neighbor_list

        forces = np.zeros((frame.n_atoms, 3))
        if frame.n_atoms < 2 and not frame.pbc.any():
            return 0.0, forces
        z = frame.numbers
        cutoff = self.outer * 2.0 * float(covalent_radii[np.unique(z)].max())
        (i, j), shifts = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff)
        if i.size == 0:
            return 0.0, forces
        vec = frame.positions[j] - frame.positions[i] + shifts @ frame.cell
        r = np.linalg.norm(vec, axis=1)
        energy, d_energy = pair_energy(r, z[i], z[j], self.inner, self.outer)
        # every pair appears as (i, j) and (j, i): half of each; F_i = +½ dE/dr r̂_ij per edge
        push = 0.5 * (d_energy / r)[:, None] * vec
        np.add.at(forces, i, push)
        np.add.at(forces, j, -push)
        return 0.5 * float(energy.sum()), forces


PRIORS.add("zbl", ZBLPrior)
