"""Integrators for many replicas at once: velocity Verlet (NVE) and a Nosé–Hoover chain (NVT).

The replicas' atoms are concatenated (``ptr`` offsets, ``index`` = replica of each atom), positions
in Å, momenta in amu·Å per ASE time unit, masses in amu, energies in eV — ASE's unit system, so
``dt = timestep_fs * ase.units.fs``. Each replica has its own thermostat variables; a replica that
is no longer ``active`` (it failed) is frozen: its momenta and thermostat stay as they are and the
caller gives it zero forces.

The Nosé–Hoover chain is the Martyna–Klein–Tuckerman chain integrated with the Trotter splitting
``NHC(dt/2) · p(dt/2) · q(dt) · p(dt/2) · NHC(dt/2)`` and a fourth-order Suzuki–Yoshida scheme for
the chain, as in ASE's ``NoseHooverChainNVT`` (tchain 3, tloop 1, Q₁ = N_dof k_B T τ², Qⱼ = k_B T τ²).
With ``N_dof = 3N`` and no centre-of-mass constraint it reproduces ASE's integrator step for step
(tested); with the centre of mass fixed, forces lose their net mass-weighted component
(``F_i − m_i ΣF / M``, the exact constraint force) and ``N_dof = 3N − 3``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import units

#: Fourth-order Suzuki–Yoshida weights (Yoshida, Phys. Lett. A 150, 262 (1990)).
SUZUKI_YOSHIDA_4 = (
    1.0 / (2.0 - 2.0 ** (1.0 / 3.0)),
    -(2.0 ** (1.0 / 3.0)) / (2.0 - 2.0 ** (1.0 / 3.0)),
    1.0 / (2.0 - 2.0 ** (1.0 / 3.0)),
)


def per_replica_sum(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """Σ over each replica's atoms of ``values`` [M] or [M, 3] → [n] or [n, 3]."""
    if values.ndim == 1:
        return np.bincount(index, weights=values, minlength=n)
    return np.stack([np.bincount(index, weights=values[:, c], minlength=n) for c in range(3)], 1)


@dataclass
class Replicas:
    """The phase-space state of R replicas (see the module docstring for units)."""

    positions: np.ndarray  # [M, 3]
    momenta: np.ndarray  # [M, 3]
    masses: np.ndarray  # [M]
    ptr: np.ndarray  # [R + 1]
    active: np.ndarray  # bool [R]
    fix_com: bool = True

    def __post_init__(self) -> None:
        sizes = np.diff(self.ptr)
        self.index = np.repeat(np.arange(len(sizes)), sizes)
        self.total_mass = per_replica_sum(self.masses, self.index, self.n_replicas)

    @property
    def n_replicas(self) -> int:
        return len(self.ptr) - 1

    @property
    def n_dof(self) -> np.ndarray:
        """Degrees of freedom per replica: 3N, less 3 with the centre of mass fixed."""
        return 3.0 * np.diff(self.ptr) - (3.0 if self.fix_com else 0.0)

    def kinetic_energy(self) -> np.ndarray:
        """Per replica, eV."""
        return 0.5 * per_replica_sum(
            (self.momenta**2).sum(1) / self.masses, self.index, self.n_replicas
        )

    def temperature(self) -> np.ndarray:
        """Instantaneous kinetic temperature per replica, K (2 E_kin / (k_B N_dof))."""
        return 2.0 * self.kinetic_energy() / (units.kB * self.n_dof)

    def constrain(self, forces: np.ndarray) -> np.ndarray:
        """Forces of frozen replicas set to zero; with ``fix_com``, no net force per replica."""
        forces = np.where(self.active[self.index][:, None], forces, 0.0)
        if self.fix_com:
            net = per_replica_sum(forces, self.index, self.n_replicas) / self.total_mass[:, None]
            forces = forces - self.masses[:, None] * net[self.index]
        return forces


class NoseHooverChain:
    """One Nosé–Hoover chain per replica (see the module docstring)."""

    def __init__(
        self,
        n_dof: np.ndarray,
        temperature_K: float,
        tdamp: float,
        tchain: int = 3,
        tloop: int = 1,
    ) -> None:
        self.kT = units.kB * float(temperature_K)
        self.n_dof = np.asarray(n_dof, dtype=np.float64)
        self.tchain, self.tloop = int(tchain), int(tloop)
        r = len(self.n_dof)
        self.Q = np.full((r, self.tchain), self.kT * tdamp**2)
        self.Q[:, 0] = self.n_dof * self.kT * tdamp**2
        self.eta = np.zeros((r, self.tchain))
        self.p_eta = np.zeros((r, self.tchain))

    def energy(self) -> np.ndarray:
        """The thermostat's share of the conserved energy per replica, eV."""
        return (
            self.n_dof * self.kT * self.eta[:, 0]
            + self.kT * self.eta[:, 1:].sum(1)
            + (0.5 * self.p_eta**2 / self.Q).sum(1)
        )

    def _p_eta_step(self, j: int, two_ke: np.ndarray, d2: float, d4: float, on) -> None:
        p, q = self.p_eta, self.Q
        if j < self.tchain - 1:
            p[:, j] = np.where(on, p[:, j] * np.exp(-d4 * p[:, j + 1] / q[:, j + 1]), p[:, j])
        g = two_ke - self.n_dof * self.kT if j == 0 else p[:, j - 1] ** 2 / q[:, j - 1] - self.kT
        p[:, j] = np.where(on, p[:, j] + d2 * g, p[:, j])
        if j < self.tchain - 1:
            p[:, j] = np.where(on, p[:, j] * np.exp(-d4 * p[:, j + 1] / q[:, j + 1]), p[:, j])

    def _loop(self, state: Replicas, delta: float) -> None:
        on = state.active
        two_ke = 2.0 * state.kinetic_energy()
        for j in reversed(range(self.tchain)):
            self._p_eta_step(j, two_ke, delta / 2, delta / 4, on)
        self.eta = np.where(on[:, None], self.eta + delta * self.p_eta / self.Q, self.eta)
        scale = np.where(on, np.exp(-delta * self.p_eta[:, 0] / self.Q[:, 0]), 1.0)
        state.momenta *= scale[state.index][:, None]
        two_ke = two_ke * scale**2
        for j in range(self.tchain):
            self._p_eta_step(j, two_ke, delta / 2, delta / 4, on)

    def half_step(self, state: Replicas, delta: float) -> None:
        """Propagate the chain and scale the momenta over ``delta`` (ASE time units)."""
        for _ in range(self.tloop):
            for weight in SUZUKI_YOSHIDA_4:
                self._loop(state, weight * delta / self.tloop)


Forces = Callable[[np.ndarray], np.ndarray]


def verlet_step(
    state: Replicas, forces: np.ndarray, dt: float, compute: Forces, nhc: NoseHooverChain | None
) -> np.ndarray:
    """One step of (thermostatted) velocity Verlet; returns the forces at the new positions.

    ``forces`` are the (constrained) forces at the current positions; ``compute(positions)`` gives
    raw forces [M, 3] (eV/Å) at new positions.
    """
    if nhc is not None:
        nhc.half_step(state, dt / 2)
    state.momenta += 0.5 * dt * forces
    state.positions += dt * state.momenta / state.masses[:, None]
    forces = state.constrain(compute(state.positions))
    state.momenta += 0.5 * dt * forces
    if nhc is not None:
        nhc.half_step(state, dt / 2)
    return forces
