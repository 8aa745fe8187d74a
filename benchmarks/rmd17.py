"""rMD17 benchmark: train piwsl models through the CLI and report their test errors.

Suites (each run is one ``piwsl train`` call on rMD17 split 01, tested on its 1,000 test frames):

- ``core``   — the baseline of the core issue: SchNet, PaiNN-conservative and PaiNN-direct trained
  on ethanol with energies and forces, 950 training / 50 validation frames.
- ``method`` — plain vs PIWSL (the paper's PITC/PISC defaults, and the second-order variant) in the
  sparse regimes: energy-only N=1000 (950 train / 50 validation, no forces anywhere in training or
  model selection) and energies+forces N=100 (100 train / 50 validation).

Results are appended run by run to ``benchmarks/results/rmd17_<suite>.json`` (so a partial run
keeps what it measured) and summarised in ``rmd17_<suite>.md`` with machine, command and commit.

    python benchmarks/rmd17.py --suite core --jobs 2
    python benchmarks/rmd17.py --suite method --molecules ethanol --models schnet painn_direct
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from common import git_commit, machine_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "rmd17"

MODELS: dict[str, list[str]] = {
    "schnet": [
        "model.name=schnet",
        "model.hparams={features: 64, interactions: 3, n_rbf: 32}",
    ],
    "painn_conservative": [
        "model.name=painn",
        "model.hparams={features: 64, interactions: 3, n_rbf: 20, forces: conservative}",
    ],
    "painn_direct": [
        "model.name=painn",
        "model.hparams={features: 64, interactions: 3, n_rbf: 20, forces: direct}",
    ],
}

#: PIWSL settings: the paper's defaults (weights per kcal²/mol², δ = 0.05 Å) and variants.
METHODS: dict[str, list[str]] = {
    "plain": ["physics.taylor_weight=0", "physics.spatial_weight=0"],
    "piwsl": ["physics.taylor_weight=1.2", "physics.spatial_weight=0.01"],
    "piwsl_2nd": [
        "physics.taylor_weight=1.2",
        "physics.spatial_weight=0.01",
        "physics.second_order=true",
    ],
}

#: The method suite measures every loss in the paper's convention (total energies in kcal/mol),
#: the one in which its physics weights (1.2, 0.01) were tuned.
PAPER_UNITS = [
    "loss.energy_unit=kcal/mol",
    "loss.per_atom_energy=false",
    "physics.weight_energy_unit=kcal/mol",
]

#: Regimes: label set and training-set size.
REGIMES: dict[str, list[str]] = {
    "EF_950": ["data.n_train=950", "data.n_val=50", "data.train_labels=all"],
    "E_only_1000": [
        "data.n_train=950",
        "data.n_val=50",
        "data.train_labels=energy",
        "loss.force_weight=0",
    ],
    "EF_100": ["data.n_train=100", "data.n_val=50", "data.train_labels=all"],
}


@dataclass
class Run:
    molecule: str
    model: str
    regime: str
    method: str
    seed: int
    epochs: int
    extra: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.molecule}-{self.model}-{self.regime}-{self.method}-s{self.seed}"

    def command(self, run_dir: Path, threads: int) -> list[str]:
        def data(kind: str) -> str:
            path = DATA / f"rmd17_{self.molecule}_{kind}_01.npz"
            return str(path)

        return [
            sys.executable,
            "-m",
            "piwsl.cli",
            "train",
            "builtin:ethanol",
            f"data.train={data('train')}",
            f"data.test={data('test')}",
            *REGIMES[self.regime],
            *MODELS[self.model],
            *METHODS[self.method],
            f"training.max_epochs={self.epochs}",
            f"training.seed={self.seed}",
            f"data.split_seed={self.seed}",
            f"training.num_threads={threads}",
            "output.progress_bar=false",
            "output.overwrite=true",
            *self.extra,
            "--run-dir",
            str(run_dir),
        ]


def suite_runs(args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    if args.suite == "core":
        for model in args.models or list(MODELS):
            runs.append(Run("ethanol", model, "EF_950", "plain", 0, args.epochs or 100))
    elif args.suite == "method":
        for molecule in args.molecules:
            for regime, epochs in (("E_only_1000", 60), ("EF_100", 300)):
                for model in args.models or ["schnet", "painn_direct"]:
                    for method in args.methods:
                        for seed in range(args.seeds):
                            runs.append(
                                Run(
                                    molecule,
                                    model,
                                    regime,
                                    method,
                                    seed,
                                    args.epochs or epochs,
                                    extra=PAPER_UNITS,
                                )
                            )
    return runs


def execute(run: Run, work: Path, threads: int, reuse: bool = False) -> dict:
    run_dir = work / run.name
    summary = run_dir / "summary.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    if reuse and summary.exists():
        # a finished run of the same name: collect it (its wall time is the recorded one)
        proc = subprocess.CompletedProcess([], 0, "", "")
        wall = json.loads((run_dir / "run_wall_time.json").read_text())["wall_time_s"]
    else:
        proc = subprocess.run(
            run.command(run_dir, threads), env=env, capture_output=True, text=True, cwd=ROOT
        )
        wall = time.perf_counter() - start
        if proc.returncode == 0:
            (run_dir / "run_wall_time.json").write_text(json.dumps({"wall_time_s": wall}))
    record = {
        "name": run.name,
        "molecule": run.molecule,
        "model": run.model,
        "regime": run.regime,
        "method": run.method,
        "seed": run.seed,
        "max_epochs": run.epochs,
        "threads": threads,
        "wall_time_s": round(wall, 1),
        "returncode": proc.returncode,
    }
    if proc.returncode == 0 and summary.exists():
        s = json.loads(summary.read_text())
        record.update(
            steps=s.get("steps"),
            epochs=s.get("epochs"),
            train_time_s=s.get("train_time_s"),
            monitor=s.get("monitor"),
            test=s.get("test"),
        )
    else:
        record["error"] = (proc.stderr or proc.stdout)[-2000:]
    return record


def fmt(x, digits=1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def write_markdown(path: Path, header: dict, records: list[dict]) -> None:
    lines = [
        f"# rMD17 benchmark — suite `{header['suite']}`",
        "",
        f"Command: `{header['command']}`  ",
        f"Commit: `{header['commit']}`  ",
        f"Machine: {header['machine']['platform']}, {header['machine']['cpu_count']} CPUs, "
        f"torch {header['machine']['torch']}; {header['threads']} thread(s) per run, "
        f"{header['jobs']} run(s) at a time  ",
        f"Date: {header['date']}",
        "",
        "Test set: the 1,000 frames of rMD17 split 01 test file. Errors of the best checkpoint "
        "(validation force MAE; validation energy MAE in the energy-only regime). Energies in "
        "meV (total) and meV/atom; forces in meV/Å.",
        "",
        "| molecule | model | regime | method | seed | E MAE (meV) | E MAE (meV/atom) "
        "| F MAE (meV/Å) | F RMSE (meV/Å) | epochs | steps | wall (s) |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        t = r.get("test") or {}
        lines.append(
            f"| {r['molecule']} | {r['model']} | {r['regime']} | {r['method']} | {r['seed']} "
            f"| {fmt(t.get('energy_mae_meV'))} | {fmt(t.get('energy_mae_meV_per_atom'), 2)} "
            f"| {fmt(t.get('forces_mae_meV_per_A'))} | {fmt(t.get('forces_rmse_meV_per_A'))} "
            f"| {r.get('epochs', '—')} | {r.get('steps', '—')} | {fmt(r['wall_time_s'], 0)} |"
        )
    failed = [r for r in records if r["returncode"] != 0]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['name']}: `{(r.get('error') or '').splitlines()[-1:]}`" for r in failed]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["core", "method"], default="core")
    parser.add_argument("--molecules", nargs="+", default=["ethanol"])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=None)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=["plain", "piwsl"])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--work", default=str(ROOT / "runs" / "benchmarks"))
    parser.add_argument("--tag", default=None, help="suffix of the result files")
    parser.add_argument(
        "--reuse", action="store_true", help="collect finished runs instead of re-training them"
    )
    args = parser.parse_args()

    runs = suite_runs(args)
    stem = f"rmd17_{args.suite}" + (f"_{args.tag}" if args.tag else "")
    header = {
        "suite": args.suite,
        "command": "python benchmarks/rmd17.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": machine_info(),
        "threads": args.threads,
        "jobs": args.jobs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    work = Path(args.work)

    def done(record: dict) -> None:
        records.append(record)
        records.sort(key=lambda r: r["name"])
        (RESULTS / f"{stem}.json").write_text(
            json.dumps({**header, "runs": records}, indent=2) + "\n"
        )
        write_markdown(RESULTS / f"{stem}.md", header, records)
        t = record.get("test") or {}
        print(
            f"[{len(records)}/{len(runs)}] {record['name']}: "
            f"E {fmt(t.get('energy_mae_meV'))} meV, F {fmt(t.get('forces_mae_meV_per_A'))} meV/Å, "
            f"{record['wall_time_s']:.0f} s (rc={record['returncode']})",
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(execute, run, work, args.threads, args.reuse) for run in runs]:
            done(future.result())


if __name__ == "__main__":
    main()
