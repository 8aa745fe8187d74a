"""GFN1-/GFN2-xTB through tblite: single points (:class:`TBLiteBackend`) and restarted SCFs along
a trajectory (:class:`TBLiteSession`). tblite itself is imported only when a calculation runs."""

from __future__ import annotations

from typing import Any

import numpy as np

from piwsl.labelling.backends.base import (
    BOHR,
    Backend,
    BackendError,
    gradient_to_forces,
    hartree_to_ev,
    package_version,
    pop_option,
    reject_unknown,
    require,
)
from piwsl.units import HARTREE


class TBLiteBackend(Backend):
    """GFN1-/GFN2-xTB through tblite's Python interface (Hartree/Bohr internally)."""

    OPTIONS = ("charge", "spin", "accuracy", "electronic_temperature", "max_iterations")
    program = "tblite"
    basis = "minimal STO-nG (xTB)"

    def __init__(self, method: str, **options: Any) -> None:
        super().__init__(**options)
        opts = dict(options)
        self.method = method  # "GFN2-xTB" / "GFN1-xTB"
        self.name = method.lower()
        require("tblite", self.name)
        self.charge = pop_option(opts, "charge", 0.0, float)
        self.spin = pop_option(opts, "spin", 0, int)
        self.accuracy = pop_option(opts, "accuracy", 1.0, float)
        self.electronic_temperature = pop_option(opts, "electronic_temperature", 300.0, float)
        self.max_iterations = pop_option(opts, "max_iterations", 250, int)
        reject_unknown(self.name, opts, list(self.OPTIONS))

    def calculator(self, atoms, accuracy: float | None = None):
        """A configured ``tblite.interface.Calculator`` for ``atoms`` (its cell, charge, spin),
        its SCF converged to ``accuracy`` (default: the backend's)."""
        from ase import units
        from tblite.interface import Calculator

        kwargs: dict[str, Any] = {"charge": self.charge, "uhf": self.spin}
        if atoms.pbc.any():
            kwargs["lattice"] = np.asarray(atoms.cell.array) / BOHR
            kwargs["periodic"] = np.asarray(atoms.pbc, dtype=bool)
        calc = Calculator(self.method, atoms.numbers, atoms.positions / BOHR, **kwargs)
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy if accuracy is None else accuracy)
        calc.set("temperature", self.electronic_temperature * units.kB / units.Hartree)
        calc.set("max-iter", self.max_iterations)
        return calc

    def session(self) -> TBLiteSession:
        """Single points along a trajectory: each SCF starts from the previous density."""
        return TBLiteSession(self)

    def compute(self, atoms) -> dict[str, Any]:
        try:
            result = self.calculator(atoms).singlepoint()
        except RuntimeError as err:  # tblite reports SCF failures as RuntimeError
            raise BackendError(f"tblite {self.method}: {err}") from err
        out = {
            "energy": hartree_to_ev(result.get("energy")),
            "forces": gradient_to_forces(result.get("gradient")),
            "provenance": {
                "method": self.method,
                "basis": "minimal STO-nG (xTB)",
                "program": "tblite",
                "program_version": package_version("tblite"),
                "charge": self.charge,
                "spin": self.spin,
            },
        }
        if atoms.pbc.all():
            out["stress"] = virial_to_stress(result.get("virial"), atoms.get_volume())
        return out


def virial_to_stress(virial: np.ndarray, volume: float) -> np.ndarray:
    """tblite's ``virial`` (Hartree; it is +∂E/∂ε, checked against finite differences of the
    energy under strain) → the stress (1/V) ∂E/∂ε in eV/Å³ (ASE's sign, as tblite.ase does)."""
    return np.asarray(virial, dtype=np.float64).reshape(3, 3) * HARTREE / float(volume)


#: tblite's ``accuracy`` in a session (lower: tighter SCF). A restarted SCF stops closer to the
#: previous step's density than a fresh one would, so at the default (1.0) the forces depend on
#: the direction the trajectory came from (0.2–0.7 meV/Å between a path walked forwards and
#: backwards, ethanol and aspirin) and NVE drifts: −0.12 meV/atom/ps for a Δ model on aspirin and
#: on ethanol, against ±0.01 with fresh SCFs or this setting (hysteresis 2–4 µeV/Å), which costs
#: ~1.3× the default's time per step, still below a fresh SCF's.
SESSION_ACCURACY = 0.01


class TBLiteSession:
    """Energy (eV) and forces (eV/Å) of one system at successive positions (an MD trajectory):
    one tblite calculator whose SCF restarts from the previous step's result, converged to
    ``SESSION_ACCURACY`` (or the backend's, if tighter) so that the forces do not depend on the
    trajectory's history — energy-conserving NVE, and the same numbers as fresh single points to
    well within their SCF threshold."""

    def __init__(self, backend: TBLiteBackend) -> None:
        self.backend = backend
        self._calc = None
        self._result = None
        self._numbers: np.ndarray | None = None

    def __call__(self, atoms) -> tuple[float, np.ndarray]:
        try:
            if self._calc is None or not np.array_equal(self._numbers, atoms.numbers):
                accuracy = min(self.backend.accuracy, SESSION_ACCURACY)
                self._calc, self._result = self.backend.calculator(atoms, accuracy), None
                self._numbers = np.array(atoms.numbers)
            elif atoms.pbc.any():
                lattice = np.asarray(atoms.cell.array) / BOHR
                self._calc.update(positions=atoms.positions / BOHR, lattice=lattice)
            else:
                self._calc.update(positions=atoms.positions / BOHR)
            self._result = self._calc.singlepoint(self._result)
        except RuntimeError as err:
            self._calc = self._result = None  # start the next call afresh
            raise BackendError(f"tblite {self.backend.method}: {err}") from err
        energy = hartree_to_ev(self._result.get("energy"))
        return energy, gradient_to_forces(self._result.get("gradient"))
