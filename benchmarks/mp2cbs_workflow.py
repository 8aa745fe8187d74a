"""The energy-only high-accuracy workflow, end to end: DFT pre-training → MP2/CBS energies only.

The paper's practical promise on rMD17 ethanol: a model pre-trained on cheap data with forces is
fine-tuned on a few hundred high-level energies (no forces), with or without the physics-informed
losses, and judged at the high level on energies *and* forces.

1. ``label`` — ``piwsl label --method cbs`` (MP2/CBS(cc-pVDZ,cc-pVTZ): HF by Halkier's exp(−1.63X),
   correlation by X⁻³, frozen core, DF-MP2 on a density-fitted HF reference):
   a training pool of 350 rMD17 ethanol *train* positions with energies only and 100 *test*
   positions with energies and forces (central finite differences of the same CBS energy,
   ``finite_difference_forces=true``, h = 0.005 Å). The files ship as
   ``builtin:ethanol_mp2cbs_train`` / ``builtin:ethanol_mp2cbs_test``; this step regenerates them
   (``--relabel``, ≈ 2.1 core-hours) and otherwise only reads their provenance.
2. ``pretrain`` — PaiNN-conservative on the rMD17 PBE/def2-SVP energies+forces (``builtin:ethanol``,
   950 train / 50 val); a second copy on top of the GFN2-xTB prior (Δ-learning) for the Δ route.
3. ``finetune`` — N MP2/CBS energies (+ 50 energy-only validation frames from the pool), variants:

   ================  ==================================================================
   scratch_plain     new model, energies only
   scratch_piwsl     new model, energies only + PIWSL (second order, paper weights)
   ft_plain          from the PBE-pre-trained model (E0s re-fitted, lower learning rate)
   ft_piwsl          the same + PIWSL
   delta_plain       new model on top of GFN2-xTB (learns E_MP2/CBS − E_xTB)
   delta_piwsl       the same + PIWSL on the correction
   delta_ft_plain    from the PBE-pre-trained Δ model (PBE − xTB), fine-tuned on MP2/CBS − xTB
   ================  ==================================================================

4. baselines without training on MP2/CBS: GFN2-xTB itself and the PBE labels themselves (one
   constant offset fitted on the N training energies), and the PBE-pre-trained model zero-shot
   (E0s re-fitted on the N energies).

Errors are on the 100 MP2/CBS test frames (energy MAE meV and meV/atom, force MAE meV/Å). Results
go to ``benchmarks/results/mp2cbs_workflow.{json,md}`` with machine, command and commit; each
training run is skipped when it finished before (``--force`` redoes them).

    python benchmarks/mp2cbs_workflow.py                      # ≈ 40 min on 1 core (labels shipped)
    python benchmarks/mp2cbs_workflow.py --sizes 300 100 --seeds 0 1 2
    python benchmarks/mp2cbs_workflow.py --smoke              # seconds: checks the plumbing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, portable
from finetune_workflow import (
    PIWSL_2ND,
    PLAIN,
    add_training_arguments,
    energy_only_overrides,
    fmt,
    header_provenance,
    pick,
    pretrain_overrides,
    read_json,
    run_header,
    run_logged,
    train_once,
    write_json,
)

from piwsl.io.atomic import write_text

STEM = "mp2cbs_workflow"

PBE_TRAIN, PBE_TEST = "builtin:ethanol_train", "builtin:ethanol_test"
HIGH_TRAIN, HIGH_TEST = "builtin:ethanol_mp2cbs_train", "builtin:ethanol_mp2cbs_test"
#: positions of the high-level sets: the first 350 train / 100 test frames of rMD17 split 01
TRAIN_INDEX, TEST_INDEX = "0:350", "0:100"
#: the labelling method, exactly as the shipped files were made
LABEL_ARGS = ["--method", "cbs", "--set", "density_fit_hf=true"]
TEST_LABEL_ARGS = [*LABEL_ARGS, "--set", "finite_difference_forces=true"]
PRIOR = ["prior.name=gfn2-xtb"]

#: variant → (start: "scratch" | "pbe" | "pbe_delta", physics overrides, prior overrides)
VARIANTS: dict[str, tuple[str, list[str], list[str]]] = {
    "scratch_plain": ("scratch", PLAIN, []),
    "scratch_piwsl": ("scratch", PIWSL_2ND, []),
    "ft_plain": ("pbe", PLAIN, []),
    "ft_piwsl": ("pbe", PIWSL_2ND, []),
    "delta_plain": ("scratch", PLAIN, PRIOR),
    "delta_piwsl": ("scratch", PIWSL_2ND, PRIOR),
    "delta_ft_plain": ("pbe_delta", PLAIN, PRIOR),
}
DESCRIPTION = {
    "scratch_plain": "from scratch, energies only",
    "scratch_piwsl": "from scratch + PIWSL",
    "ft_plain": "PBE-pre-trained, fine-tuned",
    "ft_piwsl": "PBE-pre-trained, fine-tuned + PIWSL",
    "delta_plain": "Δ on GFN2-xTB, from scratch",
    "delta_piwsl": "Δ on GFN2-xTB + PIWSL on the correction",
    "delta_ft_plain": "Δ on GFN2-xTB, PBE-pre-trained Δ model fine-tuned",
}


# ---------------------------------------------------------------------------------- labels


def label(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Provenance and cost of the MP2/CBS sets; relabels them with ``--relabel``."""
    from piwsl.data.readers import resolve_path

    record: dict[str, Any] = {}
    for split, source, index, extra in (
        ("train", PBE_TRAIN, TRAIN_INDEX, LABEL_ARGS),
        ("test", PBE_TEST, TEST_INDEX, TEST_LABEL_ARGS),
    ):
        if args.relabel or args.smoke:
            out = work / "labels" / f"{split}.extxyz"
            if args.smoke:  # the plumbing only: GFN2-xTB stands in for MP2/CBS
                index = "0:8"
                extra = ["--method", "gfn2-xtb", *extra[4:]]
            cmd = [sys.executable, "-m", "piwsl.cli", "label", source, str(out), *extra]
            cmd += ["--index", index, "--workers", str(args.label_workers), "--no-progress"]
            run_logged(cmd, work / "logs" / f"label_{split}.log", 1)
            name = str(out)
        else:
            name = HIGH_TRAIN if split == "train" else HIGH_TEST
            out = resolve_path(name)
        summary_file = out.with_name(out.name + ".summary.json")
        summary = read_json(summary_file) if summary_file.exists() else {}
        record[split] = {"file": name, "index": index, "summary": summary}
    return record


