"""rMD17 benchmark driver: a grid of ``piwsl train`` runs, one result file per run, and a summary.

Every run is one ``piwsl train`` call (the library, not a parallel implementation) on an rMD17
``train`` file (training frames and validation frames drawn from it, disjoint, seeded by the run's
seed), tested on all frames of the matching ``test`` file. Model selection uses validation data
only (validation force MAE; validation energy MAE where training has no forces).

Suites:

- ``grid``     — the method grid: molecules × regimes × models × methods × seeds at an equal
  *step* budget (``--steps``). Regimes: energy-only N=1000 (950 train + 50 validation) and N=100,
  energies+forces N=50, N=100, N=1000. Methods: plain, noisy-node augmentation, PIWSL first order
  (the paper's defaults), PIWSL second order, label-anchored PIWSL, Δ-learning on GFN2-xTB with
  and without PIWSL; parametrised variants such as ``piwsl_2nd[delta=0.01,taylor=12]``.
- ``walltime`` — equal *wall-clock* budget: each run gets the training time of the matching
  ``--time-of`` run of the grid suite (same molecule, model, regime, seed), no step limit.
- ``converged`` — every run trains until validation stops improving (plateau schedule, early
  stopping) under a step cap; the protocol, recipe and cells live in ``converged_protocol.py``.
  A killed run resumes from its last checkpoint when the driver is started again. Results:
  ``<results>/converged[_tag].md/.json`` and ``..._test_curves.png``.
- ``core`` / ``method`` — the earlier baseline and method suites (kept to reproduce old results).

Results: ``<results>/rmd17/<suite>[_tag]/<run>.json`` per run (settings, seed, commit, machine,
wall time, steps, test errors, validation curve); ``<results>/rmd17_<suite>[_tag].md/.json`` is the
summary (mean ± std over seeds, ratios plain/method) and ``..._errors.png`` / ``..._curves.png``
the plots. Finished runs are skipped, so the grid can be spread over several sittings or machines;
``--molecules/--models/--regimes/--methods/--seeds`` run a slice.

    python benchmarks/rmd17.py --suite grid --molecules ethanol aspirin --jobs 2
    python benchmarks/rmd17.py --suite walltime --regimes E_only_1000 --methods plain
    python benchmarks/rmd17.py --suite converged --jobs 2 --seeds 0
    python benchmarks/rmd17.py --quick            # about a minute: the CI smoke test
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import converged_protocol as converged
from common import RESULTS, ROOT, command_line, git_commit, machine_info, relative
from rmd17_cells import (
    GRID_SLICE,
    MODELS,
    N_TRAIN,
    PAPER_UNITS,
    REGIMES,
    last_override,
    method_overrides,
    safe,
)
from rmd17_report import batch_size_of, fmt, test_errors, write_summary

from piwsl.io.atomic import write_json
from piwsl.io.journal import JsonLines

DATA = ROOT.parent / "shared" / "data" / "rmd17"
PACKAGED = ROOT / "src" / "piwsl" / "datasets"  # ethanol only, used when DATA is absent


@dataclass
class Run:
    molecule: str
    model: str
    regime: str
    method: str
    seed: int
    budget: list[str]  # the stopping rule: steps, epochs or wall time
    data_dir: Path
    extra: list[str] = field(default_factory=list)
    suffix: str = ""  # appended to the method in names and tables, e.g. "@time_of_piwsl_2nd"
    split: str = "01"  # rMD17 split: rmd17_<molecule>_{train,test}_<split>.npz

    @property
    def label(self) -> str:
        return self.method + self.suffix

    @property
    def name(self) -> str:
        split = "" if self.split == "01" else f"-split{self.split}"  # split 01: the old names
        return safe(f"{self.molecule}-{self.model}-{self.regime}-{self.label}-s{self.seed}{split}")

    def data(self, kind: str) -> Path:
        return self.data_dir / f"rmd17_{self.molecule}_{kind}_{self.split}.npz"

    def command(self, run_dir: Path, threads: int) -> list[str]:
        """The ``piwsl train`` call (run from the checkout: paths relative to it)."""
        return [
            sys.executable,
            "-m",
            "piwsl.cli",
            "train",
            "builtin:ethanol",
            f"data.train={relative(self.data('train'))}",
            f"data.test={relative(self.data('test'))}",
            *REGIMES[self.regime],
            *MODELS[self.model],
            *self.budget,  # before the method: a variant (plain[lr=…]) overrides the recipe
            *method_overrides(self.method),
            f"training.seed={self.seed}",
            f"data.split_seed={self.seed}",
            f"training.num_threads={threads}",
            "output.progress_bar=false",
            "output.overwrite=true",
            *self.extra,
            "--run-dir",
            relative(run_dir),
        ]

    def settings(self) -> dict:
        return {
            "molecule": self.molecule,
            "model": self.model,
            "regime": self.regime,
            "n_train": N_TRAIN[self.regime],
            "split": self.split,
            "method": self.label,
            "seed": self.seed,
            "budget": self.budget,
            "overrides": [
                *REGIMES[self.regime],
                *MODELS[self.model],
                *method_overrides(self.method),
                *self.extra,
            ],
        }


# --------------------------------------------------------------------------------------------
def steps_budget(steps: int) -> list[str]:
    return [f"training.max_steps={steps}", "training.max_epochs=null"]


def atoms_of(path: Path) -> int:
    """Atoms per structure of an rMD17 file."""
    import numpy as np

    with np.load(path) as data:
        return int(np.asarray(data["nuclear_charges"]).size)


def batch_overrides(args: argparse.Namespace, molecule: str, data_dir: Path) -> list[str]:
    """``training.batch_size`` for ``--atoms-per-batch``: that many atoms per batch whatever the
    molecule (ethanol, 9 atoms: 144 → 16 structures; aspirin, 21 atoms: 144 → 7)."""
    if args.atoms_per_batch is None:
        return []
    probe = Run(molecule, "", "", "", 0, [], data_dir, split=args.split)
    return [
        f"training.batch_size={max(1, round(args.atoms_per_batch / atoms_of(probe.data('train'))))}"
    ]


def grid_runs(args: argparse.Namespace, data_dir: Path) -> list[Run]:
    runs = []
    for molecule in args.molecules:
        extra = [*PAPER_UNITS, *args.set, *batch_overrides(args, molecule, data_dir)]
        for regime, model, method, seed in itertools.product(
            args.regimes, args.models, args.methods, args.seeds
        ):
            budget = steps_budget(args.steps)
            runs.append(
                Run(
                    molecule, model, regime, method, seed, budget, data_dir, extra, split=args.split
                )
            )
    return runs


def walltime_runs(args: argparse.Namespace, data_dir: Path, results: Path) -> list[Run]:
    """Runs given the wall-clock of the matching ``--time-of`` grid run.

    The budget becomes a step count: as many steps as fit into the ``--time-of`` run's training
    time at this method's own measured time per step (from its grid run of the same molecule,
    model, regime and seed). A step count keeps the learning-rate schedule (cosine needs a
    horizon) and does not depend on what else the machine runs at the time.
    """
    grid_dir = results / "rmd17" / ("grid" + (f"_{args.time_tag}" if args.time_tag else ""))

    def grid_record(run: Run, method: str) -> dict | None:
        ref = Run(
            run.molecule, run.model, run.regime, method, run.seed, [], data_dir, split=run.split
        )
        path = grid_dir / f"{ref.name}.json"
        if not path.exists():
            print(f"skip {run.name}: no grid run {path.name}")
            return None
        return json.loads(path.read_text())

    runs = []
    for run in grid_runs(args, data_dir):
        target, own = grid_record(run, args.time_of), grid_record(run, run.method)
        if not target or not own or not own.get("train_time_s") or not own.get("steps"):
            continue
        seconds_per_step = own["train_time_s"] / own["steps"]
        steps = max(1, round(target["train_time_s"] / seconds_per_step))
        run.budget = steps_budget(steps)
        run.suffix = f"@time_of_{args.time_of}"
        runs.append(run)
    return runs


def converged_runs(args: argparse.Namespace, data_dir: Path) -> list[Run]:
    """The cells of ``converged_protocol.BLOCKS``: block by block, within a block seed by seed (a
    block's verdict is complete before the next block starts), filtered by the slice options
    that were given. A method given with variant parameters (``plain[lr=0.005]``) replaces the
    cells' method of that name (recipe tuning)."""
    runs = []
    extra = [*PAPER_UNITS, *args.set]
    for block in converged.BLOCKS:
        for seed in args.seeds:
            for molecule, regime, model, method in block:
                if not all(
                    chosen is None or value in chosen
                    for value, chosen in (
                        (molecule, args.molecules),
                        (regime, args.regimes),
                        (model, args.models),
                    )
                ):
                    continue
                recipe = converged.RECIPES[regime].overrides(N_TRAIN[regime])
                code = converged.COMPILED if molecule in converged.COMPILED_MOLECULES else []
                for variant in (m for m in args.methods or [method] if m.split("[")[0] == method):
                    runs.append(
                        Run(
                            molecule,
                            model,
                            regime,
                            variant,
                            seed,
                            recipe,
                            data_dir,
                            [*code, *extra],
                            split=args.split,
                        )
                    )
    return runs


def legacy_runs(args: argparse.Namespace, data_dir: Path) -> list[Run]:
    """The ``core`` and ``method`` suites of the first benchmark (epoch budgets)."""
    runs = []
    if args.suite == "core":
        for model in args.models:
            budget = [f"training.max_epochs={args.epochs or 100}"]
            runs.append(
                Run("ethanol", model, "EF_950", "plain", 0, budget, data_dir, split=args.split)
            )
        return runs
    for molecule in args.molecules:
        extra = [*PAPER_UNITS, *batch_overrides(args, molecule, data_dir)]
        for (regime, epochs), model, method, seed in itertools.product(
            (("E_only_1000", 60), ("EF_100", 300)), args.models, args.methods, args.seeds
        ):
            budget = [f"training.max_epochs={args.epochs or epochs}"]
            runs.append(
                Run(
                    molecule, model, regime, method, seed, budget, data_dir, extra, split=args.split
                )
            )
    return runs


# --------------------------------------------------------------------------------------------
def validation_curve(run_dir: Path) -> list[dict]:
    """Validation metrics per validation from the run's CSV logs (one log per attempt of a resumed
    run; a step logged again after a resume keeps its latest values)."""
    by_step: dict[int, dict] = {}
    logs = sorted(
        run_dir.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])
    )
    for log in logs:
        with log.open() as handle:
            for row in csv.DictReader(handle):
                values = {
                    k: float(v)
                    for k, v in row.items()
                    if k.startswith("val_") and v not in ("", None)
                }
                if values:
                    step = int(float(row["step"]))
                    by_step[step] = {"epoch": int(float(row["epoch"])), "step": step, **values}
    return [by_step[k] for k in sorted(by_step)]


