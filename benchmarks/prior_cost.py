"""Cost of a GFN2-xTB prior against a piwsl MD step, per rMD17 molecule, one thread.

For each rMD17 molecule (``../shared/data/rmd17``, test split 01) this measures

- the median wall (and CPU) time of one GFN2-xTB energy + forces single point (tblite, through
  :mod:`piwsl.priors`, the code path of Δ-learning) over ``--frames`` frames;
- the median wall time of one velocity-Verlet MD step (0.5 fs) with
  :class:`piwsl.PiwslCalculator` and a small untrained PaiNN (64 features, 3 interactions,
  20 radial functions, conservative forces, cutoff 5 Å, skin 1 Å, float32) over ``--steps``
  steps — alone, and as a Δ-model with the GFN2-xTB prior added;

and writes ``benchmarks/results/prior_cost.{json,md}`` with the ratios, machine, command and
commit. Untrained weights cost what trained ones do. About a minute on one core.

    OMP_NUM_THREADS=1 python benchmarks/prior_cost.py
    OMP_NUM_THREADS=1 python benchmarks/prior_cost.py --frames 20 --steps 50 --molecules ethanol
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, git_commit, machine_info, provenance_lines

from piwsl.io.atomic import write_json, write_text

DATA = ROOT.parent / "shared" / "data" / "rmd17"
MOLECULES = ("aspirin", "ethanol", "malonaldehyde", "naphthalene", "toluene")
PAINN = {"features": 64, "interactions": 3, "n_rbf": 20, "forces": "conservative"}


def prior_times(prior: Any, frames: list, warmup: int = 3) -> dict[str, float]:
    """Median wall and CPU seconds of one single point over ``frames`` (after a warm-up)."""
    for frame in frames[:warmup]:
        prior.compute_one(frame)
    wall, cpu = [], []
    for frame in frames:
        t0, c0 = time.perf_counter(), time.process_time()
        prior.compute_one(frame)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall_s_median": statistics.median(wall), "cpu_s_median": statistics.median(cpu)}


def small_painn(elements: list[int]):
    import torch

    from piwsl.models import build_model

    torch.manual_seed(0)
    return build_model("painn", elements=elements, cutoff=5.0, **PAINN).eval()


def md_step_time(calculator: Any, frame: Any, steps: int, warmup: int = 5) -> float:
    """Median wall seconds of one velocity-Verlet step (0.5 fs) from ``frame`` at 300 K."""
    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    atoms = frame.to_atoms()
    atoms.calc = calculator
    thermalize_momenta(atoms, 300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(warmup)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        dyn.run(1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(molecule: str, n_frames: int, steps: int) -> dict[str, Any]:
    import numpy as np

    from piwsl.calculator import PiwslCalculator
    from piwsl.data import read_frames
    from piwsl.priors import make_prior

    path = DATA / f"rmd17_{molecule}_test_01.npz"
    frames = read_frames(str(path))[:n_frames]
    prior = make_prior("gfn2-xtb")
    single = prior_times(prior, frames)
    model = small_painn(sorted(int(z) for z in np.unique(frames[0].numbers)))
    plain = md_step_time(PiwslCalculator(model, skin=1.0), frames[0], steps)
    model.prior_spec = prior.spec()
    delta = md_step_time(PiwslCalculator(model, skin=1.0), frames[0], steps)
    return {
        "molecule": molecule,
        "n_atoms": frames[0].n_atoms,
        "frames": n_frames,
        "md_steps": steps,
        "prior_wall_s_median": single["wall_s_median"],
        "prior_cpu_s_median": single["cpu_s_median"],
        "model_md_step_s_median": plain,
        "delta_model_md_step_s_median": delta,
        "prior_over_model_step": single["wall_s_median"] / plain,
        "delta_over_model_step": delta / plain,
        "prior": prior.spec(),
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    loads = ", ".join(f"{x:.1f}" for x in meta["machine"].get("load_average_1_5_15") or [])
    lines = [
        "# Cost of the GFN2-xTB prior against a piwsl MD step (rMD17, one thread)",
        "",
        *provenance_lines(
            meta["command"],
            meta["git_commit"],
            meta["machine"],
            meta["date_utc"],
            extra=f"load average {loads}, tblite {meta['tblite']}",
        ),
        "",
        "Prior: median of GFN2-xTB energy + forces single points (tblite via `piwsl.priors`, "
        f"{rows[0]['frames']} test frames of split 01, after 3 warm-up calls). Model: median "
        "velocity-Verlet step (0.5 fs, 300 K start) with `PiwslCalculator` and an untrained PaiNN "
        "(64 features, 3 interactions, 20 RBF, conservative forces, cutoff 5 Å, skin 1 Å, "
        f"float32) over {rows[0]['md_steps']} steps after 5 warm-up steps; Δ-model: the same "
        "with the prior added (what a model trained with `prior.name=gfn2-xtb` runs).",
        "",
        "| molecule | atoms | GFN2-xTB ms/frame | model MD step ms | Δ-model MD step ms "
        "| prior / model step | Δ-model / model step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['molecule']} | {r['n_atoms']} | {1e3 * r['prior_wall_s_median']:.2f} | "
            f"{1e3 * r['model_md_step_s_median']:.2f} | "
            f"{1e3 * r['delta_model_md_step_s_median']:.2f} | "
            f"{r['prior_over_model_step']:.2f}× | {r['delta_over_model_step']:.2f}× |"
        )
    lines += [
        "",
        "Wall times on a shared 2-core machine (other jobs may have run at the same time); the "
        "prior's CPU times are in the JSON. Training does not pay this per step: the prior is "
        "computed once per frame and cached (`piwsl.priors.cache`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60, help="single points per molecule")
    parser.add_argument("--steps", type=int, default=150, help="timed MD steps per model")
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES), choices=MOLECULES)
    parser.add_argument("--out", default=str(RESULTS / "prior_cost"), help="output stem")
    args = parser.parse_args(argv)

    import torch

    from piwsl.io.executors import limit_threads
    from piwsl.labelling.backends import package_version

    limit_threads(1)
    torch.set_num_threads(1)
    rows = []
    for molecule in args.molecules:
        row = measure(molecule, args.frames, args.steps)
        rows.append(row)
        print(
            f"{molecule}: GFN2-xTB {1e3 * row['prior_wall_s_median']:.2f} ms, model step "
            f"{1e3 * row['model_md_step_s_median']:.2f} ms, Δ-model step "
            f"{1e3 * row['delta_model_md_step_s_median']:.2f} ms",
            flush=True,
        )
    meta = {
        "command": " ".join(["OMP_NUM_THREADS=1 python benchmarks/prior_cost.py", *sys.argv[1:]]),
        "git_commit": git_commit(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "tblite": package_version("tblite"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {**meta, "results": rows}, indent=2)
    write_text(out.with_suffix(".md"), markdown(rows, meta))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