def check_forces(args: argparse.Namespace, work: Path, labels: dict) -> dict[str, Any] | None:
    """The shipped finite-difference forces of test frame 0 against analytic CBS forces.

    The analytic route (conventional HF + MP2 gradients in both basis sets, the same linear
    combination) costs ≈ 2 min per ethanol frame; the difference measures the finite-difference
    error together with the density-fitting error of the shipped labels.
    """
    if args.smoke:
        return None
    out = work / "force_check.json"
    if out.exists() and not args.force:
        return read_json(out)
    import numpy as np
    from ase import Atoms

    from piwsl.labelling import make_backend

    frame = frames_of(labels, "test")[0]
    start = time.process_time()
    analytic = make_backend("cbs", forces=True).compute(
        Atoms(numbers=frame.numbers, positions=frame.positions)
    )
    diff = np.abs(analytic["forces"] - frame.forces)
    record = {
        "frame": 0,
        "analytic": "conventional HF + MP2 analytic gradients, CBS(cc-pVDZ,cc-pVTZ)",
        "cpu_time_s": round(time.process_time() - start, 1),
        "max_abs_diff_meV_per_A": round(1e3 * float(diff.max()), 3),
        "mean_abs_diff_meV_per_A": round(1e3 * float(diff.mean()), 3),
        "mean_abs_force_meV_per_A": round(1e3 * float(np.abs(frame.forces).mean()), 1),
        "energy_diff_meV": round(1e3 * (analytic["energy"] - frame.energy), 3),
    }
    write_json(out, record)
    return record


