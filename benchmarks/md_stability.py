"""MD stability of aspirin models (the issue's protocol), through :func:`piwsl.md.run_md`.

For every checkpoint it runs three protocols, each with ``--trajectories`` independent seeds started
from random frames of the rMD17 aspirin test split (Maxwell–Boltzmann velocities at the protocol
temperature, Δt = 0.5 fs):

- ``nvt300``: NVT at 300 K, 50 ps (Nosé–Hoover chain by default, ``--thermostat`` to change)
- ``nvt500``: NVT at 500 K, 50 ps
- ``nve300``: NVE started at 300 K, 20 ps (energy drift in meV/atom/ps)

Failure: any start-structure bond deviating > 0.5 Å from its start length (Fu et al. 2023), a
non-finite energy/force, or a temperature above 5 × the protocol temperature. h(r) of the stable
runs is compared with the whole test split. Writes ``benchmarks/results/md_stability.json`` and
``.md`` (machine, command, git commit, tables; written by ``md_stability_report.py``) and per run
folders with plots under ``benchmarks/results/md_stability/<model>/<protocol>/``.

    OMP_NUM_THREADS=1 python benchmarks/md_stability.py runs/*/best.pt          # full protocol
    OMP_NUM_THREADS=1 python benchmarks/md_stability.py --quick runs/a/best.pt  # 2 × 1 ps smoke run
    OMP_NUM_THREADS=1 python benchmarks/md_stability.py --quick --untrained-schnet  # no checkpoint:
        # an untrained SchNet (64 features, 3 interactions) — throughput only, stability meaningless

Each finished (model, protocol) run leaves ``benchmark_run.json`` in its folder (written
atomically, with the settings it depends on): running the same command again reuses it, so a killed
benchmark resumes where it stopped (``--rerun`` forces a new run). ``--jobs N`` runs N of them at a
time in separate processes (give each ``--threads 1`` on a small machine).
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import multiprocessing
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    ROOT,
    command_line,
    git_commit,
    machine_info,
    portable,
    relative,
)
from md_stability_report import compare_methods, write_report

from piwsl.io.atomic import write_json, write_text

DATA = ROOT.parent / "shared" / "data" / "rmd17" / "rmd17_aspirin_test_01.npz"
#: per (model, protocol) run folder: its summary and what it depends on (resume key)
DONE_NAME = "benchmark_run.json"

#: name → (ensemble, temperature K, length ps); the ensemble "nvt" becomes --thermostat
PROTOCOLS: dict[str, tuple[str, float, float]] = {
    "nvt300": ("nvt", 300.0, 50.0),
    "nvt500": ("nvt", 500.0, 50.0),
    "nve300": ("nve", 300.0, 20.0),
}
QUICK_LENGTH_PS = 1.0
QUICK_TRAJECTORIES = 2


def expand_checkpoints(patterns: list[str], default_data: str) -> list[tuple[Path, str]]:
    """(model file, start/reference data) pairs: ``PATTERN`` or ``PATTERN::DATA`` (a model of
    another molecule than the default data's)."""
    pairs: list[tuple[Path, str]] = []
    for item in patterns:
        pattern, _, data = item.partition("::")
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise SystemExit(f"no checkpoint matches {pattern!r}")
        pairs.extend((Path(m), data or default_data) for m in matches)
    for p, _ in pairs:
        if not p.exists():
            raise SystemExit(f"checkpoint {str(p)!r} does not exist")
    return pairs


#: file stems that say nothing about the model: such files are named after their run folder
GENERIC_STEMS = ("best_model", "final_model", "model", "best", "last")


def model_labels(paths: list[Path]) -> list[str]:
    """Short unique names: the file stem, or the run folder's name where the stem is generic
    (``runs/x/best_model.pt`` → ``x``, the same in every invocation) or stems clash."""
    stems = [p.stem for p in paths]
    return [
        p.parent.name if p.stem in GENERIC_STEMS or stems.count(p.stem) > 1 else p.stem
        for p in paths
    ]


def untrained_schnet(path: Path, seed: int = 0) -> Path:
    """Save an untrained SchNet for aspirin (H, C, O) — for throughput measurements only."""
    import torch

    from piwsl.models import build_model, save_model

    torch.manual_seed(seed)
    model = build_model(
        "schnet", elements=[1, 6, 8], cutoff=5.0, features=64, interactions=3, n_rbf=32
    )
    save_model(model, path, metadata={"note": "untrained, for MD throughput only"})
    return path


def protocol_config(name: str, args: argparse.Namespace):
    """The :class:`~piwsl.md.MDConfig` of protocol ``name`` under the command-line options."""
    from piwsl.md import FailureCriteria, MDConfig

    ensemble, temperature, length = PROTOCOLS[name]
    return MDConfig(
        ensemble=args.thermostat if ensemble == "nvt" else ensemble,
        temperature_K=temperature,
        timestep_fs=args.timestep,
        length_ps=args.length if args.length is not None else length,
        n_trajectories=args.trajectories,
        seed=args.seed,
        traj_interval=args.output_interval,
        log_interval=args.log_interval,
        failure=(
            FailureCriteria(check_bonds=False, check_temperature=False)
            if args.no_checks
            else FailureCriteria()
        ),
        write_trajectories=not args.no_trajectories,
        progress=not args.no_progress,
    )


def fingerprint(checkpoint: Path, data: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """What a finished (model, protocol) run depends on: reused only when all of it matches."""
    from dataclasses import asdict

    from piwsl.io.hashing import file_hash

    config = asdict(protocol_config(name, args))
    config.pop("progress")
    stat = checkpoint.stat()
    return {
        "checkpoint": relative(checkpoint),
        "checkpoint_size": stat.st_size,
        "checkpoint_mtime": stat.st_mtime,
        "checkpoint_sha256": file_hash(checkpoint),
        "data": relative(data),
        "protocol": name,
        "config": config,
        "skin_A": args.skin,
        "device": args.device,
        "batched": args.batched,
    }


def run_dir_of(args: argparse.Namespace, label: str, name: str) -> Path:
    return args.out / "md_stability" / label / name


def finished(
    args: argparse.Namespace, label: str, checkpoint: Path, data: str, name: str
) -> dict | None:
    """The summary of an earlier run of the same (model, protocol, settings), or None."""
    path = run_dir_of(args, label, name) / DONE_NAME
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    from piwsl.io.jsonable import jsonable

    if not same_run(
        saved.get("fingerprint") or {}, jsonable(fingerprint(checkpoint, data, name, args))
    ):
        return None
    return saved["summary"]


def same_run(saved: dict, now: dict) -> bool:
    """Whether a finished run's fingerprint matches this one's. The device may differ (the run
    records its own: the same model on a GPU machine or this one). A checkpoint whose content hash
    matches may have another mtime (a copy on another machine); fingerprints written before the
    hash was recorded compare the mtime."""
    ignore = {"device", "checkpoint_sha256"}
    if "checkpoint_sha256" in saved:
        if saved["checkpoint_sha256"] != now.get("checkpoint_sha256"):
            return False
        ignore.add("checkpoint_mtime")
    return {k: v for k, v in saved.items() if k not in ignore} == {
        k: v for k, v in now.items() if k not in ignore
    }


@functools.cache
def _structures(path: str) -> list:
    from piwsl.md.runner import load_structures

    return load_structures(path)


def run_protocol(
    label: str, checkpoint: Path, data: str, name: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Run one protocol for one model (in this process); write its summary next to its run."""
    import torch

    from piwsl.io.jsonable import jsonable
    from piwsl.md import run_md
    from piwsl.md.cli import make_calculator

    torch.set_num_threads(args.threads)
    structures = _structures(data)
    config = protocol_config(name, args)
    calc = make_calculator(
        checkpoint, device=args.device, skin=args.skin, batched=args.batched, compile=args.compile
    )
    run_dir = run_dir_of(args, label, name)
    commit = git_commit()  # the code that runs it (HEAD may move while it runs)
    start = time.perf_counter()
    report = run_md(
        calc, structures, config, out_dir=run_dir, reference=structures, calculator_name=label
    )
    summary = dict(report.summary)
    summary["run_dir"] = relative(run_dir.resolve())
    summary["device"] = args.device
    summary["compiled"] = args.compile
    summary["git_commit"] = commit  # of this attempt (a resumed run's earlier ones may differ)
    report_file = run_dir / "md_report.json"  # the library records the paths it was given
    write_text(report_file, portable(report_file.read_text()))
    summary["elapsed_s"] = time.perf_counter() - start
    summary["trajectories"] = [
        {k: v for k, v in t.summary(config.timestep_fs).items() if k not in ("files",)}
        for t in report.trajectories
    ]
    done = {"fingerprint": fingerprint(checkpoint, data, name, args), "summary": summary}
    # atomic: a killed run leaves no half-written summary
    write_json(run_dir / DONE_NAME, jsonable(done), indent=2, default=str)
    print(
        f"[{label} {name}] stable {summary['n_stable']}/{summary['n_trajectories']}, "
        f"{summary['steps_per_s']:.1f} steps/s, "
        f"calculator {100 * summary['calculator_share']:.0f} %, {summary['elapsed_s']:.0f} s",
        flush=True,
    )
    return jsonable(summary)


def run_all(
    tasks: list[tuple[str, Path, str, str]], args: argparse.Namespace
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (label, checkpoint, data, protocol) task, reusing finished ones; ``--jobs``
    processes."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    todo = []
    for label, path, data, name in tasks:
        summary = None if args.rerun else finished(args, label, path, data, name)
        if summary is not None:
            print(f"[{label} {name}] reused the finished run in {summary['run_dir']}", flush=True)
            out[(label, name)] = summary
        else:
            todo.append((label, path, data, name))
    if args.summary_only:
        for label, _, _, name in todo:
            print(f"[{label} {name}] not run yet (left out of the summary)", flush=True)
        return out
    if args.jobs <= 1:
        for label, path, data, name in todo:
            out[(label, name)] = run_protocol(label, path, data, name, args)
        return out
    context = multiprocessing.get_context("spawn")  # no forked OpenMP/torch state
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = {
            pool.submit(run_protocol, label, path, data, name, args): (label, name)
            for label, path, data, name in todo
        }
        for future in as_completed(futures):
            out[futures[future]] = future.result()
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoints",
        nargs="*",
        help="model files or globs; PATTERN::DATA gives those models their own start/reference "
        "frames (default --data)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_TRAJECTORIES} trajectories × {QUICK_LENGTH_PS:g} ps per protocol",
    )
    parser.add_argument(
        "--untrained-schnet",
        action="store_true",
        help="add an untrained SchNet (throughput only; its stability is meaningless)",
    )
    parser.add_argument("--data", default=str(DATA), help="start frames and reference h(r)")
    parser.add_argument("--trajectories", type=int, default=None, help="default 5 (quick: 2)")
    parser.add_argument(
        "--length",
        type=float,
        default=None,
        metavar="PS",
        help="override every protocol's length (ps)",
    )
    parser.add_argument("--protocols", nargs="*", choices=list(PROTOCOLS), default=None)
    parser.add_argument(
        "--thermostat", default="nose-hoover", choices=("nose-hoover", "langevin", "bussi")
    )
    parser.add_argument("--timestep", type=float, default=0.5, metavar="FS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-interval", type=int, default=200, metavar="STEPS")
    parser.add_argument("--log-interval", type=int, default=10, metavar="STEPS")
    parser.add_argument("--no-trajectories", action="store_true")
    parser.add_argument(
        "--no-checks",
        action="store_true",
        help="bond and temperature checks off (throughput runs of untrained models)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batched",
        action="store_true",
        help="all trajectories of a (model, protocol) as one batch of replicas (nve, nose-hoover)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="with --batched: the model as one compiled graph (the same function, faster)",
    )
    parser.add_argument("--skin", type=float, default=1.0, metavar="Å")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--jobs", type=int, default=1, help="(model, protocol) runs at a time, each a process"
    )
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="run nothing: write the report from the finished runs and list the missing ones",
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="run again even where a finished run with the same settings exists",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with the defaults that depend on ``--quick`` filled in."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be ≥ 1")
    if not args.checkpoints and not args.untrained_schnet:
        parser.error("give at least one checkpoint (or --untrained-schnet)")
    if args.trajectories is None:
        args.trajectories = QUICK_TRAJECTORIES if args.quick else 5
    if args.quick and args.length is None:
        args.length = QUICK_LENGTH_PS
    return args


def report_header(args: argparse.Namespace) -> dict[str, Any]:
    """What the report records beside its models: command, commit, machine and settings."""
    result: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": command_line([shlex.quote(a) for a in sys.argv[1:]]),
        "git_commit": git_commit(),
        "machine": machine_info(),
        "quick": args.quick,
        "data": relative(args.data),
        "batched": args.batched,
        "timestep_fs": args.timestep,
        "trajectories": args.trajectories,
        "thermostat": args.thermostat,
        "no_checks": args.no_checks,
        "protocols": {
            k: {"ensemble": e, "temperature_K": t, "length_ps": args.length or n}
            for k, (e, t, n) in PROTOCOLS.items()
        },
        "models": {},
    }
    if args.untrained_schnet:
        result["note"] = (
            "untrained_schnet is a randomly initialised SchNet (64 features, 3 "
            "interactions, cutoff 5 Å): its steps/s is the MD throughput of a small "
            "piwsl model; its stability numbers mean nothing"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    pairs = expand_checkpoints(args.checkpoints, args.data)
    paths, datas = [p for p, _ in pairs], [d for _, d in pairs]
    labels = model_labels(paths)
    tmp = None
    if args.untrained_schnet:
        tmp = tempfile.TemporaryDirectory()
        paths.append(untrained_schnet(Path(tmp.name) / "untrained_schnet.pt", args.seed))
        datas.append(args.data)
        labels.append("untrained_schnet")
    result = report_header(args)
    names = [n for n in PROTOCOLS if not args.protocols or n in args.protocols]
    tasks = [
        (label, path, data, name)
        for label, path, data in zip(labels, paths, datas, strict=True)
        for name in names
    ]
    try:
        summaries = run_all(tasks, args)
    finally:
        if tmp is not None:
            tmp.cleanup()
    for label, path, data in zip(labels, paths, datas, strict=True):
        done = {name: summaries[(label, name)] for name in names if (label, name) in summaries}
        result["models"][label] = {
            "checkpoint": relative(path),
            "data": relative(data),
            "protocols": done,
        }
    result["not_run"] = [
        f"{label} / {name}" for label, _, _, name in tasks if (label, name) not in summaries
    ]
    result["comparisons"] = compare_methods(result)
    write_report(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