#: A warning in a run's stderr: piwsl's ``warning: …`` lines and Python's ``…Warning: …``.
WARNING_LINE = re.compile(r"^(?:warning: |\S*Warning: )|^\S+:\d+: \w*Warning: ")


def run_warnings(stderr: str) -> list[str]:
    """The warnings a run printed, each once, in order (at most 50, each at most 500 chars)."""
    seen: dict[str, None] = {}
    for line in (stderr or "").splitlines():
        if WARNING_LINE.search(line.strip()):
            seen.setdefault(line.strip()[:500], None)
    return list(seen)[:50]


#: The first line of a run's ``attempts.jsonl`` (a :class:`piwsl.io.journal.JsonLines` journal).
ATTEMPTS_HEADER = {"journal": "rmd17 attempts", "format": 1}


def log_attempt(run_dir: Path, command: list[str], header: dict, resumed: bool) -> list[dict]:
    """Append this attempt (date, commit, machine, accelerator, code path) to the run's
    ``attempts.jsonl`` and return every attempt so far: a run resumed on another machine (a GPU
    machine, then this one) says so in its result."""
    machine = header["machine"]
    accelerator = last_override(command, "training.accelerator", "auto")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and machine.get("cuda"))
    attempt = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": header["commit"],
        "resumed": resumed,
        "device": f"cuda ({machine.get('cuda')})" if on_gpu else "cpu",
        "host": f"{machine.get('cpu')}, {machine.get('cpu_count')} cores",
        "code_path": code_path(command),
    }
    journal = JsonLines(run_dir / "attempts.jsonl", ATTEMPTS_HEADER, owner="rmd17.py")
    journal.append(attempt)  # a torn line of a killed driver is cut, never read
    lines = journal.lines()
    journal.close()
    return [r for r in map(json.loads, lines) if "device" in r]  # the header is not an attempt


