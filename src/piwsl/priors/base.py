"""The prior contract, the registry of priors by name, and rebuilding a prior from its record.

A :class:`Prior` is a fixed, cheap physical potential. It has a ``name`` (its registry key),
:meth:`Prior.spec` (the provenance a model file records: method, program and version, charge,
multiplicity, settings), :meth:`Prior.compute` (energies in eV as float64 ``[S]`` and one
``[n_i, 3]`` force array in eV/Å per frame) and :meth:`Prior.calculator` (an ASE calculator).

:func:`make_prior` builds one from a name (``gfn2-xtb``, ``gfn1-xtb``, ``zbl``, or
``ase:module.Class`` / ``ase:module:Class``); unknown names get a "did you mean". A model trained
on top of a prior is run again with :func:`prior_from_spec`, which refuses (:class:`PriorError`)
when the prior's program is not installed or when the installed prior differs from the recorded
one (another program version, other settings), unless ``allow_mismatch=True``.
"""

from __future__ import annotations

import abc
import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from piwsl.data.frames import Frame
from piwsl.errors import ConfigError, PriorError
from piwsl.io.jsonable import jsonable
from piwsl.registry import Registry, suggest

log = logging.getLogger(__name__)

#: The ``ase:`` prefix: any ASE calculator named by module and class.
ASE_PREFIX = "ase:"


@dataclass(frozen=True)
class PriorUse:
    """How inference adds the prior a model was trained on top of.

    ``enabled=False`` gives the learned part alone (diagnostics); ``allow_mismatch`` runs a model
    whose recorded prior differs from the installed one (a warning instead of an error);
    ``cache_dir`` / ``workers`` / ``progress`` / ``executor`` / ``scheduler`` as for
    :func:`piwsl.priors.prior_values`;
    ``built``: the model's prior when the caller has already built it (checked once, one warning).
    """

    enabled: bool = True
    allow_mismatch: bool = False
    cache_dir: str | None = None
    workers: int = 1
    progress: bool = False
    built: Prior | None = None
    executor: str = "local"
    scheduler: str | None = None


class MissingPriorBackendError(PriorError):
    """The program behind a prior (e.g. tblite) is not installed."""

    def __init__(self, message: str, package: str) -> None:
        super().__init__(message)
        self.package = package


class Prior(abc.ABC):
    """A fixed baseline potential; subclasses implement :meth:`compute_one` and the metadata."""

    #: registry name, e.g. ``"gfn2-xtb"``
    name: str = "prior"
    #: human-readable method, e.g. ``"GFN2-xTB"``
    method: str = "prior"
    #: the program that evaluates it, e.g. ``"tblite"``
    program: str = "piwsl"
    #: an analytic prior with a torch :meth:`module`: it becomes part of the force field
    #: (batched, differentiable) instead of being added from the cache at inference
    in_model: bool = False

    def __init__(self, charge: int = 0, multiplicity: int = 1) -> None:
        if multiplicity < 1:
            raise ConfigError(f"prior.multiplicity must be ≥ 1, got {multiplicity}")
        self.charge = int(charge)
        self.multiplicity = int(multiplicity)

    @abc.abstractmethod
    def program_version(self) -> str:
        """Version of the installed program (part of the provenance)."""

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the numbers, defaults filled in (JSON-serialisable)."""

    @abc.abstractmethod
    def compute_one(self, frame: Frame) -> tuple[float, np.ndarray]:
        """(energy eV, forces ``[n_atoms, 3]`` eV/Å) of one structure."""

    def spec(self) -> dict[str, Any]:
        """Provenance: what a model trained on top of this prior records and checks again."""
        return {
            "name": self.name,
            "method": self.method,
            "program": self.program,
            "program_version": self.program_version(),
            "charge": self.charge,
            "multiplicity": self.multiplicity,
            "uhf": self.multiplicity - 1,
            "settings": jsonable(self.settings()),
        }

    def describe(self) -> str:
        """``"GFN2-xTB (tblite 0.8.0)"``."""
        return f"{self.method} ({self.program} {self.program_version()})"

    def compute(self, frames: Sequence[Frame]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (float64 ``[S]``, eV) and forces (``[n_i, 3]`` each, eV/Å) of ``frames``."""
        energies = np.empty(len(frames), dtype=np.float64)
        forces: list[np.ndarray] = []
        for k, frame in enumerate(frames):
            energies[k], f = self.checked(frame)
            forces.append(f)
        return energies, forces

    def checked(self, frame: Frame) -> tuple[float, np.ndarray]:
        """:meth:`compute_one` with finiteness and shape checks; errors name file and frame."""
        return self._checked(frame, self.compute_one)

    def session(self) -> Callable[[Frame], tuple[float, np.ndarray]]:
        """:meth:`checked` for one system at successive positions (an MD trajectory); a prior
        that can reuse the previous step's work (tblite: its SCF density) overrides
        :meth:`_session_compute`."""
        compute = self._session_compute()
        return lambda frame: self._checked(frame, compute)

    def _session_compute(self) -> Callable[[Frame], tuple[float, np.ndarray]]:
        return self.compute_one

    def _checked(
        self, frame: Frame, compute: Callable[[Frame], tuple[float, np.ndarray]]
    ) -> tuple[float, np.ndarray]:
        where = f"file {frame.source!r}, frame {frame.index}"
        try:
            energy, forces = compute(frame)
        except PriorError as err:
            raise PriorError(f"{where}: prior {self.name!r} failed: {err}") from err
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (frame.n_atoms, 3):
            raise PriorError(
                f"{where}: prior {self.name!r} gave forces of shape {forces.shape}, expected "
                f"({frame.n_atoms}, 3)"
            )
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise PriorError(f"{where}: prior {self.name!r} gave a non-finite energy or force")
        return float(energy), forces

    def module(self) -> Any:
        """The torch module of an analytic (``in_model``) prior: ``module(batch) -> E [S]``."""
        raise NotImplementedError(f"prior {self.name!r} is not an analytic (in-model) prior")

    def calculator(self) -> PriorCalculator:
        """This prior as an ASE calculator (energy, forces)."""
        return PriorCalculator(self)

    def __getstate__(self) -> dict[str, Any]:
        # program handles (tblite/ASE calculator objects) are rebuilt in worker processes
        state = dict(self.__dict__)
        state.pop("_handle", None)
        return state


