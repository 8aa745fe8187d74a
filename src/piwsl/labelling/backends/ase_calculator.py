"""ASE in both directions: any ASE calculator as a backend (:class:`ASEBackend`, ``ase:MOD.CLS``)
and any backend as an ASE calculator (:class:`BackendCalculator`, e.g. to drive MD sampling)."""

from __future__ import annotations

import contextlib
import importlib
import time
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from piwsl.errors import ConfigError
from piwsl.labelling.backends.base import Backend, BackendError


class ASEBackend(Backend):
    """Any ASE calculator named ``ase:package.module.Class``; options are its keyword arguments."""

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(**options)
        self.path = path
        self.name = f"ase:{path}"
        module_name, _, class_name = path.rpartition(".")
        if not module_name:
            raise ConfigError(
                f"ase backend {path!r} must be a dotted path, e.g. ase:ase.calculators.emt.EMT"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(
                f"cannot import module {module_name!r} for {self.name}: {err}"
            ) from err
        if not hasattr(module, class_name):
            from piwsl.registry import suggest

            names = [n for n in dir(module) if not n.startswith("_")]
            raise ConfigError(
                f"module {module_name!r} has no {class_name!r}{suggest(class_name, names)}"
            )
        self.cls = getattr(module, class_name)
        top = module_name.split(".")[0]
        self.program = top
        self.method = self.path.rsplit(".", 1)[-1]
        self.version = str(getattr(importlib.import_module(top), "__version__", None) or "unknown")
        self.calc = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a worker) without the calculator: each process builds its own."""
        return {**self.__dict__, "calc": None}

    def compute(self, atoms) -> dict[str, Any]:
        from ase.calculators.calculator import PropertyNotImplementedError

        if self.calc is None:  # built lazily, once per process
            self.calc = self.cls(**self.options)
        work = atoms.copy()
        work.calc = self.calc
        energy = float(work.get_potential_energy())
        try:
            forces = np.asarray(work.get_forces(), dtype=np.float64)
        except PropertyNotImplementedError:
            forces = None
        out = {
            "energy": energy,
            "forces": forces,
            "provenance": {
                "method": self.path.rsplit(".", 1)[-1],
                "basis": "n/a",
                "program": self.program,
                "program_version": self.version,
            },
        }
        if work.pbc.all():
            with contextlib.suppress(PropertyNotImplementedError):
                out["stress"] = np.asarray(work.get_stress(voigt=False), dtype=np.float64)
        return out


class BackendCalculator(Calculator):
    """A backend as an ASE calculator (energy and forces), e.g. to drive MD sampling."""

    implemented_properties = ["energy", "free_energy", "forces"]  # noqa: RUF012 (ASE API)

    def __init__(self, backend: Backend, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not backend.gives_forces:
            raise ConfigError(f"backend {backend.name!r} gives energies only, not forces")
        self.backend = backend
        self.wall_time_s = 0.0
        #: provenance of the last result (method, basis, program, version, method details)
        self.provenance: dict[str, Any] = backend.base_provenance()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        t0 = time.perf_counter()
        out = self.backend.compute(self.atoms)
        self.wall_time_s = time.perf_counter() - t0
        if out["forces"] is None:
            raise BackendError(f"backend {self.backend.name!r} returned no forces")
        self.provenance = {**self.backend.base_provenance(), **dict(out.get("provenance", {}))}
        self.results = {
            "energy": out["energy"],
            "free_energy": out["energy"],
            "forces": out["forces"],
        }
