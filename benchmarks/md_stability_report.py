"""The report of ``md_stability.py``: the per-run table, each method against its baseline with
bootstrap intervals of the time to failure, the per-method table pooled over seeds and the survival
plot (``md_stability.json``, ``.md``, ``md_stability_survival.png``).

A model label ``molecule-model-regime-method-sN`` (the names of ``rmd17.py``'s runs) groups its
trajectories with the other seeds of the same cell and method; any other label is a cell of its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from common import BASELINES, METHOD_COLORS, method_rank, provenance_lines, relative

from piwsl.io.atomic import write_json, write_text


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def data_sources(result: dict[str, Any]) -> list[str]:
    """The start-frame and reference files of the report's models (``--data`` when none ran)."""
    found = {str(m.get("data", result["data"])) for m in result["models"].values()}
    return sorted(found or {str(result["data"])})


def markdown(result: dict[str, Any]) -> str:
    sources = data_sources(result)
    lines = [
        f"# MD stability ({', '.join(Path(d).stem for d in sources)})",
        "",
        *provenance_lines(
            result["command"],
            result["git_commit"],
            result["machine"],
            f"{result['date_utc']} UTC",
            commit_note="of this report; each run's own is listed with its folder below",
        ),
        "",
        f"- mode: {'QUICK smoke run' if result['quick'] else 'full protocol'}; start frames and "
        f"reference h(r): {', '.join(f'`{d}`' for d in sources)} (each model its own); Δt {result['timestep_fs']} fs; "
        f"{result['trajectories']} trajectories per protocol; "
        f"NVT thermostat: {result['thermostat']}",
        "- failure checks: "
        + ("bond and temperature OFF (--no-checks)" if result["no_checks"] else "all on"),
        "- failure: a start-structure bond deviating > 0.5 Å from its start length"
        " (Fu et al. 2023), NaN/inf energy or forces, or temperature > 5 × target",
        "- time to failure is censored at the run length for stable trajectories (so it is a lower"
        " bound whenever some runs are stable); drift = slope of a linear fit of E_tot/atom vs t;"
        " h(r) error = ∫|h_MD(r) − h_test(r)| dr over the stable runs (0..2)",
    ]
    if result.get("note"):
        lines.append(f"- note: {result['note']}")
    lines += [
        "",
        "| model | protocol | stable | mean TTF (ps) | median TTF (ps) | failures | "
        "NVE drift (meV/atom/ps) | NVE fluct. (meV/atom) | h(r) error | steps/s per replica | model share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, model in result["models"].items():
        for name, s in model["protocols"].items():
            drift = s.get("energy_drift_meV_per_atom_per_ps_mean")
            fluct = s.get("energy_fluctuation_meV_per_atom_mean")
            lines.append(
                f"| {label} | {name} ({s['length_ps']:g} ps)"
                f" | {s['n_stable']}/{s['n_trajectories']}"
                f" | {fmt(s['mean_time_to_failure_ps_censored'])}"
                f" | {fmt(s['median_time_to_failure_ps_censored'])}"
                f" | {s['failure_reasons'] or '—'}"
                f" | {fmt(drift)} | {fmt(fluct)} | {fmt(s['hr_error_pooled_stable'], '.4f')}"
                f" | {fmt(s['steps_per_s'], '.1f')}{on_device(s)} | {fmt(100 * s['calculator_share'], '.0f')} % |"
            )
    lines += pooled_lines(pooled_rows(result))
    lines += comparison_lines(result.get("comparisons", []))
    if result.get("not_run"):
        lines += ["", f"Not run yet ({len(result['not_run'])}): " + "; ".join(result["not_run"])]
    lines += ["", "![survival](md_stability_survival.png)"]
    lines += [
        "",
        "Plots (energy, temperature, survival, h(r)) are in each run folder, with the commit that"
        " ran it (of its last attempt, where it was resumed; until 0d3696b, '+ uncommitted"
        " changes' was also noted when only files under benchmarks/results/ had changed):",
        "",
    ]
    for label, model in result["models"].items():
        for name, s in model["protocols"].items():
            lines.append(f"- {label} / {name}: `{s['run_dir']}` ({run_commit(s)})")
    return "\n".join(lines) + "\n"


def run_commit(summary: dict[str, Any]) -> str:
    """Which code ran a (model, protocol) run: the commit its last attempt recorded, or a plain
    statement that runs finished before per-run commits were recorded have none."""
    commit = summary.get("git_commit")
    if not commit:
        return "commit not recorded"
    sha, _, note = str(commit).partition(" ")
    return f"commit `{sha}`" + (f" {note}" if note else "")


def on_device(summary: dict) -> str:
    """After the speed of a run: `` (cuda)`` where it ran on a device other than the CPU,
    `` (compiled)`` where the model ran compiled."""
    notes = [summary.get("device", "cpu")] if summary.get("device", "cpu") != "cpu" else []
    notes += ["compiled"] if summary.get("compiled") else []
    return f" ({', '.join(notes)})" if notes else ""


def seed_group(label: str) -> tuple[str, str] | None:
    """``molecule-model-regime-method-sN`` → (``molecule-model-regime``, method), else None."""
    parts = label.split("-")
    if len(parts) < 5 or not re.fullmatch(r"s\d+", parts[-1]):
        return None
    return "-".join(parts[:-2]), parts[-2]


def compare_methods(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Time to failure of each method against its baseline (``BASELINES``), trajectories pooled
    over seeds: mean and median (censored at the run length) with percentile-bootstrap 95 %
    intervals, and the difference method − baseline with its interval; where both have stable
    trajectories with an h(r) error, its mean over them and the difference with its interval."""
    from piwsl.md.metrics import (
        STATISTICS,
        bootstrap_difference,
        bootstrap_interval,
        censored_times,
    )

    groups = {
        (cell, method, name): slot
        for (cell, name), methods in survival_groups(result).items()
        for method, slot in methods.items()
    }
    rows = []
    for (cell, method, name), slot in sorted(groups.items()):
        base_slot = groups.get((cell, BASELINES.get(method, ""), name))
        if base_slot is None:
            continue
        base = censored_times(base_slot["times"], base_slot["length_ps"]).tolist()
        times = censored_times(slot["times"], slot["length_ps"]).tolist()
        row = {"cell": cell, "protocol": name, "method": method, "baseline": BASELINES[method]}
        for stat in ("mean", "median"):
            for who, x in (("baseline", base), ("method", times)):
                row[f"{who}_{stat}_ps"] = float(STATISTICS[stat](x))
                row[f"{who}_{stat}_ci_ps"] = bootstrap_interval(x, stat)
                row[f"n_{who}"] = len(x)
            row[f"{stat}_difference"] = bootstrap_difference(base, times, stat)
        if base_slot["hr"] and slot["hr"]:  # structure of the stable trajectories
            row["baseline_hr_error"] = float(STATISTICS["mean"](base_slot["hr"]))
            row["method_hr_error"] = float(STATISTICS["mean"](slot["hr"]))
            row["hr_error_difference"] = bootstrap_difference(base_slot["hr"], slot["hr"])
        rows.append(row)
    return rows


def cell_and_method(label: str) -> tuple[str, str]:
    """(cell, method) of a model label; a label outside the ``molecule-…-method-sN`` scheme is a
    cell of its own, its seed suffix dropped."""
    return seed_group(label) or (re.sub(r"[-_]s\d+$", "", label),) * 2


def pooled_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (cell, protocol, method), the finished runs of its seeds together: stable / all
    trajectories, the mean time to failure over all of them (censored), the mean h(r) error of
    the seeds' stable runs and the NVE drift, mean and spread over seeds."""
    import numpy as np

    groups: dict[tuple[str, str, str], list[dict]] = {}
    for label, model in result["models"].items():
        cell, method = cell_and_method(label)
        for name, s in model["protocols"].items():
            groups.setdefault((cell, name, method), []).append(s)
    rows = []
    order = list(result.get("protocols", {}))

    def key(item: tuple[tuple[str, str, str], list]) -> tuple:  # NVT first, as the plots' legends
        cell, name, method = item[0]
        rank = order.index(name) if name in order else len(order)
        return cell, rank, name, method_rank(method)

    for (cell, name, method), runs in sorted(groups.items(), key=key):
        n = [s["n_trajectories"] for s in runs]
        hr = [
            s["hr_error_pooled_stable"] for s in runs if s.get("hr_error_pooled_stable") is not None
        ]
        drift = [
            s["energy_drift_meV_per_atom_per_ps_mean"]
            for s in runs
            if s.get("energy_drift_meV_per_atom_per_ps_mean") is not None
        ]
        rows.append({
            "cell": cell, "protocol": name, "method": method, "seeds": len(runs),
            "stable": sum(s["n_stable"] for s in runs), "trajectories": sum(n),
            "mean_ttf_ps": float(np.average(
                [s["mean_time_to_failure_ps_censored"] for s in runs], weights=n)),
            "hr_error_mean": float(np.mean(hr)) if hr else None,
            "drift_mean": float(np.mean(drift)) if drift else None,
            "drift_std": float(np.std(drift)) if drift else None,
        })  # fmt: skip
    return rows


def pooled_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Per cell and method (seeds pooled)",
        "",
        "Stable trajectories of all seeds; mean time to failure over them (ps, censored at the run"
        " length); h(r) error: mean over the seeds' stable runs; NVE drift (meV/atom/ps): mean ±"
        " spread (std) over seeds.",
        "",
        "| cell | protocol | method | seeds | stable | mean TTF (ps) | h(r) error | NVE drift |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        drift = "—" if r["drift_mean"] is None else f"{r['drift_mean']:.3g} ± {r['drift_std']:.2g}"
        lines.append(
            f"| {r['cell']} | {r['protocol']} | {r['method']} | {r['seeds']} "
            f"| {r['stable']}/{r['trajectories']} | {r['mean_ttf_ps']:.3g} "
            f"| {fmt(r['hr_error_mean'], '.3f')} | {drift} |"
        )
    return lines


def comparison_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Method against its baseline (trajectories pooled over seeds)",
        "",
        "Time to failure in ps, censored at the run length; [95 % percentile-bootstrap interval];"
        " difference = method − baseline. h(r) error per trajectory: the mean of each stable"
        " trajectory's own error (higher than the per-run table's, whose h(r) pools the frames of"
        " a run's stable trajectories and so has less histogram noise); its interval resamples"
        " trajectories, so it holds MD sampling noise, not the spread between seeds.",
        "",
        "| cell | protocol | baseline → method | n | mean TTF | median TTF | Δ mean | Δ median "
        "| h(r) error per trajectory | Δ h(r) error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ci(row, who, stat):
        lo, hi = row[f"{who}_{stat}_ci_ps"]
        return f"{row[f'{who}_{stat}_ps']:.2f} [{lo:.2f}, {hi:.2f}]"

    for r in rows:
        dm, dd = r["mean_difference"], r["median_difference"]
        lines.append(
            f"| {r['cell']} | {r['protocol']} | {r['baseline']} → {r['method']} "
            f"| {r['n_baseline']} / {r['n_method']} "
            f"| {ci(r, 'baseline', 'mean')} → {ci(r, 'method', 'mean')} "
            f"| {ci(r, 'baseline', 'median')} → {ci(r, 'method', 'median')} "
            f"| {dm['difference']:+.2f} [{dm['low']:+.2f}, {dm['high']:+.2f}] "
            f"| {dd['difference']:+.2f} [{dd['low']:+.2f}, {dd['high']:+.2f}] "
            f"| {hr_cells(r)} |"
        )
    return lines


def hr_cells(row: dict[str, Any]) -> str:
    """The h(r) columns of a comparison row: baseline → method, difference [interval]; — where
    either side has no stable trajectory."""
    if "hr_error_difference" not in row:
        return "— | —"
    d = row["hr_error_difference"]
    return (
        f"{row['baseline_hr_error']:.3f} → {row['method_hr_error']:.3f} "
        f"| {d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
    )


def survival_groups(result: dict[str, Any]) -> dict[tuple[str, str], dict[str, dict]]:
    """(cell, protocol) → method → the failure times of its trajectories pooled over seeds
    (None: stable), the h(r) errors of its stable ones and the run length. A label outside the
    ``molecule-…-method-sN`` scheme is a cell of its own (its seed suffix dropped)."""
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for label, model in result["models"].items():
        cell, method = cell_and_method(label)
        for name, s in model["protocols"].items():
            slot = groups.setdefault((cell, name), {}).setdefault(
                method, {"times": [], "hr": [], "length_ps": s["length_ps"]}
            )
            runs = s.get("trajectories", [])
            slot["times"] += [t["failure_time_ps"] for t in runs]
            stable = [t for t in runs if t["failure_time_ps"] is None]
            slot["hr"] += [t["hr_error"] for t in stable if t.get("hr_error") is not None]
    return groups


def survival_figure(result: dict[str, Any], path: Path) -> Path:
    """Fraction of stable trajectories vs time: one panel per cell (row) and protocol (column),
    one line per method with its trajectories pooled over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from piwsl.md.metrics import survival_curve

    groups = survival_groups(result)
    cells = sorted({cell for cell, _ in groups})
    present = {name for _, name in groups}
    names = [n for n in result.get("protocols", sorted(present)) if n in present]
    fig, axes = plt.subplots(
        max(1, len(cells)), max(1, len(names)), figsize=(4.2 * max(1, len(names)),
        2.8 * max(1, len(cells))), squeeze=False,
    )  # fmt: skip
    for i, cell in enumerate(cells):
        for j, name in enumerate(names):
            ax = axes[i][j]
            methods = groups.get((cell, name), {})
            order = sorted(methods, key=method_rank)  # baselines first
            for k, (method, slot) in enumerate((m, methods[m]) for m in order):
                t, alive = survival_curve(slot["times"], slot["length_ps"])
                n = len(slot["times"])
                ax.step(  # wider lines first: coinciding curves stay visible
                    t, alive, where="post", color=METHOD_COLORS.get(method, "C7"),
                    lw=max(1.0, 3.5 - 1.2 * k), alpha=0.8, label=f"{method} ({n} trajectories)",
                )  # fmt: skip
            ax.set_title(f"{cell}\n{name}", fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("time (ps)")
            ax.set_ylabel("fraction stable")
            if ax.lines:
                ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result: dict[str, Any], out: Path) -> None:
    """``md_stability.json``, ``md_stability.md`` and the survival plot in ``out``."""
    from piwsl.io.jsonable import jsonable

    out.mkdir(parents=True, exist_ok=True)
    plot = survival_figure(result, out / "md_stability_survival.png")
    result["survival_plot"] = relative(plot.resolve())
    write_json(out / "md_stability.json", jsonable(result), indent=2, default=str)
    write_text(out / "md_stability.md", markdown(result))
    print(f"wrote {out / 'md_stability.json'} and {out / 'md_stability.md'}")
