"""The materials benchmark: stress, PIWSL, Δ-learning, cell relaxation and MD on the built-in
GFN1-xTB crystals (``builtin:materials_gfn1_*``, made by ``benchmarks/materials_data.py``).

Every run is ``piwsl train builtin:materials`` (SchNet, 32 features, 2 interactions, 16 radial
functions, 4 Å cutoff: CPU-sized) under the convergence protocol of the converged rMD17 study
(``benchmarks/converged_protocol.py``: the plateau schedule, lr halved after validations gaining
< 2 %, stop at lr0/16, early stop, a step cap, EMA model with the best validation score tested)
sized to this shared CPU and chosen on validation data for the plain EFS model
(``benchmarks/results/materials_tuning.md``): validation every ~``--validate-every`` steps (50),
halving after ``--patience`` (3) such validations, early stop after ``--early-stop`` (8), a step
cap of ``--cap`` steps (3000), ``--seeds`` seeds (0 1 2; ``--seed-limit VARIANT=N``: the first
N only). The energy-only variants are a regime of their own (as ``E_only_1000`` is in the rMD17
study), chosen on validation data for the plain E model: patience ``--e-patience`` (10),
early stop ``--e-early-stop`` (25), cap ``--e-cap`` (8000) — their validation error stays flat for
~500 steps before it falls, which the E+F+S settings mistake for a plateau. Variants:

=================  =============================================================================
EF                 N frames with energies + forces (no stress term)
EFS                N frames with energies + forces + stress
EFS_piwsl2         the same + PITC/PISC, second order, the paper's weights (1.2, 0.01)
E                  every training frame (the pool less validation), energies only
E_piwsl2           the same + PITC/PISC, second order
E_delta_chgnet     energies only, on top of CHGNet 0.4.2 (pretrained on PBE/Materials Project;
                   a prior that is not the reference): learns E_GFN1 − E_CHGNet
EFS_delta_zbl      N frames, energies + forces + stress, on top of ZBL (in the model)
=================  =============================================================================

Measured on the test file: energy MAE (meV/atom), force MAE (meV/Å), stress MAE
(meV/Å³; 1 meV/Å³ = 0.160 GPa); CHGNet itself (zero-shot, per-element energy offsets fitted on
the training energies); the cell relaxation of the ``--relax-variants`` models (each crystal's
GFN1-xTB cell strained by +3 % and sheared, relaxed with ``ase.filters.FrechetCellFilter`` + BFGS,
lattice parameters against GFN1-xTB's; the check: converged and every length within
``--tolerance`` % of the reference); NVT MD stability of the ``--md-variants`` (Nosé–Hoover
chain, ``--md-temperature`` K, ``--md-ps`` ps, 2 fs, ``--md-trajectories`` replicas per relaxed
crystal advanced together by :mod:`piwsl.md`'s batched integrator; time to failure). Results:
``benchmarks/results/materials.{json,md}``; runs under ``runs/benchmarks/materials/`` (a finished
run with the same command is reused, and so are its relaxations and MD while its model file is
unchanged: a second invocation with more variants only computes what is new).

    python benchmarks/materials.py                       # everything
    python benchmarks/materials.py --smoke               # seconds: the plumbing only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, ROOT, command_line, git_commit, machine_info, portable, relative
from converged_protocol import Recipe
from finetune_workflow import header_provenance, train_once, write_json

from piwsl.io.atomic import write_text

WORK = ROOT / "runs" / "benchmarks" / "materials"
CHGNET = "ase:chgnet.model.dynamics.CHGNetCalculator"
PIWSL_2ND = [
    "loss.terms.taylor={weight: 1.2, second_order: true}",
    "loss.terms.spatial={weight: 0.01, second_order: true}",
]
ENERGY_ONLY = ["data.train_labels=energy", "loss.terms.forces=0", "loss.terms.stress=0"]
#: name → (overrides, sparse: N training frames (else the whole pool))
VARIANTS: dict[str, tuple[list[str], bool]] = {
    "EF": (["loss.terms.stress=0"], True),
    "EFS": ([], True),
    "EFS_piwsl2": (PIWSL_2ND, True),
    "E": (ENERGY_ONLY, False),
    "E_piwsl2": (ENERGY_ONLY + PIWSL_2ND, False),
    "E_delta_chgnet": (
        [*ENERGY_ONLY, f"prior.name={CHGNET}", "prior.settings={use_device: cpu}"],
        False,
    ),
    "EFS_delta_zbl": (["prior.name=zbl"], True),
}
METRICS = ("energy_mae_meV_per_atom", "forces_mae_meV_per_A", "stress_mae_meV_per_A3")
RELAX_STRAIN = np.array([[0.03, 0.01, 0.0], [0.01, 0.03, 0.0], [0.0, 0.0, 0.03]])


def overrides_of(variant: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The ``piwsl train builtin:materials`` overrides of one run."""
    extra, sparse = VARIANTS[variant]
    n_train = args.n_train if sparse else None
    pool = args.pool - args.n_val
    energy_only = ENERGY_ONLY[0] in extra  # its own regime, like the rMD17 study's E_only_1000
    cap, patience, early_stop = (
        (args.e_cap, args.e_patience, args.e_early_stop)
        if energy_only
        else (args.cap, args.patience, args.early_stop)
    )
    recipe = Recipe(batch_size=args.batch_size, lr=args.lr, cap_steps=cap)
    steps_per_epoch = -(-(n_train or pool) // args.batch_size)
    every = max(1, round(args.validate_every / steps_per_epoch))
    return [
        f"data.n_train={'null' if n_train is None else n_train}",
        f"data.n_val={args.n_val}",
        f"data.split_seed={seed}",
        f"training.seed={seed}",
        *recipe.overrides(n_train or pool),
        # the protocol sized small: validation every ~validate_every steps, lr halved after
        # `patience` validations gaining < 2 %, early stop after `early_stop` without a gain
        f"training.val_every_n_epochs={every}",
        f"training.plateau_patience={patience}",
        f"training.early_stopping_patience={early_stop}",
        *extra,
    ]


def train_all(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every (variant, seed) run; its summary, wall time and command."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        for variant in args.variants:
            if seed not in args.seeds[: args.seed_limit.get(variant, len(args.seeds))]:
                continue
            name = f"{variant}-s{seed}"
            summary, timing = train_once(
                args, WORK, name, overrides_of(variant, seed, args), "builtin:materials"
            )
            runs.setdefault(variant, []).append(
                {"seed": seed, "name": name, "summary": summary, "timing": timing}
            )
    return runs


def mean_std(values: list[float]) -> dict[str, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def test_table(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean ± std over seeds of the headline test errors, steps and stop reasons per variant."""
    out = {}
    for variant, items in runs.items():
        tests = [r["summary"].get("test") or {} for r in items]
        out[variant] = {
            **{k: mean_std([t.get(k) for t in tests]) for k in METRICS},
            "steps": [r["summary"].get("steps") for r in items],
            "stopped_by": [r["summary"].get("stopped_by") for r in items],
            "wall_time_s": [round(r["timing"]["wall_time_s"], 1) for r in items],
        }
    return out


def cached(path: Path, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()``, kept in ``path`` with ``key`` (the model file's size and time, the
    settings): a later invocation with the same key reads it instead of computing again."""
    if path.exists():
        record = json.loads(path.read_text())
        if record.get("key") == key:
            return record["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"key": key, "value": value})
    return value


def model_key(model_path: str, **settings: Any) -> dict[str, Any]:
    stat = Path(model_path).stat()
    return {
        "model": relative(model_path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        **settings,
    }


# ------------------------------------------------------------------------------ CHGNet zero-shot
def chgnet_zero_shot(cache_dir: Path) -> dict[str, Any]:
    """CHGNet's own energies (per-element offsets fitted on the training frames, eV), forces and
    stresses against the GFN1-xTB test labels."""
    from chgnet.model.dynamics import CHGNetCalculator

    from piwsl.data import read_frames
    from piwsl.data.e0 import fit_e0s
    from piwsl.evaluation import compute_metrics
    from piwsl.evaluation.predict import Predictions
    from piwsl.priors import make_prior, prior_values

    prior = make_prior(CHGNET, settings={"use_device": "cpu"})
    train = read_frames("builtin:materials_gfn1_train")
    test = read_frames("builtin:materials_gfn1_test")
    e_train = prior_values(prior, train, cache_dir=str(cache_dir)).energies
    shifted = [
        f.__class__(f.numbers, f.positions, f.cell, f.pbc, energy=f.energy - e)
        for f, e in zip(train, e_train, strict=True)
    ]
    e0s = fit_e0s(shifted, sorted({int(z) for f in train for z in f.numbers}))
    values = prior_values(prior, test, cache_dir=str(cache_dir))
    offset = [sum(e0s.get(int(z), 0.0) for z in f.numbers) for f in test]
    predictions = Predictions.of(test, np.asarray(values.energies) + offset, values.forces)
    calc = CHGNetCalculator(use_device="cpu")
    stress = []
    for frame in test:
        atoms = frame.to_atoms(labels=False)
        atoms.calc = calc
        stress.append(atoms.get_stress(voigt=False))
    predictions.stress = np.asarray(stress)
    metrics = compute_metrics(test, predictions)
    return {k: metrics.get(k) for k in (*METRICS, "energy_mae_after_offset_meV", "n_frames")}


# ------------------------------------------------------------------------------ cell relaxation
def reference_crystals() -> list:
    """The GFN1-xTB-relaxed crystals as ``Atoms`` named by their ``material`` (bare, no labels)."""
    import ase.io

    from piwsl.data.readers import resolve_path

    out = []
    for atoms in ase.io.read(str(resolve_path("builtin:materials_gfn1_relaxed")), ":"):
        bare = atoms.copy()
        bare.calc = None
        bare.info = {"material": str(atoms.info.get("material", atoms.get_chemical_formula()))}
        out.append(bare)
    return out


def relax_cells(model_path: str, tolerance_percent: float, mode: str = "free") -> dict[str, Any]:
    """Each reference crystal strained and relaxed with the model: its lattice parameters (Å,
    degrees) against GFN1-xTB's relaxed ones; ``passes`` when BFGS converged and every lattice
    length is within ``tolerance_percent`` of the reference. ``free``: strained +3 % and sheared,
    relaxed without constraints; ``symmetric``: strained +3 % isotropically and relaxed within
    the space group (``FixSymmetry``), the protocol the GFN1-xTB reference cells were made with."""
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    from piwsl import PiwslCalculator

    calc = PiwslCalculator(model_path)
    out = {}
    for reference in reference_crystals():
        atoms = reference.copy()
        strain = RELAX_STRAIN if mode == "free" else 0.03 * np.eye(3)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
        if mode == "symmetric":
            atoms.set_constraint(FixSymmetry(atoms, symprec=1e-3))
        atoms.calc = calc
        opt = BFGS(FrechetCellFilter(atoms), logfile=None)
        converged = bool(opt.run(fmax=0.005, steps=500))
        ref, got = reference.cell.cellpar(), atoms.cell.cellpar()
        lengths = 100 * (got[:3] - ref[:3]) / ref[:3]
        worst = float(np.abs(lengths).max())
        out[reference.info["material"]] = {
            "passes": converged and worst <= tolerance_percent,
            "converged": converged,
            "steps": int(opt.nsteps),
            "reference_cellpar": [round(float(x), 4) for x in ref],
            "relaxed_cellpar": [round(float(x), 4) for x in got],
            "max_length_error_percent": worst,
            "volume_error_percent": float(
                100 * (atoms.get_volume() / reference.get_volume() - 1.0)
            ),
            "max_angle_error_deg": float(np.abs(got[3:] - ref[3:]).max()),
        }
    return out


# ------------------------------------------------------------------------------ MD stability
def md_stability(model_path: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """NVT (Nosé–Hoover chain) from each relaxed crystal, ``--md-trajectories`` replicas per
    crystal advanced together (:class:`piwsl.md.potential.BatchedPotential`, one model call per
    step): the stable count, each replica's time to failure (ps; None: stable), the median over
    replicas censored at the run length, the failure reasons and the mean temperature (K)."""
    from piwsl.md import run_md
    from piwsl.md.potential import BatchedPotential

    result = {}
    for atoms in reference_crystals():
        name = atoms.info["material"]
        report = run_md(
            BatchedPotential(model_path, skin=1.0),
            [atoms],
            out_dir=out_dir / name,
            ensemble="nose-hoover",
            temperature_K=args.md_temperature,
            timestep_fs=MD_TIMESTEP_FS,
            length_ps=args.md_ps,
            n_trajectories=args.md_trajectories,
            frame_selection="sequential",
            seed=0,
            plots=False,
            progress=False,
            write_trajectories=False,
            state_interval=0,
        )
        summary = report.summary
        result[name] = {
            "failure_times_ps": [
                None if t.failure is None else t.failure.time_ps for t in report.trajectories
            ],
            **{k: summary.get(k) for k in MD_KEYS},
        }
    return result


MD_TIMESTEP_FS = 2.0
MD_KEYS = (
    "n_trajectories",
    "n_stable",
    "median_time_to_failure_ps_censored",
    "mean_time_to_failure_ps_censored",
    "failure_reasons",
    "temperature_mean_K",
    "steps_per_s",
)


# ------------------------------------------------------------------------------ report
def fmt(stats: dict[str, Any], digits: int = 1) -> str:
    if stats.get("mean") is None:
        return "—"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


RELAX_TITLES = {
    "free": "strained +3 % and sheared, relaxed without constraints",
    "symmetric": "strained +3 % isotropically, relaxed within the space group (FixSymmetry) "
    "like the reference",
}


def relaxation_lines(result: dict[str, Any], mode: str, title: str) -> list[str]:
    """The cell-relaxation table of one mode, with the check's tally."""
    tol, runs, crystals = (
        result["tolerance_percent"],
        result["relaxation"][mode],
        result["crystals"],
    )
    checks = [c["passes"] for relax in runs.values() for c in relax.values()]
    lines = [
        "",
        f"## Cell relaxation ({title}; FrechetCellFilter + BFGS to 0.005 eV/Å)",
        "",
        "Largest lattice-length error (%) against GFN1-xTB's relaxed cell, per crystal and model "
        f"(✓: converged and within {tol:g} %). Check: {sum(checks)} of {len(checks)} "
        f"relaxations within {tol:g} %.",
        "",
        *crystal_header("model", crystals),
    ]
    for name, relax in runs.items():
        cells = [
            f"{relax[c]['max_length_error_percent']:.2f}"
            + ("" if relax[c]["converged"] else "*")
            + (" ✓" if relax[c]["passes"] else " ✗")
            for c in crystals
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "(* not converged in 500 BFGS steps.) Per variant, mean ± std over its seeds:",
        "",
    ]
    lines += crystal_header("variant", crystals)
    for variant, relaxations in by_variant(runs).items():
        cells = []
        for c in crystals:
            errors = [r[c]["max_length_error_percent"] for r in relaxations]
            passed = sum(r[c]["passes"] for r in relaxations)
            cells.append(f"{fmt(mean_std(errors), 2)} ({passed}/{len(errors)} ✓)")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def by_variant(per_model: dict[str, Any]) -> dict[str, list[Any]]:
    """Results keyed by model name (``variant-sSEED``) grouped by variant."""
    out: dict[str, list[Any]] = {}
    for name, value in per_model.items():
        out.setdefault(name.rsplit("-s", 1)[0], []).append(value)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Materials benchmark (GFN1-xTB crystals: {', '.join(result['crystals'])})",
        "",
        *header_provenance(result, extra="shared with other jobs"),
        "",
        f"Protocol: {result['protocol']}",
        "",
        f"## Test errors ({result['n_test']} frames; mean ± std over seeds)",
        "",
        "| variant | train frames | energy MAE (meV/atom) | force MAE (meV/Å) | "
        "stress MAE (meV/Å³) | steps | stopped by | training wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, row in result["test"].items():
        n = result["n_train"][variant]
        lines.append(
            f"| {variant} | {n} | {fmt(row['energy_mae_meV_per_atom'], 2)} | "
            f"{fmt(row['forces_mae_meV_per_A'])} | {fmt(row['stress_mae_meV_per_A3'], 2)} | "
            f"{', '.join(map(str, row['steps']))} | {', '.join(map(str, row['stopped_by']))} | "
            f"{', '.join(f'{t:.0f}' for t in row['wall_time_s'])} |"
        )
    zero = result.get("chgnet_zero_shot")
    if zero:
        lines += [
            "",
            "CHGNet 0.4.2 itself (zero-shot; per-element energy offsets fitted on the training "
            f"energies): energy MAE {zero['energy_mae_meV_per_atom']:.1f} meV/atom, forces "
            f"{zero['forces_mae_meV_per_A']:.1f} meV/Å, stress "
            f"{zero['stress_mae_meV_per_A3']:.2f} meV/Å³.",
        ]
    for mode, title in RELAX_TITLES.items():
        if result["relaxation"].get(mode):
            lines += relaxation_lines(result, mode, title)
    return "\n".join(lines + md_lines(result)) + "\n"


def md_cell(runs: list[dict[str, Any]], length_ps: float) -> str:
    """One crystal's MD over some models: stable replicas of all, the median time to failure
    (ps, stable replicas counted at the run length) and the failure reasons."""
    times = [t for run in runs for t in run["failure_times_ps"]]
    stable = sum(t is None for t in times)
    median = float(np.median([length_ps if t is None else t for t in times]))
    reasons: dict[str, int] = {}
    for run in runs:
        for reason, count in (run.get("failure_reasons") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + count
    why = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
    return f"{stable}/{len(times)} stable, median {median:.2f} ps" + (f" ({why})" if why else "")


def crystal_header(first: str, crystals: list[str]) -> list[str]:
    return [f"| {first} | " + " | ".join(crystals) + " |", "|---|" + "---|" * len(crystals)]


def md_lines(result: dict[str, Any]) -> list[str]:
    """The MD tables: per variant (replicas of every seed pooled), then per model."""
    md, crystals = result["md"], result["crystals"]
    if not md["runs"]:
        return []
    length = md["length_ps"]
    lines = [
        "",
        f"## NVT MD stability ({md['temperature_K']:.0f} K, {length:g} ps, "
        f"{md['timestep_fs']:g} fs, Nosé–Hoover chain, {md['trajectories']} replicas per crystal "
        "and model, batched)",
        "",
        "Stable replicas, median time to failure (ps; a stable replica counts as the run length) "
        "and failure reasons (bond: a bond of the relaxed crystal deviates > 0.5 Å; temperature: "
        "above 5 × the target). Per variant, the replicas of all its seeds pooled:",
        "",
        *crystal_header("variant", crystals),
    ]
    for variant, runs in by_variant(md["runs"]).items():
        cells = [md_cell([r[c] for r in runs], length) for c in crystals]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Per model:", "", *crystal_header("model", crystals)]
    for name, run in md["runs"].items():
        cells = [md_cell([run[c]], length) for c in crystals]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--seed-limit",
        nargs="*",
        default=[],
        metavar="VARIANT=N",
        help="train VARIANT with the first N of --seeds only (to fit the time)",
    )
    parser.add_argument("--n-train", type=int, default=12, help="N of the sparse variants")
    parser.add_argument("--n-val", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--cap", type=int, default=3000, help="step cap of every run")
    parser.add_argument("--validate-every", type=int, default=50, help="steps, about")
    parser.add_argument("--patience", type=int, default=3, help="validations before lr × 0.5")
    parser.add_argument("--early-stop", type=int, default=8, help="validations without a gain")
    parser.add_argument("--e-cap", type=int, default=8000, help="energy-only runs: step cap")
    parser.add_argument("--e-patience", type=int, default=10, help="energy-only runs")
    parser.add_argument("--e-early-stop", type=int, default=25, help="energy-only runs")
    parser.add_argument("--tolerance", type=float, default=1.0, help="%% of the lattice lengths")
    parser.add_argument(
        "--relax-modes", nargs="+", default=["free", "symmetric"], choices=["free", "symmetric"]
    )
    with_forces = ["EFS", "EFS_piwsl2", "EF", "EFS_delta_zbl"]
    parser.add_argument("--relax-variants", nargs="*", default=with_forces, choices=list(VARIANTS))
    parser.add_argument("--md-temperature", type=float, default=300.0)
    parser.add_argument("--md-ps", type=float, default=2.0)
    parser.add_argument("--md-trajectories", type=int, default=3, help="replicas per crystal")
    parser.add_argument("--md-variants", nargs="*", default=with_forces, choices=list(VARIANTS))
    parser.add_argument("--no-chgnet", action="store_true", help="skip CHGNet zero-shot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="train again even if finished")
    parser.add_argument("--smoke", action="store_true", help="seconds: tiny caps, one seed")
    parser.add_argument("--out", default=str(RESULTS / "materials"))
    args = parser.parse_args()
    try:
        args.seed_limit = {k: int(n) for k, n in (item.split("=") for item in args.seed_limit)}
    except ValueError:
        parser.error(f"--seed-limit takes VARIANT=N items, got {args.seed_limit}")
    if unknown := sorted(set(args.seed_limit) - set(VARIANTS)):
        parser.error(f"--seed-limit: unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if args.smoke:
        args.seeds, args.cap, args.md_ps, args.validate_every = [0], 20, 0.02, 10
        args.e_cap = 20
        if args.variants == list(VARIANTS):
            args.variants = ["EFS", "E_piwsl2"]
        args.md_variants = args.relax_variants = ["EFS"]
    return args


def evaluate_runs(
    runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cell relaxation of every trained model and NVT MD of the ``--md-variants`` (each kept in
    the run folder, reused while the model file is unchanged)."""
    relax, md = {}, {}
    for variant, items in runs.items():
        for r in items:
            model = r["summary"]["best_model"] or r["summary"]["final_model"]
            run_dir = WORK / r["name"]
            # (a model on CHGNet has no stress: the prior gives none)
            relaxed = variant in args.relax_variants and "chgnet" not in variant
            for mode in args.relax_modes if relaxed else ():
                key = model_key(model, strain=RELAX_STRAIN.tolist(), tolerance=args.tolerance)
                suffix = "" if mode == "free" else f"_{mode}"
                relax.setdefault(mode, {})[r["name"]] = cached(
                    run_dir / f"cell_relaxation{suffix}.json",
                    key,
                    lambda m=model, mode=mode: relax_cells(m, args.tolerance, mode),
                )
                print(f"{r['name']}: cell relaxation ({mode}) {relax[mode][r['name']]}", flush=True)
            if variant in args.md_variants:
                key = model_key(
                    model,
                    ensemble="nose-hoover",
                    temperature_K=args.md_temperature,
                    ps=args.md_ps,
                    trajectories=args.md_trajectories,
                )
                md[r["name"]] = cached(
                    run_dir / "md_stability.json",
                    key,
                    lambda m=model, n=r["name"]: md_stability(m, args, WORK / "md" / n),
                )
                print(f"{r['name']}: MD {md[r['name']]}", flush=True)
    return relax, md


def main() -> None:
    args = parse_args()
    global WORK
    if args.smoke:
        WORK = WORK.parent / "materials_smoke"
    from piwsl.data import read_frames

    args.pool = len(read_frames("builtin:materials_gfn1_train"))
    start = time.perf_counter()
    runs = train_all(args)
    result: dict[str, Any] = {
        "command": command_line(),
        "commit": git_commit(),
        "machine": machine_info(),
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "protocol": (
            f"converged protocol sized small: validation ({args.n_val} frames) every "
            f"~{args.validate_every} steps, lr × 0.5 after {args.patience} validations gaining "
            f"< 2 %, stop at lr0/16 or after {args.early_stop} validations without a gain or at "
            f"{args.cap} steps (energy-only variants: {args.e_patience}, {args.e_early_stop} and "
            f"{args.e_cap}); batch {args.batch_size}, lr {args.lr}, seeds {args.seeds}"
            + "".join(f"; {v}: the first {n} seeds only" for v, n in args.seed_limit.items())
        ),
        "n_train": {v: args.n_train if VARIANTS[v][1] else args.pool - args.n_val for v in runs},
        "test": test_table(runs),
        "n_test": next(
            (
                r["summary"]["test"].get("n_frames")
                for v in runs.values()
                for r in v
                if r["summary"].get("test")
            ),
            None,
        ),
        "runs": {
            v: [
                {
                    **r,
                    "timing": {
                        **r["timing"],
                        "command": [portable(c) for c in r["timing"]["command"]],
                    },
                    "summary": {
                        k: r["summary"].get(k)
                        for k in ("steps", "stopped_by", "best_score", "test")
                    },
                }
                for r in items
            ]
            for v, items in runs.items()
        },
    }
    if not (args.smoke or args.no_chgnet):
        result["chgnet_zero_shot"] = cached(
            WORK / "chgnet_zero_shot.json",
            {"test": "builtin:materials_gfn1_test"},
            lambda: chgnet_zero_shot(WORK / "prior_cache"),
        )
    relax, md = evaluate_runs(runs, args)
    result["relaxation"] = relax
    result["tolerance_percent"] = args.tolerance
    result["crystals"] = sorted(next(iter(relax["free"].values()))) if relax.get("free") else []
    result["seeds"] = args.seeds
    result["md"] = {
        "ensemble": "nose-hoover",
        "temperature_K": args.md_temperature,
        "length_ps": args.md_ps,
        "timestep_fs": MD_TIMESTEP_FS,
        "trajectories": args.md_trajectories,
        "runs": md,
    }
    result["wall_time_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), result)
    write_text(out.with_suffix(".md"), markdown(result))
    print(f"wrote {relative(out.with_suffix('.md'))}")


if __name__ == "__main__":
    main()
