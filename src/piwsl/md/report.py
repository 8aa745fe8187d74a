"""The stability run as a whole: :func:`run_md`, its :class:`MDReport` (JSON) and the plots.

Files written to ``out_dir``: ``traj_KKK.extxyz`` (or ``.traj``) and ``thermo_KKK.csv`` per
trajectory, ``md_report.json``, and the plots ``energy.png`` (total- and potential-energy change,
meV/atom, vs time, ps; thermostatted runs also their conserved quantity where one exists),
``temperature.png`` (K vs ps), ``survival.png`` (fraction of stable trajectories vs ps) and
``hr.png`` (h(r), 1/Å, vs r, Å, simulated against the reference).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ase
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from piwsl.io.atomic import write_json
from piwsl.io.jsonable import jsonable
from piwsl.io.machine import machine_info
from piwsl.md.metrics import (
    DistanceHistogram,
    distance_histogram,
    hr_error,
    survival_curve,
    time_to_failure_stats,
)
from piwsl.md.runner import (
    MDConfig,
    TrajectoryResult,
    check_start_structures,
    hr_edges,
    load_structures,
    pick_start_frames,
    run_trajectory,
    trajectory_hr,
    warn_if_not_conservative,
)

log = logging.getLogger(__name__)

REPORT_NAME = "md_report.json"


def environment_info() -> dict[str, Any]:
    """Machine, versions and thread counts (for reproducible throughput numbers)."""
    return machine_info(torch=False, ase=ase.__version__)


@dataclass
class MDReport:
    """Outcome of a stability run: per-trajectory results, summary metrics, h(r)."""

    config: MDConfig
    trajectories: list[TrajectoryResult]
    formula: str
    n_atoms: int
    calculator: str
    start_source: str
    reference_source: str | None = None
    hr_reference: DistanceHistogram | None = None
    hr_simulated: DistanceHistogram | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=environment_info)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def failure_times_ps(self) -> list[float | None]:
        return [None if t.failure is None else t.failure.time_ps for t in self.trajectories]

    def to_dict(self) -> dict[str, Any]:
        dt = self.config.timestep_fs
        out: dict[str, Any] = {
            "calculator": self.calculator,
            "formula": self.formula,
            "n_atoms": self.n_atoms,
            "start_structures": self.start_source,
            "reference_structures": self.reference_source,
            "config": asdict(self.config),
            "summary": self.summary,
            "definitions": DEFINITIONS,
            "trajectories": [t.summary(dt) for t in self.trajectories],
            "environment": self.environment,
            "files": self.files,
        }
        if self.hr_reference is not None:
            out["hr"] = {
                "r_A": self.hr_reference.centres,
                "reference_per_A": self.hr_reference.density,
                "simulated_per_A": None if self.hr_simulated is None else self.hr_simulated.density,
            }
        return jsonable(out)

    def write_json(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())


DEFINITIONS = {
    "stable_fraction": "trajectories with no failure over the full run / all trajectories",
    "time_to_failure_ps_censored": "failure time; stable runs count as failing at the run length "
    "(right-censored), so the mean/median are lower bounds when some runs are stable",
    "energy_drift_meV_per_atom_per_ps": "NVE only: slope of a linear fit of total energy per atom "
    "vs time (under a thermostat the total energy is not conserved; Bussi and Nosé–Hoover report "
    "the drift of their conserved quantity instead, Langevin has none)",
    "energy_fluctuation_meV_per_atom": "NVE only: std of total energy per atom about the linear fit",
    "temperature_mean_K": "mean (and temperature_std_K the standard deviation) of the "
    "instantaneous temperature over the logged samples after step 0, pooled over the trajectories "
    "the energy metrics use",
    "hr_error": "∫|h_sim(r) − h_ref(r)| dr with h(r) the frame-averaged distribution of "
    "interatomic distances normalised to ∫h dr = 1 (Fu et al. 2023); dimensionless, 0..2. "
    "Finite sampling gives a floor: two halves (500 frames each) of the rMD17 aspirin test set "
    "differ by 0.06, 100 random test frames differ from all 1000 by 0.09 (Δr = 0.02 Å)",
    "calculator_share": "wall time inside the ASE calculator (model) / wall time of the MD loop "
    "(the first force evaluation — loading, compiling the model — is start-up, in neither)",
    "failure_reasons": "bond: a start-structure bond deviates > threshold Å from its initial "
    "length; non_finite: NaN/inf energy, force or position; temperature: above the bound; "
    "error: the calculator raised",
}


def temperature_statistics(trajectories: Sequence[TrajectoryResult]) -> dict[str, Any]:
    """Mean and standard deviation (K) of the instantaneous temperature over the logged samples
    after step 0 (whose temperature is the Maxwell–Boltzmann draw), pooled over trajectories."""
    samples = [t.thermo["temperature_K"][t.thermo["step"] > 0] for t in trajectories if t.thermo]
    values = np.concatenate(samples) if samples else np.zeros(0)
    values = values[np.isfinite(values)]
    return {
        "temperature_mean_K": float(values.mean()) if values.size else None,
        "temperature_std_K": float(values.std()) if values.size > 1 else None,
        "temperature_samples": int(values.size),
    }


def summarise(report: MDReport) -> dict[str, Any]:
    cfg = report.config
    trajs = report.trajectories
    out: dict[str, Any] = dict(time_to_failure_stats(report.failure_times_ps, cfg.length_ps))
    out["length_ps"] = cfg.length_ps
    out["ensemble"] = cfg.ensemble
    out["temperature_K"] = cfg.temperature_K
    out["failure_reasons"] = dict(Counter(t.failure.reason for t in trajs if t.failure))
    t_surv, alive = survival_curve(report.failure_times_ps, cfg.length_ps)
    out["survival_curve"] = {"time_ps": t_surv.tolist(), "fraction_stable": alive.tolist()}
    stable = [t for t in trajs if t.stable]
    pool = stable or trajs
    out["energy_metrics_over"] = "stable trajectories" if stable else "all (none stable)"
    drifts = [t.energy.get("energy_drift_meV_per_atom_per_ps") for t in pool]
    drifts = [d for d in drifts if d is not None]
    flucts = [t.energy.get("energy_fluctuation_meV_per_atom") for t in pool]
    flucts = [f for f in flucts if f is not None]
    if cfg.ensemble == "nve":  # under a thermostat the total energy is not conserved: no drift
        out["energy_drift_meV_per_atom_per_ps_mean"] = float(np.mean(drifts)) if drifts else None
        out["energy_drift_meV_per_atom_per_ps_max_abs"] = (
            float(np.max(np.abs(drifts))) if drifts else None
        )
        out["energy_fluctuation_meV_per_atom_mean"] = float(np.mean(flucts)) if flucts else None
    out.update(temperature_statistics(pool))
    conserved = [t.conserved.get("energy_drift_meV_per_atom_per_ps") for t in pool if t.conserved]
    conserved = [c for c in conserved if c is not None]
    if conserved:
        out["conserved_energy_drift_meV_per_atom_per_ps_mean"] = float(np.mean(conserved))
    errors = [t.hr_error for t in stable if t.hr_error is not None]
    out["hr_error_mean_over_stable"] = float(np.mean(errors)) if errors else None
    out["hr_error_pooled_stable"] = (
        hr_error(report.hr_simulated, report.hr_reference)
        if report.hr_simulated is not None and report.hr_reference is not None
        else None
    )
    out["hr_frames_simulated"] = (
        None if report.hr_simulated is None else report.hr_simulated.n_frames
    )
    out["hr_frames_reference"] = (
        None if report.hr_reference is None else report.hr_reference.n_frames
    )
    steps = sum(t.n_steps for t in trajs)
    wall = sum(t.wall_s for t in trajs)
    calc = sum(t.calculator_s for t in trajs)
    out["total_steps"] = steps
    out["total_wall_s"] = wall
    out["steps_per_s"] = steps / wall if wall > 0 else None
    out["ns_per_day"] = steps / wall * cfg.timestep_fs * 86400 / 1e6 if wall > 0 else None
    out["calculator_share"] = calc / wall if wall > 0 else None
    out["rest_share"] = 1.0 - calc / wall if wall > 0 else None
    return out


def _run_trajectories(calculator, starts, frames, config, out) -> list[TrajectoryResult]:
    """One at a time through an ASE calculator, or all at once through a BatchedPotential."""
    from piwsl.md.potential import BatchedPotential

    if isinstance(calculator, BatchedPotential):
        from piwsl.md.batched import run_batched

        results = run_batched(calculator, starts, frames, config, out)
    else:
        results = [
            run_trajectory(calculator, starts[frame], config, k, frame, out)
            for k, frame in enumerate(frames)
        ]
    for k, result in enumerate(results):
        state = (
            "stable"
            if result.stable
            else (f"failed at {result.failure.time_ps:.3f} ps ({result.failure.reason})")
        )
        log.info("MD trajectory %d/%d from frame %d: %s", k + 1, len(frames), frames[k], state)
    return results


def run_md(
    calculator: Calculator,
    start_structures: str | Path | Sequence[Atoms],
    config: MDConfig | None = None,
    out_dir: str | Path | None = None,
    reference: str | Path | Sequence[Atoms] | None = None,
    calculator_name: str | None = None,
    **overrides: Any,
) -> MDReport:
    """Run ``n_trajectories`` MD trajectories and evaluate their stability.

    Parameters
    ----------
    calculator:
        Any ASE calculator (e.g. :class:`piwsl.calculator.PiwslCalculator`); trajectories run one
        after another through it.
    start_structures:
        A file (extxyz, ASE formats, rMD17 ``.npz``, ``builtin:…``) or a list of ``Atoms``; each
        trajectory starts from a frame drawn with its own seeded generator.
    config:
        :class:`MDConfig`; keyword ``overrides`` replace its fields (``length_ps=1.0``, …).
    out_dir:
        Where trajectories, thermo logs, ``md_report.json`` and plots go (nothing written if None).
    reference:
        Structures whose h(r) the stable trajectories are compared with (e.g. the test split).
    """
    config = config or MDConfig()
    if overrides:
        config = MDConfig(**{**asdict(config), **overrides})
    starts = load_structures(start_structures)
    start_source = str(start_structures) if isinstance(start_structures, (str, Path)) else "<atoms>"
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    frames = pick_start_frames(len(starts), config)
    check_start_structures(starts, frames, config, start_source)
    warn_if_not_conservative(calculator, config)
    begin = time.perf_counter()
    results = _run_trajectories(calculator, starts, frames, config, out)
    template = starts[frames[0]]
    report = MDReport(
        config=config,
        trajectories=results,
        formula=template.get_chemical_formula(),
        n_atoms=len(template),
        calculator=calculator_name or type(calculator).__name__,
        start_source=start_source,
    )
    if reference is not None:
        refs = load_structures(reference)
        report.reference_source = (
            str(reference) if isinstance(reference, (str, Path)) else "<atoms>"
        )
        if refs[0].get_chemical_formula() != report.formula:
            log.warning(
                "reference structures (%s) differ from the start structures (%s): h(r) errors "
                "compare different systems",
                refs[0].get_chemical_formula(),
                report.formula,
            )
        report.hr_reference = distance_histogram(refs, hr_edges(config))
    stable = [t for t in results if t.stable and t.frames]
    for t in stable:
        t.hr = trajectory_hr(t, template, config)
        if report.hr_reference is not None:
            t.hr_error = hr_error(t.hr, report.hr_reference)
    if stable:
        pooled = [p for t in stable for p in t.frames]
        report.hr_simulated = distance_histogram(pooled, hr_edges(config), template=template)
    report.summary = summarise(report)
    report.summary["run_wall_s"] = time.perf_counter() - begin
    if out is not None:
        if config.plots:
            report.files.update(write_plots(report, out))
        report.files["report"] = str(out / REPORT_NAME)
        report.write_json(out / REPORT_NAME)
    return report


def energy_caption(ensemble: str, dashed: bool) -> str:
    """What the top panel of the energy plot shows, for its title."""
    if ensemble == "nve":
        return "total energy (conserved in NVE)"
    text = f"total energy (not conserved under the {ensemble} thermostat)"
    return text + ("; dashed: the thermostat's conserved quantity" if dashed else "")


def energy_plot(report: MDReport, path: Path, title: str) -> str:
    """Total (and, where the thermostat defines one, conserved) and potential energy change,
    meV/atom, vs time (ps); the title says which of them is conserved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    dashed = False
    for t in report.trajectories:
        th = t.thermo
        if th["time_ps"].size == 0:
            continue
        label = f"traj {t.index}" + ("" if t.stable else f" ✗ {t.failure.reason}")
        n = report.n_atoms
        etot = (th["total_eV"] - th["total_eV"][0]) / n * 1000.0
        epot = (th["potential_eV"] - th["potential_eV"][0]) / n * 1000.0
        (line,) = axes[0].plot(th["time_ps"], etot, lw=0.8, label=label)
        axes[1].plot(th["time_ps"], epot, lw=0.6, color=line.get_color())
        if np.isfinite(th["conserved_eV"]).any():
            dashed = True
            cons = (th["conserved_eV"] - th["conserved_eV"][0]) / n * 1000.0
            axes[0].plot(th["time_ps"], cons, lw=0.8, ls="--", color=line.get_color())
    axes[0].set_ylabel("E_tot − E_tot(0) (meV/atom)")
    axes[1].set_ylabel("E_pot − E_pot(0) (meV/atom)")
    axes[1].set_xlabel("time (ps)")
    axes[0].set_title(f"{title}\n{energy_caption(report.config.ensemble, dashed)}", fontsize=10)
    if report.trajectories:
        axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_plots(report: MDReport, out_dir: str | Path) -> dict[str, str]:
    """Energy, temperature, survival and h(r) plots (PNG, Agg backend); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    cfg = report.config
    files: dict[str, str] = {}
    title = f"{report.formula}, {cfg.ensemble} {cfg.temperature_K:g} K, Δt {cfg.timestep_fs:g} fs"

    files["energy_plot"] = energy_plot(report, out / "energy.png", title)

    fig, ax = plt.subplots(figsize=(7, 4))
    for t in report.trajectories:
        if t.thermo["time_ps"].size:
            ax.plot(t.thermo["time_ps"], t.thermo["temperature_K"], lw=0.6, label=f"traj {t.index}")
    ax.axhline(cfg.temperature_K, color="k", ls=":", lw=1, label="target")
    if report.trajectories and cfg.failure.check_temperature:
        bound = report.trajectories[0].temperature_bound_K
        ax.axhline(bound, color="r", ls="--", lw=1, label="failure bound")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("temperature (K)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    files["temperature_plot"] = str(out / "temperature.png")
    fig.savefig(files["temperature_plot"], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    t_grid, alive = survival_curve(report.failure_times_ps, cfg.length_ps)
    ax.step(t_grid, alive, where="post")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("fraction of trajectories stable")
    ax.set_title(f"survival over {len(report.trajectories)} trajectories")
    fig.tight_layout()
    files["survival_plot"] = str(out / "survival.png")
    fig.savefig(files["survival_plot"], dpi=120)
    plt.close(fig)

    if report.hr_simulated is not None or report.hr_reference is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        if report.hr_reference is not None:
            ax.plot(
                report.hr_reference.centres,
                report.hr_reference.density,
                "k-",
                lw=1,
                label="reference",
            )
        if report.hr_simulated is not None:
            err = report.summary.get("hr_error_pooled_stable")
            label = "MD (stable runs)" + ("" if err is None else f", h(r) error {err:.3f}")
            ax.plot(report.hr_simulated.centres, report.hr_simulated.density, lw=1, label=label)
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("h(r) (1/Å)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        files["hr_plot"] = str(out / "hr.png")
        fig.savefig(files["hr_plot"], dpi=120)
        plt.close(fig)
    return files