def frames_of(record: dict[str, Any], split: str):
    from piwsl.data import read_frames

    return read_frames(record[split]["file"])


# ---------------------------------------------------------------------------------- training


def train_run(args: argparse.Namespace, work: Path, name: str, overrides: list[str]) -> dict:
    """One ``piwsl train`` run in ``work/name`` (skipped when it finished with these settings)."""
    summary, timing = train_once(args, work, name, overrides)
    steps, train_time = summary.get("steps"), summary.get("train_time_s")
    wall = timing.get("wall_time_s")
    record = {
        "name": name,
        "wall_time_s": None if wall is None else round(wall, 1),
        "timing_note": timing.get("note"),
        "steps": steps,
        "epochs": summary.get("epochs"),
        "ms_per_step": round(1e3 * train_time / steps, 1) if steps and train_time else None,
        "best_model": portable(summary["best_model"]) if summary.get("best_model") else None,
        "command": portable("piwsl " + " ".join(timing["command"][1:])),
        "test": pick(summary.get("test")),
    }
    t = record["test"]
    print(
        f"{name}: test E {t['energy_mae_meV']} meV, F {t['forces_mae_meV_per_A']} meV/Å, "
        f"{record['steps']} steps, {record['wall_time_s']} s",
        flush=True,
    )
    return record


def pretrain(args: argparse.Namespace, work: Path, delta: bool) -> dict[str, Any]:
    overrides = pretrain_overrides(args, PBE_TRAIN, PBE_TEST, PRIOR if delta else None)
    return train_run(args, work, "pretrain_pbe_delta" if delta else "pretrain_pbe", overrides)


def finetune_overrides(
    args: argparse.Namespace, labels: dict, n: int, variant: str, seed: int, models: dict
) -> list[str]:
    start, physics, prior = VARIANTS[variant]
    train, test = labels["train"]["file"], labels["test"]["file"]
    overrides = energy_only_overrides(args, train, test, n, [*physics, *prior], seed)
    if start == "scratch":
        return [*overrides, f"training.lr={args.scratch_lr}"]
    return [
        *overrides,
        f"model.init_from={models[start]}",
        "model.e0s_on_init=refit",
        f"training.lr={args.finetune_lr}",
    ]


# ---------------------------------------------------------------------------------- baselines


def offset_metrics(test, predicted_energy, predicted_forces, offset: float) -> dict[str, Any]:
    from piwsl.evaluation import Predictions, compute_metrics

    prediction = Predictions.of(test, predicted_energy, predicted_forces, energy_offset=offset)
    return {"offset_eV": offset, **pick(compute_metrics(test, prediction))}


