"""What both fine-tuning benchmarks (finetune_xtb_to_dft.py, mp2cbs_workflow.py) share.

The model and loss settings of their runs, the ``piwsl train`` overrides of a pre-training and of
an energy-only run, running a ``piwsl`` command with its output in a log, training once (a
finished run with the same command is reused), the headline numbers of a metrics dict, the
result header and its provenance lines in a report. A helper module: the scripts import it like
``common``; it runs nothing itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, command_line, git_commit, machine_info, provenance_lines

from piwsl.io.atomic import write_json

#: The README main job's model (PaiNN with conservative forces).
MODEL = [
    "model.name=painn",
    "model.cutoff=5.0",
    "model.hparams={features: 64, interactions: 3, n_rbf: 20, forces: conservative}",
]


#: The paper's convention (total energies in kcal/mol), the one its physics weights were tuned in.
PAPER_UNITS = [
    "loss.energy_unit=kcal/mol",
    "loss.per_atom_energy=false",
    "physics.weight_energy_unit=kcal/mol",
]


PLAIN = ["physics.taylor_weight=0", "physics.spatial_weight=0"]


PIWSL_2ND = [
    "physics.taylor_weight=1.2",
    "physics.spatial_weight=0.01",
    "physics.second_order=true",
]


ENERGY_ONLY = ["data.train_labels=energy", "loss.energy_weight=1.0", "loss.force_weight=0"]


def env(threads: int) -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
    )


def run_logged(cmd: list[str], log: Path, threads: int) -> float:
    """Run ``cmd`` from the repository root with its output in ``log``; wall time, s."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd), flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.run(
            cmd, env=env(threads), stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT
        )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"command failed (exit {proc.returncode}), log {log}:\n{tail}")
    return wall


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def pick(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The headline test numbers (meV, meV/atom, meV/Å) of a metrics dict."""
    m = metrics or {}
    keys = (
        "energy_mae_meV",
        "energy_mae_meV_per_atom",
        "energy_rmse_meV",
        "forces_mae_meV_per_A",
        "forces_rmse_meV_per_A",
        "n_frames",
    )
    return {k: m.get(k) for k in keys}


def train_once(
    args: argparse.Namespace,
    work: Path,
    name: str,
    overrides: list[str],
    config: str = "builtin:ethanol",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``piwsl train CONFIG`` in ``work/name`` unless it finished before with the same command.

    Returns the run's ``summary.json`` and its timing record (wall time, command).
    """
    run_dir = work / name
    summary_path, timing = run_dir / "summary.json", run_dir / "run_wall_time.json"
    cmd = [
        sys.executable,
        "-m",
        "piwsl.cli",
        "train",
        config,
        *overrides,
        f"training.num_threads={args.threads}",
        "output.progress_bar=false",
        "output.overwrite=true",
        "--run-dir",
        str(run_dir),
    ]
    done = summary_path.exists() and timing.exists()
    if done and read_json(timing).get("command") != cmd[2:]:
        print(f"{name}: settings changed since the finished run, training again", flush=True)
        done = False
    if args.force or not done:
        wall = run_logged(cmd, work / "logs" / f"{name}.log", args.threads)
        write_json(timing, {"wall_time_s": wall, "command": cmd[2:]})
    return read_json(summary_path), read_json(timing)


def pretrain_overrides(
    args: argparse.Namespace, train: str, test: str, extra: list[str] | None = None
) -> list[str]:
    """``piwsl train`` overrides of a pre-training on energies + forces (``extra``: e.g. a prior)."""
    return [
        f"data.train={train}",
        f"data.test={test}",
        f"data.n_train={args.pretrain_n_train}",
        f"data.n_val={args.pretrain_n_val}",
        "data.split_seed=0",
        *MODEL,
        *PLAIN,
        *(extra or []),
        "loss.energy_weight=1.0",
        "loss.force_weight=10.0",
        f"training.max_epochs={args.pretrain_epochs}",
        f"training.lr={args.pretrain_lr}",
        "training.scheduler=cosine",
        "training.seed=0",
    ]


def energy_only_overrides(
    args: argparse.Namespace, train: str, test: str, n: int, physics: list[str], seed: int
) -> list[str]:
    """``piwsl train`` overrides of an energy-only run on N frames (about ``finetune_steps``
    optimiser steps, paper loss units; ``physics``: the PIWSL settings and anything else)."""
    epochs = max(1, round(args.finetune_steps / math.ceil(n / args.batch_size)))
    return [
        f"data.train={train}",
        f"data.test={test}",
        f"data.n_train={n}",
        f"data.n_val={args.finetune_n_val}",
        "data.split_seed=0",
        *MODEL,
        *ENERGY_ONLY,
        *PAPER_UNITS,
        *physics,
        f"training.batch_size={args.batch_size}",
        f"training.max_epochs={epochs}",
        "training.scheduler=cosine",
        f"training.seed={seed}",
    ]


def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def run_header(script: str, args: argparse.Namespace) -> dict[str, Any]:
    """What both fine-tuning benchmarks record first: command, commit, machine, shared options."""
    return {
        "command": command_line(script=f"benchmarks/{script}"),
        "commit": git_commit(),
        "machine": machine_info(),
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "sizes": args.sizes,
        "seeds": args.seeds,
        "variants": args.variants,
        "finetune_steps": args.finetune_steps,
        "finetune_n_val": args.finetune_n_val,
        "finetune_lr": args.finetune_lr,
        "scratch_lr": args.scratch_lr,
        "batch_size": args.batch_size,
    }


def header_provenance(h: dict[str, Any], extra: str | None = None) -> list[str]:
    """A report's provenance lines (:func:`common.provenance_lines`) from a header with
    :func:`run_header`'s command, commit, machine, date and threads (those of each run)."""
    return provenance_lines(
        h["command"],
        h["commit"],
        h["machine"],
        h["date"],
        extra=extra,
        per_run_threads=h["threads"],
    )


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The pre-training and energy-only training options both fine-tuning benchmarks share."""
    parser.add_argument("--pretrain-epochs", type=int, default=60)
    parser.add_argument("--pretrain-n-train", type=int, default=950)
    parser.add_argument("--pretrain-n-val", type=int, default=50)
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--finetune-steps", type=int, default=800, help="≈ optimiser steps")
    parser.add_argument("--finetune-n-val", type=int, default=50)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--scratch-lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=16)
