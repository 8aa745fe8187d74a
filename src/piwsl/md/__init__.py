"""MD stability and energy-conservation testing (``piwsl md``).

Runs seeded MD trajectories (NVE, Langevin, Bussi, Nosé–Hoover chain) through any ASE calculator,
stops each at its first failure (broken bond, non-finite output, runaway temperature), and reports
the stable fraction, time to failure, NVE energy drift, h(r) error against reference structures and
throughput, with trajectories, a JSON report and plots.

Modules: :mod:`~piwsl.md.config` (settings), :mod:`~piwsl.md.failure` (criteria),
:mod:`~piwsl.md.metrics` (drift, survival, h(r)), :mod:`~piwsl.md.runner` (one trajectory),
:mod:`~piwsl.md.report` (:func:`run_md`, JSON, plots), :mod:`~piwsl.md.cli` (``piwsl md``).
Names are imported lazily so that building the CLI parser stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ENSEMBLES": "piwsl.md.config",
    "MDConfig": "piwsl.md.config",
    "Failure": "piwsl.md.failure",
    "FailureCriteria": "piwsl.md.failure",
    "FailureDetector": "piwsl.md.failure",
    "find_bonds": "piwsl.md.failure",
    "distance_histogram": "piwsl.md.metrics",
    "energy_drift": "piwsl.md.metrics",
    "hr_error": "piwsl.md.metrics",
    "survival_curve": "piwsl.md.metrics",
    "MDReport": "piwsl.md.report",
    "run_md": "piwsl.md.report",
    "write_plots": "piwsl.md.report",
    "TimedCalculator": "piwsl.md.runner",
    "TrajectoryResult": "piwsl.md.runner",
    "run_trajectory": "piwsl.md.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'piwsl.md' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