class PriorCalculator(Calculator):
    """A :class:`Prior` as an ASE calculator: energy (eV), forces (eV/Å)."""

    implemented_properties = ["energy", "free_energy", "forces"]  # noqa: RUF012 (ASE API)

    def __init__(self, prior: Prior, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prior = prior

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        energy, forces = self.prior.checked(Frame.from_atoms(self.atoms))
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


# --------------------------------------------------------------------------------------------
# registry


#: prior name → builder ``(charge, multiplicity, settings) -> Prior``
PRIORS: Registry[Callable[[int, int, dict[str, Any]], Prior]] = Registry("prior potential")


def register_prior(name: str):
    """Decorator: register a prior builder ``(charge, multiplicity, settings) -> Prior`` (e.g. a
    :class:`Prior` subclass) under ``name`` (lower case)."""
    return PRIORS.register(name.lower())


def _load_builtins() -> None:
    # importing registers them; the programs behind them are imported only when one is built
    import piwsl.priors.xtb
    import piwsl.priors.zbl  # noqa: F401
    from piwsl.plugins import load_plugins

    load_plugins()


def prior_names() -> list[str]:
    """The registered names plus the ``ase:`` form."""
    _load_builtins()
    return [*PRIORS.names(), "ase:<module>.<Class>"]


def check_prior_name(name: str) -> None:
    """ConfigError with a "did you mean" for a name :func:`make_prior` would not know."""
    text = name.strip()
    if text.lower().startswith(ASE_PREFIX):
        if not text[len(ASE_PREFIX) :].strip():
            raise ConfigError(
                f"prior {name!r}: name the calculator, e.g. ase:ase.calculators.emt.EMT"
            )
        return
    _load_builtins()
    if text.lower() not in PRIORS:
        raise ConfigError(f"unknown prior {name!r}{suggest(text.lower(), prior_names())}")


def make_prior(
    name: str, charge: int = 0, multiplicity: int = 1, settings: dict[str, Any] | None = None
) -> Prior:
    """Build a prior by name (see the module docstring); ``settings`` are its options."""
    settings = dict(settings or {})
    text = name.strip()
    if text.lower().startswith(ASE_PREFIX):
        from piwsl.priors.ase_prior import ASEPrior

        return ASEPrior(text[len(ASE_PREFIX) :], charge, multiplicity, settings)
    check_prior_name(text)
    return PRIORS.get(text.lower())(charge, multiplicity, settings)


# --------------------------------------------------------------------------------------------
# a recorded prior, run again


def spec_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"program_version: recorded 0.7.0, installed 0.8.0"`` for every field that differs."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        if key == "settings":
            continue
        if recorded.get(key) != current.get(key):
            out.append(f"{key}: recorded {recorded.get(key)!r}, installed {current.get(key)!r}")
    old, new = recorded.get("settings") or {}, current.get("settings") or {}
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"settings.{key}: recorded {old.get(key)!r}, now {new.get(key)!r}")
    return out


