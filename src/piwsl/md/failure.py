"""Failure criteria of an MD trajectory: broken bonds, non-finite outputs, runaway temperature.

A trajectory *fails* at the first checked step where any enabled criterion fires; the runner then
records the time (ps) and the reason and stops that trajectory. Criteria (all on by default):

- ``bond``: a bonded pair deviates by more than ``bond_deviation_A`` (0.5 Å) from its length in the
  start structure (Fu et al. 2023, "Forces are not enough", TMLR). Bonds are the pairs closer than
  the sum of ASE's ``natural_cutoffs`` (covalent radii) × ``bond_cutoff_scale`` (1.2; with 1.0,
  thermal C–H bonds of rMD17 frames are missed) in the start structure; periodic images are
  followed with the integer cell shifts found at the start.
- ``non_finite``: the energy, a force or a position is NaN or infinite.
- ``temperature``: the instantaneous kinetic temperature exceeds ``max_temperature_K``
  (default: ``temperature_factor`` × the target temperature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from piwsl.errors import ConfigError


@dataclass
class FailureCriteria:
    """Which failure checks run, and their thresholds (Å, K)."""

    check_bonds: bool = True
    bond_deviation_A: float = 0.5  # noqa: N815 (unit in the name)
    bond_cutoff_scale: float = 1.2  # × sum of covalent radii (1.0 misses C–H bonds)
    check_finite: bool = True
    check_temperature: bool = True
    max_temperature_K: float | None = None  # noqa: N815 (None: temperature_factor × target)
    temperature_factor: float = 5.0

    def __post_init__(self) -> None:
        if not self.bond_deviation_A > 0:
            raise ConfigError(f"bond_deviation_A must be > 0 Å, got {self.bond_deviation_A}")
        if not self.bond_cutoff_scale > 0:
            raise ConfigError(f"bond_cutoff_scale must be > 0, got {self.bond_cutoff_scale}")
        if self.max_temperature_K is not None and not self.max_temperature_K > 0:
            raise ConfigError(f"max_temperature_K must be > 0 K, got {self.max_temperature_K}")
        if not self.temperature_factor > 0:
            raise ConfigError(f"temperature_factor must be > 0, got {self.temperature_factor}")

    def temperature_bound(self, target_K: float) -> float:
        """The temperature (K) above which a trajectory counts as failed."""
        if self.max_temperature_K is not None:
            return float(self.max_temperature_K)
        return float(self.temperature_factor * target_K)


@dataclass
class Failure:
    """Why and when a trajectory failed."""

    reason: str  # "bond" | "non_finite" | "temperature" | "error"
    message: str
    step: int
    time_ps: float


@dataclass
class Bonds:
    """Bonded pairs of a start structure: ``i < j``, cell shifts and initial lengths (Å)."""

    i: np.ndarray  # int64 [B]
    j: np.ndarray  # int64 [B]
    shifts: np.ndarray  # int64 [B, 3]
    r0: np.ndarray  # float64 [B], Å

    def __len__(self) -> int:
        return int(self.i.shape[0])

    def lengths(self, positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """Current bond lengths (Å) for ``positions`` [N, 3] and ``cell`` [3, 3]."""
        vec = positions[self.j] - positions[self.i] + self.shifts @ np.asarray(cell)
        return np.linalg.norm(vec, axis=1)


def find_bonds(atoms: Atoms, cutoff_scale: float = 1.2) -> Bonds:
    """Bonds of ``atoms``: pairs closer than the sum of their natural (covalent) cutoffs."""
    from ase.neighborlist import natural_cutoffs, neighbor_list  # imports scipy: only when used

    cutoffs = natural_cutoffs(atoms, mult=cutoff_scale)
    i, j, S, d = neighbor_list("ijSd", atoms, cutoffs, self_interaction=False)
    keep = i < j
    return Bonds(
        i=i[keep].astype(np.int64),
        j=j[keep].astype(np.int64),
        shifts=S[keep].astype(np.int64),
        r0=d[keep].astype(np.float64),
    )


class FailureDetector:
    """Applies :class:`FailureCriteria` to the current state of a trajectory."""

    def __init__(self, criteria: FailureCriteria, start: Atoms, target_temperature_K: float):
        self.criteria = criteria
        self.bonds = find_bonds(start, criteria.bond_cutoff_scale) if criteria.check_bonds else None
        self.max_temperature_K = criteria.temperature_bound(target_temperature_K)
        self.symbols = start.get_chemical_symbols()

    def check(
        self,
        positions: np.ndarray,
        cell: np.ndarray,
        energy: float,
        forces: np.ndarray,
        temperature_K: float,
    ) -> tuple[str, str] | None:
        """Return ``(reason, message)`` for the first criterion that fires, else ``None``."""
        c = self.criteria
        if c.check_finite:
            if not np.all(np.isfinite(positions)):
                atom = int(np.argwhere(~np.isfinite(positions))[0, 0])
                return "non_finite", f"non-finite position of atom {atom}"
            if not np.isfinite(energy):
                return "non_finite", f"energy is {energy} eV"
            if not np.all(np.isfinite(forces)):
                atom = int(np.argwhere(~np.isfinite(forces))[0, 0])
                return "non_finite", f"non-finite force on atom {atom}"
        if self.bonds is not None and len(self.bonds):
            deviation = np.abs(self.bonds.lengths(positions, cell) - self.bonds.r0)
            worst = int(np.argmax(deviation))
            if deviation[worst] > c.bond_deviation_A:
                a, b = int(self.bonds.i[worst]), int(self.bonds.j[worst])
                r0 = float(self.bonds.r0[worst])
                return "bond", (
                    f"bond {a}-{b} ({self.symbols[a]}-{self.symbols[b]}) deviates "
                    f"{deviation[worst]:.3f} Å from its initial length {r0:.3f} Å "
                    f"(threshold {c.bond_deviation_A} Å)"
                )
        if c.check_temperature and not temperature_K <= self.max_temperature_K:
            return "temperature", (
                f"temperature {temperature_K:.1f} K exceeds the bound "
                f"{self.max_temperature_K:.1f} K"
            )
        return None
