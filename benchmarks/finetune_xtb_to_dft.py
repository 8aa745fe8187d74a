"""Fine-tuning benchmark: pre-train on cheap GFN2-xTB energies+forces, fine-tune on DFT energies only.

The scenario of the paper's fine-tuning use case, on rMD17 ethanol (split 01):

1. ``label``    — the 1,000 rMD17 ethanol *train* positions (and the 1,000 test positions, for the
   pre-training's own test and the xTB-vs-DFT gap) are labelled with GFN2-xTB through
   ``piwsl label`` (tblite): ``runs/finetune/xtb_{train,test}.extxyz`` (``REF_`` keys, eV, eV/Å).
2. ``pretrain`` — PaiNN-conservative (the README main job's model) on the xTB energies+forces,
   950 training / 50 validation frames, ``piwsl train`` with the default loss.
3. ``finetune`` — N DFT (rMD17 PBE) frames with energies only (``data.train_labels=energy``,
   ``loss.force_weight=0``, 50 energy-only validation frames from the same pool, model selection
   on the validation energy MAE), in the paper's loss units (total energies in kcal/mol). Variants:
   ``ft_plain`` / ``ft_piwsl_2nd`` start from the pre-trained ``best_model.pt``
   (``model.init_from``, ``model.e0s_on_init=refit``, lower learning rate); ``scratch_plain`` /
   ``scratch_piwsl_2nd`` train a new model on the same data. PIWSL is the second-order variant
   with the paper's weights (λ_PITC 1.2, λ_PISC 0.01 per kcal²/mol²).
4. ``evaluate`` — every model on the 1,000 DFT test frames (energies and forces). The pre-trained
   xTB model is also scored zero-shot: its forces as they are, its energies after re-fitting the
   E0s/shift to the same N DFT training energies the fine-tuning sees (the fine-tuning's starting
   point, exactly what ``e0s_on_init=refit`` does). GFN2-xTB itself is scored the same way.

Results go to ``benchmarks/results/finetune_xtb_to_dft.{json,md}`` (machine, threads, command,
commit). Each step is skipped when its outputs exist (``--force`` redoes everything), so a killed
run continues where it stopped. Runs go one at a time with ``--threads`` torch threads each.

    python benchmarks/finetune_xtb_to_dft.py                       # everything, ~30 min on 1 core
    python benchmarks/finetune_xtb_to_dft.py --sizes 200 --variants ft_plain ft_piwsl_2nd
    python benchmarks/finetune_xtb_to_dft.py --smoke               # seconds: tiny settings
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, portable
from finetune_workflow import (
    MODEL,
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

STEM = "finetune_xtb_to_dft"

DFT_TRAIN = "builtin:ethanol_train"
DFT_TEST = "builtin:ethanol_test"


#: Fine-tuning variants: (start from the pre-trained model?, physics settings).
VARIANTS: dict[str, tuple[bool, list[str]]] = {
    "ft_plain": (True, PLAIN),
    "ft_piwsl_2nd": (True, PIWSL_2ND),
    "scratch_plain": (False, PLAIN),
    "scratch_piwsl_2nd": (False, PIWSL_2ND),
}


# ---------------------------------------------------------------------------------- helpers


# ---------------------------------------------------------------------------------- steps


def label(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """GFN2-xTB labels of the rMD17 train and test positions (``piwsl label``)."""
    record: dict[str, Any] = {}
    for split, source in (("train", DFT_TRAIN), ("test", DFT_TEST)):
        out = work / f"xtb_{split}.extxyz"
        timing = work / f"xtb_{split}.wall_time.json"
        if args.force:
            for path in (out, timing, out.with_name(out.name + ".journal.jsonl")):
                path.unlink(missing_ok=True)
        if not (out.exists() and timing.exists()):
            cmd = [sys.executable, "-m", "piwsl.cli", "label", source, str(out)]
            cmd += ["--method", "gfn2-xtb", "--workers", "1", "--no-progress"]
            if args.label_index:
                cmd += ["--index", args.label_index]
            wall = run_logged(cmd, work / "logs" / f"label_{split}.log", args.threads)
            summary = read_json(out.with_name(out.name + ".summary.json"))
            write_json(timing, {"wall_time_s": wall, "summary": summary})
        info = read_json(timing)
        summary = info.get("summary", {})
        n_frames = summary.get("n_frames") or summary.get("n_ok")
        record[split] = {
            "file": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
            "wall_time_s": round(info["wall_time_s"], 2),
            "n_ok": summary.get("n_ok"),
            "n_failed": summary.get("n_failed"),
            "ms_per_frame_incl_startup": round(1e3 * info["wall_time_s"] / n_frames, 2)
            if n_frames
            else None,
            "ms_per_frame_xtb_compute": round(1e3 * summary["compute_time_s"] / n_frames, 2)
            if n_frames and summary.get("compute_time_s") is not None
            else None,
        }
        print(f"label {split}: {record[split]}", flush=True)
    return record


def train_run(
    args: argparse.Namespace, work: Path, name: str, overrides: list[str]
) -> dict[str, Any]:
    """One ``piwsl train`` run in ``work/name`` (skipped when it finished before)."""
    run_dir = work / name
    summary, timing = train_once(args, work, name, overrides)
    final = final_model_test(args, run_dir, summary) if name != "pretrain_xtb" else None
    record = {
        "name": name,
        "wall_time_s": round(timing["wall_time_s"], 1),
        "train_time_s": summary.get("train_time_s"),
        "epochs": summary.get("epochs"),
        "steps": summary.get("steps"),
        "monitor": summary.get("monitor"),
        "best_score": summary.get("best_score"),
        "best_model": portable(summary["best_model"]) if summary.get("best_model") else None,
        "train_ms_per_step_incl_validation": round(
            1e3 * summary["train_time_s"] / summary["steps"], 1
        )
        if summary.get("steps") and summary.get("train_time_s")
        else None,
        "command": portable("python -m " + " ".join(timing["command"])),
        "test": pick(summary.get("test")),
        "test_final_model": final,
    }
    t = record["test"]
    print(
        f"{name}: test E {t['energy_mae_meV']} meV, F {t['forces_mae_meV_per_A']} meV/Å, "
        f"{record['epochs']} epochs / {record['steps']} steps, {record['wall_time_s']} s",
        flush=True,
    )
    return record


def final_model_test(
    args: argparse.Namespace, run_dir: Path, summary: dict[str, Any]
) -> dict[str, Any] | None:
    """DFT test errors of the run's *last* weights (final_model.pt): no checkpoint selection.

    The best checkpoint is chosen on 50 validation energies, a noisy choice; the final model shows
    what the variants do without it.
    """
    out = run_dir / "evaluation" / "final_model_test_metrics.json"
    if not out.exists() or args.force or out.stat().st_mtime < summary_mtime(run_dir):
        import torch

        from piwsl.evaluation import evaluate_model
        from piwsl.models import load_model

        torch.set_num_threads(args.threads)
        path = Path(summary.get("final_model") or run_dir / "final_model.pt")
        if not path.exists():
            return None
        evaluate_model(load_model(path), DFT_TEST, out.parent, name="final_model_test", plot=False)
    return pick(read_json(out))


def summary_mtime(run_dir: Path) -> float:
    return (run_dir / "summary.json").stat().st_mtime


def pretrain(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    overrides = pretrain_overrides(
        args, str(work / "xtb_train.extxyz"), str(work / "xtb_test.extxyz")
    )
    record = train_run(args, work, "pretrain_xtb", overrides)
    record["test_set"] = "GFN2-xTB labels of the 1,000 rMD17 test positions"
    return record


def finetune_overrides(
    args: argparse.Namespace, n: int, variant: str, pretrained: Path, seed: int = 0
) -> list[str]:
    from_pretrained, physics = VARIANTS[variant]
    overrides = energy_only_overrides(args, DFT_TRAIN, DFT_TEST, n, physics, seed)
    if from_pretrained:
        overrides += [
            f"model.init_from={pretrained}",
            "model.e0s_on_init=refit",
            f"training.lr={args.finetune_lr}",
        ]
    else:
        overrides += [f"training.lr={args.scratch_lr}"]
    return overrides


def zero_shot(args: argparse.Namespace, work: Path, n: int, pretrained: Path) -> dict[str, Any]:
    """The pre-trained xTB model on the DFT test set, E0s/shift re-fitted to N DFT energies.

    Also GFN2-xTB itself (its labels of the test positions), with one constant energy offset fitted
    on the same N training positions (ethanol only: per-element E0s reduce to one constant).
    """
    out = work / f"zero_shot_N{n}.json"
    if out.exists() and not args.force:
        return read_json(out)
    import numpy as np
    import torch

    from piwsl.config import load_config
    from piwsl.data import read_frames
    from piwsl.data.splits import split_indices
    from piwsl.evaluation import Predictions, compute_metrics
    from piwsl.training.finetune import zero_shot as evaluate_zero_shot

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    # the very data the fine-tuning runs see
    cfg = load_config("builtin:ethanol", finetune_overrides(args, n, "ft_plain", pretrained))
    test = read_frames(DFT_TEST)
    before = evaluate_zero_shot(cfg, test, work / "zero_shot", name=f"N{n}")

    # GFN2-xTB itself against DFT: one constant offset from the N training positions (the xTB
    # files keep the input order, so training frame k of the DFT pool is xTB frame k)
    xtb_train = read_frames(work / "xtb_train.extxyz")
    xtb_test = read_frames(work / "xtb_test.extxyz")
    dft_pool = read_frames(DFT_TRAIN)
    train_idx, _, _ = split_indices(len(dft_pool), n, args.finetune_n_val, None, seed=0)
    xtb_vs_dft: dict[str, Any] = {"n_offset_frames": 0}
    if len(xtb_train) == len(dft_pool) and len(xtb_test) == len(test):
        offset = float(np.mean([dft_pool[k].energy - xtb_train[k].energy for k in train_idx]))
        metrics = compute_metrics(test, Predictions.from_frames(xtb_test, energy_offset=offset))
        xtb_vs_dft = {"n_offset_frames": len(train_idx), "offset_eV": offset, **pick(metrics)}
    raw, refit = before["raw"], before["refit"]
    record = {
        "name": f"zero_shot_N{n}",
        "n_dft_energies_for_refit": before["n_energies"],
        "wall_time_s": round(time.perf_counter() - start, 1),
        "test_raw": pick(raw),
        "test": pick(refit),
        "gfn2_xtb_vs_dft": xtb_vs_dft,
    }
    write_json(out, record)
    return record


# ---------------------------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


def run_name(n: int, variant: str, seed: int) -> str:
    return f"N{n}_{variant}" + (f"_s{seed}" if seed else "")


def ratios(
    runs: dict[str, dict[str, Any]], sizes: list[int], seeds: list[int]
) -> list[dict[str, Any]]:
    """plain / PIWSL test-MAE ratios per size, start and seed (and of the seed means), for the
    best checkpoint (``test``) and the last weights (``test_final_model``)."""
    keys = ("energy_mae_meV", "forces_mae_meV_per_A")
    out = []
    for n in sizes:
        for start in ("ft", "scratch"):
            pairs = []
            for seed in seeds:
                plain = runs.get(run_name(n, f"{start}_plain", seed))
                piwsl = runs.get(run_name(n, f"{start}_piwsl_2nd", seed))
                if plain and piwsl:
                    pairs.append((str(seed), plain, piwsl))
            if len(pairs) > 1:
                mean = []
                for i in (1, 2):
                    mean.append(
                        {
                            which: {
                                k: sum((p[i].get(which) or {}).get(k) or math.nan for p in pairs)
                                / len(pairs)
                                for k in keys
                            }
                            for which in ("test", "test_final_model")
                        }
                    )
                pairs.append((f"mean of {len(pairs)}", mean[0], mean[1]))
            for seed, plain, piwsl in pairs:
                row: dict[str, Any] = {
                    "N": n,
                    "start": "pre-trained (xTB)" if start == "ft" else "from scratch",
                    "seed": seed,
                }
                for which, suffix in (("test", ""), ("test_final_model", "_last_weights")):
                    a, b = plain.get(which) or {}, piwsl.get(which) or {}
                    row[f"energy_mae_plain_over_piwsl{suffix}"] = ratio(
                        a.get(keys[0]), b.get(keys[0])
                    )
                    row[f"forces_mae_plain_over_piwsl{suffix}"] = ratio(
                        a.get(keys[1]), b.get(keys[1])
                    )
                out.append(row)
    return out


def header_lines(h: dict[str, Any]) -> list[str]:
    """Title, provenance and set-up paragraph of the report, up to the "Steps" heading."""
    return [
        "# Fine-tuning: GFN2-xTB energies+forces → DFT energies only (rMD17 ethanol)",
        "",
        *header_provenance(h, extra="one run at a time"),
        "",
        "Model: PaiNN, conservative forces (64 features, 3 interactions, 20 RBF, cutoff 5 Å). "
        "Test set: the 1,000 DFT (PBE) frames of the rMD17 ethanol split-01 test file, energies "
        "and forces. Errors of the best checkpoint (fine-tuning: lowest validation energy MAE on "
        f"{h['finetune_n_val']} energy-only DFT frames). Energies in meV (total) and meV/atom, "
        "forces in meV/Å. Fine-tuning losses in the paper's units (total energies, kcal/mol); "
        "PIWSL = second order, λ_PITC 1.2, λ_PISC 0.01 per kcal²/mol², δ 0.05 Å.",
        "",
        "## Steps",
        "",
    ]


def step_lines(result: dict[str, Any]) -> list[str]:
    """One bullet per finished step: xTB labelling of each split, then the pre-training."""
    h = result["header"]
    lab = result.get("label") or {}
    pre = result.get("pretrain")
    lines = []
    for split in ("train", "test"):
        if split in lab:
            r = lab[split]
            lines.append(
                f"- GFN2-xTB labels, {split} positions: {r['n_ok']} ok / {r['n_failed']} failed, "
                f"{fmt(r['wall_time_s'])} s wall ({fmt(r['ms_per_frame_incl_startup'])} ms per "
                f"frame incl. start-up, {fmt(r.get('ms_per_frame_xtb_compute'), 2)} ms per frame "
                "in xTB itself), 1 worker, 1 thread"
            )
    if pre:
        t = pre["test"]
        lines.append(
            f"- Pre-training on xTB E+F ({h['pretrain_n_train']} train / {h['pretrain_n_val']} "
            f"val): {pre['epochs']} epochs, {pre['steps']} steps, {fmt(pre['wall_time_s'], 0)} s "
            f"wall; test at the xTB level: E {fmt(t['energy_mae_meV'])} meV "
            f"({fmt(t['energy_mae_meV_per_atom'], 2)} meV/atom), F "
            f"{fmt(t['forces_mae_meV_per_A'])} meV/Å"
        )
    return lines


def zero_shot_rows(n: int, zs: dict[str, Any]) -> list[str]:
    """DFT-table rows of one size without fine-tuning: xTB itself and the zero-shot model."""
    lines = []
    g = zs["gfn2_xtb_vs_dft"]
    if g.get("forces_mae_meV_per_A") is not None:
        lines.append(
            f"| {n} | GFN2-xTB itself (1 constant offset fitted on the N) | — "
            f"| {fmt(g['energy_mae_meV'])} | {fmt(g['energy_mae_meV_per_atom'], 2)} "
            f"| {fmt(g['forces_mae_meV_per_A'])} | {fmt(g['forces_rmse_meV_per_A'])} "
            "| — | — | — | — | — | — |"
        )
    t = zs["test"]
    lines.append(
        f"| {n} | xTB-pre-trained, zero-shot (E0s re-fitted on the N) | — "
        f"| {fmt(t['energy_mae_meV'])} | {fmt(t['energy_mae_meV_per_atom'], 2)} "
        f"| {fmt(t['forces_mae_meV_per_A'])} | {fmt(t['forces_rmse_meV_per_A'])} "
        "| — | — | 0 | 0 | — | — |"
    )
    return lines


def run_row(n: int, variant: str, seed: int, r: dict[str, Any]) -> str:
    """DFT-table row of one fine-tuning run."""
    t = r["test"]
    last = r.get("test_final_model") or {}
    return (
        f"| {n} | {variant} | {seed} | {fmt(t['energy_mae_meV'])} "
        f"| {fmt(t['energy_mae_meV_per_atom'], 2)} | {fmt(t['forces_mae_meV_per_A'])} "
        f"| {fmt(t['forces_rmse_meV_per_A'])} "
        f"| {fmt(last.get('energy_mae_meV'))} "
        f"| {fmt(last.get('forces_mae_meV_per_A'))} "
        f"| {r['epochs']} | {r['steps']} "
        f"| {fmt(r['train_ms_per_step_incl_validation'], 0)} "
        f"| {fmt(r['wall_time_s'], 0)} |"
    )


def dft_table_lines(result: dict[str, Any]) -> list[str]:
    """The "DFT test errors" section: baselines and every run, per size."""
    h = result["header"]
    lines = [
        "",
        "## DFT test errors",
        "",
        "| N DFT energies | model | seed | E MAE (meV) | E MAE (meV/atom) | F MAE (meV/Å) | F RMSE (meV/Å) "
        "| E MAE, last (meV) | F MAE, last (meV/Å) | epochs | steps | ms/step | wall (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in h["sizes"]:
        zs = result["zero_shot"].get(str(n))
        if zs:
            lines += zero_shot_rows(n, zs)
        for variant in VARIANTS:
            for seed in h["seeds"]:
                r = result["runs"].get(run_name(n, variant, seed))
                if r:
                    lines.append(run_row(n, variant, seed, r))
    return lines


def ratio_table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The "plain / PIWSL" section, one row per size, start and seed (empty without ratios)."""
    if not rows:
        return []
    lines = [
        "",
        "## plain / PIWSL (> 1: PIWSL better)",
        "",
        "| N | start | seed | E MAE ratio | F MAE ratio | E MAE ratio, last weights "
        "| F MAE ratio, last weights |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['N']} | {r['start']} | {r['seed']} "
            f"| {fmt(r['energy_mae_plain_over_piwsl'], 2)} "
            f"| {fmt(r['forces_mae_plain_over_piwsl'], 2)} "
            f"| {fmt(r['energy_mae_plain_over_piwsl_last_weights'], 2)} "
            f"| {fmt(r['forces_mae_plain_over_piwsl_last_weights'], 2)} |"
        )
    return lines