def baselines(args: argparse.Namespace, work: Path, labels: dict, n: int, models: dict) -> dict:
    """GFN2-xTB and the PBE labels themselves, and the PBE model zero-shot, on the MP2/CBS test."""
    import numpy as np
    import torch

    from piwsl.config import load_config
    from piwsl.data import read_frames
    from piwsl.data.splits import split_indices
    from piwsl.priors import make_prior, prior_values
    from piwsl.training.finetune import zero_shot

    torch.set_num_threads(args.threads)
    pool, test = frames_of(labels, "train"), frames_of(labels, "test")
    train_idx, _, _ = split_indices(len(pool), n, args.finetune_n_val, None, seed=0)
    out: dict[str, Any] = {}

    # GFN2-xTB as the Δ runs see it: the prior (tblite) through piwsl's prior cache
    prior = make_prior("gfn2-xtb")
    xtb_pool = prior_values(prior, [pool[k] for k in train_idx])
    xtb_test = prior_values(prior, test)
    offset = float(np.mean([pool[k].energy for k in train_idx]) - np.mean(xtb_pool.energies))
    out["gfn2_xtb"] = offset_metrics(test, xtb_test.energies, xtb_test.forces, offset)

    # the PBE labels of the same positions (the shipped sets keep the rMD17 order)
    pbe_pool = read_frames(PBE_TRAIN)
    pbe_test = read_frames(PBE_TEST)[: len(test)]
    if all(np.allclose(a.positions, b.positions) for a, b in zip(pbe_test, test, strict=True)):
        offset = float(np.mean([pool[k].energy - pbe_pool[k].energy for k in train_idx]))
        out["pbe_labels"] = offset_metrics(
            test, [f.energy for f in pbe_test], [f.forces for f in pbe_test], offset
        )

    cfg = load_config("builtin:ethanol", finetune_overrides(args, labels, n, "ft_plain", 0, models))
    before = zero_shot(cfg, test, work / "zero_shot", name=f"pbe_N{n}")
    out["pbe_model_zero_shot"] = pick(before["refit"])
    return out


# ---------------------------------------------------------------------------------- report


def run_name(n: int, variant: str, seed: int) -> str:
    return f"N{n}_{variant}_s{seed}"


def stats(result: dict, n: int, variant: str, key: str) -> tuple[float, float, int] | None:
    values = [
        r["test"][key]
        for r in result["runs"].values()
        if r["N"] == n and r["variant"] == variant and r["test"].get(key) is not None
    ]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def pm(s: tuple[float, float, int] | None, digits: int = 1) -> str:
    return "—" if s is None else f"{s[0]:.{digits}f} ± {s[1]:.{digits}f}"


def label_lines(labels: dict) -> list[str]:
    lines = []
    for split in ("train", "test"):
        s = labels[split].get("summary") or {}
        n_ok, wall = s.get("n_ok"), s.get("compute_time_s")
        per = f"{wall / n_ok:.1f} s per frame" if n_ok and wall else "cost not recorded"
        what = "energies" if split == "train" else "energies + finite-difference forces"
        lines.append(
            f"- {split}: {n_ok} frames ({what}), {s.get('n_failed', 0)} failed; {per}, "
            f"{wall / 3600 if wall else math.nan:.2f} h in all (sum of per-frame wall times of "
            "single-threaded workers)"
        )
    return lines


def header_lines(h: dict[str, Any]) -> list[str]:
    """Title, provenance and the reference/model/training paragraph of the report."""
    return [
        "# Energy-only high-accuracy workflow: PBE pre-training → MP2/CBS energies (ethanol)",
        "",
        *header_provenance(h),
        "",
        "Reference: MP2/CBS(cc-pVDZ,cc-pVTZ) (PySCF; HF Halkier exp(−1.63X), correlation X⁻³, "
        "frozen core, DF-MP2 on a density-fitted HF reference) of rMD17 ethanol positions; test "
        "forces by central finite differences of the same CBS energy (h = 0.005 Å). Model: PaiNN, "
        "conservative forces (64 features, 3 interactions, cutoff 5 Å). Training: energies only, "
        f"N MP2/CBS frames + {h['finetune_n_val']} energy-only validation frames, about "
        f"{h['finetune_steps']} steps, batch {h['batch_size']}, paper loss units (kcal/mol); "
        "PIWSL = second order, λ_PITC 1.2, λ_PISC 0.01 per kcal²/mol², δ 0.05 Å. Errors on the "
        "MP2/CBS test frames, best-validation checkpoint, mean ± std over seeds.",
    ]


def force_check_lines(check: dict[str, Any] | None) -> list[str]:
    """The bullet on finite-difference vs analytic CBS forces (empty without a check)."""
    if not check:
        return []
    return [
        f"- check of the finite-difference forces (test frame 0) against analytic CBS forces "
        f"({check['analytic']}): mean |ΔF| {check['mean_abs_diff_meV_per_A']} meV/Å, max "
        f"{check['max_abs_diff_meV_per_A']} meV/Å (mean |F| "
        f"{check['mean_abs_force_meV_per_A']} meV/Å); energy difference from density "
        f"fitting {check['energy_diff_meV']} meV; {check['cpu_time_s']} CPU s for the "
        "analytic frame"
    ]


