"""The ``gfn2-xtb`` and ``gfn1-xtb`` priors: tblite, through piwsl's labelling backend.

The work is done by :class:`piwsl.labelling.backends.TBLiteBackend` (the same code that labels
data with ``piwsl label --method gfn2-xtb``). ``prior.charge`` (e) and ``prior.multiplicity``
(2S + 1; tblite's ``uhf`` = multiplicity − 1) are the prior's own keys; ``prior.settings`` takes
the backend's numerical options ``accuracy`` (default 1.0), ``electronic_temperature`` (K,
default 300) and ``max_iterations`` (default 250). tblite is imported only when a prior is built;
without it :class:`~piwsl.priors.base.MissingPriorBackendError` says what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from piwsl.data.frames import Frame
from piwsl.errors import ConfigError, PriorError
from piwsl.priors.base import PRIORS, MissingPriorBackendError, Prior

#: options of the backend a prior may set in ``prior.settings``
SETTINGS = ("accuracy", "electronic_temperature", "max_iterations")


def require_tblite(name: str) -> None:
    """Raise :class:`MissingPriorBackendError` when tblite's Python interface cannot be imported."""
    try:
        importlib.import_module("tblite.interface")
    except ImportError as err:
        raise MissingPriorBackendError(
            f"prior {name!r} needs the Python package 'tblite', which cannot be imported ({err}); "
            "pip install tblite (or pip install 'piwsl[label]')",
            package="tblite",
        ) from None


class TBLitePrior(Prior):
    """GFN1-/GFN2-xTB single points (energy + analytic forces) as a prior."""

    program = "tblite"

    def __init__(
        self,
        method: str,
        charge: int = 0,
        multiplicity: int = 1,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(charge, multiplicity)
        self.method = method
        self.name = method.lower()
        opts = dict(settings or {})
        for key, use in (("charge", "prior.charge"), ("spin", "prior.multiplicity")):
            if key in opts:
                raise ConfigError(f"prior.settings.{key}: set {use} instead")
        require_tblite(self.name)
        from piwsl.labelling.backends import TBLiteBackend

        try:
            self.backend = TBLiteBackend(
                method, charge=self.charge, spin=self.multiplicity - 1, **opts
            )
        except ConfigError as err:
            raise ConfigError(f"prior.settings: {err}") from None

    def program_version(self) -> str:
        from piwsl.labelling.backends import package_version

        return package_version("tblite")

    def settings(self) -> dict[str, Any]:
        b = self.backend
        return {
            "accuracy": b.accuracy,
            "electronic_temperature": b.electronic_temperature,
            "max_iterations": b.max_iterations,
        }

    def compute_one(self, frame: Frame) -> tuple[float, np.ndarray]:
        from piwsl.labelling.backends import BackendError

        try:
            out = self.backend.compute(frame.to_atoms(labels=False))
        except BackendError as err:
            raise PriorError(str(err)) from err
        return float(out["energy"]), np.asarray(out["forces"], dtype=np.float64)

    def _session_compute(self) -> Callable[[Frame], tuple[float, np.ndarray]]:
        """Each SCF restarts from the previous call's result (see ``TBLiteSession``)."""
        from piwsl.labelling.backends import BackendError

        session = self.backend.session()

        def compute(frame: Frame) -> tuple[float, np.ndarray]:
            try:
                return session(frame.to_atoms(labels=False))
            except BackendError as err:
                raise PriorError(str(err)) from err

        return compute


PRIORS.add(
    "gfn2-xtb", lambda charge, mult, settings: TBLitePrior("GFN2-xTB", charge, mult, settings)
)
PRIORS.add(
    "gfn1-xtb", lambda charge, mult, settings: TBLitePrior("GFN1-xTB", charge, mult, settings)
)
