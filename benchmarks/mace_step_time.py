"""Training-step time of piwsl's MACE backend vs mace-torch's own model, same weights, same batch.

One training step = energy + force loss (w_E = 1 on (ΔE/N)², w_F = 100 on ΔF², eV and Å), forward,
double backward (the loss differentiates forces) and an Adam step.

- piwsl: ``build_model("mace", ...)`` → :class:`~piwsl.models.ForceField` in train mode (autograd
  forces with ``create_graph``) on a piwsl :class:`~piwsl.data.Batch`, piwsl's ``Objective``.
- mace-torch: the *same weights* exported with :func:`piwsl.models.mace.to_mace_module` (a
  ``ScaleShiftMACE``), called the mace way — ``model(batch.to_dict(), training=True,
  compute_force=True)`` on a batch built by mace's own data tools (``config_from_atoms`` →
  ``AtomicData.from_config`` → ``torch_geometric.DataLoader``), loss
  ``mace.modules.loss.WeightedEnergyForcesLoss``.

The batch is the first 16 ethanol molecules of the built-in rMD17 data. Steps are interleaved
round-robin (one step of each implementation in turn, order alternating every round), so load from
other processes on a shared machine hits both alike. The first-step losses of the two must agree
(checked and reported).

    OMP_NUM_THREADS=1 python benchmarks/mace_step_time.py               # writes benchmarks/results/
    OMP_NUM_THREADS=1 python benchmarks/mace_step_time.py --steps 5 --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import mace  # first: before e3nn
import numpy as np
import torch
from ase import Atoms
from common import ROOT, git_commit, machine_info, provenance_lines
from mace import data as mace_data
from mace.modules.loss import WeightedEnergyForcesLoss
from mace.tools import AtomicNumberTable, torch_geometric
from mace.tools.torch_tools import default_dtype

from piwsl.data import frames_to_batch, read_frames
from piwsl.io.atomic import write_json, write_text
from piwsl.models import build_model
from piwsl.models.mace import to_mace_module
from piwsl.objective import EnergyTerm, ForcesTerm, Objective

HPARAMS = {
    "num_channels": 16,
    "max_L": 1,
    "max_ell": 3,
    "correlation": 3,
    "num_interactions": 2,
    "num_bessel": 8,
    "num_polynomial_cutoff": 5,
    "radial_MLP": [64, 64, 64],
    "MLP_irreps": "16x0e",
    "avg_num_neighbors": 8.0,
}
CUTOFF = 5.0  # Å
ENERGY_WEIGHT, FORCE_WEIGHT = 1.0, 100.0


def _e3nn_version() -> str:
    import e3nn

    return e3nn.__version__


def mace_batch(frames, dtype: torch.dtype, z_table, batch_size: int):
    """The batch mace-torch's training builds (its neighbour list, its collate)."""
    keyspec = mace_data.KeySpecification(
        info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"}
    )
    with default_dtype(dtype):
        graphs = []
        for f in frames:
            atoms = Atoms(numbers=f.numbers, positions=f.positions)
            atoms.info["REF_energy"] = f.energy
            atoms.arrays["REF_forces"] = f.forces
            config = mace_data.config_from_atoms(atoms, key_specification=keyspec)
            graphs.append(
                mace_data.AtomicData.from_config(
                    config, z_table=z_table, cutoff=CUTOFF, heads=["Default"]
                )
            )
        loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=False)
        return next(iter(loader))


