"""Speed of the model call in batched MD: eager against compiled (``piwsl md --batched --compile``).

For each model file: R replicas of start frames from an rMD17 test split, collated as the batched
MD potential does (neighbour list with skin), then rounds of ``--calls`` eager calls and
``--calls`` compiled calls, interleaved, positions jittered per round; the median time per call
of each and their ratio, the time to build the compiled graph, and the largest differences of
energies and forces between the two. Results: ``benchmarks/results/md_inference_speed.{json,md}``.

    python benchmarks/md_inference_speed.py runs/benchmarks/aspirin-*-EF_100-*-s0/best_model.pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, ROOT, command_line, git_commit, machine_info, provenance_lines, relative

from piwsl.io.atomic import write_json, write_text

DATA = ROOT.parent / "shared" / "data" / "rmd17" / "rmd17_aspirin_test_01.npz"


def replica_batch(model, data: str, replicas: int, skin: float):
    """The first ``replicas`` frames of ``data`` as one batch, as the batched MD potential
    collates them."""
    from piwsl.data import read_frames
    from piwsl.data.batch import frames_to_batch

    return frames_to_batch(read_frames(data)[:replicas], model.cutoff, skin)


def timed(call, batch, calls: int) -> float:
    """Seconds per call over ``calls`` calls without a gradient."""
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(calls):
            call(batch, compute_forces=True, create_graph=False)
    return (time.perf_counter() - start) / calls


def measure(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Eager against compiled for one model (module docstring)."""
    from piwsl.models import load_model
    from piwsl.models.compiled import CompiledForceField

    eager = load_model(path).eval()
    compiled = CompiledForceField(eager, backend=args.backend, inference=True)
    batch = replica_batch(eager, args.data, args.replicas, args.skin)
    start = time.perf_counter()
    with torch.no_grad():
        fast = compiled(batch, compute_forces=True, create_graph=False)
        slow = eager(batch, compute_forces=True, create_graph=False)
    build_s = time.perf_counter() - start
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        jitter = 0.01 * torch.randn(batch.positions.shape, generator=generator)
        moved = batch.with_positions(batch.positions + jitter.to(batch.positions))
        times["eager"].append(timed(eager, moved, args.calls))
        times["compiled"].append(timed(compiled, moved, args.calls))
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": relative(path),
        "direct_forces": bool(eager.direct_forces),
        "atoms": int(batch.positions.shape[0]),
        "eager_ms": 1000 * median["eager"],
        "compiled_ms": 1000 * median["compiled"],
        "speedup": median["eager"] / median["compiled"],
        "build_s": build_s,
        "max_energy_diff_eV": float((fast["energy"] - slow["energy"]).abs().max()),
        "max_force_diff_eV_per_A": float((fast["forces"] - slow["forces"]).abs().max()),
        "compiled_calls": compiled.stats.compiled_calls,
        "eager_calls": compiled.stats.eager_calls,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Batched-MD model call: eager against compiled",
        "",
        *provenance_lines(result["command"], result["commit"], result["machine"]),
        "",
        f"- {result['replicas']} replicas of `{result['data']}` per call, skin {result['skin']} Å; "
        f"median of {result['rounds']} interleaved rounds of {result['calls']} calls each "
        f"(backend {result['backend']})",
        "",
        "| model | forces | atoms | eager (ms/call) | compiled (ms/call) | speed-up | build (s) "
        "| max ΔE (eV) | max ΔF (eV/Å) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["models"]:
        lines.append(
            f"| {r['model']} | {'direct' if r['direct_forces'] else 'conservative'} | {r['atoms']} "
            f"| {r['eager_ms']:.2f} | {r['compiled_ms']:.2f} | {r['speedup']:.2f}× "
            f"| {r['build_s']:.0f} | {r['max_energy_diff_eV']:.1e} "
            f"| {r['max_force_diff_eV_per_A']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model files (best_model.pt)")
    parser.add_argument("--data", default=str(DATA), help="start frames (an rMD17 test split)")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--skin", type=float, default=1.0, metavar="Å")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20, help="calls per round and mode")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {
        "command": command_line(argv, script="benchmarks/md_inference_speed.py"),
        "commit": git_commit(),
        "machine": machine_info(),
        "data": relative(args.data),
        **{k: getattr(args, k) for k in ("replicas", "skin", "rounds", "calls", "backend")},
        "models": [],
    }
    for path in args.models:
        result["models"].append(measure(path, args))
        print(json.dumps(result["models"][-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "md_inference_speed.json", result, indent=1)
    write_text(args.out / "md_inference_speed.md", markdown(result))
    print(f"wrote {relative(args.out / 'md_inference_speed.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