def closing_lines(result: dict[str, Any]) -> list[str]:
    """Explanation of the variants and columns, then the findings and notes sections."""
    h = result["header"]
    lines = [
        "",
        "Variants: `ft_*` start from the xTB-pre-trained best_model.pt (`model.init_from`, "
        f"`model.e0s_on_init=refit`, lr {h['finetune_lr']}); `scratch_*` are new models "
        f"(lr {h['scratch_lr']}); all fine-tuning runs use cosine schedules over about "
        f"{h['finetune_steps']} steps (batch {h['batch_size']}). The zero-shot row keeps the "
        "pre-trained network and re-fits only its E0s and per-atom shift to the N DFT training "
        "energies (one constant for ethanol), i.e. the fine-tuning's starting point; its raw "
        "energies (xTB reference) are in the JSON (`test_raw`). ms/step: training time (validation "
        "included) / optimiser steps; wall: the whole `piwsl train` command incl. test evaluation. "
        "'last': the final weights (EMA) instead of the best-validation checkpoint, i.e. without "
        "the noisy model selection on 50 validation energies.",
        "",
        "Commands of the individual runs: see `runs` in the JSON.",
    ]
    findings = summarise(result)
    if findings:
        lines += ["", "## What the numbers show", "", *[f"- {x}" for x in findings]]
    if result.get("notes"):
        lines += ["", "## Notes", "", *[f"- {x}" for x in result["notes"]]]
    return lines


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    """Write the report of ``result`` as markdown to ``path``."""
    lines = [
        *header_lines(result["header"]),
        *step_lines(result),
        *dft_table_lines(result),
        *ratio_table_lines(result["ratios"]),
        *closing_lines(result),
    ]
    write_text(path, "\n".join(lines) + "\n")


