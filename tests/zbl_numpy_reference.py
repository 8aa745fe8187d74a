"""The numpy ZBL of piwsl before issue 17 (src/piwsl/priors/zbl.py at commit 8074771), kept as
the reference the torch implementation inside the model is tested against."""

from __future__ import annotations

import numpy as np
from ase.data import covalent_radii

from piwsl.data.frames import Frame
from piwsl.data.neighbors import neighbor_list

COULOMB = 14.399645
SCREENING = 0.46850
PHI = ((0.18175, 3.19980), (0.50986, 0.94229), (0.28022, 0.40290), (0.02817, 0.20162))


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


def numpy_zbl(frame: Frame, inner: float, outer: float) -> tuple[float, np.ndarray]:
    """Energy (eV) and analytic forces (eV/Å) of one frame, as ZBLPrior.compute_one computed them."""
    forces = np.zeros((frame.n_atoms, 3))
    if frame.n_atoms < 2 and not frame.pbc.any():
        return 0.0, forces
    z = frame.numbers
    cutoff = outer * 2.0 * float(covalent_radii[np.unique(z)].max())
    (i, j), shifts = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff)
    if i.size == 0:
        return 0.0, forces
    vec = frame.positions[j] - frame.positions[i] + shifts @ frame.cell
    r = np.linalg.norm(vec, axis=1)
    energy, d_energy = pair_energy(r, z[i], z[j], inner, outer)
    push = 0.5 * (d_energy / r)[:, None] * vec
    np.add.at(forces, i, push)
    np.add.at(forces, j, -push)
    return 0.5 * float(energy.sum()), forces