def bench(dtype: torch.dtype, args) -> dict:
    frames = read_frames("builtin:ethanol_train")[: args.batch_size]
    elements = sorted({int(z) for f in frames for z in f.numbers})
    torch.manual_seed(0)
    piwsl_model = build_model("mace", elements=elements, cutoff=CUTOFF, **HPARAMS).to(dtype)
    e0 = float(np.mean([f.energy / f.n_atoms for f in frames]))
    piwsl_model.energy_model.set_reference({z: e0 for z in elements}, shift=0.0, scale=1.0)
    mace_model = to_mace_module(piwsl_model, dtype=dtype)  # same weights, E0s folded in
    piwsl_model.train()
    mace_model.train()

    p_batch = frames_to_batch(frames, CUTOFF, dtype=dtype)
    m_batch = mace_batch(frames, dtype, AtomicNumberTable(elements), args.batch_size)
    if int(m_batch["edge_index"].shape[1]) != int(p_batch.edge_index.shape[1]):
        raise RuntimeError("mace-torch and piwsl neighbour lists differ in size")
    objective = Objective([EnergyTerm(ENERGY_WEIGHT), ForcesTerm(FORCE_WEIGHT)])
    mace_loss = WeightedEnergyForcesLoss(energy_weight=ENERGY_WEIGHT, forces_weight=FORCE_WEIGHT)
    optimizers = {
        "piwsl": torch.optim.Adam(piwsl_model.parameters(), lr=1e-4),
        "mace_torch": torch.optim.Adam(mace_model.parameters(), lr=1e-4),
    }

    def step_piwsl() -> float:
        optimizers["piwsl"].zero_grad(set_to_none=True)
        loss = objective(piwsl_model, p_batch).total
        loss.backward()
        optimizers["piwsl"].step()
        return float(loss.detach())

    def step_mace() -> float:
        optimizers["mace_torch"].zero_grad(set_to_none=True)
        out = mace_model(m_batch.to_dict(), training=True, compute_force=True)
        loss = mace_loss(pred=out, ref=m_batch)
        loss.backward()
        optimizers["mace_torch"].step()
        return float(loss.detach())

    steps = {"piwsl": step_piwsl, "mace_torch": step_mace}
    first = {name: fn() for name, fn in steps.items()}  # also the first warm-up step
    rel = abs(first["piwsl"] - first["mace_torch"]) / abs(first["mace_torch"])
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    if rel > tol:
        raise RuntimeError(f"first-step losses differ: {first} (relative {rel:.2e})")
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for k in range(args.warmup - 1 + args.steps):
        order.reverse()  # alternate which implementation goes first
        for name in order:
            t0 = time.perf_counter()
            steps[name]()
            dt = time.perf_counter() - t0
            if k >= args.warmup - 1:
                times[name].append(dt)
    result = {
        "dtype": str(dtype).replace("torch.", ""),
        "atoms": int(p_batch.positions.shape[0]),
        "edges": int(p_batch.edge_index.shape[1]),
        "first_step_loss": first,
        "first_step_loss_relative_difference": rel,
        "implementations": {},
    }
    for name, t in times.items():
        t = sorted(t)
        result["implementations"][name] = {
            "median_ms": 1e3 * statistics.median(t),
            "q1_ms": 1e3 * t[len(t) // 4],
            "q3_ms": 1e3 * t[(3 * len(t)) // 4],
            "steps": len(t),
        }
    med = {n: result["implementations"][n]["median_ms"] for n in times}
    # speed of piwsl relative to mace-torch (>1: piwsl faster); per-round ratios for spread
    result["piwsl_speed_vs_mace"] = med["mace_torch"] / med["piwsl"]
    ratios = sorted(m / p for p, m in zip(times["piwsl"], times["mace_torch"], strict=True))
    result["per_round_speed_ratio_q1_median_q3"] = [
        ratios[len(ratios) // 4],
        statistics.median(ratios),
        ratios[(3 * len(ratios)) // 4],
    ]
    return result


def markdown(report: dict) -> str:
    lines = [
        "# MACE training-step time: piwsl backend vs mace-torch",
        "",
        *provenance_lines(
            report["command"],
            report["git_commit"],
            report["machine"],
            f"{report['date_utc']} UTC",
            extra=f"mace-torch {report['machine']['mace_torch']}, e3nn {report['machine']['e3nn']}",
            more=[
                f"Load average before / after: {report['loadavg_before']} / "
                f"{report['loadavg_after']}"
            ],
        ),
        "",
        f"Model: MACE {json.dumps(report['hparams'])}, r_max {report['cutoff_A']} Å. Batch: "
        f"{report['batch_size']} ethanol molecules (builtin:ethanol_train). Step: energy + force "
        f"MSE (w_E={ENERGY_WEIGHT}, w_F={FORCE_WEIGHT}), forward + double backward + Adam.",
        "",
        "| dtype | atoms | edges | piwsl median (IQR) ms | mace-torch median (IQR) ms "
        "| piwsl speed ÷ mace-torch | per-round ratio q1/med/q3 | first-step loss rel. diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        p, m = r["implementations"]["piwsl"], r["implementations"]["mace_torch"]
        q = r["per_round_speed_ratio_q1_median_q3"]
        lines.append(
            f"| {r['dtype']} | {r['atoms']} | {r['edges']} | {p['median_ms']:.1f} "
            f"({p['q1_ms']:.1f}–{p['q3_ms']:.1f}) | {m['median_ms']:.1f} "
            f"({m['q1_ms']:.1f}–{m['q3_ms']:.1f}) | {r['piwsl_speed_vs_mace']:.3f} | "
            f"{q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f} | "
            f"{r['first_step_loss_relative_difference']:.1e} |"
        )
    lines += [
        "",
        "Target: piwsl ≥ 0.9 × mace-torch's speed. The machine was shared with other jobs while "
        "this ran; the two implementations were timed interleaved round-robin (alternating "
        "order), so contention affects both alike, but absolute times are noisy.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "git_commit": git_commit(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": machine_info(mace_torch=mace.__version__, e3nn=_e3nn_version()),
        "loadavg_before": list(os.getloadavg()),
        "hparams": HPARAMS,
        "cutoff_A": CUTOFF,
        "batch_size": args.batch_size,
        "loss": {"energy_weight": ENERGY_WEIGHT, "force_weight": FORCE_WEIGHT},
        "note": "shared machine; steps interleaved round-robin so contention affects both alike",
        "results": [],
    }
    for name in args.dtypes:
        result = bench(getattr(torch, name), args)
        report["results"].append(result)
        print(json.dumps(result, indent=1), flush=True)
    report["loadavg_after"] = list(os.getloadavg())
    text = markdown(report)
    print(text)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "mace_step_time.json", report, indent=2)
        write_text(args.out / "mace_step_time.md", text)


if __name__ == "__main__":
    main()