def pretrain_lines(result: dict[str, Any]) -> list[str]:
    """One bullet per finished pre-training (PBE, and PBE − GFN2-xTB for the Δ route)."""
    lines = []
    for key, title in (("pretrain", "PBE"), ("pretrain_delta", "PBE − GFN2-xTB (Δ)")):
        r = result.get(key)
        if r:
            t = r["test"]
            lines.append(
                f"- pre-training on {title} energies+forces: {r['steps']} steps, "
                f"{fmt(r['wall_time_s'], 0)} s; rMD17 PBE test: E {fmt(t['energy_mae_meV'])} meV, "
                f"F {fmt(t['forces_mae_meV_per_A'])} meV/Å"
                + (f" ({r['timing_note']})" if r.get("timing_note") else "")
            )
    return lines


def baseline_rows(n: int, base: dict[str, Any]) -> list[str]:
    """Error-table rows of one size without training on MP2/CBS."""
    lines = []
    for key, title in (
        ("gfn2_xtb", "GFN2-xTB itself (offset fitted on the N)"),
        ("pbe_labels", "PBE/def2-SVP labels themselves (offset fitted on the N)"),
        ("pbe_model_zero_shot", "PBE-pre-trained model, zero-shot (E0s re-fitted)"),
    ):
        b = base.get(key)
        if b:
            lines.append(
                f"| {n} | {title} | — | {fmt(b['energy_mae_meV'])} "
                f"| {fmt(b['energy_mae_meV_per_atom'], 2)} "
                f"| {fmt(b['forces_mae_meV_per_A'])} | — |"
            )
    return lines


def variant_row(result: dict[str, Any], n: int, variant: str) -> str | None:
    """Error-table row of one variant and size over its seeds (None when none ran)."""
    e = stats(result, n, variant, "energy_mae_meV")
    if e is None:
        return None
    e_atom = stats(result, n, variant, "energy_mae_meV_per_atom")
    f = stats(result, n, variant, "forces_mae_meV_per_A")
    ms = [
        r["ms_per_step"]
        for r in result["runs"].values()
        if r["N"] == n and r["variant"] == variant and r["ms_per_step"]
    ]
    return (
        f"| {n} | `{variant}`: {DESCRIPTION[variant]} | {e[2]} | {pm(e)} "
        f"| {pm(e_atom, 2)} | {pm(f)} "
        f"| {fmt(statistics.median(ms), 0) if ms else '—'} |"
    )


