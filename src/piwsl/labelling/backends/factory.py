"""The builtin backends by name, registered into :data:`BACKENDS` in the order of the package's
table, and :func:`make_backend`, which builds one (``ase:`` paths, finite-difference forces)."""

from __future__ import annotations

from typing import Any

from piwsl.errors import ConfigError
from piwsl.labelling.backends.ase_calculator import ASEBackend
from piwsl.labelling.backends.base import BACKENDS, Backend, as_bool, pop_option
from piwsl.labelling.backends.finite_difference import FD_STEP, FiniteDifferenceBackend
from piwsl.labelling.backends.pyscf import CCSDTBackend, DFTBackend, HFBackend, MP2Backend
from piwsl.labelling.backends.tblite import TBLiteBackend

BACKENDS.add("gfn2-xtb", lambda **o: TBLiteBackend("GFN2-xTB", **o))
BACKENDS.add("gfn1-xtb", lambda **o: TBLiteBackend("GFN1-xTB", **o))
BACKENDS.add("hf", HFBackend)
BACKENDS.add("dft", DFTBackend)
BACKENDS.add("mp2", MP2Backend)
BACKENDS.add("ccsd(t)", CCSDTBackend)


def _register_cbs() -> None:
    """Register ``cbs`` on first use: piwsl.labelling.cbs imports this package's modules, so it
    cannot be imported while the package is being imported."""
    if "cbs" in BACKENDS:
        return
    from piwsl.labelling.cbs import CBSBackend

    BACKENDS.add("cbs", CBSBackend)


def make_backend(spec: str, **options: Any) -> Backend:
    """Build a backend from its name (``"gfn2-xtb"``, ``"mp2"``, ``"ase:pkg.mod.Class"``, …)."""
    _register_cbs()
    options = dict(options)
    finite_difference = pop_option(options, "finite_difference_forces", False, as_bool)
    step = pop_option(options, "finite_difference_step", None, float)
    if step is not None and not finite_difference:
        raise ConfigError("finite_difference_step is set but finite_difference_forces is not")
    text = spec.strip()
    if text.lower().startswith("ase:"):
        backend: Backend = ASEBackend(text[4:], **options)
    else:
        backend = BACKENDS.get(text.lower())(**options)
    if not finite_difference:
        return backend
    if getattr(backend, "want_forces", False):
        raise ConfigError(
            f"backend {text!r}: finite_difference_forces=true replaces the analytic forces; "
            "drop forces=true"
        )
    return FiniteDifferenceBackend(backend, FD_STEP if step is None else step)


def backend_names() -> list[str]:
    _register_cbs()
    return [*BACKENDS.names(), "ase:<module>.<Class>"]