def code_path(command: list[str]) -> str:
    """``compiled`` or ``eager``: what the last ``training.compile`` override of the run says."""
    return "compiled" if last_override(command, "training.compile", "false") == "true" else "eager"


def train(command: list[str], env: dict, deadline: float | None) -> tuple[int | None, str, str]:
    """Run ``command``; stop it when ``deadline`` (``time.monotonic``) passes: return code
    ``None``, and the run resumes from its last checkpoint next time."""
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return None, out, err


def execute(
    run: Run,
    work: Path,
    out: Path,
    threads: int,
    header: dict,
    resume: bool = True,
    deadline: float | None = None,
) -> dict:
    """Train one run (resuming its last checkpoint when a killed earlier attempt left one) and
    write its result file atomically; a failure leaves ``<name>.failed.json``. A run whose result
    appeared since the driver started (another driver, another machine) is not trained again; a
    run still training at ``deadline`` is stopped and resumes next time (``stopped: deadline``)."""
    result = out / f"{run.name}.json"
    if resume and result.exists():
        return {**json.loads(result.read_text()), "skipped": "finished elsewhere"}
    if deadline is not None and time.monotonic() >= deadline:
        return {"name": run.name, "skipped": "deadline"}
    run_dir = work / run.name
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = run.command(run_dir, threads)
    resumed = resume and (run_dir / "checkpoints" / "last.ckpt").is_file()
    if resumed:
        command.append("--resume")
    attempts = log_attempt(run_dir, command, header, resumed)
    start = time.perf_counter()
    returncode, stdout, stderr = train(command, env, deadline)
    wall = time.perf_counter() - start
    if returncode is None:
        return {"name": run.name, "skipped": "deadline", "wall_time_s": round(wall, 1)}
    record = {
        "name": run.name,
        **run.settings(),
        "commit": header["commit"],
        "machine": header["machine"],
        "command": " ".join(["python", *command[1:]]),
        "threads": threads,
        "wall_time_s": round(wall, 1),
        "resumed": resumed,
        "returncode": returncode,
        "code_path": code_path(command),
        "attempts": attempts,
        "warnings": run_warnings(stderr),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    summary = run_dir / "summary.json"
    if returncode == 0 and summary.exists():
        record.update(finished_run(run_dir))
        write_json(result, record, indent=1)
    else:
        record["error"] = (stderr or stdout)[-3000:]
        write_json(out / f"{run.name}.failed.json", record, indent=1)
    return record


def finished_run(run_dir: Path) -> dict:
    """What a finished run's folder says: steps, stopping, test errors and the learning curves."""
    s = json.loads((run_dir / "summary.json").read_text())
    record = {
        "steps": s.get("steps"),
        "epochs": s.get("epochs"),
        "train_time_s": s.get("train_time_s"),
        "stopped_by": s.get("stopped_by"),
        "monitor": s.get("monitor"),
        "best_score": s.get("best_score"),
        "compile": s.get("compile"),
        "test": s.get("test"),
        "validation_curve": validation_curve(run_dir),
    }
    curve = run_dir / "test_curve.json"
    if curve.is_file():
        record["test_curve"] = json.loads(curve.read_text())
    return record


# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The driver's command line: suite, slice, budget, machine use and output options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite", choices=["grid", "walltime", "converged", "core", "method"], default="grid"
    )
    parser.add_argument(
        "--data", default=None, help=f"directory of rMD17 npz files (default {DATA})"
    )
    # slice options: default (None) = the suite's own set (converged: all of its cells)
    parser.add_argument("--molecules", nargs="+", default=None)
    parser.add_argument("--regimes", nargs="+", choices=list(N_TRAIN), default=None)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=None)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--split", default="01", help="rMD17 split: rmd17_<molecule>_{train,test}_<split>.npz"
    )
    parser.add_argument(
        "--atoms-per-batch",
        type=int,
        default=None,
        metavar="N",
        help="batch size per molecule: about N atoms per batch (grid, walltime, legacy suites; "
        "ethanol 144 → 16, aspirin 144 → 7); default: the batch size of --set or the config",
    )
    parser.add_argument("--steps", type=int, default=1000, help="step budget of every grid run")
    parser.add_argument("--epochs", type=int, default=None, help="core/method suites: max_epochs")
    parser.add_argument(
        "--time-of", default="piwsl_2nd", help="walltime: method whose time is the budget"
    )
    parser.add_argument(
        "--time-tag", default=None, help="walltime: tag of the grid results to read"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="extra piwsl overrides for every run, e.g. training.batch_size=8",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no run after SECONDS and stop those still training then (they resume from "
        "their checkpoints at the next start): for a machine lent for a fixed time",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--work", default=str(ROOT / "runs" / "benchmarks"))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--tag", default=None, help="suffix of the result names")
    parser.add_argument("--rerun", action="store_true", help="train again runs that have results")
    parser.add_argument(
        "--summary-only", action="store_true", help="rewrite the summary, train nothing"
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (about a minute)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of ``argv``: the suite's default slice filled in, methods and batch options
    checked, ``--quick`` expanded to its tiny grid."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.suite != "converged":
        for key, default in GRID_SLICE.items():
            if getattr(args, key) is None:
                setattr(args, key, list(default))
    for method in args.methods or []:
        method_overrides(method)  # fail early on a typo
    if args.atoms_per_batch is not None:
        if args.atoms_per_batch < 1:
            parser.error("--atoms-per-batch must be ≥ 1")
        if args.suite == "converged":
            parser.error("--atoms-per-batch: the converged recipe sets the batch size per regime")
        if any(o.startswith("training.batch_size=") for o in args.set):
            parser.error("give --atoms-per-batch or --set training.batch_size=…, not both")
    if args.quick:
        args.suite, args.molecules, args.regimes = "grid", ["ethanol"], ["E_only_100"]
        args.models, args.methods, args.seeds, args.steps = (
            ["schnet_tiny"],
            ["plain", "piwsl_2nd"],
            [0],
            10,
        )
        args.tag = args.tag or "quick"
    return args


def train_all(
    todo: list[Run], args: argparse.Namespace, out: Path, stem: Path, header: dict
) -> None:
    """Train ``todo``, ``--jobs`` at a time, rewriting the summary after each finished run;
    with ``--stop-after`` nothing starts after the deadline and what is still training then
    stops, to resume from its checkpoint at the next start."""
    start = time.perf_counter()
    deadline = None if args.stop_after is None else time.monotonic() + args.stop_after
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(
                execute, run, Path(args.work), out, args.threads, header, not args.rerun, deadline
            )
            for run in todo
        ]
        for k, future in enumerate(as_completed(futures), 1):
            record = future.result()
            elapsed = time.perf_counter() - start
            eta = elapsed / k * (len(todo) - k)
            if record.get("skipped"):
                print(f"[{k}/{len(todo)}] {record['name']}: not trained ({record['skipped']})")
                continue
            e, f = test_errors(record)
            print(
                f"[{k}/{len(todo)}] {record['name']}: E {fmt(e)} meV, F {fmt(f)} meV/Å, "
                f"{record['wall_time_s']:.0f} s (rc={record['returncode']}); ETA {eta / 60:.0f} min",
                flush=True,
            )
            header["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
            write_summary(out, stem, header)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data_dir = Path(args.data) if args.data else (DATA if DATA.is_dir() else PACKAGED)
    results = Path(args.results)
    name = args.suite + (f"_{args.tag}" if args.tag else "")
    out = results / "rmd17" / name
    out.mkdir(parents=True, exist_ok=True)
    if args.suite == "grid":
        runs = grid_runs(args, data_dir)
        batches = {r.molecule: batch_size_of(r.extra) for r in runs}
        batch = ", ".join(f"{m} {b}" for m, b in batches.items()) or batch_size_of(args.set)
        budget = f"{args.steps} optimisation steps per run (batch {batch}), every method alike"
        if args.atoms_per_batch is not None:
            budget += f"; about {args.atoms_per_batch} atoms per batch"
        if args.summary_only:
            budget = "equal steps for every method of a row (see the steps × batch column)"
    elif args.suite == "converged":
        runs = converged_runs(args, data_dir)
        budget = converged.BUDGET
    elif args.suite == "walltime":
        runs = walltime_runs(args, data_dir, results)
        budget = (
            f"wall-clock: the training time of the matching `{args.time_of}` grid run, as steps "
            "at the method's own measured time per step"
        )
    else:
        runs = legacy_runs(args, data_dir)
        budget = "epochs (see the runs)"
    for run in runs:
        for kind in ("train", "test"):
            if not run.data(kind).exists():
                raise SystemExit(f"missing data file {run.data(kind)} (molecule {run.molecule!r})")
    command = command_line(argv, script="benchmarks/rmd17.py")
    header = {
        "suite": name,
        "command": command,
        "commands": [command],
        "split": args.split,
        "commit": git_commit(),
        "machine": machine_info(),
        "threads": args.threads,
        "jobs": args.jobs,
        "budget": budget,
        "data": relative(data_dir),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    stem = results / (name if args.suite == "converged" else f"rmd17_{name}")
    if stem.with_suffix(".json").exists():
        # the summary keeps every command that fed it: earlier slices, resumptions, rewrites
        before = json.loads(stem.with_suffix(".json").read_text())
        earlier = before.get("commands") or [before["command"]]
        header["commands"] = [*earlier, *([command] if command not in earlier else [])]
        if args.summary_only:
            header["threads"], header["jobs"] = before["threads"], before["jobs"]
    todo = [r for r in runs if args.rerun or not (out / f"{r.name}.json").exists()]
    if args.summary_only:
        todo = []
    print(
        f"{len(runs)} runs in the slice, {len(runs) - len(todo)} already done, {len(todo)} to train",
        flush=True,
    )
    train_all(todo, args, out, stem, header)
    write_summary(out, stem, header)
    print(f"summary: {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