def seed_mean(result: dict[str, Any], n: int, variant: str, key: str) -> tuple[float, int] | None:
    """Mean of a best-checkpoint test number over the seeds run (value, number of seeds)."""
    values = [
        r["test"][key]
        for r in result["runs"].values()
        if r.get("N") == n and r.get("variant") == variant and r["test"].get(key) is not None
    ]
    return (sum(values) / len(values), len(values)) if values else None


def summarise(result: dict[str, Any]) -> list[str]:
    """Plain statements computed from the numbers (seed means of the best checkpoints)."""
    out: list[str] = []
    h = result["header"]
    f_key, e_key = "forces_mae_meV_per_A", "energy_mae_meV"
    for n in h["sizes"]:
        zs = result["zero_shot"].get(str(n))
        ft_f, sc_f = (
            seed_mean(result, n, "ft_plain", f_key),
            seed_mean(result, n, "scratch_plain", f_key),
        )
        ft_e, sc_e = (
            seed_mean(result, n, "ft_plain", e_key),
            seed_mean(result, n, "scratch_plain", e_key),
        )
        if zs and ft_f and sc_f and ft_e and sc_e:
            g = zs["gfn2_xtb_vs_dft"]
            gap = (
                f"GFN2-xTB itself is {g['forces_mae_meV_per_A']:.0f} meV/Å off the DFT forces; "
                if g.get("forces_mae_meV_per_A") is not None
                else ""
            )
            out.append(
                f"N = {n} DFT energies, no DFT forces: {gap}the xTB-pre-trained model zero-shot "
                f"{zs['test'][f_key]:.0f} meV/Å. Fine-tuning it (plain) reaches "
                f"{ft_f[0]:.0f} meV/Å and {ft_e[0]:.1f} meV; the same data from scratch "
                f"{sc_f[0]:.0f} meV/Å and {sc_e[0]:.1f} meV — pre-training on cheap forces makes "
                f"the DFT forces {sc_f[0] / ft_f[0]:.1f}× and the energies "
                f"{sc_e[0] / ft_e[0]:.1f}× more accurate (mean of {ft_f[1]} seed(s))."
            )
    for r in result["ratios"]:
        if len(h["seeds"]) > 1 and not str(r["seed"]).startswith("mean"):
            continue
        e, f = r["energy_mae_plain_over_piwsl"], r["forces_mae_plain_over_piwsl"]
        if e is None or f is None:
            continue

        def word(x: float) -> str:
            if x > 1.05:
                return f"{100 * (1 - 1 / x):.0f} % lower error than plain"
            if x < 0.95:
                return f"{100 * (1 / x - 1):.0f} % higher error than plain"
            return "the same as plain within 5 %"

        seeds = f"{r['seed']} seeds" if str(r["seed"]).startswith("mean") else f"seed {r['seed']}"
        out.append(
            f"PIWSL 2nd order, N = {r['N']}, {r['start']} ({seeds}, best checkpoints): energy "
            f"{word(e)}, forces {word(f)} (plain/PIWSL MAE {e:.2f} and {f:.2f})."
        )
    piwsl = [r for r in result["runs"].values() if r.get("variant", "").endswith("piwsl_2nd")]
    plain = [r for r in result["runs"].values() if r.get("variant", "").endswith("_plain")]
    ms = [r.get("train_ms_per_step_incl_validation") for r in (*piwsl, *plain)]
    if piwsl and plain and all(x is not None for x in ms):
        a = sum(r["train_ms_per_step_incl_validation"] for r in piwsl) / len(piwsl)
        b = sum(r["train_ms_per_step_incl_validation"] for r in plain) / len(plain)
        out.append(
            f"Cost: a PIWSL step took {a:.0f} ms vs {b:.0f} ms plain ({a / b:.1f}×): energy-only "
            "plain training never evaluates forces, PIWSL needs forces (with their graph) at two "
            "displaced copies."
        )
    out.append(
        "With a conservative model (F = −∂E/∂R) the second-order Taylor and spatial residuals "
        "vanish up to third-order terms in the displacement, so PIWSL acts only as a smoothness "
        "prior on the energy here; it cannot supply the DFT-vs-xTB force difference, which the "
        "DFT energies alone must teach."
    )
    return out


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "runs" / "finetune"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 50])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per run")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds of the fine-tuning runs"
    )
    add_training_arguments(parser)
    parser.add_argument("--label-index", default=None, help="label only these frames (ASE index)")
    parser.add_argument("--tag", default=None, help="suffix of the result files")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the result files")
    parser.add_argument("--force", action="store_true", help="redo every step")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny settings in /tmp (checks the plumbing only)"
    )
    parser.add_argument("--note", action="append", default=[], help="note for the report")
    args = parser.parse_args()
    if args.smoke:
        args.work = "/tmp/piwsl_finetune_smoke"
        args.label_index = args.label_index or "0:40"
        args.pretrain_epochs, args.pretrain_n_train, args.pretrain_n_val = 1, 30, 10
        args.finetune_steps, args.finetune_n_val = 2, 10
        args.sizes = [s for s in args.sizes if s <= 20] or [16]
        args.results = str(Path(args.work) / "results")

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    stem = STEM + (f"_{args.tag}" if args.tag else "")
    header = {
        **run_header("finetune_xtb_to_dft.py", args),
        "model": "painn (conservative forces): " + "; ".join(MODEL[2:]),
        "pretrain_n_train": args.pretrain_n_train,
        "pretrain_n_val": args.pretrain_n_val,
        "pretrain_epochs": args.pretrain_epochs,
    }
    result: dict[str, Any] = {
        "header": header,
        "label": None,
        "pretrain": None,
        "zero_shot": {},
        "runs": {},
        "ratios": [],
        "notes": args.note,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["ratios"] = ratios(result["runs"], args.sizes, args.seeds)
        write_json(results / f"{stem}.json", result)
        write_markdown(results / f"{stem}.md", result)

    result["label"] = label(args, work)
    save()
    result["pretrain"] = pretrain(args, work)
    save()
    pretrained = Path(result["pretrain"]["best_model"])
    for seed in args.seeds:  # every size for the first seed before the next seed
        for n in args.sizes:
            if str(n) not in result["zero_shot"]:
                result["zero_shot"][str(n)] = zero_shot(args, work, n, pretrained)
                save()
            for variant in args.variants:
                name = run_name(n, variant, seed)
                overrides = finetune_overrides(args, n, variant, pretrained, seed)
                record = train_run(args, work, name, overrides)
                record.update(N=n, variant=variant, seed=seed)
                result["runs"][name] = record
                save()
    print(f"results: {results / (stem + '.md')}", flush=True)


if __name__ == "__main__":
    main()
