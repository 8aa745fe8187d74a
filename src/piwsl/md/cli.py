"""The ``piwsl md CHECKPOINT START_STRUCTURES`` sub-command: parser, calculator loading, summary.

Wire it into the main CLI with::

    from piwsl.md.cli import add_md_parser
    add_md_parser(subparsers)          # registers "md" with set_defaults(func=run_md_cli)
    ...
    return args.func(args)             # run_md_cli returns an exit code
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piwsl.errors import ConfigError
from piwsl.md.config import ENSEMBLES, MDConfig
from piwsl.md.failure import FailureCriteria

if TYPE_CHECKING:
    from piwsl.md.report import MDReport

log = logging.getLogger(__name__)

#: stand-in potentials for smoke tests (not for science): CHECKPOINT = "ase:emt"
ASE_STANDINS = ("ase:emt",)


def make_calculator(
    checkpoint: str | Path,
    device: str = "cpu",
    skin: float = 1.0,
    allow_prior_mismatch: bool = False,
    batched: bool = False,
    compile: bool = False,
):
    """A piwsl calculator for ``checkpoint``, or ASE's EMT for ``"ase:emt"`` (smoke tests);
    ``batched``: a :class:`~piwsl.md.potential.BatchedPotential` (all trajectories at once);
    ``compile``: its model runs as one compiled graph (batched only).

    A model trained on top of a prior runs with it (prior + learned part, see
    :class:`~piwsl.calculator.PiwslCalculator`).
    """
    if compile and not batched:
        raise ConfigError("--compile compiles the batched potential: add --batched")
    if str(checkpoint).lower() == "ase:emt":
        if batched:
            raise ConfigError(
                "--batched runs piwsl models; 'ase:emt' runs one trajectory at a time"
            )
        from ase.calculators.emt import EMT

        return EMT()
    if batched:
        from piwsl.md.potential import BatchedPotential

        return BatchedPotential(
            checkpoint,
            device=device,
            skin=skin,
            allow_prior_mismatch=allow_prior_mismatch,
            compile=compile,
        )
    from piwsl.calculator import PiwslCalculator

    return PiwslCalculator(
        checkpoint, device=device, skin=skin, allow_prior_mismatch=allow_prior_mismatch
    )


def _number(group: Any, flag: str, default: float, metavar: str, text: str, kind=float) -> None:
    """A numeric option whose help ends with its default."""
    group.add_argument(
        flag, type=kind, default=default, metavar=metavar, help=f"{text}, default {default:g}"
    )


def _dynamics_arguments(parser: argparse.ArgumentParser, d: MDConfig) -> None:
    g = parser.add_argument_group("dynamics")
    g.add_argument(
        "--ensemble",
        default=d.ensemble,
        help=f"one of {', '.join(ENSEMBLES)} (aliases: nvt=langevin, nhc=nose-hoover); "
        f"default {d.ensemble}",
    )
    _number(
        g, "--temperature", d.temperature_K, "K", "Maxwell–Boltzmann and thermostat temperature (K)"
    )
    _number(g, "--timestep", d.timestep_fs, "FS", "time step (fs)")
    _number(g, "--length", d.length_ps, "PS", "length of each trajectory (ps)")
    _number(g, "--trajectories", d.n_trajectories, "N", "independent trajectories (seeds)", int)
    g.add_argument("--seed", type=int, default=d.seed, help=f"base seed, default {d.seed}")
    g.add_argument(
        "--frame-selection",
        choices=("random", "sequential"),
        default=d.frame_selection,
        help="start frames: seeded random draws (default) or frames 0, 1, 2, …",
    )
    _number(g, "--friction", d.friction_per_ps, "PER_PS", "Langevin friction (1/ps)")
    _number(
        g, "--thermostat-time", d.thermostat_time_fs, "FS", "Bussi / Nosé–Hoover time constant (fs)"
    )


def _failure_arguments(parser: argparse.ArgumentParser, d: MDConfig, f: FailureCriteria) -> None:
    g = parser.add_argument_group("failure criteria (all on by default)")
    text = "fail when a bond deviates more than this from its start length (Å)"
    _number(g, "--bond-deviation", f.bond_deviation_A, "Å", text)
    g.add_argument("--no-bond-check", action="store_true", help="disable the bond criterion")
    g.add_argument(
        "--max-temperature",
        type=float,
        default=None,
        metavar="K",
        help=f"fail above this temperature (K); default {f.temperature_factor:g}× --temperature",
    )
    g.add_argument(
        "--no-temperature-check", action="store_true", help="disable the temperature bound"
    )
    g.add_argument("--no-finite-check", action="store_true", help="disable the NaN/inf check")
    text = "refuse start structures with two atoms closer than this (Å); 0 disables the check"
    _number(g, "--min-distance", d.min_start_distance_A, "Å", text)
    _number(g, "--check-interval", d.check_interval, "STEPS", "run the checks every … steps", int)


def _output_arguments(parser: argparse.ArgumentParser, d: MDConfig) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("-o", "--output-dir", default="md", help="output folder, default ./md")
    g.add_argument(
        "--reference", default=None, help="structures for the reference h(r), e.g. the test split"
    )
    text = "trajectory frame (and h(r) sample) every … steps"
    _number(g, "--output-interval", d.traj_interval, "STEPS", text, int)
    text = "energy/temperature record every … steps"
    _number(g, "--log-interval", d.log_interval, "STEPS", text, int)
    g.add_argument(
        "--format",
        choices=("extxyz", "traj"),
        default=d.trajectory_format,
        help="trajectory file format, default extxyz",
    )
    g.add_argument("--no-trajectories", action="store_true", help="do not write trajectory files")
    g.add_argument("--no-plots", action="store_true", help="do not write plots")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--batched",
        action="store_true",
        help="run all trajectories at once as replicas of one batch (one model call per step; "
        "nve and nose-hoover only; much faster for small molecules)",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="with --batched: run the model's energy and forces as one compiled graph "
        "(torch.compile; ~1 min to build, then several times faster for small molecules)",
    )
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda), default cpu")
    g.add_argument(
        "--skin",
        type=float,
        default=1.0,
        metavar="Å",
        help="neighbour-list skin (Å); the list is reused until an atom moves skin/2",
    )
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: unchanged)")
    g.add_argument(
        "--allow-prior-mismatch",
        action="store_true",
        help="run a Δ-learning model even if the installed prior differs from the recorded one",
    )


def build_md_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``md`` arguments to ``parser`` (an ``ArgumentParser`` or a sub-parser)."""
    d = MDConfig()
    parser.add_argument("checkpoint", help="model file from `piwsl train` (or 'ase:emt' to test)")
    parser.add_argument(
        "start_structures", help="file of start frames (extxyz, ASE formats, rMD17 .npz, builtin:…)"
    )
    _dynamics_arguments(parser, d)
    _failure_arguments(parser, d, FailureCriteria())
    _output_arguments(parser, d)
    _model_arguments(parser)
    return parser


