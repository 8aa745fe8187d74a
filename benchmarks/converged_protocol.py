"""The convergence protocol of the rMD17 benchmark (``python benchmarks/rmd17.py --suite converged``).

Every run trains until its validation score stops improving, under a hard step cap:

- validation (the EMA model on 50 held-out frames of the train file) about every 200 optimisation
  steps (every ``val_every_n_epochs`` epochs, rounded from the regime's steps per epoch);
- the learning rate halves after ``PLATEAU_PATIENCE`` validations in a row that do not improve the
  best score by ``PLATEAU_THRESHOLD`` (relative): about 1,000 steps that gain less than 2 %;
- the run stops when the learning rate has been halved ``HALVINGS`` times, or after
  ``EARLY_STOP`` validations without any improvement (both ``stopped_by: plateau``), or at the
  regime's step cap (``stopped_by: cap``);
- the model tested is the EMA checkpoint with the best validation score (force MAE where the
  validation frames carry forces, energy MAE in the energy-only regimes); the test-set learning
  curve (``TEST_CURVE_STEPS``) is recorded for the plots and never read by selection.

The recipe (batch size, learning rate, EMA, loss weights, schedule) was chosen on validation data for
the *plain* PaiNN-conservative model on ethanol (``benchmarks/results/converged_tuning.md``) and is
used unchanged for every method, model and molecule. The model is a CPU-sized PaiNN (32 features,
3 interactions, 20 radial functions, 5 Å cutoff), with conservative or direct forces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common import METHOD_COLORS, method_rank

#: CPU-sized PaiNN (the converged grid must fit a 2-core machine).
MODELS: dict[str, list[str]] = {
    "painn32_conservative": [
        "model.name=painn",
        "model.hparams={features: 32, interactions: 3, n_rbf: 20, forces: conservative}",
    ],
    "painn32_direct": [
        "model.name=painn",
        "model.hparams={features: 32, interactions: 3, n_rbf: 20, forces: direct}",
    ],
}

#: Molecules whose runs train compiled (``training.compile=true``: energy and forces traced into
#: one compiled graph; losses equal eager mode to ~1e-9, ``tests/test_compiled.py``). Measured
#: interleaved on aspirin, batch 16 (``training_throughput.md``): PaiNN steps 2.2× (direct) and
#: 2.8× (conservative) faster, PIWSL 2nd-order steps 2.4× and 3.4×, after 20–120 s of compiling.
#: Ethanol stays eager: in a 400-step check of the E + F N = 1000 recipe (batch 5, 9 atoms) the
#: compiled steps were no faster and compiling took ~4 min. Runs record their ``code_path``;
#: aspirin runs started (or resumed) from the commit that added this train compiled.
COMPILED_MOLECULES = ("aspirin",)
COMPILED = ["training.compile=true"]

VALIDATE_EVERY_STEPS = 200
PLATEAU_PATIENCE = 5  # validations (≈ 1,000 steps)
PLATEAU_FACTOR = 0.5
PLATEAU_THRESHOLD = 0.02  # a validation must beat the best by 2 % to count as an improvement
HALVINGS = 4  # stop at lr0 / 2**4
EARLY_STOP = 20  # validations without any improvement
#: Steps at which the EMA model's test errors are recorded (those below the cap).
TEST_CURVE_STEPS = [250, 500, 1000, 2000, 4000, 8000, 12000, 16000, 24000, 32000]


@dataclass(frozen=True)
class Recipe:
    """The training recipe of one regime (shared by every method and model)."""

    batch_size: int
    lr: float
    cap_steps: int
    ema_decay: float = 0.99

    def overrides(self, n_train: int) -> list[str]:
        steps_per_epoch = math.ceil(n_train / self.batch_size)
        val_every = max(1, round(VALIDATE_EVERY_STEPS / steps_per_epoch))
        curve = [s for s in TEST_CURVE_STEPS if s < self.cap_steps] + [self.cap_steps]
        return [
            f"training.batch_size={self.batch_size}",
            "training.val_batch_size=25",
            f"training.lr={self.lr}",
            "training.optimizer=adamw",
            "training.scheduler=plateau",
            f"training.plateau_factor={PLATEAU_FACTOR}",
            f"training.plateau_patience={PLATEAU_PATIENCE}",
            f"training.plateau_threshold={PLATEAU_THRESHOLD}",
            f"training.stop_lr={self.lr * PLATEAU_FACTOR**HALVINGS:.6g}",
            f"training.early_stopping_patience={EARLY_STOP}",
            f"training.val_every_n_epochs={val_every}",
            f"training.ema_decay={self.ema_decay}",
            "training.min_lr=1e-6",
            f"training.max_steps={self.cap_steps}",
            "training.max_epochs=null",
            f"output.test_curve_steps=[{', '.join(map(str, curve))}]",
        ]


#: Per regime; loss weights are the driver's PAPER_UNITS convention (w_E = 1 on total energies
#: in kcal/mol, w_F = 10 on forces in kcal/mol/Å) for every regime.
RECIPES: dict[str, Recipe] = {
    "EF_50": Recipe(batch_size=5, lr=2e-3, cap_steps=30000),
    "EF_100": Recipe(batch_size=5, lr=2e-3, cap_steps=30000),
    "EF_1000": Recipe(batch_size=5, lr=2e-3, cap_steps=40000),
    "E_only_1000": Recipe(batch_size=16, lr=2e-3, cap_steps=30000),
}

C, D = "painn32_conservative", "painn32_direct"

#: The cells (molecule, regime, model, method) in blocks, trained block by block and, within a
#: block, seed by seed: a block's verdict (3 seeds) is complete before the next block starts. The
#: models the MD study needs come first (aspirin EF_100, then the aspirin energy-only Δ models),
#: then the sanity anchor and the energy-only direct cell, the one where PIWSL paid at 1,000 steps.
BLOCKS: list[list[tuple[str, str, str, str]]] = [
    [("aspirin", "EF_100", m, meth) for m in (C, D) for meth in ("plain", "piwsl_2nd")],
    [("aspirin", "E_only_1000", C, meth) for meth in ("delta", "delta_piwsl_2nd")],
    [("ethanol", "EF_1000", C, "plain")],  # the sanity anchor, next to published numbers
    [(mol, "E_only_1000", D, meth) for mol in ("ethanol", "aspirin")
     for meth in ("plain", "piwsl_2nd")],  # where PIWSL paid at 1,000 steps
    [("ethanol", "EF_100", m, meth) for m in (C, D) for meth in ("plain", "piwsl_2nd")],
    [(mol, "EF_100", D, "piwsl") for mol in ("ethanol", "aspirin")],  # the paper's 1st order
    [("ethanol", "E_only_1000", C, meth) for meth in ("delta", "delta_piwsl_2nd")],
    [(mol, "E_only_1000", C, meth) for mol in ("ethanol", "aspirin")
     for meth in ("plain", "piwsl_2nd")],
    [(mol, "EF_50", m, meth) for mol in ("ethanol", "aspirin") for m in (C, D)
     for meth in ("plain", "piwsl_2nd")],
]  # fmt: skip
CELLS = [cell for block in BLOCKS for cell in block]

SEEDS = [0, 1, 2]

BUDGET = (
    "until validation stops improving: validation about every "
    f"{VALIDATE_EVERY_STEPS} steps, lr × {PLATEAU_FACTOR} after {PLATEAU_PATIENCE} validations "
    f"without a {100 * PLATEAU_THRESHOLD:g} % improvement, stop at lr0 × {PLATEAU_FACTOR}^{HALVINGS} "
    f"or after {EARLY_STOP} validations without any improvement; step caps "
    + ", ".join(f"{k} {r.cap_steps}" for k, r in RECIPES.items())
    + "; recipe per regime (batch, lr): "
    + ", ".join(f"{k} ({r.batch_size}, {r.lr:g})" for k, r in RECIPES.items())
    + "; EMA 0.99; PaiNN 32 features × 3 interactions"
)


def _log_axes(ax) -> None:
    """Log-log axes labelled in plain numbers at the decades and a few steps between (minor
    ticks unlabelled: their labels collide on short ranges)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())


