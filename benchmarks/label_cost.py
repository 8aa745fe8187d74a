"""Wall time per ethanol frame of the reference-labelling backends, single thread.

Labels frame 0 of the built-in rMD17 ethanol set (9 atoms) with each method through
:func:`piwsl.labelling.make_backend` — exactly the code path of ``piwsl label`` — in a fresh
subprocess per method (so one method's caches or memory cannot help another) with a time cap,
and writes ``benchmarks/results/label_cost.{json,md}`` with the machine, command, versions, git
commit and load average, plus the projected cost of an MP2/CBS(DZ,TZ) data set.

    OMP_NUM_THREADS=1 python benchmarks/label_cost.py                  # all methods
    OMP_NUM_THREADS=1 python benchmarks/label_cost.py --only gfn2-xtb  # one method
    OMP_NUM_THREADS=1 python benchmarks/label_cost.py --executors      # local pool vs Dask

``--executors`` times whole ``label_structures`` runs (journal and output included) on this
process / a local pool / a Dask ``LocalCluster`` with 1 and 2 workers, each in a fresh
subprocess, and writes ``benchmarks/results/label_cost_executors.{json,md}``: speed-up over the
in-process run, and the fixed cost and overhead per task from two GFN2-xTB runs of different size
(a straight line through total wall time minus compute time per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, git_commit, machine_info, provenance_lines

from piwsl.io.atomic import write_json, write_text

#: name → (backend, options, repeats, cap in s for the whole measurement)
METHODS: dict[str, tuple[str, dict, int, float]] = {
    "gfn2-xtb": ("gfn2-xtb", {}, 20, 60),
    "df-mp2/cc-pvdz": ("mp2", {"basis": "cc-pvdz"}, 3, 120),
    "df-mp2/cc-pvtz": ("mp2", {"basis": "cc-pvtz"}, 2, 180),
    "mp2-gradient/cc-pvdz": ("mp2", {"basis": "cc-pvdz", "forces": True}, 2, 180),
    "mp2-gradient/cc-pvtz": ("mp2", {"basis": "cc-pvtz", "forces": True}, 1, 60),
    "ccsd(t)/cc-pvdz": ("ccsd(t)", {"basis": "cc-pvdz"}, 1, 120),
    "df-hf+df-mp2/cc-pvtz": ("mp2", {"basis": "cc-pvtz", "density_fit_hf": True}, 2, 180),
    "cbs-energy(dz,tz)": ("cbs", {"bases": "cc-pvdz,cc-pvtz"}, 2, 240),
    "cbs-energy(dz,tz), df-hf": (
        "cbs",
        {"bases": "cc-pvdz,cc-pvtz", "density_fit_hf": True},
        2,
        240,
    ),
    "cbs-forces(dz,tz)": ("cbs", {"bases": "cc-pvdz,cc-pvtz", "forces": True}, 1, 500),
}


def measure_one(name: str) -> dict:
    """Run in a subprocess: time ``repeats`` labels of ethanol frame 0 (after one warm-up call
    of the backend on H2 so that imports and library start-up are not counted)."""
    from ase import Atoms

    from piwsl.io.executors import limit_threads
    from piwsl.labelling import make_backend
    from piwsl.labelling.runner import load_structures

    limit_threads(1)
    spec, options, repeats, _ = METHODS[name]
    atoms = load_structures("builtin:ethanol_train", index=0)[0]
    backend = make_backend(spec, **options)
    warm = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    backend.compute(warm)
    times, cpu = [], []
    out = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = backend.compute(atoms)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert out is not None
    prov = out["provenance"]
    return {
        "method": name,
        "backend": spec,
        "options": options,
        "repeats": repeats,
        "wall_s_median": statistics.median(times),
        "wall_s_min": min(times),
        "wall_s_all": times,
        "cpu_s_median": statistics.median(cpu),
        "cpu_s_all": cpu,
        "energy_eV": out["energy"],
        "has_forces": out["forces"] is not None,
        "n_basis": prov.get("n_basis"),
        "program": f"{prov.get('program')} {prov.get('program_version')}",
        "status": "ok",
    }


def df_hf_check() -> dict:
    """CBS(DZ,TZ) energies with a density-fitted vs a conventional HF reference on 4 ethanol
    frames: the difference matters for relative energies only through its spread."""
    import numpy as np

    from piwsl.io.executors import limit_threads
    from piwsl.labelling import make_backend
    from piwsl.labelling.runner import load_structures

    limit_threads(1)
    frames = load_structures("builtin:ethanol_train", index="0:400:100")
    conv = make_backend("cbs", bases="cc-pvdz,cc-pvtz")
    dfit = make_backend("cbs", bases="cc-pvdz,cc-pvtz", density_fit_hf=True)
    e_conv = np.array([conv.compute(f)["energy"] for f in frames])
    e_df = np.array([dfit.compute(f)["energy"] for f in frames])
    diff = (e_df - e_conv) * 1000
    return {
        "frames": "builtin:ethanol_train[0:400:100]",
        "df_minus_conventional_meV": diff.tolist(),
        "spread_of_difference_meV": float(diff.max() - diff.min()),
        "spread_of_energies_meV": float((e_conv.max() - e_conv.min()) * 1000),
    }


#: executor configurations: name → (executor, workers)
EXECUTORS: dict[str, tuple[str, int]] = {
    "local, 1 worker (in this process)": ("local", 1),
    "local pool, 2 workers": ("local", 2),
    "dask LocalCluster, 1 worker": ("dask", 1),
    "dask LocalCluster, 2 workers": ("dask", 2),
}
#: workloads: name → (backend, options, ethanol frames)
WORKLOADS: dict[str, tuple[str, dict, int]] = {
    "gfn2-xtb x40": ("gfn2-xtb", {}, 40),
    "gfn2-xtb x400": ("gfn2-xtb", {}, 400),
    "df-mp2/cc-pvdz x6": ("mp2", {"basis": "cc-pvdz"}, 6),
}


def measure_executor(config: str, workload: str) -> dict:
    """Run in a subprocess: one ``label_structures`` run of ``workload`` on ``config``, after a
    warm-up of the backend in this process (imports excluded; workers' start-up included)."""
    import tempfile

    from ase import Atoms

    from piwsl.io.executors import limit_threads
    from piwsl.labelling import label_structures, make_backend
    from piwsl.labelling.runner import load_structures

    limit_threads(1)
    kind, workers = EXECUTORS[config]
    spec, options, n_frames = WORKLOADS[workload]
    frames = load_structures("builtin:ethanol_train", index=f"0:{n_frames}")
    backend = make_backend(spec, **options)
    backend.compute(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]))
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        summary = label_structures(
            frames, Path(tmp) / "out.xyz", backend, n_workers=workers, executor=kind, progress=False
        )
        wall, client_cpu = time.perf_counter() - t0, time.process_time() - c0
        out = _read(Path(tmp) / "out.xyz")
    assert summary.n_ok == n_frames, summary.text()
    return {
        "config": config,
        "workload": workload,
        "tasks": n_frames,
        "wall_s": wall,
        "compute_s": summary.compute_time_s,
        "compute_cpu_s": sum(a.info["REF_cpu_time_s"] for a in out),
        "client_cpu_s": client_cpu,
        "worker_processes_seen": len({a.info["REF_worker"] for a in out}),
        "load_average_1_5_15": list(os.getloadavg()),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _read(path: Path) -> list:
    import ase.io

    return ase.io.read(path, ":")


def run_executors(rounds: int) -> list[dict]:
    """Every workload on every configuration, each in a fresh subprocess, interleaved in
    ``rounds`` rounds so that the load of the shared machine drifts over all cells alike."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    rows = []
    for repeat in range(rounds):
        for workload in WORKLOADS:
            for config in EXECUTORS:
                proc = subprocess.run(
                    [sys.executable, __file__, "--one-executor", config, workload],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"{config} / {workload}: {proc.stderr[-1500:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["round"] = repeat
                print(f"{repeat} {workload:>18} | {config:<34} {row['wall_s']:7.2f} s", flush=True)
                rows.append(row)
    return rows


def executor_cells(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Medians over the rounds of every measured quantity, per (configuration, workload)."""
    cells: dict[tuple[str, str], dict] = {}
    for config in EXECUTORS:
        for workload in WORKLOADS:
            runs = [r for r in rows if (r["config"], r["workload"]) == (config, workload)]
            keys = ("wall_s", "compute_s", "compute_cpu_s", "client_cpu_s")
            cell = {k: statistics.median(r[k] for r in runs) for k in keys}
            cell["wall_all_s"] = [r["wall_s"] for r in runs]
            cell["tasks"] = runs[0]["tasks"]
            cells[config, workload] = cell
    return cells


def executor_summary(rows: list[dict]) -> list[dict]:
    """Per configuration, from the median cells: speed-up on each workload over the in-process
    run; from the two GFN2-xTB sizes, the fixed cost and the overhead per task, where overhead =
    wall time − compute time / workers; and the client's CPU time per task."""
    cells = executor_cells(rows)
    base = next(iter(EXECUTORS))
    out = []
    for config, (_, workers) in EXECUTORS.items():
        item: dict = {"config": config}
        for workload in WORKLOADS:
            item[f"speedup {workload}"] = (
                cells[base, workload]["wall_s"] / cells[config, workload]["wall_s"]
            )
        small, large = cells[config, "gfn2-xtb x40"], cells[config, "gfn2-xtb x400"]
        extra = [c["wall_s"] - c["compute_s"] / workers for c in (small, large)]
        per_task = (extra[1] - extra[0]) / (large["tasks"] - small["tasks"])
        item["overhead_per_task_ms"] = 1000 * per_task
        item["fixed_cost_s"] = extra[0] - per_task * small["tasks"]
        item["client_cpu_per_task_ms"] = 1000 * large["client_cpu_s"] / large["tasks"]
        out.append(item)
    return out


def run_all(names: list[str]) -> list[dict]:
    rows = []
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for name in names:
        cap = METHODS[name][3]
        print(f"{name} (cap {cap:.0f} s) ...", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", name],
                env=env,
                capture_output=True,
                text=True,
                timeout=cap,
            )
        except subprocess.TimeoutExpired:
            rows.append(
                {
                    "method": name,
                    "status": f"skipped: over the {cap:.0f} s cap",
                    "wall_s_median": None,
                }
            )
            print(f"  over {cap:.0f} s, skipped", flush=True)
            continue
        if proc.returncode != 0:
            rows.append(
                {
                    "method": name,
                    "status": "error: " + proc.stderr.strip()[-500:],
                    "wall_s_median": None,
                }
            )
            print(f"  error: {proc.stderr.strip()[-300:]}", flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["process_wall_s"] = time.perf_counter() - t0
        row["load_average_1_5_15"] = list(os.getloadavg())
        row["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rows.append(row)
        print(
            f"  {row['wall_s_median']:.3g} s per frame (min {row['wall_s_min']:.3g} s)", flush=True
        )
    return rows


def machine() -> dict:
    """This report's machine record (its own keys, which its markdown reads) from the shared
    description (``common.machine_info``) and commit (``common.git_commit``)."""
    from importlib.metadata import version

    info = machine_info(torch=False)
    commit = git_commit()
    return {
        "cpu": info["cpu"],
        "cpus_visible": info["cpu_count"],
        "cpus_usable": info["cpus_usable"],
        "load_average_1_5_15": info["load_average_1_5_15"],
        "platform": info["platform"],
        "python": info["python"],
        "omp_num_threads": info["OMP_NUM_THREADS"],
        "versions": {p: version(p) for p in ("pyscf", "tblite", "ase", "numpy")},
        "git_commit": commit.split()[0],
        "git_dirty": "uncommitted" in commit,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def projection(rows: list[dict]) -> dict:
    # CPU time of the single-threaded process ≈ wall time on an idle core; the wall times
    # measured here include waiting for the shared cores
    by = {r["method"]: r.get("cpu_s_median") for r in rows}
    by_wall = {r["method"]: r.get("wall_s_median") for r in rows}
    e_frame = by.get("cbs-energy(dz,tz)")
    e_frame_df = by.get("cbs-energy(dz,tz), df-hf")
    f_frame = by.get("cbs-forces(dz,tz)")
    out: dict = {"train_frames": 300, "test_frames": 100}
    if e_frame is not None:
        out["cbs_energy_s_per_frame"] = e_frame
        out["train_core_hours"] = 300 * e_frame / 3600
    if f_frame is not None:
        out["cbs_forces_s_per_frame"] = f_frame
        out["test_core_hours"] = 100 * f_frame / 3600
    if by_wall.get("cbs-energy(dz,tz)") and by_wall.get("cbs-forces(dz,tz)"):
        out["total_hours_at_measured_wall_times_1_worker"] = (
            300 * by_wall["cbs-energy(dz,tz)"] + 100 * by_wall["cbs-forces(dz,tz)"]
        ) / 3600
    g_dz = by.get("mp2-gradient/cc-pvdz")
    if f_frame is not None and g_dz is not None:
        # CBS forces = HF + MP2 gradients in both bases; the TZ part is what is left over
        out["tz_gradient_part_s_estimate"] = f_frame - g_dz
    if e_frame_df is not None and f_frame is not None:
        out["cbs_energy_df_hf_s_per_frame"] = e_frame_df
        out["total_core_hours_df_hf_train"] = (300 * e_frame_df + 100 * f_frame) / 3600
    if e_frame is not None and f_frame is not None:
        total = 300 * e_frame + 100 * f_frame
        out["total_core_hours"] = total / 3600
        out["wall_hours_1_worker"] = total / 3600
        out["wall_hours_2_workers_if_both_cores_free"] = total / 2 / 3600
    return out


def provenance(result: dict, shared: str, versions: dict[str, str]) -> list[str]:
    """The report's provenance lines (common.provenance_lines) from this benchmark's own
    ``machine()`` record: ``shared`` says how the machine was shared, ``versions`` the packages."""
    m = result["machine"]
    described = {
        "cpu": m["cpu"],
        "cpu_count": m["cpus_visible"],
        "platform": m.get("platform"),
        "OMP_NUM_THREADS": m["omp_num_threads"],
    }
    return provenance_lines(
        result["command"],
        m["git_commit"],
        described,
        m["date_utc"],
        commit_note="working tree modified" if m["git_dirty"] else None,
        extra=f"{m['cpus_usable']} of them usable, {shared}",
        more=["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())],
    )


def cost_header_lines(result: dict) -> list[str]:
    """Title, provenance (command, commit, machine, versions) and the method paragraph."""
    m = result["machine"]
    loads = ", ".join(f"{x:.1f}" for x in m["load_average_1_5_15"])
    shared = (
        f"load average {loads} (shared machine: other jobs ran at the same time), one thread "
        "per calculation"
    )
    return [
        "# Reference-labelling cost per ethanol frame (rMD17 ethanol frame 0, 9 atoms)",
        "",
        *provenance(result, shared, m["versions"]),
        "",
        "Each method runs in a fresh process, warmed up on H2 (imports and library start-up "
        "excluded), then times `backend.compute(ethanol)` (the `piwsl label` code path). "
        "Frozen core (C/O 1s) for MP2 and CCSD(T); DF-MP2 uses the cc-pVXZ-RI auxiliary basis on a "
        "conventional HF reference (rows marked df-hf: a density-fitted HF reference too); MP2 "
        "gradients are conventional (PySCF has no DF-MP2 gradient). CBS = HF (Halkier "
        "exp(−1.63X)) + MP2 correlation (X⁻³) from cc-pVDZ/cc-pVTZ. CPU time of the "
        "single-threaded process is the better measure on this shared machine: wall times "
        "include waiting for a core.",
        "",
    ]


def cost_table_lines(rows: list[dict]) -> list[str]:
    """The per-method timing table (a skipped or failed method shows its status)."""
    lines = [
        "| method | wall s per frame (median) | wall min | CPU s (median) | repeats | "
        "basis functions | forces |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.get("wall_s_median") is None:
            lines.append(f"| {r['method']} | {r['status']} | | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['wall_s_median']:.3g} | {r['wall_s_min']:.3g} | "
            f"{r['cpu_s_median']:.3g} | {r['repeats']} | {r.get('n_basis') or ''} | "
            f"{'yes' if r['has_forces'] else 'no'} |"
        )
    return lines


def projection_lines(p: dict) -> list[str]:
    """The "Projected cost" section from :func:`projection`'s numbers."""
    lines = ["", "## Projected cost of the MP2/CBS(DZ,TZ) ethanol set", ""]
    if "total_core_hours" not in p:
        lines.append("Not projected: a CBS measurement was skipped or failed (see the table).")
        return lines
    lines += [
        "CPU seconds of the single-threaded runs (≈ wall time on an idle core):",
        "",
        f"- 300 training frames, CBS energies only: 300 × {p['cbs_energy_s_per_frame']:.1f} s "
        f"= {p['train_core_hours']:.2f} core-hours",
        f"- 100 test frames, CBS energies + CBS MP2 forces: 100 × "
        f"{p['cbs_forces_s_per_frame']:.1f} s = {p['test_core_hours']:.2f} core-hours "
        f"(of which the cc-pVTZ HF + MP2 gradients take about "
        f"{p.get('tz_gradient_part_s_estimate', float('nan')):.0f} s per frame: the "
        "MP2 gradient row for cc-pVTZ was skipped by its 60 s cap, but the CBS-forces row "
        "includes it)",
        f"- total {p['total_core_hours']:.2f} core-hours: {p['wall_hours_1_worker']:.2f} h "
        f"wall with one worker, about {p['wall_hours_2_workers_if_both_cores_free']:.2f} h "
        "with `--workers 2` if both cores of this machine were free.",
    ]
    if "total_core_hours_df_hf_train" in p:
        lines.append(
            f"- with a density-fitted HF reference for the 300 energy-only frames "
            f"(`--set density_fit_hf=true`, {p['cbs_energy_df_hf_s_per_frame']:.1f} s "
            f"per frame): total {p['total_core_hours_df_hf_train']:.2f} core-hours."
        )
    lines.append(
        f"- at the wall times measured here under load (other jobs sharing the 2 cores), one "
        f"worker would take {p.get('total_hours_at_measured_wall_times_1_worker', 0):.2f} h."
    )
    return lines


def df_hf_check_lines(c: dict | None) -> list[str]:
    """The "Density-fitted HF reference: accuracy" section (empty without a check result)."""
    if not c:
        return []
    diffs = ", ".join(f"{x:.3f}" for x in c["df_minus_conventional_meV"])
    return [
        "",
        "## Density-fitted HF reference: accuracy",
        "",
        f"CBS(DZ,TZ) energy with DF-HF minus conventional HF on {c['frames']}: {diffs} meV "
        f"per molecule; spread {c['spread_of_difference_meV']:.3f} meV, against a spread of "
        f"{c['spread_of_energies_meV']:.0f} meV of the energies themselves. Only the spread "
        "affects relative energies (what a potential learns); it is far below the errors of "
        "ML potentials (meV per atom), so `density_fit_hf=true` is a sound choice for the "
        "energy-only set. The default stays conventional HF so that energy-only and force "
        "labels (conventional HF + MP2 gradients) share one reference.",
    ]


def write_md(result: dict, path: Path) -> None:
    """Write the labelling-cost report of ``result`` as markdown to ``path``."""
    lines = [
        *cost_header_lines(result),
        *cost_table_lines(result["rows"]),
        *projection_lines(result["projection"]),
        *df_hf_check_lines(result.get("df_hf_check")),
        "",
    ]
    write_text(path, "\n".join(lines))


def write_executors_md(result: dict, path: Path) -> None:
    loads = [r["load_average_1_5_15"][0] for r in result["rows"]]
    shared = (
        "**shared**: other jobs ran on the same 2 cores throughout (1-minute load average "
        f"{min(loads):.1f}–{max(loads):.1f} during the runs), so no worker had a core to itself "
        "and two workers never had two; one thread per worker"
    )
    lines = [
        "# Labelling on a local pool vs Dask (rMD17 ethanol frames, 9 atoms)",
        "",
        *provenance(result, shared, result["versions"]),
        "",
        "Each run is one whole `label_structures` call (tasks, journal fsynced per frame, extxyz "
        "output) in a fresh process, with the backend imported and warmed up first. The "
        "in-process run is what `--workers 1` does (no pool). Dask runs start a `LocalCluster` "
        "of single-threaded worker processes for the run and close it after; their start-up "
        "(spawning processes that import piwsl and the program) is part of the time. All cells "
        f"ran interleaved in {result['rounds']} rounds; the tables show medians.",
        "",
        "Wall time of the run, s (compute: the frames' calculation wall time summed over the "
        "workers; CPU: their CPU time — the gap is waiting for a core):",
        "",
        "| workload | " + " | ".join(EXECUTORS) + " |",
        "|---|" + "---:|" * len(EXECUTORS),
    ]
    cells = executor_cells(result["rows"])
    for workload in WORKLOADS:
        row = [
            f"{c['wall_s']:.2f} (compute {c['compute_s']:.2f}, CPU {c['compute_cpu_s']:.2f})"
            for c in (cells[config, workload] for config in EXECUTORS)
        ]
        lines.append(f"| {workload} | " + " | ".join(row) + " |")
    lines += [
        "",
        "| executor | "
        + " | ".join(f"speed-up {w}" for w in WORKLOADS)
        + " | overhead per task, ms | fixed cost, s | client CPU per task, ms |",
        "|---|" + "---:|" * (len(WORKLOADS) + 3),
    ]
    for item in result["summary"]:
        speedups = " | ".join(f"{item[f'speedup {w}']:.2f}×" for w in WORKLOADS)
        lines.append(
            f"| {item['config']} | {speedups} | {item['overhead_per_task_ms']:.2f} | "
            f"{item['fixed_cost_s']:.2f} | {item['client_cpu_per_task_ms']:.2f} |"
        )
    lines += [
        "",
        "Speed-up: the in-process run's median wall time over this one's. Overhead per task and "
        "fixed cost: a straight line through (tasks, wall time − compute time / workers) of the "
        "40- and 400-frame GFN2-xTB runs. Client CPU per task: CPU time of the `piwsl label` "
        "process (for a LocalCluster this includes the scheduler, which runs in it) over the "
        "400-frame run, per task; for the in-process run it includes the calculations.",
        "",
        *result.get("notes", []),
    ]
    write_text(path, "\n".join(lines) + "\n")


def executors_main(out: Path, rounds: int) -> int:
    from importlib.metadata import version

    rows = run_executors(rounds)
    result = {
        "command": f"OMP_NUM_THREADS=1 python benchmarks/label_cost.py --executors --rounds {rounds}",
        "machine": machine(),
        "versions": {p: version(p) for p in ("dask", "distributed", "tblite", "pyscf")},
        "rounds": rounds,
        "rows": rows,
        "summary": executor_summary(rows),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "label_cost_executors.json", result, indent=2)
    write_executors_md(result, out / "label_cost_executors.md")
    print((out / "label_cost_executors.md").read_text())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", choices=list(METHODS), help="measure only these")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    parser.add_argument("--one-df-hf-check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rewrite-md", action="store_true", help="regenerate the md from JSON")
    parser.add_argument(
        "--skip-df-hf-check", action="store_true", help="keep the earlier DF-HF check result"
    )
    parser.add_argument("--executors", action="store_true", help="local pool vs Dask")
    parser.add_argument("--rounds", type=int, default=3, help="--executors: interleaved rounds")
    parser.add_argument(
        "--rewrite-executors-md", action="store_true", help="regenerate that md from its JSON"
    )
    parser.add_argument("--one-executor", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_executor:
        print(json.dumps(measure_executor(*args.one_executor)))
        return 0
    if args.executors:
        return executors_main(Path(args.out), args.rounds)
    if args.rewrite_executors_md:  # e.g. after adding "notes" (interpretation) to the JSON
        result = json.loads((Path(args.out) / "label_cost_executors.json").read_text())
        write_executors_md(result, Path(args.out) / "label_cost_executors.md")
        return 0
    if args.one:
        print(json.dumps(measure_one(args.one)))
        return 0
    if args.rewrite_md:  # only regenerate the md (and projection) from the JSON
        path = Path(args.out) / "label_cost.json"
        result = json.loads(path.read_text())
        result["projection"] = projection(result["rows"])
        write_json(path, result, indent=2)
        write_md(result, Path(args.out) / "label_cost.md")
        return 0
    if args.one_df_hf_check:
        print(json.dumps(df_hf_check()))
        return 0
    names = args.only or list(METHODS)
    rows = run_all(names)
    out = Path(args.out)
    previous = out / "label_cost.json"
    if args.only and previous.exists():  # keep the other methods' earlier rows, in table order
        old = {r["method"]: r for r in json.loads(previous.read_text())["rows"]}
        old.update({r["method"]: r for r in rows})
        rows = [old[name] for name in METHODS if name in old]
    check = None
    if previous.exists():
        check = json.loads(previous.read_text()).get("df_hf_check")
    if not args.skip_df_hf_check:
        print("DF-HF vs conventional HF check (4 frames) ...", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--one-df-hf-check"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode == 0:
            check = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            print(proc.stderr[-500:], flush=True)
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/label_cost.py"
        + (" (then --only for some rows; see each row's date_utc)" if args.only else ""),
        "machine": machine(),
        "rows": rows,
        "projection": projection(rows),
        "df_hf_check": check,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "label_cost.json", result, indent=2)
    write_md(result, out / "label_cost.md")
    print((out / "label_cost.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
