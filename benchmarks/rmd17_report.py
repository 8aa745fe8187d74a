"""The summary of the rMD17 benchmark (``benchmarks/rmd17.py``): reads the per-run result files,
aggregates them over seeds, and writes the Markdown/JSON summary and its plots.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import converged_protocol as converged
from common import baseline_of, provenance_lines
from rmd17_cells import METHODS, N_TRAIN, last_override

from piwsl.io.atomic import write_json, write_text


def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def test_errors(record: dict) -> tuple[float | None, float | None]:
    t = record.get("test") or {}
    return t.get("energy_mae_meV"), t.get("forces_mae_meV_per_A")


def batch_size_of(overrides: list[str]) -> int:
    """The batch size a run's overrides set (16, the built-in config's, when none does)."""
    return int(last_override(overrides, "training.batch_size", "16"))


def load_records(folder: Path) -> list[dict]:
    """The per-run result files of a folder (finished runs only)."""
    return [
        json.loads(p.read_text())
        for p in sorted(folder.glob("*.json"))
        if not p.name.endswith(".failed.json")
    ]


def aggregate(records: list[dict]) -> dict[tuple, dict[str, dict]]:
    """{(molecule, regime, model): {method: {E: [..], F: [..], steps, time}}}."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in records:
        key = (r["molecule"], r["regime"], r["model"])
        slot = groups.setdefault(key, {}).setdefault(
            r["method"], {"E": [], "F": [], "steps": [], "time": [], "val": [], "stopped": []}
        )
        if r.get("best_score") is not None:
            slot["val"].append(r["best_score"])
        e, f = test_errors(r)
        if e is not None:
            slot["E"].append(e)
        if f is not None:
            slot["F"].append(f)
        slot["batch"] = batch_size_of([*r["overrides"], *r.get("budget", [])])
        slot["steps"].append(r.get("steps") or 0)
        slot["time"].append(r.get("train_time_s") or 0.0)
        slot["stopped"].append(r.get("stopped_by"))
    return groups


def stopped_counts(reasons: list[str | None]) -> str:
    """``plateau 2, cap 1`` from the runs' stop reasons (— where none was recorded)."""
    known = [r for r in reasons if r]
    if not known:
        return "—"
    return ", ".join(f"{r} {known.count(r)}" for r in sorted(set(known)))


def ordered(names, reference: list[str]) -> list[str]:
    known = [m for m in reference if m in names]
    return known + sorted(set(names) - set(known))


def cell_methods(groups: dict[tuple, dict[str, Any]]) -> list[tuple[tuple, dict[str, Any], str]]:
    """(cell, its methods, method) in the report's order: molecule, regime as in ``N_TRAIN``,
    model; methods as in ``METHODS``."""
    cells = sorted(groups, key=lambda k: (k[0], list(N_TRAIN).index(k[1]), k[2]))
    return [(k, groups[k], m) for k in cells for m in ordered(groups[k], list(METHODS))]