def error_table_lines(result: dict[str, Any]) -> list[str]:
    """The "Errors at the MP2/CBS level" section: baselines and variants, per size."""
    h = result["header"]
    lines = [
        "",
        "## Errors at the MP2/CBS level",
        "",
        "| N | model | seeds | E MAE (meV) | E MAE (meV/atom) | F MAE (meV/Å) | ms/step |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n in h["sizes"]:
        lines += baseline_rows(n, result["baselines"].get(str(n)) or {})
        for variant in h["variants"]:
            row = variant_row(result, n, variant)
            if row is not None:
                lines.append(row)
    return lines


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    """Write the report of ``result`` as markdown to ``path``."""
    lines = [
        *header_lines(result["header"]),
        "",
        "## Labels",
        "",
        *label_lines(result["labels"]),
        *force_check_lines(result.get("force_check")),
        "",
        *pretrain_lines(result),
        *error_table_lines(result),
    ]
    findings = summarise(result)
    if findings:
        lines += ["", "## What the numbers show", "", *[f"- {x}" for x in findings]]
    lines += ["", "Commands of the individual runs: `runs` in the JSON."]
    write_text(path, "\n".join(lines) + "\n")


#: comparisons the summary states: (first variant, second variant, what it measures)
COMPARISONS = (
    ("scratch_plain", "ft_plain", "PBE pre-training"),
    ("scratch_plain", "scratch_piwsl", "PIWSL from scratch"),
    ("ft_plain", "ft_piwsl", "PIWSL when fine-tuning"),
    ("scratch_plain", "delta_plain", "Δ-learning on GFN2-xTB instead of plain"),
    ("ft_plain", "delta_plain", "Δ-learning from scratch vs PBE fine-tuning"),
    ("delta_plain", "delta_piwsl", "PIWSL on the Δ correction"),
    ("delta_plain", "delta_ft_plain", "PBE-pre-trained Δ model vs Δ from scratch"),
)


def summarise(result: dict[str, Any]) -> list[str]:
    """Plain statements computed from the numbers (seed means)."""
    out: list[str] = []
    f_key, e_key = "forces_mae_meV_per_A", "energy_mae_meV"
    for n in result["header"]["sizes"]:
        for a, b, what in COMPARISONS:
            ea, fa = stats(result, n, a, e_key), stats(result, n, a, f_key)
            eb, fb = stats(result, n, b, e_key), stats(result, n, b, f_key)
            if not (ea and fa and eb and fb):
                continue
            out.append(
                f"N = {n}, {what}: force MAE {fa[0]:.0f} → {fb[0]:.0f} meV/Å "
                f"({fa[0] / fb[0]:.2f}×), energy MAE {ea[0]:.1f} → {eb[0]:.1f} meV "
                f"({ea[0] / eb[0]:.2f}×) (`{a}` → `{b}`; > 1× means the second is better)."
            )
    return out


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "runs" / "mp2cbs"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[300])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per run")
    add_training_arguments(parser)
    parser.add_argument("--relabel", action="store_true", help="recompute the MP2/CBS labels")
    parser.add_argument("--label-workers", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS), help="folder of the result files")
    parser.add_argument("--force", action="store_true", help="retrain every run")
    parser.add_argument("--smoke", action="store_true", help="tiny settings in /tmp")
    args = parser.parse_args()
    if args.smoke:
        args.work = "/tmp/piwsl_mp2cbs_smoke"
        args.pretrain_epochs, args.pretrain_n_train, args.pretrain_n_val = 1, 20, 5
        args.finetune_steps, args.finetune_n_val, args.sizes, args.seeds = 2, 1, [2], [0]
        args.results = str(Path(args.work) / "results")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "header": run_header("mp2cbs_workflow.py", args),
        "labels": None,
        "baselines": {},
        "runs": {},
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        write_json(results / f"{STEM}.json", result)
        write_markdown(results / f"{STEM}.md", result)

    result["labels"] = labels = label(args, work)
    result["force_check"] = check_forces(args, work, labels)
    result["pretrain"] = pretrain(args, work, delta=False)
    models = {"pbe": result["pretrain"]["best_model"]}
    if any(VARIANTS[v][0] == "pbe_delta" for v in args.variants):
        result["pretrain_delta"] = pretrain(args, work, delta=True)
        models["pbe_delta"] = result["pretrain_delta"]["best_model"]
    save()
    for n in args.sizes:
        result["baselines"][str(n)] = baselines(args, work, labels, n, models)
        save()
    for seed in args.seeds:  # all variants of one seed before the next seed
        for n in args.sizes:
            for variant in args.variants:
                name = run_name(n, variant, seed)
                overrides = finetune_overrides(args, labels, n, variant, seed, models)
                record = train_run(args, work, name, overrides)
                result["runs"][name] = {**record, "N": n, "variant": variant, "seed": seed}
                save()
    print(f"results: {results / (STEM + '.md')}", flush=True)
    print(json.dumps({k: v for k, v in result["baselines"].items()}, indent=1)[:2000])


if __name__ == "__main__":
    main()