def _install_hint(spec: dict[str, Any], package: str, missing: bool = True) -> str:
    version = spec.get("program_version")
    if package == "piwsl":  # a prior implemented here (zbl): versioned on its own
        return f"use a piwsl release whose {spec.get('method')} implementation is version {version}"
    pinned = f"{package}=={version}" if package == spec.get("program") and version else package
    extra = " or pip install 'piwsl[label]'" if package == "tblite" and missing else ""
    return f"install {package} (pip install {pinned}{extra})"


#: What a mismatch error suggests besides installing the recorded version.
OPT_OUT = "pass allow_prior_mismatch=True (--allow-prior-mismatch) to run it anyway"


def prior_from_spec(
    spec: dict[str, Any],
    allow_mismatch: bool = False,
    what: str = "this model",
    opt_out: str = OPT_OUT,
    check: bool = True,
) -> Prior:
    """The prior a model recorded, rebuilt and checked against the installed program.

    Raises :class:`PriorError` when the program is missing, and when the installed prior's
    :meth:`Prior.spec` differs from ``spec`` (program version, settings, charge, …) unless
    ``allow_mismatch`` (then a warning is logged). ``what`` names the model in the messages,
    ``opt_out`` is the way round a mismatch they suggest; ``check=False`` skips the comparison
    (the prior is rebuilt from the recorded settings as they are).
    """
    described = f"{spec.get('method', spec.get('name'))} ({spec.get('program')} " + (
        f"{spec.get('program_version')})"
    )
    try:
        prior = make_prior(
            str(spec["name"]),
            int(spec.get("charge", 0)),
            int(spec.get("multiplicity", 1)),
            dict(spec.get("settings") or {}),
        )
    except MissingPriorBackendError as err:
        raise PriorError(
            f"{what} was trained on top of {described}: {err.package} is not installed here; "
            f"{_install_hint(spec, err.package)} to run it"
        ) from None
    except (ConfigError, KeyError) as err:
        raise PriorError(
            f"{what} was trained on top of {described}, which this piwsl cannot rebuild: {err}"
        ) from None
    differences = spec_differences(spec, prior.spec()) if check else []
    if differences:
        message = (
            f"{what} was trained on top of {described}, but the installed prior differs: "
            f"{'; '.join(differences)}"
        )
        if not allow_mismatch:
            raise PriorError(
                f"{message}. Its predictions would not be the trained ones: "
                f"{_install_hint(spec, str(spec.get('program')), missing=False)}, or {opt_out}"
            )
        log.warning("%s (allow_prior_mismatch: running anyway)", message)
    return prior


def model_prior(model: Any, allow_mismatch: bool = False, what: str = "this model") -> Prior | None:
    """The external prior inference must add to a force field's predictions (from its
    ``prior_spec``); None without one, and for an analytic prior, which is part of the model."""
    spec = getattr(model, "prior_spec", None)
    if not spec:
        return None
    prior = prior_from_spec(copy.deepcopy(spec), allow_mismatch=allow_mismatch, what=what)
    return None if prior.in_model else prior


def is_in_model(name: str) -> bool:
    """Whether the prior ``name`` is an analytic prior that lives inside the force field."""
    text = str(name).strip().lower()
    if text.startswith(ASE_PREFIX):
        return False
    _load_builtins()
    return text in PRIORS and bool(getattr(PRIORS.get(text), "in_model", False))


def attach_prior(model: Any, spec: dict[str, Any] | None, what: str = "this model") -> None:
    """Record ``spec`` on a force field and, for an analytic prior, put its torch module inside,
    built from the recorded settings (checked against the model's cutoff). Whether the installed
    implementation still matches the recorded one is checked where the model is run
    (:func:`model_prior`, with its ``allow_mismatch`` opt-out)."""
    model.prior_spec = copy.deepcopy(spec) if spec else None
    modules = []
    if spec and is_in_model(str(spec.get("name", ""))):
        module = prior_from_spec(copy.deepcopy(spec), what=what, check=False).module()
        module.check_cutoff(model.elements, model.cutoff)
        modules.append(module)
    model.set_priors(modules)
