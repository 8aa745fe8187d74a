"""What every reference backend shares: the :class:`Backend` base class, :class:`BackendError`,
the :data:`BACKENDS` registry, Hartree/Bohr → eV/Å conversions and the option-parsing helpers."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

import numpy as np

from piwsl.errors import ConfigError, PiwslError
from piwsl.io.jsonable import jsonable
from piwsl.registry import Registry
from piwsl.units import HARTREE, LENGTH_UNITS

#: 1 Bohr in Å.
BOHR: float = LENGTH_UNITS["Bohr"]
#: Hartree/Bohr in eV/Å.
HARTREE_PER_BOHR: float = HARTREE / BOHR


class BackendError(PiwslError, RuntimeError):
    """A reference calculation failed for one structure (SCF not converged, program error)."""


def hartree_to_ev(energy: float) -> float:
    """Energy in Hartree → eV."""
    return float(energy) * HARTREE


def gradient_to_forces(gradient: np.ndarray) -> np.ndarray:
    """Energy gradient in Hartree/Bohr → forces (minus the gradient) in eV/Å."""
    return -np.asarray(gradient, dtype=np.float64) * HARTREE_PER_BOHR


def package_version(name: str) -> str:
    """Installed version of a distribution, or ``"unknown"``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Backend:
    """Base class of reference backends (subclasses set ``name`` and implement ``compute``)."""

    name: str = "backend"
    #: whether ``compute`` returns forces
    gives_forces: bool = True

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)

    def compute(self, atoms) -> dict[str, Any]:
        raise NotImplementedError

    # A frame's label may be made of independent calculations (finite differences: 6N + 1
    # energies); the runner submits each as its own task and combines the results.

    def subtasks(self, atoms) -> list:
        """The structures whose calculations make up the label of ``atoms`` (one task each)."""
        return [atoms]

    def n_subtasks(self, atoms) -> int:
        return 1

    def compute_subtask(self, atoms) -> dict[str, Any]:
        """The calculation of one of :meth:`subtasks` (on a worker)."""
        return self.compute(atoms)

    def combine(self, atoms, outs: list[dict[str, Any]]) -> dict[str, Any]:
        """The label of ``atoms`` from the outputs of its :meth:`subtasks`, in order."""
        return outs[0]

    def base_provenance(self) -> dict[str, Any]:
        """Method, basis and program of this backend (also recorded for failed frames)."""
        program = str(getattr(self, "program", "unknown"))
        version = getattr(self, "version", None) or package_version(program)
        return {
            "method": str(getattr(self, "method", self.name)),
            "basis": str(getattr(self, "basis", None) or "n/a"),
            "program": program,
            "program_version": str(version),
        }

    def describe(self) -> dict[str, Any]:
        """Backend name and options, stored in the journal header (must be JSON-serialisable)."""
        return {"backend": self.name, "options": jsonable(self.options)}


def require(module: str, backend: str) -> None:
    """Fail early (ConfigError) when the program behind a backend is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"backend {backend!r} needs the Python package {module!r}, which is not installed "
            "(pip install 'piwsl[label]')"
        )


def pop_option(options: dict[str, Any], key: str, default: Any, kind: Callable[[Any], Any]) -> Any:
    value = options.pop(key, default)
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"option {key}={value!r} is not a valid {kind.__name__}") from err


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


as_bool.__name__ = "bool"


def reject_unknown(name: str, options: dict[str, Any], known: list[str]) -> None:
    if options:
        from piwsl.registry import suggest

        key = sorted(options)[0]
        raise ConfigError(f"unknown option {key!r} for backend {name!r}{suggest(key, known)}")


#: backend name → builder ``(**options) -> Backend``
BACKENDS: Registry[Callable[..., Backend]] = Registry("reference backend")