def add_md_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``md`` on an ``add_subparsers()`` object; sets ``func=run_md_cli``."""
    parser = subparsers.add_parser(
        "md",
        help="MD stability and energy-conservation test of a model",
        description="Run seeded MD trajectories with a model, detect failures (bond > 0.5 Å from "
        "its start length, NaN, temperature bound) and report stability, energy drift, h(r) error "
        "and throughput.",
    )
    build_md_parser(parser)
    parser.set_defaults(func=run_md_cli)
    return parser


def config_from_args(args: argparse.Namespace) -> MDConfig:
    failure = FailureCriteria(
        check_bonds=not args.no_bond_check,
        bond_deviation_A=args.bond_deviation,
        check_finite=not args.no_finite_check,
        check_temperature=not args.no_temperature_check,
        max_temperature_K=args.max_temperature,
    )
    return MDConfig(
        ensemble=args.ensemble,
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        length_ps=args.length,
        n_trajectories=args.trajectories,
        seed=args.seed,
        frame_selection=args.frame_selection,
        friction_per_ps=args.friction,
        thermostat_time_fs=args.thermostat_time,
        log_interval=args.log_interval,
        traj_interval=args.output_interval,
        check_interval=args.check_interval,
        min_start_distance_A=args.min_distance,
        failure=failure,
        write_trajectories=not args.no_trajectories,
        trajectory_format=args.format,
        plots=not args.no_plots,
        progress=not args.no_progress,
    )


def format_summary(report: MDReport) -> str:
    """A short human-readable summary (units in every number)."""
    s = report.summary
    cfg = report.config

    def num(key: str, fmt: str = ".3g") -> str:
        value = s.get(key)
        return "n/a" if value is None else format(value, fmt)

    lines = [
        f"{report.formula} ({report.n_atoms} atoms), {cfg.ensemble} at {cfg.temperature_K:g} K, "
        f"{s['n_trajectories']} × {cfg.length_ps:g} ps, Δt {cfg.timestep_fs:g} fs",
        f"  stable: {s['n_stable']}/{s['n_trajectories']} ({100 * s['stable_fraction']:.0f} %)"
        + (f"; failures: {s['failure_reasons']}" if s["failure_reasons"] else ""),
        f"  time to failure (censored at {cfg.length_ps:g} ps): mean "
        f"{num('mean_time_to_failure_ps_censored')} ps, median "
        f"{num('median_time_to_failure_ps_censored')} ps",
    ]
    if cfg.ensemble == "nve":
        lines.append(
            f"  NVE energy drift {num('energy_drift_meV_per_atom_per_ps_mean')} meV/atom/ps "
            f"(max |drift| {num('energy_drift_meV_per_atom_per_ps_max_abs')}), fluctuation "
            f"{num('energy_fluctuation_meV_per_atom_mean')} meV/atom"
        )
    else:
        lines.append(
            f"  temperature {num('temperature_mean_K', '.1f')} ± {num('temperature_std_K', '.1f')}"
            f" K (mean ± std over {s.get('temperature_samples', 0)} samples; target "
            f"{cfg.temperature_K:g} K)"
        )
        if "conserved_energy_drift_meV_per_atom_per_ps_mean" in s:
            lines.append(
                "  conserved-quantity drift "
                f"{num('conserved_energy_drift_meV_per_atom_per_ps_mean')} meV/atom/ps"
            )
        else:
            lines.append(f"  no energy drift: {cfg.ensemble} conserves no energy-like quantity")
    if s.get("hr_error_pooled_stable") is not None:
        lines.append(
            f"  h(r) error (stable runs vs reference): {num('hr_error_pooled_stable', '.4f')}"
        )
    lines.append(
        f"  throughput {num('steps_per_s', '.1f')} steps/s ({num('ns_per_day', '.3g')} ns/day), "
        f"calculator {100 * (s.get('calculator_share') or 0):.0f} % of wall time"
    )
    if report.files.get("report"):
        lines.append(f"  report: {report.files['report']}")
    return "\n".join(lines)


def run_md_cli(args: argparse.Namespace) -> int:
    """Run ``piwsl md`` from parsed arguments; prints a summary and returns the exit code 0."""
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from piwsl.md.report import run_md

    config = config_from_args(args)
    calculator = make_calculator(
        args.checkpoint,
        device=args.device,
        skin=args.skin,
        allow_prior_mismatch=getattr(args, "allow_prior_mismatch", False),
        batched=getattr(args, "batched", False),
        compile=getattr(args, "compile", False),
    )
    report = run_md(
        calculator,
        args.start_structures,
        config,
        out_dir=args.output_dir,
        reference=args.reference,
        calculator_name=str(args.checkpoint),
    )
    print(format_summary(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m piwsl.md.cli CHECKPOINT START_STRUCTURES …``."""
    parser = build_md_parser(argparse.ArgumentParser(prog="piwsl md"))
    return run_md_cli(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
