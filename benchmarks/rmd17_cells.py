"""The cells of the rMD17 benchmark (``benchmarks/rmd17.py``): models, methods and their variant
parameters, label regimes and training-set sizes, the default slice of the grid, and the run names
built from them. Definitions only; the driver is ``rmd17.py``, the summary ``rmd17_report.py``.
"""

from __future__ import annotations

import re

import converged_protocol as converged

MODELS: dict[str, list[str]] = {
    "schnet": [
        "model.name=schnet",
        "model.hparams={features: 64, interactions: 3, n_rbf: 32}",
    ],
    "painn_conservative": [
        "model.name=painn",
        "model.hparams={features: 64, interactions: 3, n_rbf: 20, forces: conservative}",
    ],
    "painn_direct": [
        "model.name=painn",
        "model.hparams={features: 64, interactions: 3, n_rbf: 20, forces: direct}",
    ],
    "mace": [  # a CPU-sized MACE (mace-torch backend): 16 channels, L ≤ 1, correlation 2
        "model.name=mace",
        "model.hparams={num_channels: 16, max_L: 1, correlation: 2, num_interactions: 2}",
    ],
    "schnet_tiny": [  # the --quick smoke test
        "model.name=schnet",
        "model.hparams={features: 16, interactions: 1, n_rbf: 8}",
    ],
    **converged.MODELS,
}

NO_PHYSICS = ["physics.taylor_weight=0", "physics.spatial_weight=0"]
PAPER_PHYSICS = ["physics.taylor_weight=1.2", "physics.spatial_weight=0.01"]
XTB = ["prior.name=gfn2-xtb"]

#: Methods. PIWSL weights are the paper's (per kcal²/mol², δ = 0.05 Å); noisy-node jitter ≤ δ.
METHODS: dict[str, list[str]] = {
    "plain": NO_PHYSICS,
    "noisy": [*NO_PHYSICS, "training.position_noise=0.05"],
    "piwsl": PAPER_PHYSICS,
    "piwsl_2nd": [*PAPER_PHYSICS, "physics.second_order=true"],
    "piwsl_anchored": [*PAPER_PHYSICS, "physics.anchor_to_labels=true"],
    "delta": [*NO_PHYSICS, *XTB],
    "delta_piwsl_2nd": [*PAPER_PHYSICS, "physics.second_order=true", *XTB],
}

#: Short names of the parameters of a variant, ``piwsl_2nd[delta=0.01,taylor=12]``.
VARIANT_KEYS = {
    "delta": "physics.perturbation_scale",
    "taylor": "physics.taylor_weight",
    "spatial": "physics.spatial_weight",
    "noise": "training.position_noise",
    "lr": "training.lr",
    "fraction": "physics.fraction",
    "every": "physics.every_n_steps",
}

#: Every loss in the paper's convention (total energies in kcal/mol), the one in which its
#: physics weights (1.2, 0.01) were tuned.
PAPER_UNITS = [
    "loss.energy_unit=kcal/mol",
    "loss.per_atom_energy=false",
    "physics.weight_energy_unit=kcal/mol",
]

ENERGY_ONLY = ["data.train_labels=energy", "loss.force_weight=0"]

#: Regimes: label set, training-set size (validation: 50 further frames of the train file).
REGIMES: dict[str, list[str]] = {
    "E_only_1000": ["data.n_train=950", "data.n_val=50", *ENERGY_ONLY],
    "E_only_100": ["data.n_train=100", "data.n_val=50", *ENERGY_ONLY],
    "EF_50": ["data.n_train=50", "data.n_val=50", "data.train_labels=all"],
    "EF_100": ["data.n_train=100", "data.n_val=50", "data.train_labels=all"],
    "EF_1000": ["data.n_train=950", "data.n_val=50", "data.train_labels=all"],
    "EF_950": ["data.n_train=950", "data.n_val=50", "data.train_labels=all"],  # core suite
}
N_TRAIN = {"E_only_1000": 950, "E_only_100": 100, "EF_50": 50, "EF_100": 100, "EF_1000": 950}
N_TRAIN["EF_950"] = 950


def method_overrides(method: str) -> list[str]:
    """Overrides of a method name, with optional ``[key=value,...]`` variant parameters."""
    match = re.fullmatch(r"([a-z0-9_]+)(?:\[(.*)\])?", method)
    if not match or match.group(1) not in METHODS:
        raise SystemExit(f"unknown method {method!r}; known: {', '.join(METHODS)} (+[key=value])")
    overrides = list(METHODS[match.group(1)])
    for item in filter(None, (match.group(2) or "").split(",")):
        key, _, value = item.partition("=")
        if key not in VARIANT_KEYS:
            raise SystemExit(
                f"unknown variant key {key!r} in {method!r}; known: {list(VARIANT_KEYS)}"
            )
        overrides.append(f"{VARIANT_KEYS[key]}={value}")
    return overrides


def last_override(overrides: list[str], key: str, default: str) -> str:
    """The value the last ``key=value`` of ``overrides`` (or a command line) sets — a later
    override wins —, or ``default``."""
    values = [a.split("=", 1)[1] for a in overrides if a.startswith(key + "=")]
    return values[-1] if values else default


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


#: The default slice of the grid / walltime / legacy suites.
GRID_SLICE = {
    "molecules": ["ethanol", "aspirin"],
    "regimes": ["E_only_1000", "E_only_100", "EF_50", "EF_100"],
    "models": ["schnet", "painn_direct"],
    "methods": ["plain", "piwsl", "piwsl_2nd"],
}
