"""The ``piwsl label`` and ``piwsl sample`` sub-commands (argument parsing only).

    piwsl label INPUT OUTPUT --method gfn2-xtb|gfn1-xtb|hf|dft|mp2|ccsd(t)|cbs|ase:MOD.CLS
                [--basis B] [--xc XC] [--charge Q] [--spin 2S] [--set key=value ...]
                [--workers N] [--executor local|dask] [--scheduler ADDRESS] [--retry-failed]
                [--no-progress]
    piwsl sample START OUTPUT [--calculator gfn2-xtb|MODEL.pt] [--temperature K] [--frames N]
                [--every k] [--equilibration n] [--seed s] [--no-progress]

Wire them into the main CLI with::

    from piwsl.labelling.cli import add_label_parser, add_sample_parser
    add_label_parser(sub)     # registers "label" with set_defaults(func=run_label_cli)
    add_sample_parser(sub)    # registers "sample" with set_defaults(func=run_sample_cli)
    ...
    return args.func(args)    # both return an exit code (0 ok, 1 when some frames failed)
"""

from __future__ import annotations

import argparse
from typing import Any

from piwsl.errors import ConfigError
from piwsl.io.executors import EXECUTORS


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["basis=cc-pvtz", "forces=true"]`` → dict; values parsed as YAML scalars."""
    import yaml

    options: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"option {item!r} must look like key=value")
        key, _, text = item.partition("=")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        options[key.strip().replace("-", "_")] = value
    return options


def add_label_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``label`` on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "label",
        help="compute reference energies/forces for structures (xTB, HF, DFT, MP2, CCSD(T), CBS)",
        description="Label structures with a reference method; resumable (journal next to OUTPUT).",
    )
    p.add_argument("input", help="structures: extxyz, any ASE format, ASE db, rMD17 npz, builtin:…")
    p.add_argument("output", help="labelled extxyz (REF_energy eV, REF_forces eV/Å, provenance)")
    p.add_argument(
        "--method",
        default="gfn2-xtb",
        help="gfn2-xtb (default), gfn1-xtb, hf, dft, mp2, ccsd(t), cbs or ase:MODULE.CLASS",
    )
    p.add_argument("--basis", default=None, help="basis set (PySCF backends), e.g. cc-pvtz")
    p.add_argument("--xc", default=None, help="functional for --method dft, e.g. b3lyp, pbe")
    p.add_argument("--charge", type=int, default=None, help="total charge (e)")
    p.add_argument("--spin", type=int, default=None, help="unpaired electrons 2S (default 0)")
    p.add_argument(
        "--set",
        dest="options",
        action="append",
        metavar="KEY=VALUE",
        help="backend option, repeatable: forces=true, bases=cc-pvdz,cc-pvtz, density_fit=false, "
        "finite_difference_forces=true (forces of any energy-only method, 6N+1 energies)…",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="parallel processes (default 1); with --executor dask and no --scheduler: the "
        "workers of the local Dask cluster",
    )
    p.add_argument("--threads-per-worker", type=int, default=1, help="BLAS/OpenMP threads each")
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: processes of this machine (default); dask: a Dask cluster, one task per "
        "frame (per energy with finite-difference forces); needs pip install 'piwsl[dask]'",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="Dask scheduler to use, e.g. tcp://10.0.0.5:8786 (default: start a local cluster)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to try to reach --scheduler (default 10)",
    )
    p.add_argument("--index", default=":", help="frames of INPUT to label (ASE index, default ':')")
    p.add_argument("--retry-failed", action="store_true", help="recompute frames that failed")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N new frames")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    p.set_defaults(func=run_label_cli)
    return p


def run_label_cli(args: argparse.Namespace) -> int:
    from piwsl.labelling.runner import label_structures
    from piwsl.terminal import make_console

    options = parse_options(args.options)
    for key in ("basis", "xc", "charge", "spin"):
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    summary = label_structures(
        args.input,
        args.output,
        backend=args.method,
        options=options,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        executor=args.executor,
        scheduler=args.scheduler,
        connect_timeout_s=args.connect_timeout,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        index=args.index,
        max_frames=args.max_frames,
    )
    console = make_console()
    if summary.n_ok + summary.n_failed < summary.n_frames:
        done = summary.n_from_journal + summary.n_computed_now
        console.print(
            f"{done}/{summary.n_frames} frames in the journal {summary.journal}; "
            "run the same command again to continue",
            markup=False,
        )
        return 0
    console.print(summary.text(), markup=False, highlight=False, soft_wrap=True)
    return 1 if summary.n_failed else 0


def add_sample_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sample`` (Langevin MD sampling of structures to label)."""
    from piwsl.labelling.sampling import SamplingConfig

    d = SamplingConfig()
    p = subparsers.add_parser(
        "sample",
        help="sample structures by Langevin MD with a cheap calculator (GFN2-xTB or a model)",
        description="Seeded Langevin MD from START; keeps one frame every --every steps after "
        "--equilibration steps. With a reference method (GFN2-xTB, ase:…) the energies and "
        "forces it computed are kept as labels (REF_energy eV, REF_forces eV/Å) with their "
        "provenance, ready for `piwsl train`; GFN2-xTB needs the `label` extra (tblite).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("start", help="start structure(s): any file piwsl reads, builtin:…")
    p.add_argument("output", help="extxyz of sampled (and labelled) frames")
    p.add_argument(
        "--calculator",
        default="gfn2-xtb",
        help="reference backend (gfn2-xtb, gfn1-xtb, ase:MODULE.CLASS) or a piwsl model .pt",
    )
    p.add_argument("--index", default="0", help="which start frames to use (ASE index)")
    p.add_argument("--temperature", type=float, default=d.temperature_K, help="temperature (K)")
    p.add_argument("--frames", type=int, default=d.n_frames, help="frames to keep in all")
    p.add_argument("--every", type=int, default=d.every, help="MD steps between kept frames")
    p.add_argument(
        "--equilibration",
        type=int,
        default=d.equilibration_steps,
        help="MD steps discarded first (per start structure)",
    )
    p.add_argument("--timestep", type=float, default=d.timestep_fs, help="time step (fs)")
    p.add_argument("--friction", type=float, default=d.friction_per_fs, help="friction (1/fs)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument(
        "--set",
        dest="options",
        action="append",
        metavar="KEY=VALUE",
        help="calculator option, repeatable (e.g. accuracy=0.1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    p.set_defaults(func=run_sample_cli)
    return p


def run_sample_cli(args: argparse.Namespace) -> int:
    from piwsl.io.executors import limit_threads
    from piwsl.labelling.runner import load_structures
    from piwsl.labelling.sampling import (
        SamplingConfig,
        make_sampling_calculator,
        sample_md,
        write_samples,
    )

    limit_threads(1)
    index: Any = args.index
    if isinstance(index, str) and index.lstrip("-").isdigit():
        index = int(index)
    starts = load_structures(args.start, index=index)
    config = SamplingConfig(
        temperature_K=args.temperature,
        n_frames=args.frames,
        every=args.every,
        equilibration_steps=args.equilibration,
        timestep_fs=args.timestep,
        friction_per_fs=args.friction,
        seed=args.seed,
    )
    calc = make_sampling_calculator(args.calculator, parse_options(args.options))
    frames = sample_md(starts, calc, config, progress=not args.no_progress)
    path = write_samples(frames, args.output)
    print(f"wrote {len(frames)} frames sampled at {config.temperature_K:g} K to {path}")
    if frames and "REF_energy" in frames[0].info:
        method = frames[0].info.get("REF_method", args.calculator)
        print(
            f"labels: the {method} energies (REF_energy, eV) and forces (REF_forces, eV/Å) of "
            "every frame, with provenance (REF_method, REF_program, REF_program_version)"
        )
    else:
        print("no labels (a model's predictions are no reference): label them with `piwsl label`")
    return 0