def summary_markdown(header: dict, records: list[dict], failed: list[dict]) -> str:
    groups = aggregate(records)
    lines = [
        f"# rMD17 benchmark — suite `{header['suite']}`",
        "",
        *provenance_lines(
            header.get("commands") or header["command"],
            header["commit"],
            header["machine"],
            header["date"],
            commit_note="the summary's; each run: its own commit, below",
            extra=f"{header['jobs']} run(s) at a time",
            per_run_threads=header["threads"],
            more=[f"Budget: {header['budget']}"],
        ),
        "",
        f"Test set: all frames of the rMD17 split-{header.get('split', '01')} test file (1,000). Errors of the checkpoint "
        "with the best validation score (force MAE; energy MAE where training has no forces). "
        "Energy MAE in meV (total energy), force MAE in meV/Å; mean ± standard deviation over "
        "seeds (n). Ratio = baseline / method (> 1: the method is better); the baseline is plain "
        "training, for Δ + PIWSL it is Δ alone. Training frames and "
        "validation frames differ per seed.",
        "",
        "The validation column is what model selection saw: the best validation energy MAE (meV) "
        "in the energy-only regimes, force MAE (meV/Å) with forces; choose variants by it, "
        "never by the test columns.",
        "",
        "| molecule | regime | model | method | n | validation | E MAE (meV) | F MAE (meV/Å) "
        "| E ratio | F ratio | steps × batch | train time (s) | stopped by |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, methods, method in cell_methods(groups):
        # the reference: plain training (at equal wall-clock: the time-limited plain runs);
        # the physics terms on a Δ correction against Δ alone (common.BASELINES)
        base_name = baseline_of(method, set(methods))
        base = methods.get(base_name) if base_name else None
        s = methods[method]
        em, es = mean_std(s["E"])
        fm, fs = mean_std(s["F"])
        er = fr = None
        if base and method != base_name and base["E"] and s["E"]:
            er = statistics.fmean(base["E"]) / em
        if base and method != base_name and base["F"] and s["F"]:
            fr = statistics.fmean(base["F"]) / fm
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {method} | {len(s['E'])} "
            f"| {fmt(mean_std(s['val'])[0])} | {fmt(em)} ± {fmt(es)} | {fmt(fm)} ± {fmt(fs)} | {fmt(er, 2)} | {fmt(fr, 2)} "
            f"| {statistics.median(s['steps']):.0f} × {s['batch']} "
            f"| {statistics.median(s['time']):.0f} | {stopped_counts(s['stopped'])} |"
        )
    lines += [
        "",
        "## Runs",
        "",
        "| run | E MAE (meV) | F MAE (meV/Å) | steps | stopped by | train time (s) | code | trained on "
        "| commit |",
        "|---|---:|---:|---:|---|---:|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["name"]):
        e, f = test_errors(r)
        lines.append(
            f"| {r['name']} | {fmt(e)} | {fmt(f)} | {r.get('steps')} | {r.get('stopped_by') or '—'} "
            f"| {fmt(r.get('train_time_s'), 0)} | {r.get('code_path', 'eager')} "
            f"| {trained_on(r)} | {r['commit'][:8]} |"
        )
    lines += curl_section(records)
    lines += warnings_section(records)
    if failed:
        lines += ["", "## Failed runs", ""]
        for r in failed:
            last = (r.get("error") or "").strip().splitlines()[-1:] or [""]
            lines.append(f"- {r['name']}: `{last[0]}`")
    return "\n".join(lines) + "\n"


#: the test metric of a direct-force model's curl (piwsl.evaluation.nonconservativeness)
CURL_KEY = "nonconservative_force_curl_eV_per_A2"


def curl_section(records: list[dict]) -> list[str]:
    """The curl of the direct-force models' forces on the test frames, per cell and method — what
    the spatial-consistency term is meant to lower; empty when no run recorded it."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in records:
        value = (r.get("test") or {}).get(CURL_KEY)
        if value is not None:
            key = (r["molecule"], r["regime"], r["model"])
            groups.setdefault(key, {}).setdefault(r["method"], []).append(value)
    if not groups:
        return []
    lines = [
        "",
        "## Curl of the direct-force models' forces",
        "",
        "Exact curl |qᵀ(J − Jᵀ)p| of the predicted forces on random configuration-space planes "
        "(`piwsl evaluate`; eV/Å², mean over the first 100 test frames, then mean ± std over "
        "seeds). It is zero for a conservative model; ratio = baseline / method (> 1: the method's "
        "forces are closer to a gradient field). A direct head that learned almost no forces "
        "(energy-only plain training) has almost no curl either.",
        "",
        "| molecule | regime | model | method | n | curl (eV/Å²) | ratio |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for key, methods, method in cell_methods(groups):
        base = baseline_of(method, set(methods))
        mean, std = mean_std(methods[method])
        ratio = statistics.fmean(methods[base]) / mean if base and base != method else None
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {method} | {len(methods[method])} "
            f"| {fmt(mean, 3)} ± {fmt(std, 3)} | {fmt(ratio, 2)} |"
        )
    return lines


def trained_on(record: dict) -> str:
    """Where a run trained, attempt by attempt (``cpu (2 cores)``, ``cuda (NVIDIA H200) → cpu
    (2 cores)``); results written before attempts were logged trained on the machine they
    record."""
    machine = record.get("machine", {})
    attempts = record.get("attempts") or [
        {"device": f"cuda ({machine['cuda']})" if machine.get("cuda") else "cpu",
         "host": f"{machine.get('cpu')}, {machine.get('cpu_count')} cores"}
    ]  # fmt: skip
    places = [
        a["device"] if a["device"] != "cpu" else f"cpu ({a['host'].rsplit(', ', 1)[-1]})"
        for a in attempts
    ]
    return " → ".join(p for k, p in enumerate(places) if k == 0 or p != places[k - 1])


def warnings_section(records: list[dict]) -> list[str]:
    """Markdown lines: each distinct warning the runs printed, with how many runs printed it."""
    counts: dict[str, list[str]] = {}
    for r in records:
        for text in r.get("warnings") or []:
            counts.setdefault(text, []).append(r["name"])
    if not counts:
        recorded = sum("warnings" in r for r in records)
        return ["", f"Warnings: none in the {recorded} run(s) that record them."]
    lines = ["", "## Warnings", "", "| runs | warning |", "|---:|---|"]
    for text, names in sorted(counts.items(), key=lambda kv: -len(kv[1])):
        example = "" if len(names) > 1 else f" ({names[0]})"
        lines.append(f"| {len(names)} | {text.replace('|', '/')[:300]}{example} |")
    return lines


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_errors(records: list[dict], stem: Path) -> Path | None:
    """Test error vs training size, one column per (molecule, model, label regime), energy and
    force rows: ``<stem>_errors.png`` (None when there is nothing to plot)."""
    import matplotlib.ticker

    plt = pyplot()
    groups = aggregate(records)

    def kind_of(regime: str) -> str:
        return "E" if regime.startswith("E_only") else "EF"

    panels = sorted({(m, mo, kind_of(r)) for (m, r, mo) in groups})
    if not panels:
        return None
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6), squeeze=False)
    for col, (molecule, model, kind) in enumerate(panels):
        for row, (quantity, unit) in enumerate((("E", "meV"), ("F", "meV/Å"))):
            ax = axes[row][col]
            methods = sorted(
                {
                    m
                    for (mol, reg, mo), d in groups.items()
                    if (mol, mo) == (molecule, model) and kind_of(reg) == kind
                    for m in d
                }
            )
            for method in ordered(methods, list(METHODS)):
                xs, ys, es = [], [], []
                for (mol, reg, mo), d in groups.items():
                    if (mol, mo) != (molecule, model) or kind_of(reg) != kind:
                        continue
                    if method in d and d[method][quantity]:
                        m, s = mean_std(d[method][quantity])
                        xs.append(N_TRAIN[reg])
                        ys.append(m)
                        es.append(s)
                if xs:
                    order = sorted(range(len(xs)), key=xs.__getitem__)
                    ax.errorbar(
                        [xs[i] for i in order],
                        [ys[i] for i in order],
                        [es[i] for i in order],
                        marker="o",
                        capsize=3,
                        label=method,
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            sizes = sorted({N_TRAIN[r] for (mol, r, mo) in groups if kind_of(r) == kind})
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("training frames")
            ax.set_ylabel(f"test {quantity} MAE ({unit})")
            label = "energy-only" if kind == "E" else "energies + forces"
            ax.set_title(f"{molecule}, {model}\n{label}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = stem.with_name(stem.name + "_errors.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(records: list[dict], stem: Path) -> Path | None:
    """Validation learning curves of the lowest seed, one panel per (molecule, regime, model),
    every method in it: ``<stem>_curves.png`` (None when no run recorded a curve)."""
    plt = pyplot()
    curves = [
        r
        for r in records
        if r.get("validation_curve") and r["seed"] == min(x["seed"] for x in records)
    ]
    keys = sorted({(r["molecule"], r["regime"], r["model"]) for r in curves})
    if not keys:
        return None
    ncol = min(4, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for r in sorted(
            (r for r in curves if (r["molecule"], r["regime"], r["model"]) == key),
            key=lambda r: r["method"],
        ):
            monitor = r.get("monitor") or "val_forces_mae_meV_per_A"
            pts = [(p["step"], p[monitor]) for p in r["validation_curve"] if monitor in p]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=r["method"], lw=1)
        unit = "meV/Å" if "forces" in (monitor or "") else "meV"
        ax.set_title(f"{key[0]} {key[1]} {key[2]}", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel(f"val {'F' if unit == 'meV/Å' else 'E'} MAE ({unit})")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    path = stem.with_name(stem.name + "_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot(records: list[dict], stem: Path) -> list[Path]:
    """Error vs training size (per molecule, model and label regime) and learning curves; the
    paths written."""
    return [p for p in (plot_errors(records, stem), plot_curves(records, stem)) if p is not None]


def write_summary(out: Path, stem: Path, header: dict) -> None:
    records = load_records(out)
    done = {r["name"] for r in records}
    failed = [json.loads(p.read_text()) for p in sorted(out.glob("*.failed.json"))]
    failed = [r for r in failed if r["name"] not in done]
    write_text(stem.with_suffix(".md"), summary_markdown(header, records, failed))
    compact = [
        {k: v for k, v in r.items() if k not in ("validation_curve", "machine")} for r in records
    ]
    write_json(stem.with_suffix(".json"), {**header, "runs": compact}, indent=1)
    if records:
        plot(records, stem)
        if any(r.get("test_curve") for r in records):
            converged.plot_test_curves(records, stem.with_name(stem.name + "_test_curves.png"))
