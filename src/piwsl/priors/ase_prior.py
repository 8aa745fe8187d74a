"""The ``ase:`` prior: any ASE calculator, named as in ``piwsl label`` (``ase:module.Class``).

``ase:ase.calculators.emt.EMT`` and ``ase:ase.calculators.emt:EMT`` name the same calculator;
``prior.settings`` are its keyword arguments (charge and spin too, in the calculator's own
words: ``prior.charge`` / ``prior.multiplicity`` must stay at their defaults). The work is done by
:class:`piwsl.labelling.backends.ASEBackend`; the recorded program is the calculator's top-level
package and its ``__version__``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from piwsl.data.frames import Frame
from piwsl.errors import ConfigError, PriorError
from piwsl.io.jsonable import jsonable
from piwsl.priors.base import ASE_PREFIX, MissingPriorBackendError, Prior


class ASEPrior(Prior):
    """An ASE calculator (energy + forces) as a prior."""

    def __init__(
        self,
        path: str,
        charge: int = 0,
        multiplicity: int = 1,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(charge, multiplicity)
        dotted = path.strip().replace(":", ".")
        self.name = f"{ASE_PREFIX}{dotted}"
        if charge != 0 or multiplicity != 1:
            raise ConfigError(
                f"prior {self.name!r}: pass charge and spin as the calculator's own keyword "
                "arguments in prior.settings (prior.charge / prior.multiplicity are for xTB)"
            )
        top = dotted.split(".")[0]
        if top and importlib.util.find_spec(top) is None:
            raise MissingPriorBackendError(
                f"prior {self.name!r} needs the Python package {top!r}, which is not installed",
                package=top,
            )
        from piwsl.labelling.backends import ASEBackend

        self.backend = ASEBackend(dotted, **dict(settings or {}))
        self.method = self.backend.method
        self.program = self.backend.program

    def program_version(self) -> str:
        return str(self.backend.version)

    def settings(self) -> dict[str, Any]:
        return jsonable(self.backend.options)

    def compute_one(self, frame: Frame) -> tuple[float, np.ndarray]:
        try:
            out = self.backend.compute(frame.to_atoms(labels=False))
        except (RuntimeError, ValueError) as err:
            raise PriorError(f"{type(err).__name__}: {err}") from err
        if out["forces"] is None:
            raise ConfigError(f"prior {self.name!r} gives no forces; a prior needs them")
        return float(out["energy"]), np.asarray(out["forces"], dtype=np.float64)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        backend = object.__new__(type(self.backend))
        backend.__dict__.update(self.backend.__dict__, calc=None)  # built again per process
        state["backend"] = backend
        return state
