"""Training-step throughput: eager vs compiled vs schnetpack; PIWSL and its cheaper settings.

For each model (SchNet, PaiNN conservative, PaiNN direct) and molecule (rMD17 ethanol, aspirin) it
times full optimisation steps (forward, backward, Adam) of these variants, all from the same
weights on the same batches:

- ``eager``: a plain energy + force step (w_E = 1 on (ΔE/N)² in eV², w_F = 100 on ΔF² in (eV/Å)²);
- ``compiled``: the same through :class:`piwsl.models.compiled.CompiledForceField` (inductor);
- ``schnetpack``: schnetpack 2.1.1's model with the same hyper-parameters and piwsl's weights
  (``schnetpack_reference.py``), the same loss and neighbour list (SchNet, PaiNN conservative);
- ``piwsl_2nd`` / ``piwsl_2nd_compiled``: PIWSL second order (λ_taylor = 1.2, λ_spatial = 0.01 per
  kcal²/mol², δ = 0.05 Å) on top of the same supervised terms;
- ``piwsl_2nd_fraction_<f>``: displaced copies for a fraction f of each batch (``physics.fraction``);
- ``piwsl_2nd_every_<k>``: the physics terms on every k-th step (a round is k steps, time / k);
- ``piwsl_2nd_three_pass``: one model pass per copy instead of one fused pass (``piwsl_2nd`` and
  every other PIWSL variant: ``split``, which for second order is the one fused pass);
- ``piwsl_2nd_auto``: ``physics.evaluation = "auto"`` (the default): before the timed rounds it
  trains until its tuner has chosen a mode (the tuner interleaves the candidates itself); the row
  records the choice and the tuner's timings, to be checked against ``piwsl_2nd`` vs
  ``piwsl_2nd_three_pass`` measured in the same run;
- ``eager_before`` / ``schnetpack_as_shipped``: the CPU defaults that piwsl used before this
  benchmark's issue and schnetpack still uses: denormal floats computed and Adam's per-tensor loop.
  Every other variant runs as piwsl trains now (``training.flush_denormal``, fused Adam), the
  schnetpack variant included, so that ``schnetpack`` vs ``eager``/``compiled`` compares models.

Plain steps use neighbour lists without a skin, PIWSL steps with the skin their copies need, as in
real runs. Steps are interleaved round-robin (one step of each variant per round, in a shuffled
order), so load from other processes hits all variants alike; medians and ratios come from the
same run. The first-step losses of eager, compiled and schnetpack must agree (checked, reported).

    OMP_NUM_THREADS=1 python benchmarks/training_throughput.py      # writes benchmarks/results/
    OMP_NUM_THREADS=1 python benchmarks/training_throughput.py --quick --no-write    # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import ROOT, git_commit, machine_info, provenance_lines

from piwsl.data import read_frames
from piwsl.data.batch import Batch, Graph, collate
from piwsl.io.atomic import write_json, write_text
from piwsl.models import build_model
from piwsl.models.base import trusted_species
from piwsl.models.compiled import CompiledForceField
from piwsl.objective import EnergyTerm, ForcesTerm, Objective, SpatialTerm, TaylorTerm
from piwsl.physics import PhysicsConfig

DATA = ROOT.parent / "shared" / "data" / "rmd17"
MODELS = {
    "schnet": {"name": "schnet", "features": 64, "interactions": 3, "n_rbf": 32},
    "painn_conservative": {"name": "painn", "features": 64, "interactions": 3, "n_rbf": 20},
    "painn_direct": {
        "name": "painn",
        "features": 64,
        "interactions": 3,
        "n_rbf": 20,
        "forces": "direct",
    },
}
CUTOFF = 5.0  # Å
ENERGY_WEIGHT, FORCE_WEIGHT = 1.0, 100.0
PIWSL = {"taylor_weight": 1.2, "spatial_weight": 0.01, "second_order": True}  # loss.terms


@dataclass
class Variant:
    name: str
    compiled: bool = False
    physics: dict | None = None  # PhysicsConfig keywords of the copies; None: no physics terms
    schnetpack: bool = False
    cpu_defaults: bool = False  # denormals computed and the per-tensor Adam loop (not fused)
    steps_per_round: int = 1


def variants(model: str, args: argparse.Namespace) -> list[Variant]:
    has_reference = model in ("schnet", "painn_conservative")
    out = [
        Variant("eager"),
        Variant("compiled", compiled=True),
        Variant("eager_before", cpu_defaults=True),
        Variant("piwsl_2nd", physics={}),
        Variant("piwsl_2nd_compiled", compiled=True, physics={}),
        Variant("piwsl_2nd_three_pass", physics={"evaluation": "three_pass"}),
        Variant("piwsl_2nd_auto", physics={"evaluation": "auto"}),
    ]
    if has_reference:
        out += [
            Variant("schnetpack", schnetpack=True),
            Variant("schnetpack_as_shipped", schnetpack=True, cpu_defaults=True),
        ]
    for f in args.fractions:
        out.append(Variant(f"piwsl_2nd_fraction_{f:g}", physics={"fraction": f}))
        if args.compiled_fractions:
            out.append(
                Variant(
                    f"piwsl_2nd_fraction_{f:g}_compiled",
                    compiled=True,
                    physics={"fraction": f},
                )
            )
    for k in args.every:
        out.append(Variant(f"piwsl_2nd_every_{k}", physics={"every_n_steps": k}, steps_per_round=k))
    wanted = set(args.variants or [v.name for v in out]) | {"eager"}
    return [v for v in out if v.name in wanted]


def model_hparams(model_key: str) -> dict:
    """The model of ``model_key``; ``mace``: the MACE of ``mace_step_time.py`` (needs
    ``scripts/install_mace.sh``; no schnetpack counterpart, mace_step_time.py compares it with
    mace-torch)."""
    if model_key == "mace":
        from mace_step_time import HPARAMS  # imports mace-torch

        return {"name": "mace", **HPARAMS}
    return MODELS[model_key]


def load_frames(molecule: str, n: int, data: Path) -> tuple[list, str]:
    path = data / f"rmd17_{molecule}_train_01.npz"
    if path.exists():
        return read_frames(str(path))[:n], os.path.relpath(path, ROOT)
    if molecule == "ethanol":
        return read_frames("builtin:ethanol_train")[:n], "builtin:ethanol_train"
    raise SystemExit(f"{path} not found (rMD17 {molecule}); pass --data")


def make_batches(frames: list, size: int, skin: float, shift: float) -> list[Batch]:
    """Batches of ``size`` frames; energies minus ``shift`` eV per atom (the models have zero
    E0s and shift, as schnetpack's bare Atomwise output has)."""
    graphs = [Graph.from_frame(f, CUTOFF, skin, frame_id=k) for k, f in enumerate(frames)]
    out = []
    for k in range(0, len(graphs) - size + 1, size):
        batch = collate(graphs[k : k + size])
        batch.energy = batch.energy - shift * batch.n_atoms
        out.append(batch)
    return out


@dataclass
class Runner:
    """One variant: its own copy of the model and optimiser, its step times."""

    variant: Variant
    step_fn: object
    compiled: CompiledForceField | None = None
    objective: Objective | None = None
    times: list[float] = field(default_factory=list)
    first_loss: float | None = None
    first_step_s: float | None = None

    def round(self, index: int, record: bool) -> None:
        torch.set_flush_denormal(not self.variant.cpu_defaults)
        n = self.variant.steps_per_round
        start = time.perf_counter()
        for k in range(n):
            loss = self.step_fn(index * n + k)
        elapsed = (time.perf_counter() - start) / n
        if self.first_loss is None:
            self.first_loss, self.first_step_s = loss, elapsed * n
        if record:
            self.times.append(elapsed)


def adam(params, variant: Variant) -> torch.optim.Optimizer:
    """Adam as piwsl trains (fused), or with the per-tensor loop (the CPU default)."""
    return torch.optim.Adam(params, lr=1e-4, fused=None if variant.cpu_defaults else True)


def piwsl_objective(copies: dict | None) -> Objective:
    """The supervised terms, plus PITC and PISC (second order) on copies drawn as ``copies``
    says (PhysicsConfig keywords; evaluation ``split`` unless given) unless that is None."""
    terms = [EnergyTerm(ENERGY_WEIGHT), ForcesTerm(FORCE_WEIGHT)]
    if copies is None:
        return Objective(terms)
    terms += [
        TaylorTerm(PIWSL["taylor_weight"], second_order=PIWSL["second_order"]),
        SpatialTerm(PIWSL["spatial_weight"], second_order=PIWSL["second_order"]),
    ]
    return Objective(terms, PhysicsConfig(**{"evaluation": "split", **copies}))


def piwsl_runner(variant: Variant, base, batches: list[Batch]) -> Runner:
    model = copy.deepcopy(base)
    net = CompiledForceField(model) if variant.compiled else model
    objective = piwsl_objective(variant.physics)
    optimizer = adam(model.parameters(), variant)

    def step(k: int) -> float:
        optimizer.zero_grad(set_to_none=True)
        with trusted_species():
            loss = objective(net, batches[k % len(batches)]).total
        loss.backward()
        optimizer.step()
        objective.step_done()  # ends a step that evaluation=auto times
        return float(loss.detach())

    runner = Runner(variant, step, net if variant.compiled else None, objective)
    tuner = objective.displacements.tuner if objective.displacements is not None else None
    k = 0
    torch.set_flush_denormal(True)  # as in the timed rounds (and training.flush_denormal)
    while tuner is not None and tuner.chosen is None:  # auto: the trial before the timed rounds
        step(k)
        k += 1
    return runner


def schnetpack_runner(variant: Variant, base, batches: list[Batch]) -> Runner:
    from schnetpack_reference import schnetpack_inputs, schnetpack_model

    net = schnetpack_model(base)
    inputs = [schnetpack_inputs(b) for b in batches]
    optimizer = adam(net.parameters(), variant)

    def step(k: int) -> float:
        batch, data = batches[k % len(batches)], inputs[k % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        out = net(dict(data))
        e = ((out["energy"] - batch.energy.to(out["energy"].dtype)) / batch.n_atoms) ** 2
        loss = (
            ENERGY_WEIGHT * e.mean() + FORCE_WEIGHT * ((out["forces"] - batch.forces) ** 2).mean()
        )
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return Runner(variant, step)


def bench_case(model_key: str, molecule: str, args: argparse.Namespace) -> dict:
    frames, source = load_frames(molecule, args.batch_size * args.n_batches, args.data)
    shift = sum(f.energy for f in frames) / sum(f.n_atoms for f in frames)
    skin = PhysicsConfig().required_skin * 1.05
    plain = make_batches(frames, args.batch_size, 0.0, shift)
    displaced = make_batches(frames, args.batch_size, skin, shift)
    hp = dict(model_hparams(model_key))
    torch.manual_seed(0)
    base = build_model(hp.pop("name"), elements=[1, 6, 8], cutoff=CUTOFF, **hp).train()
    runners = {}
    for v in variants(model_key, args):
        if v.schnetpack:
            runners[v.name] = schnetpack_runner(v, base, plain)
        else:
            runners[v.name] = piwsl_runner(v, base, plain if v.physics is None else displaced)
    rng = random.Random(0)
    order = list(runners)
    for index in range(args.warmup + args.steps):
        rng.shuffle(order)
        for name in order:
            runners[name].round(index, record=index >= args.warmup)
        print(f"  {model_key} {molecule}: round {index + 1}/{args.warmup + args.steps}", flush=True)
    torch.set_flush_denormal(True)
    return summarise(model_key, molecule, source, runners, plain, displaced)


def summarise(model_key, molecule, source, runners, plain, displaced) -> dict:
    eager = statistics.median(runners["eager"].times)
    first = {name: r.first_loss for name, r in runners.items()}
    rows = []
    for name, r in runners.items():
        t = sorted(r.times)
        row = {
            "model": model_key,
            "molecule": molecule,
            "variant": name,
            "median_ms": 1e3 * statistics.median(t),
            "q1_ms": 1e3 * t[len(t) // 4],
            "q3_ms": 1e3 * t[(3 * len(t)) // 4],
            "ratio_vs_eager": statistics.median(t) / eager,
            "steps": len(t) * r.variant.steps_per_round,
            "first_step_s": r.first_step_s,
            "first_step_loss": r.first_loss,
        }
        if r.compiled is not None:
            row["compile"] = r.compiled.stats.as_dict()
        if r.objective is not None and r.objective.evaluation_summary() is not None:
            row["evaluation"] = r.objective.evaluation_summary()
        rows.append(row)
    agreement = {}
    for a, b in (
        ("compiled", "eager"),
        ("schnetpack", "eager"),
        ("piwsl_2nd_compiled", "piwsl_2nd"),
    ):
        if a in first and b in first:
            agreement[f"{a}_vs_{b}"] = abs(first[a] - first[b]) / abs(first[b])
    return {
        "auto_check": auto_check(rows),
        "model": model_key,
        "hparams": model_hparams(model_key),
        "molecule": molecule,
        "data": source,
        "atoms_per_structure": int(plain[0].n_atoms[0]),
        "batch_size": plain[0].n_structures,
        "edges_per_batch_plain": int(plain[0].edge_index.shape[1]),
        "edges_per_batch_with_skin": int(displaced[0].edge_index.shape[1]),
        "first_step_loss_relative_difference": agreement,
        "rows": rows,
    }


def auto_check(rows: list[dict]) -> dict | None:
    """Whether ``piwsl_2nd_auto`` chose the mode that was faster in this run's timed rounds
    (``piwsl_2nd`` = split vs ``piwsl_2nd_three_pass``); None without these variants."""
    by = {r["variant"]: r for r in rows}
    if not {"piwsl_2nd_auto", "piwsl_2nd", "piwsl_2nd_three_pass"} <= set(by):
        return None
    rounds = {"split": by["piwsl_2nd"], "three_pass": by["piwsl_2nd_three_pass"]}
    faster = min(rounds, key=lambda m: rounds[m]["median_ms"])
    choice = by["piwsl_2nd_auto"]["evaluation"]
    return {
        "chosen": choice["chosen"],
        "tuner_median_step_ms": choice["median_step_ms"],
        "faster_in_timed_rounds": faster,
        "split_over_three_pass": rounds["split"]["median_ms"] / rounds["three_pass"]["median_ms"],
        "auto_over_faster": by["piwsl_2nd_auto"]["median_ms"] / rounds[faster]["median_ms"],
        "landed_on_faster": choice["chosen"] == faster,
    }


#: split and three_pass closer than this (relative) in the timed rounds: a tie, either is right
TIE = 0.03


def auto_line(check: dict) -> str:
    tuner = ", ".join(f"{m} {ms:.1f} ms" for m, ms in check["tuner_median_step_ms"].items())
    ratio = check["split_over_three_pass"]
    if abs(ratio - 1.0) < TIE:
        verdict = f"the two modes tied within {TIE:.0%} in the timed rounds"
    elif check["landed_on_faster"]:
        verdict = "the faster one in the timed rounds"
    else:
        verdict = "NOT the faster one in the timed rounds"
    return (
        f"`piwsl_2nd_auto` chose `{check['chosen']}` (its trial: {tuner}): {verdict} "
        f"(split / three_pass = {ratio:.2f}; auto / faster = {check['auto_over_faster']:.2f})."
    )


def case_table(case: dict) -> list[str]:
    lines = [
        f"### {case['model']}, {case['molecule']} ({case['atoms_per_structure']} atoms, batch "
        f"{case['batch_size']}, {case['edges_per_batch_plain']} edges; "
        f"{case['edges_per_batch_with_skin']} with the PIWSL skin)",
        "",
        "| variant | median step (ms) | IQR (ms) | × eager | first step (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in case["rows"]:
        lines.append(
            f"| {r['variant']} | {r['median_ms']:.1f} | {r['q1_ms']:.1f}–{r['q3_ms']:.1f} | "
            f"{r['ratio_vs_eager']:.2f} | {r['first_step_s']:.2f} |"
        )
    agree = ", ".join(
        f"{k.replace('_vs_', ' vs ')} {v:.1e}"
        for k, v in case["first_step_loss_relative_difference"].items()
    )
    compiled = [r for r in case["rows"] if "compile" in r]
    lines += ["", f"First-step losses, relative difference: {agree}."]
    if "measured" in case:
        m = case["measured"]
        lines.append(
            f"Measured {m['date_utc']} UTC at {m['git_commit'][:8]}, load average "
            f"{', '.join(f'{x:g}' for x in m['loadavg'])}."
        )
    if case.get("auto_check"):
        lines.append(auto_line(case["auto_check"]))
    for r in compiled:
        c = r["compile"]
        lines.append(
            f"`{r['variant']}`: {c['graphs']} graph(s) traced and compiled in "
            f"{c['compile_time_s']:.1f} s, {c['recompiles']} recompilation(s), "
            f"{c['eager_calls']} eager call(s)."
        )
    return [*lines, ""]


def markdown(report: dict) -> str:
    lines = [
        "# Training-step throughput: eager, compiled, schnetpack; PIWSL and cheaper settings",
        "",
        *provenance_lines(
            report.get("commands", [report["command"]]),
            report["git_commit"],
            report["machine"],
            f"{report['date_utc']} UTC",
            extra=f"schnetpack {report['schnetpack']}",
            more=[
                f"Load average before / after: {report['loadavg_before']} / "
                f"{report['loadavg_after']}"
            ],
        ),
        "",
        report["note"],
        "",
        f"Step: forward, backward, Adam (fused, except `*_before` / `*_as_shipped`); w_E = {ENERGY_WEIGHT} on (ΔE/N)² (eV²), "
        f"w_F = {FORCE_WEIGHT} on ΔF² ((eV/Å)²); PIWSL: {json.dumps(PIWSL)} (kcal/mol units, "
        f"δ = 0.05 Å). × eager: median step time ÷ the eager plain step's median in the same run. "
        f"First step: the first call (for compiled variants: tracing + compiling + the check).",
        "",
    ]
    for case in report["results"]:
        lines += case_table(case)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=[*MODELS, "mace"], default=list(MODELS))
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"])
    parser.add_argument("--variants", nargs="+", default=None, help="subset of variant names")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.125, 0.25, 0.5])
    parser.add_argument("--compiled-fractions", action="store_true")
    parser.add_argument("--every", nargs="+", type=int, default=[4])
    parser.add_argument("--steps", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (compiles here)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="training_throughput", help="result file stem")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="measure nothing: add the cases of this result file (another --name) to --name's",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the (model, molecule) cases of an earlier result file, measure the others",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.molecules, args.steps, args.warmup = ["schnet"], ["ethanol"], 2, 1
        args.n_batches, args.fractions, args.every = 2, [0.25], [2]
    return args


def merge(args: argparse.Namespace) -> None:
    """``--merge``: the cases of another result file added to this one's (those it lacks: a
    case is its model, molecule and set of variants; each keeps the eager step of its own run)."""
    path = args.out / f"{args.name}.json"
    report, other = json.loads(path.read_text()), json.loads(args.merge.read_text())

    def key(case: dict) -> tuple:
        return case["model"], case["molecule"], tuple(sorted(r["variant"] for r in case["rows"]))

    done = {key(c) for c in report["results"]}
    report["results"] += [c for c in other["results"] if key(c) not in done]
    commands = report.get("commands", [report["command"]])
    commands += other.get("commands", [other["command"]])
    report["commands"] = list(dict.fromkeys(commands))  # each once, in order
    write(report, args)
    print(f"{path}: {len(report['results'])} cases", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.merge is not None:
        merge(args)
        return
    torch.set_num_threads(args.threads)
    try:
        from schnetpack_reference import import_schnetpack

        schnetpack = import_schnetpack().__version__
    except ImportError:
        schnetpack = None
        print("schnetpack not installed: no schnetpack variants", flush=True)
    command = " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    report = {
        "command": command,
        "commands": [command],
        "git_commit": git_commit(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": machine_info(),
        "schnetpack": schnetpack,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "note": (
            "The machine was shared with two long training processes (and other jobs) while "
            "this ran: absolute times are inflated and noisy. All variants of a case ran "
            "interleaved round-robin in shuffled order, so contention hits them alike; compare "
            "the ratios, which were measured in the same run."
        ),
        "results": [],
    }
    previous = args.out / f"{args.name}.json"
    if args.resume and previous.is_file():  # keep the cases measured before, add the others
        old = json.loads(previous.read_text())
        report["results"] = old["results"]
        report["commands"] = [*old.get("commands", [old["command"]]), command]
    done = {(c["model"], c["molecule"]) for c in report["results"]}
    for model in args.models:
        for molecule in args.molecules:
            if (model, molecule) in done:
                print(f"  {model} {molecule}: measured before (--resume)", flush=True)
                continue
            if schnetpack is None:
                args.variants = [v.name for v in variants(model, args) if not v.schnetpack]
            case = bench_case(model, molecule, args)
            case["measured"] = {
                "command": command,
                "git_commit": report["git_commit"],
                "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
            report["results"].append(case)
            print(json.dumps(case["first_step_loss_relative_difference"]), flush=True)
            write(report, args)  # after every case: a stopped run keeps what it measured
    print(markdown(report))


def write(report: dict, args: argparse.Namespace) -> None:
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["cases"] = [row for case in report["results"] for row in case["rows"]]
    if args.no_write:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", report, indent=1)
    write_text(args.out / f"{args.name}.md", markdown(report))


if __name__ == "__main__":
    main()
