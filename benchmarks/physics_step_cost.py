"""Cost of one training step with the physics terms, relative to a plain energy+force step.

For each model (SchNet, PaiNN conservative, PaiNN direct) and molecule (rMD17 ethanol, aspirin) it
times full optimisation steps (forward, backward, Adam step) of several variants, interleaved
round-robin (one step of each variant in turn, in a shuffled order each round) so that load from
other processes on a shared machine hits all variants alike, and reports the median step time and
its ratio to the plain energy+force step.

    OMP_NUM_THREADS=1 python benchmarks/physics_step_cost.py            # writes benchmarks/results/
    OMP_NUM_THREADS=1 python benchmarks/physics_step_cost.py --steps 10 --quick   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from pathlib import Path

import torch
from common import ROOT, command_line, git_commit, machine_info, provenance_lines, relative

from piwsl.data import read_frames
from piwsl.data.batch import collate
from piwsl.data.dataset import GraphDataset
from piwsl.io.atomic import write_json, write_text
from piwsl.models import build_model
from piwsl.objective import LossConfig, Objective
from piwsl.physics import PhysicsConfig

DATA = ROOT.parent / "shared" / "data" / "rmd17"

MODELS = {
    "schnet": dict(name="schnet", features=64, interactions=3, n_rbf=32),
    "painn_conservative": dict(name="painn", features=64, interactions=3, n_rbf=20),
    "painn_direct": dict(name="painn", features=64, interactions=3, n_rbf=20, forces="direct"),
}


PAPER = {"taylor": 1.2, "spatial": 0.01}
SECOND = {
    "taylor": {"weight": 1.2, "second_order": True},
    "spatial": {"weight": 0.01, "second_order": True},
}


def make_objective(force_weight: float, evaluation: str | None, terms: dict | None) -> Objective:
    """Energy (weight 1) and forces, plus ``terms`` evaluated as ``evaluation`` says (δ 0.05 Å)."""
    loss = LossConfig(terms={"forces": force_weight, **(terms or {})})
    return Objective.from_config(loss, PhysicsConfig(evaluation=evaluation or "split"))


#: name → (force weight, evaluation of the copies, physics terms)
VARIANTS: dict[str, tuple[float, str | None, dict | None]] = {
    "plain_EF": (100.0, None, None),
    "plain_E": (0.0, None, None),
    "physics_fused": (100.0, "fused", PAPER),
    "physics_three_pass": (100.0, "three_pass", PAPER),
    "physics_split": (100.0, "split", PAPER),
    "physics_fused_2nd_order": (100.0, "fused", SECOND),
    "physics_fused_E_only": (0.0, "fused", PAPER),
    "physics_split_E_only": (0.0, "split", PAPER),
    "taylor_only_fused": (100.0, "fused", {"taylor": 1.2}),
    "taylor_only_split": (100.0, "split", {"taylor": 1.2}),
}


def load_frames(molecule: str, n: int):
    path = DATA / f"rmd17_{molecule}_train_01.npz"
    if path.exists():
        return read_frames(str(path))[:n], relative(path)
    if molecule == "ethanol":
        return read_frames("builtin:ethanol_train")[:n], "builtin:ethanol_train"
    raise FileNotFoundError(f"{path} not found")


def bench_case(model_key: str, molecule: str, args, variants: list[str]) -> dict:
    frames, source = load_frames(molecule, args.batch_size * args.n_batches)
    cutoff = args.cutoff
    skin = PhysicsConfig(perturbation_scale=0.05).required_skin + 0.02
    data = GraphDataset(frames, cutoff=cutoff, skin=skin)
    batches = [
        collate(data.graphs[k * args.batch_size : (k + 1) * args.batch_size])
        for k in range(args.n_batches)
    ]
    hp = dict(MODELS[model_key])
    name = hp.pop("name")
    elements = sorted({int(z) for f in frames for z in f.numbers})
    torch.manual_seed(0)
    base = build_model(name, elements=elements, cutoff=cutoff, **hp)
    mean_e = sum(f.energy for f in frames) / sum(f.n_atoms for f in frames)
    base.energy_model.set_reference({}, shift=mean_e, scale=1.0)
    runs = {}
    for v in variants:
        model = copy.deepcopy(base)
        model.train()
        objective = make_objective(*VARIANTS[v])
        objective.check_skin(skin, cutoff)
        runs[v] = {
            "model": model,
            "objective": objective,
            "optimizer": torch.optim.Adam(model.parameters(), lr=1e-4),
            "times": [],
        }

    def step(run, batch):
        t0 = time.perf_counter()
        run["optimizer"].zero_grad(set_to_none=True)
        result = run["objective"](run["model"], batch)
        result.total.backward()
        run["optimizer"].step()
        return time.perf_counter() - t0

    rng = random.Random(0)
    order = list(variants)
    for k in range(args.warmup + args.steps):
        rng.shuffle(order)
        batch = batches[k % len(batches)]
        for v in order:
            dt = step(runs[v], batch)
            if k >= args.warmup:
                runs[v]["times"].append(dt)
    plain = statistics.median(runs["plain_EF"]["times"])
    out = {
        "model": model_key,
        "hparams": MODELS[model_key],
        "molecule": molecule,
        "data": source,
        "atoms_per_structure": frames[0].n_atoms,
        "batch_size": args.batch_size,
        "edges_per_batch": int(batches[0].edge_index.shape[1]),
        "cutoff_A": cutoff,
        "skin_A": skin,
        "variants": {},
    }
    for v in variants:
        t = sorted(runs[v]["times"])
        q1, q3 = t[len(t) // 4], t[(3 * len(t)) // 4]
        med = statistics.median(t)
        out["variants"][v] = {
            "median_ms": 1e3 * med,
            "q1_ms": 1e3 * q1,
            "q3_ms": 1e3 * q3,
            "ratio_vs_plain_EF": med / plain,
            "steps": len(t),
        }
    return out


def directional_ad_case(model_key: str, molecule: str, args) -> dict:
    """Exact directional derivative Σ d·F with its parameter gradient: reverse vs forward mode.

    reverse: F = −∂E/∂R with create_graph, then Σ d·F and a backward through it (double backward);
    forward: one forward pass on dual positions (tangent d) gives E and −Σ d·F, then a backward
    (reverse over forward). Both give the same numbers (checked); this times them.
    """
    from torch.autograd import forward_ad

    from piwsl.data.batch import scatter_sum

    frames, _ = load_frames(molecule, args.batch_size)
    data = GraphDataset(frames, cutoff=args.cutoff, skin=0.2)
    batch = collate(data.graphs)
    hp = dict(MODELS[model_key])
    name = hp.pop("name")
    elements = sorted({int(z) for f in frames for z in f.numbers})
    torch.manual_seed(0)
    model = build_model(name, elements=elements, cutoff=args.cutoff, **hp)
    tangent = 0.05 * torch.randn_like(batch.positions)
    S = batch.n_structures

    def reverse():
        out = model(batch, create_graph=True)
        s = -scatter_sum((tangent * out["forces"]).sum(-1).double(), batch.batch, S)
        (out["energy"].sum() * 1e-3 + (s**2).sum()).backward()
        return s.detach()

    def forward():
        with forward_ad.dual_level():
            pos = forward_ad.make_dual(batch.positions, tangent)
            out = model.energy_model(batch.with_positions(pos))
            energy, s = forward_ad.unpack_dual(out["energy"])
        (energy.sum() * 1e-3 + (s**2).sum()).backward()
        return s.detach()

    def energy_only():
        model(batch, compute_forces=False)["energy"].sum().backward()

    agree = float((reverse() - forward()).abs().max())
    fns = {"reverse_create_graph": reverse, "forward_mode": forward, "energy_only": energy_only}
    times: dict[str, list[float]] = {k: [] for k in fns}
    rng = random.Random(0)
    order = list(fns)
    for k in range(args.warmup + args.steps):
        rng.shuffle(order)
        for key in order:
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            fns[key]()
            if k >= args.warmup:
                times[key].append(time.perf_counter() - t0)
    return {
        "model": model_key,
        "molecule": molecule,
        "batch_size": args.batch_size,
        "max_abs_difference_eV": agree,
        "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
    }


def markdown(result: dict) -> str:
    lines = [
        "# Physics step cost",
        "",
        *provenance_lines(
            result["command"],
            result["git_commit"],
            result["machine"],
            f"{result['date_utc']} UTC",
        ),
        "",
        result["note"],
        "",
    ]
    for case in result["cases"]:
        lines += [
            f"## {case['model']}, {case['molecule']} ({case['atoms_per_structure']} atoms, "
            f"batch {case['batch_size']}, {case['edges_per_batch']} edges)",
            "",
            "| variant | median step (ms) | IQR (ms) | × plain E+F |",
            "|---|---:|---:|---:|",
        ]
        for v, r in case["variants"].items():
            lines.append(
                f"| {v} | {r['median_ms']:.1f} | {r['q1_ms']:.1f}–{r['q3_ms']:.1f} | "
                f"{r['ratio_vs_plain_EF']:.2f} |"
            )
        lines.append("")
    if result.get("directional_ad"):
        lines += [
            "## Directional derivative Σ d·F with parameter gradient: reverse vs forward mode",
            "",
            "| model | molecule | reverse (create_graph) ms | forward mode ms | energy only ms "
            "| max diff (eV) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for case in result["directional_ad"]:
            m = case["median_ms"]
            lines.append(
                f"| {case['model']} | {case['molecule']} | {m['reverse_create_graph']:.1f} | "
                f"{m['forward_mode']:.1f} | {m['energy_only']:.1f} | "
                f"{case['max_abs_difference_eV']:.1e} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--molecules", default="ethanol,aspirin")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/physics_step_cost"))
    parser.add_argument("--quick", action="store_true", help="smoke run: do not write results")
    parser.add_argument(
        "--ad",
        action="store_true",
        help="also time Σ d·F in reverse vs forward mode (conservative models)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    if "plain_EF" not in variants:
        variants.insert(0, "plain_EF")
    cases = []
    for model_key in args.models.split(","):
        for molecule in args.molecules.split(","):
            case = bench_case(model_key, molecule, args, variants)
            cases.append(case)
            summary = ", ".join(
                f"{v} {r['median_ms']:.0f} ms ({r['ratio_vs_plain_EF']:.2f}×)"
                for v, r in case["variants"].items()
            )
            print(f"{model_key} {molecule}: {summary}", flush=True)
    directional = []
    if args.ad:
        for model_key in args.models.split(","):
            if "direct" in model_key:
                continue
            for molecule in args.molecules.split(","):
                case = directional_ad_case(model_key, molecule, args)
                directional.append(case)
                print(f"directional AD {model_key} {molecule}: {case}", flush=True)
    result = {
        "command": command_line(),
        "git_commit": git_commit(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": machine_info(),
        "note": (
            "Full optimisation steps (forward, backward, Adam) with loss weights w_E = 1, "
            "w_F = 100 (or 0 for *_E_only), λ_taylor = 1.2, λ_spatial = 0.01 (kcal/mol), "
            "δ = 0.05 Å. The machine was shared with other jobs while this ran: the variants were "
            "interleaved round-robin (one step each per round, shuffled order), so contention "
            "affects them alike; compare ratios, not absolute times. 'split' fuses the copies "
            "that need forces and evaluates energy-only copies (C, first order) in a second pass "
            "without a force graph; for direct-force models it is the fused pass. "
            "taylor_only_*: PISC off (λ_spatial = 0), so B is not evaluated."
        ),
        "cases": cases,
        "directional_ad": directional,
    }
    if args.quick:
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), result, indent=2)
    write_text(out.with_suffix(".md"), markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