def plot_test_curves(records: list[dict], path) -> None:
    """Test force MAE (meV/Å) against training steps, one panel per (molecule, regime, model),
    every method on a shared axis: the mean over seeds (line) and each seed (faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(
        {(r["molecule"], r["regime"], r["model"]) for r in records if r.get("test_curve")}
    )
    if not panels:
        return
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        runs = [r for r in records if (r["molecule"], r["regime"], r["model"]) == panel]
        for method in sorted({r["method"] for r in runs}, key=method_rank):
            color = METHOD_COLORS.get(method, "C7")
            series = {}
            for r in (r for r in runs if r["method"] == method and r.get("test_curve")):
                pts = [(p["step"], p["forces_mae_meV_per_A"]) for p in r["test_curve"]]
                ax.plot(*zip(*pts, strict=True), color=color, alpha=0.25, lw=0.8)
                for step, value in pts:
                    series.setdefault(step, []).append(value)
            steps = sorted(series)
            means = [sum(series[s]) / len(series[s]) for s in steps]
            ax.plot(steps, means, color=color, marker="o", ms=3, lw=1.5, label=method)
        _log_axes(ax)
        ax.set_xlabel("training step")
        ax.set_ylabel("test force MAE (meV/Å)")
        ax.set_title(" ".join(panel), fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
