"""Frames: one structure with its partial labels, validated on construction.

A frame may carry an energy, forces, both or neither. Missing labels are ``None``; piwsl never
invents zeros for them. All quantities are in eV and Å. :meth:`Frame.from_atoms` and
:meth:`Frame.to_atoms` are the one conversion between frames and ``ase.Atoms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from piwsl.errors import DataError


@dataclass
class Frame:
    """One structure and its (possibly missing) reference labels, in eV and Å."""

    numbers: np.ndarray  # int64 [n_atoms]
    positions: np.ndarray  # float64 [n_atoms, 3], Å
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))  # Å
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None  # eV, total energy
    forces: np.ndarray | None = None  # eV/Å [n_atoms, 3]
    fixed: np.ndarray | None = None  # bool [n_atoms]: atoms held fixed (never displaced)
    source: str = "<memory>"
    index: int = 0

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.asarray(self.pbc, dtype=bool).reshape(-1)
        if self.pbc.size == 1:
            self.pbc = np.repeat(self.pbc, 3)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        if self.fixed is not None:
            self.fixed = np.asarray(self.fixed, dtype=bool).reshape(-1)
        if self.energy is not None:
            self.energy = float(self.energy)
        self.validate()

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def has_energy(self) -> bool:
        return self.energy is not None

    @property
    def has_forces(self) -> bool:
        return self.forces is not None

    def _error(self, message: str, key: str | None = None, hint: str | None = None) -> DataError:
        return DataError(message, file=self.source, frame=self.index, key=key, hint=hint)

    def validate(self) -> None:
        """Raise :class:`DataError` naming file, frame and key for anything malformed."""
        n = self.n_atoms
        if n == 0:
            raise self._error("frame has zero atoms", hint="remove the empty frame from the file")
        if self.positions.shape != (n, 3):
            raise self._error(
                f"positions have shape {self.positions.shape}, expected ({n}, 3)", key="positions"
            )
        if not np.all(np.isfinite(self.positions)):
            bad = int(np.argwhere(~np.isfinite(self.positions))[0, 0])
            raise self._error(f"non-finite position of atom {bad}", key="positions")
        if np.any(self.numbers <= 0) or np.any(self.numbers > 118):
            raise self._error("atomic numbers must lie in 1..118", key="numbers")
        if self.pbc.shape != (3,):
            raise self._error(f"pbc has shape {self.pbc.shape}, expected (3,)", key="pbc")
        if not np.all(np.isfinite(self.cell)):
            raise self._error("non-finite cell", key="cell")
        if self.pbc.any():
            vectors = self.cell[self.pbc]
            if np.linalg.matrix_rank(vectors, tol=1e-8) < vectors.shape[0]:
                raise self._error(
                    "cell is singular along a periodic direction",
                    key="cell",
                    hint="give a full cell or set pbc=False for that direction",
                )
        if self.energy is not None and not np.isfinite(self.energy):
            raise self._error(f"energy is {self.energy}", key="energy")
        if self.forces is not None:
            if self.forces.shape != (n, 3):
                raise self._error(
                    f"forces have shape {self.forces.shape} but the frame has {n} atoms",
                    key="forces",
                )
            if not np.all(np.isfinite(self.forces)):
                bad = int(np.argwhere(~np.isfinite(self.forces))[0, 0])
                raise self._error(f"non-finite force on atom {bad}", key="forces")
        if self.fixed is not None and self.fixed.shape != (n,):
            raise self._error(f"fixed mask has shape {self.fixed.shape}, expected ({n},)")

    @classmethod
    def from_atoms(
        cls,
        atoms: Any,
        source: str = "<ase.Atoms>",
        index: int = 0,
        positions: np.ndarray | None = None,
    ) -> Frame:
        """A label-free frame of an ``ase.Atoms`` (numbers, positions or ``positions`` given
        instead, cell, pbc) — the one Atoms → Frame conversion of inference, priors and MD."""
        return cls(
            numbers=atoms.numbers,
            positions=atoms.positions if positions is None else np.asarray(positions, np.float64),
            cell=np.asarray(atoms.cell.array),
            pbc=atoms.pbc,
            source=source,
            index=index,
        )

    def to_atoms(self, labels: bool = True):  # -> ase.Atoms
        """Convert to :class:`ase.Atoms`; with ``labels`` the energy and forces are attached
        through a single-point calculator and fixed atoms as a constraint, without them the
        atoms are bare (what a calculator is run on)."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.constraints import FixAtoms

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        if not labels:
            return atoms
        if self.fixed is not None and self.fixed.any():
            atoms.set_constraint(FixAtoms(mask=self.fixed))
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms
