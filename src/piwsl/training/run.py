"""A whole training run: data → model → Lightning fit → best/final models → test evaluation.

With ``model.init_from`` the run fine-tunes a pre-trained model (:func:`resolve_init_from`,
:func:`build_force_field`: element check, E0 re-fit or keep, ``model.freeze``); the optimiser
only ever sees the parameters that still require a gradient.

With ``prior.name`` (Δ-learning, :mod:`piwsl.priors`) the model learns the residuals to a prior
(:func:`~piwsl.training.data.prepare_data`); the prior's spec is recorded on the model
(:func:`record_prior`) and so in every model file and checkpoint, ``--resume`` refuses another
prior, and the test metrics score the total prediction, prior + model.

:func:`train` is what ``piwsl train`` calls; :func:`evaluate_checkpoint` is ``piwsl evaluate``.
A run directory holds::

    config.yaml               the resolved configuration
    checkpoints/best.ckpt     Lightning checkpoint with the best validation force MAE
    checkpoints/last.ckpt     the latest checkpoint (``--resume`` continues from it)
    best_model.pt             the EMA model of best.ckpt (piwsl.models.load_model)
    final_model.pt            the EMA model at the end of training
    logs/version_K/metrics.csv  per-epoch losses (raw and weighted) and validation errors
    evaluation/test_metrics.json, evaluation/test_parity.png
    summary.json              paths, timing and the headline numbers

Console output goes through rich.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from piwsl.config import Config
from piwsl.errors import CheckpointError, ConfigError, UnknownElementError
from piwsl.training.data import EpochShuffleSampler, PreparedData, ShardSampler, prepare_data

log = logging.getLogger(__name__)

#: Messages from Lightning that say nothing useful for piwsl runs.
_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*Experiment logs directory .* exists and is not empty.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*You're resuming from a checkpoint that ended before the epoch ended.*",
    r".*treespec.*",
    r".*`training_step` returned `None`.*",
)


@dataclass
class TrainResult:
    """Where a run put its outputs, and its headline numbers."""

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_model: Path | None
    final_model: Path
    monitor: str
    best_score: float | None
    epochs: int
    steps: int
    train_time_s: float
    stopped_by: str | None = None  # plateau, cap, time or interrupted (see stop_reason)
    test_metrics: dict[str, Any] | None = None
    test_metrics_path: Path | None = None
    test_plot_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# building blocks


def build_force_field(cfg: Config, data: PreparedData, pretrained: Any = None):
    """The configured model for ``data.elements`` with E0s, shift and scale set.

    Without ``model.init_from`` a new model is built from ``model.name`` / ``cutoff`` / ``hparams``
    with the reference quantities of ``data``. With it, the pre-trained model is used (``pretrained``
    if :func:`resolve_init_from` loaded it already, else it is loaded here); every element of the
    training data must be one it knows (:class:`UnknownElementError` otherwise), and its E0s and
    shift are re-fitted or kept as ``model.e0s_on_init`` says (:func:`refit_reference`). Last, the
    ``model.freeze`` patterns switch off the gradients of the chosen parameters.
    """
    from piwsl.models import build_model

    dtype = torch.float64 if cfg.training.dtype == "float64" else torch.float32
    if cfg.model.init_from is None:
        try:
            model = build_model(
                cfg.model.name,
                elements=data.elements,
                cutoff=cfg.model.cutoff,
                **cfg.model.hparams,
            )
        except TypeError as err:
            raise ConfigError(
                f"model.hparams: {err} (model {cfg.model.name!r}; hparams given: "
                f"{sorted(cfg.model.hparams)})"
            ) from None
        model.energy_model.set_reference(data.e0s, data.shift, data.scale)
        if dtype == torch.float64:
            model = model.double()
    else:
        if pretrained is None:
            cfg, pretrained = resolve_init_from(cfg)
        model = pretrained.to(dtype=dtype)
        check_elements(model, data, cfg.model.init_from)
        if cfg.model.e0s_on_init == "refit":
            refit_reference(model, data, cfg.data.e0s, device=_inference_device(cfg))
        model.train()
    record_prior(model, data.prior, cfg.model.init_from)
    if cfg.model.freeze:
        apply_freeze(model, cfg.model.freeze)
    return model


def record_prior(model: Any, prior: Any, init_from: str | None = None) -> None:
    """Record the spec of ``prior`` (None: no prior) on ``model``; it travels with every saved
    model and checkpoint. A pre-trained model (``init_from``) on top of another prior is warned
    about: its learned part was fitted to residuals of that prior."""
    spec = prior.spec() if prior is not None else None
    old = getattr(model, "prior_spec", None)
    if init_from is not None and old != spec:
        log.warning(
            "model.init_from %r was trained on top of the prior %s; this run uses %s",
            init_from,
            (old or {}).get("name", "none"),
            (spec or {}).get("name", "none"),
        )
    model.prior_spec = spec


# --------------------------------------------------------------------------------------------
# fine-tuning


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (hyper-parameters from YAML vs from a model file)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def resolve_init_from(cfg: Config) -> tuple[Config, Any]:
    """``(cfg, pre-trained ForceField)`` for ``model.init_from``; ``(cfg, None)`` without it.

    The model's architecture is the file's. ``model.name``, ``model.cutoff`` and
    ``model.hparams`` given in the configuration must agree with it (:class:`ConfigError` naming
    each disagreement); the returned configuration carries the file's name and cutoff, so that the
    run's ``config.yaml`` says what was trained.
    """
    if cfg.model.init_from is None:
        return cfg, None
    from piwsl.models.finetune import load_pretrained

    source = cfg.model.init_from
    model = load_pretrained(source)
    name, cutoff = str(model.hparams["name"]), float(model.cutoff)
    saved = {k: v for k, v in model.hparams.items() if k not in ("name", "elements", "cutoff")}
    given = cfg.model.model_fields_set
    problems = []
    if "name" in given and cfg.model.name != name:
        problems.append(f"model.name: config {cfg.model.name!r}, file {name!r}")
    if "cutoff" in given and abs(cfg.model.cutoff - cutoff) > 1e-9:
        problems.append(f"model.cutoff: config {cfg.model.cutoff} Å, file {cutoff} Å")
    for key, value in cfg.model.hparams.items():
        if key not in saved:
            problems.append(f"model.hparams.{key}: config {value!r}, not set in the file")
        elif _plain(value) != _plain(saved[key]):
            problems.append(f"model.hparams.{key}: config {value!r}, file {saved[key]!r}")
    if problems:
        raise ConfigError(
            f"model.init_from {source!r} holds a {name!r} model (cutoff {cutoff} Å) that the "
            f"model section contradicts: {'; '.join(problems)}. The architecture of a "
            "fine-tuned model is the pre-trained one: leave model.name, model.cutoff and "
            "model.hparams out of the config (override: model.hparams={}) or make them agree"
        )
    update = {"name": name, "cutoff": cutoff}
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=update)})
    return cfg, model


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}"


def check_elements(model: Any, data: PreparedData, source: str) -> None:
    """Raise :class:`UnknownElementError` if the training data hold elements ``model`` lacks."""
    import numpy as np

    known = set(model.elements)
    missing = sorted(set(data.elements) - known)
    if not missing:
        return
    where = []
    for z in missing:
        frame = next(f for f in data.train if bool(np.any(f.numbers == z)))
        where.append(f"{_symbol(z)} (Z={z}, e.g. file {frame.source!r} frame {frame.index})")
    raise UnknownElementError(
        f"model.init_from {source!r}: the training data contain {', '.join(where)}, which the "
        f"pre-trained model does not know (it knows {', '.join(_symbol(z) for z in sorted(known))})"
        ". Fine-tuning cannot add elements: remove these structures from data.train / "
        "data.unlabelled, or train a new model"
    )


def _inference_device(cfg: Config) -> torch.device:
    """Where the pre-trained model evaluates the training frames for the E0 re-fit."""
    if cfg.training.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def interaction_energies(
    model: Any, frames: list, batch_size: int = 32, device: torch.device | None = None
) -> list[float]:
    """What ``model`` predicts for each frame minus its E0s and shift, eV (no forces computed)."""
    from piwsl.data import frames_to_batch

    em = model.energy_model
    dtype = next(model.parameters()).dtype
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    model.to(device)
    e0 = em.e0.detach().cpu().double().numpy()
    shift = float(em.energy_shift)
    out: list[float] = []
    try:
        with torch.no_grad():
            for k in range(0, len(frames), batch_size):
                chunk = frames[k : k + batch_size]
                batch = frames_to_batch(chunk, model.cutoff, dtype=dtype).to(device=device)
                energy = model(batch, compute_forces=False)["energy"].double().cpu().tolist()
                for f, e in zip(chunk, energy, strict=True):
                    out.append(e - float(e0[f.numbers].sum()) - shift * f.n_atoms)
    finally:
        model.to("cpu")
        model.train(was_training)
    return out


def refit_reference(
    model: Any, data: PreparedData, e0s_mode: Any, device: torch.device | None = None
) -> dict[int, float]:
    """Re-fit the E0s and the per-atom shift of a pre-trained model to the training energies.

    The targets are the residuals ``E_f − I_f``, ``I_f`` the pre-trained network's interaction
    energy of frame f (:func:`interaction_energies`): E0s as ``e0s_mode`` says (``data.e0s``:
    least-squares fit, isolated atoms, zero or given values), the shift as the mean per-atom
    residual left. With ``fit`` the model's mean energy error on the training frames is then zero;
    a per-element offset between two levels of theory is absorbed exactly. The energy scale stays
    (it sets the forces). Elements the model knows but the new data lack keep their effective
    reference ``E0 + shift``. Without energy labels nothing is changed (a warning says so).
    Returns the new E0s, eV.
    """
    from dataclasses import replace

    from piwsl.data import resolve_e0s
    from piwsl.training.data import reference_statistics

    em = model.energy_model
    labelled = [f for f in data.train if f.has_energy]
    if not labelled:
        log.warning(
            "model.e0s_on_init=refit: no training frame has an energy; the pre-trained E0s and "
            "shift are kept"
        )
        return {z: float(em.e0[z]) for z in em.elements}
    inter = interaction_energies(model, labelled, device=device)
    residual = [
        replace(f, energy=float(f.energy) - i, forces=None)
        for f, i in zip(labelled, inter, strict=True)
    ]
    mode = dict(e0s_mode) if isinstance(e0s_mode, dict) else e0s_mode
    fitted = resolve_e0s(mode, residual, data.elements)
    shift, _ = reference_statistics(residual, fitted)
    old_shift = float(em.energy_shift)
    e0s = {z: float(em.e0[z]) + old_shift - shift for z in em.elements}
    e0s.update({int(z): float(v) for z, v in fitted.items() if int(z) in e0s})
    em.set_reference(e0s, shift, float(em.energy_scale))
    return e0s


def apply_freeze(model: Any, patterns: list[str]) -> list[str]:
    """Freeze the parameters ``patterns`` select (``model.freeze``); names of the frozen ones."""
    from piwsl.models.finetune import freeze

    try:
        frozen = freeze(model, patterns)
    except ConfigError as err:
        raise ConfigError(f"model.freeze: {err}") from None
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"model.freeze {patterns!r} freezes all {len(frozen)} parameter tensors: nothing "
            "would be trained. Take some back with '!pattern' (e.g. '!readout.*')"
        )
    return frozen


def training_skin(cfg: Config) -> float:
    """The neighbour-list skin of the training set, Å (``data.skin``, or the physics minimum)."""
    if cfg.data.skin is not None:
        return cfg.data.skin
    physics = cfg.physics.required_skin if cfg.physics.enabled else 0.0
    # noisy-node jitter moves each atom by up to √3·x, a pair by up to 2√3·x
    noise = 2.0 * 3.0**0.5 * cfg.training.position_noise
    return 1.05 * max(physics, noise)


def build_physics(cfg: Config, cutoff: float) -> Any:
    """The physics terms of ``cfg`` (None when every physics weight is zero)."""
    if not cfg.physics.enabled:
        return None
    from piwsl.physics import build_physics as _build

    physics = _build(cfg.physics)
    if physics is not None and hasattr(physics, "check_skin"):
        physics.check_skin(training_skin(cfg), cutoff)
    return physics


def _prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> Path | None:
    """Check/clean the run directory; return the checkpoint to resume from (or None)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            raise CheckpointError(
                f"--resume: no checkpoint {str(last)!r}; start the run without --resume"
            )
        try:
            ckpt = torch.load(last, map_location="cpu", weights_only=False)
        except Exception as err:  # torch raises many types for corrupt files
            raise CheckpointError(
                f"--resume: cannot read checkpoint {str(last)!r} ({type(err).__name__}: {err}); "
                "start the run afresh (output.overwrite=true) or restore the file"
            ) from err
        if not isinstance(ckpt, dict) or "piwsl_model" not in ckpt:
            raise CheckpointError(
                f"--resume: {str(last)!r} is not a piwsl training checkpoint; start afresh"
            )
        saved = run_dir / "config.yaml"
        if saved.is_file():
            from piwsl.config import read_yaml

            old, source = read_yaml(saved), saved
        else:  # the checkpoint carries the configuration of the run that wrote it
            old, source = ckpt.get("piwsl_config") or {}, last
        new = cfg.to_dict()
        for section in ("model", "data"):
            if section in old and old[section] != new[section]:
                raise ConfigError(
                    f"--resume: the {section} section differs from the run's {str(source)!r}; "
                    "only training/output settings may change when resuming"
                )
        _check_resumed_prior(old.get("prior") or {}, cfg, source)
        recorded = (ckpt.get("piwsl_model") or {}).get("prior")
        del ckpt
        if recorded:
            from piwsl.priors import prior_from_spec

            prior_from_spec(
                recorded,
                what=f"--resume: the checkpoint {str(last)!r}",
                opt_out="start the run afresh (output.overwrite=true)",
            )
        return last
    holds_run = last.exists() or (run_dir / "final_model.pt").exists()
    if holds_run:
        if not cfg.output.overwrite:
            raise ConfigError(
                f"run directory {str(run_dir)!r} already holds a run; pass --resume to continue "
                "it, --run-dir to start elsewhere, or output.overwrite=true to replace it"
            )
        for name in ("checkpoints", "logs", "evaluation"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        for name in ("best_model.pt", "final_model.pt", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    return None


#: The prior keys that set the training targets (cache_dir and workers may change on --resume).
_PRIOR_KEYS = ("name", "charge", "multiplicity", "settings")


def _check_resumed_prior(old: dict[str, Any], cfg: Config, source: Path) -> None:
    from piwsl.config import PriorConfig

    defaults = PriorConfig().model_dump(mode="json")
    new = cfg.prior.model_dump(mode="json")
    for key in _PRIOR_KEYS:
        if old.get(key, defaults[key]) != new[key]:
            raise ConfigError(
                f"--resume: prior.{key} differs from the run's {str(source)!r} "
                f"({old.get(key, defaults[key])!r} there, {new[key]!r} now); the prior sets the "
                "training targets and cannot change when resuming"
            )


def _next_log_version(run_dir: Path) -> int:
    logs = run_dir / "logs"
    if not logs.is_dir():
        return 0
    versions = [int(p.name.split("_")[1]) for p in logs.glob("version_*") if p.name[8:].isdigit()]
    return max(versions, default=-1) + 1


@contextlib.contextmanager
def _quiet_lightning():
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def flush_denormal(enabled: bool):
    """CPU: denormal floats are read and written as zero inside the block (``torch``'s process
    flag, reset to the default, off, at the end). Values below 1.2e-38 (float32) become zero."""
    if not (enabled and torch.set_flush_denormal(True)):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def metrics_table(metrics: dict[str, Any], title: str = "test set") -> Table:
    """A rich table of energy (meV, meV/atom) and force (meV/Å) MAE/RMSE."""
    table = Table(title=f"{title}: {metrics.get('n_frames', '?')} frames")
    table.add_column("quantity")
    table.add_column("MAE", justify="right")
    table.add_column("RMSE", justify="right")
    table.add_row(
        "energy (meV)", _fmt(metrics.get("energy_mae_meV")), _fmt(metrics.get("energy_rmse_meV"))
    )
    table.add_row(
        "energy (meV/atom)",
        _fmt(metrics.get("energy_mae_meV_per_atom")),
        _fmt(metrics.get("energy_rmse_meV_per_atom")),
    )
    table.add_row(
        "forces (meV/Å)",
        _fmt(metrics.get("forces_mae_meV_per_A")),
        _fmt(metrics.get("forces_rmse_meV_per_A")),
    )
    return table


def stop_reason(trainer: Any, tcfg: Any, early_stop: Any) -> str:
    """Why training ended: ``plateau`` (early stopping), ``cap`` (max_steps / max_epochs) or
    ``time`` (max_time_minutes); ``interrupted`` otherwise (e.g. Ctrl-C)."""
    if early_stop is not None and early_stop.stopped_epoch > 0:
        return "plateau"
    if tcfg.max_steps is not None and trainer.global_step >= tcfg.max_steps:
        return "cap"
    if tcfg.max_epochs is not None and trainer.current_epoch >= tcfg.max_epochs:
        return "cap"
    if tcfg.max_time_minutes is not None:
        return "time"
    return "interrupted"


# --------------------------------------------------------------------------------------------
# train


def train(
    cfg: Config,
    run_dir: str | Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    evaluate: bool = True,
) -> TrainResult:
    """Train the model of ``cfg``; write the run directory; evaluate the best model on the test set.

    ``resume=True`` continues from ``<run_dir>/checkpoints/last.ckpt`` (weights, EMA, optimiser,
    schedule, epoch/step counters and physics sampling state).
    """
    import lightning
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from piwsl.data import GraphDataset, collate
    from piwsl.models import load_model, save_model
    from piwsl.training.callbacks import AtomicCheckpointIO, PiwslProgressBar
    from piwsl.training.module import PiwslModule

    console = console or Console(quiet=True)
    tcfg = cfg.training
    run_dir = Path(run_dir if run_dir is not None else cfg.output.run_dir)
    if run_dir != Path(cfg.output.run_dir):
        cfg = cfg.model_copy(
            update={"output": cfg.output.model_copy(update={"run_dir": str(run_dir)})}
        )
    # a pre-trained model (model.init_from) is read first: a bad file fails before anything is
    # written, and config.yaml records the architecture actually trained
    cfg, pretrained = resolve_init_from(cfg)
    resume_from = _prepare_run_dir(cfg, run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")

    if tcfg.num_threads is not None:
        torch.set_num_threads(tcfg.num_threads)
    lightning.seed_everything(tcfg.seed, workers=True, verbose=False)

    from lightning.pytorch.utilities import rank_zero_only

    rank_zero = getattr(rank_zero_only, "rank", 0) == 0
    if not rank_zero:  # DDP ranks > 0: data coverage, warnings and model are reported once
        console = Console(quiet=True)
    data = prepare_data(
        cfg.data, report=rank_zero, prior=cfg.prior, progress=cfg.output.progress_bar and rank_zero
    )
    for line in data.coverage if rank_zero else []:
        log.info(line)
        console.print(f"[bold]data[/] {escape(line)}")
    model = build_force_field(cfg, data, pretrained)
    physics = build_physics(cfg, model.cutoff)
    dtype = torch.float64 if tcfg.dtype == "float64" else torch.float32
    n_params = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trained = f", {n_trained:,} trained" if n_trained != n_params else ""
    em = model.energy_model
    if cfg.model.init_from is not None:
        console.print(
            f"[bold]fine-tuning[/] from {escape(cfg.model.init_from)}; E0s and shift "
            f"{'re-fitted to the training energies' if cfg.model.e0s_on_init == 'refit' else 'kept'}"
        )
    console.print(
        f"[bold]model[/] {cfg.model.name} ({n_params:,} parameters{trained}, cutoff "
        f"{model.cutoff} Å, {tcfg.dtype}); energy shift {float(em.energy_shift) * 1e3:.2f} "
        f"meV/atom, scale {float(em.energy_scale):.4g}; "
        f"physics {'on' if physics is not None else 'off'}"
    )

    # only the training set needs a skin (the physics terms displace its structures)
    train_ds = GraphDataset(data.train, model.cutoff, training_skin(cfg), dtype)
    val_ds = GraphDataset(data.val, model.cutoff, 0.0, dtype)
    train_loader = DataLoader(
        train_ds,
        batch_size=tcfg.batch_size,
        sampler=EpochShuffleSampler(len(train_ds), seed=tcfg.seed),
        collate_fn=collate,
        num_workers=0,
    )
    val_bs = tcfg.val_batch_size or 2 * tcfg.batch_size
    val_loader = DataLoader(
        val_ds, batch_size=val_bs, sampler=ShardSampler(len(val_ds)), collate_fn=collate
    )

    monitor = "val_forces_mae_meV_per_A" if data.val_has_forces else "val_energy_mae_meV"
    module = PiwslModule(
        model, cfg.loss, tcfg, physics=physics, monitor=monitor, config=cfg.to_dict()
    )
    ckpt_dir = run_dir / "checkpoints"
    checkpoint_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    # Lightning's save_last only copies when a top-k checkpoint is written; a separate callback
    # writes last.ckpt after every epoch, so --resume always starts from the latest epoch.
    last_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
    )
    callbacks: list[Any] = [checkpoint_cb, last_cb]
    early_stop = None
    if tcfg.early_stopping_patience:
        early_stop = EarlyStopping(
            monitor=monitor, mode="min", patience=tcfg.early_stopping_patience
        )
        callbacks.append(early_stop)
    if cfg.output.test_curve_steps and data.test:
        from piwsl.priors import PriorUse
        from piwsl.training.test_curve import TestCurve

        callbacks.append(
            TestCurve(
                data.test,
                cfg.output.test_curve_steps,
                run_dir / "test_curve.json",
                batch_size=val_bs,
                prior=PriorUse(cache_dir=cfg.prior.cache_dir, workers=cfg.prior.workers),
            )
        )
    if cfg.output.progress_bar:
        callbacks.append(PiwslProgressBar())
    logger = CSVLogger(save_dir=run_dir, name="logs", version=_next_log_version(run_dir))
    with _quiet_lightning():
        trainer = lightning.Trainer(
            accelerator=tcfg.accelerator,
            devices=tcfg.devices,
            strategy=tcfg.strategy,
            max_epochs=tcfg.max_epochs if tcfg.max_epochs is not None else -1,
            max_steps=tcfg.max_steps if tcfg.max_steps is not None else -1,
            max_time=timedelta(minutes=tcfg.max_time_minutes) if tcfg.max_time_minutes else None,
            gradient_clip_val=tcfg.gradient_clip,
            callbacks=callbacks,
            logger=logger,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=str(run_dir),
            enable_model_summary=False,
            enable_progress_bar=cfg.output.progress_bar,
            log_every_n_steps=tcfg.log_every_n_steps,
            check_val_every_n_epoch=tcfg.val_every_n_epochs,
            num_sanity_val_steps=0,
            inference_mode=False,  # validation computes forces by autograd (enable_grad inside)
            # the samplers shard over DDP ranks themselves (see EpochShuffleSampler)
            use_distributed_sampler=False,
        )
    start = time.perf_counter()
    with _quiet_lightning(), flush_denormal(tcfg.flush_denormal):
        trainer.fit(
            module,
            train_loader,
            val_loader,
            ckpt_path=str(resume_from) if resume_from is not None else None,
        )
    train_time = time.perf_counter() - start

    metadata = {"run_dir": str(run_dir), "config": cfg.to_dict(), "prior": model.prior_spec}
    final_model = run_dir / "final_model.pt"
    best_ckpt = Path(checkpoint_cb.best_model_path) if checkpoint_cb.best_model_path else None
    best_model_path: Path | None = None
    result = TrainResult(
        run_dir=run_dir,
        best_checkpoint=best_ckpt,
        last_checkpoint=ckpt_dir / "last.ckpt" if (ckpt_dir / "last.ckpt").exists() else None,
        best_model=None,
        final_model=final_model,
        monitor=monitor,
        best_score=(
            float(checkpoint_cb.best_model_score)
            if checkpoint_cb.best_model_score is not None
            else None
        ),
        epochs=int(trainer.current_epoch),
        steps=int(trainer.global_step),
        train_time_s=train_time,
        stopped_by=stop_reason(trainer, tcfg, early_stop),
    )
    if not trainer.is_global_zero:
        return result
    save_model(module.eval_model, final_model, metadata)
    eval_source = final_model
    if best_ckpt is not None and best_ckpt.is_file():
        best_model_path = run_dir / "best_model.pt"
        save_model(load_model(best_ckpt), best_model_path, metadata)
        eval_source = best_model_path
    result.best_model = best_model_path
    console.print(
        f"[bold]trained[/] {result.epochs} epochs / {result.steps} steps in {train_time:.1f} s; "
        f"best {monitor} = {_fmt(result.best_score)}"
    )
    compiled = module.compile_stats()
    if compiled is not None:
        console.print(
            f"[bold]compiled[/] {compiled['graphs']} graph(s) in {compiled['compile_time_s']:.1f}"
            f" s, {compiled['recompiles']} recompilation(s); {compiled['compiled_calls']} compiled"
            f" and {compiled['eager_calls']} eager model calls"
        )
    if evaluate:
        # with a prior: the test (or full-label validation) frames, scored on the total prediction
        val_full = data.val_reference if data.val_reference is not None else data.val
        frames, name = (data.test, "test") if data.test else (val_full, "validation")
        if frames:
            from piwsl.evaluation import evaluate_model
            from piwsl.priors import PriorUse

            out_dir = run_dir / "evaluation"
            metrics = evaluate_model(
                load_model(eval_source),
                frames,
                out_dir,
                batch_size=val_bs,
                name=name,
                prior=PriorUse(cache_dir=cfg.prior.cache_dir, workers=cfg.prior.workers),
            )
            result.test_metrics = metrics
            result.test_metrics_path = out_dir / f"{name}_metrics.json"
            plot = out_dir / f"{name}_parity.png"
            result.test_plot_path = plot if plot.exists() else None
            console.print(metrics_table(metrics, title=f"{name} set ({eval_source.name})"))
    summary = {
        "run_dir": str(run_dir),
        "best_checkpoint": str(best_ckpt) if best_ckpt else None,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "best_model": str(best_model_path) if best_model_path else None,
        "final_model": str(final_model),
        "monitor": monitor,
        "best_score": result.best_score,
        "epochs": result.epochs,
        "steps": result.steps,
        "train_time_s": round(train_time, 2),
        "stopped_by": result.stopped_by,
        "compile": compiled,
        "test_metrics": str(result.test_metrics_path) if result.test_metrics_path else None,
        "test_parity_plot": str(result.test_plot_path) if result.test_plot_path else None,
        "test": result.test_metrics,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for label, path in (
        ("metrics", result.test_metrics_path),
        ("parity plot", result.test_plot_path),
        ("best model", best_model_path),
        ("checkpoint", best_ckpt),
    ):
        if path is not None:
            console.print(f"[bold]{label}[/] {escape(str(path))}")
    return result


# --------------------------------------------------------------------------------------------
# evaluate


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out_dir: str | Path | None = None,
    batch_size: int = 32,
    name: str | None = None,
    console: Console | None = None,
    keys: Any = None,
    allow_prior_mismatch: bool = False,
    prior_cache_dir: str | None = None,
    prior_workers: int = 1,
) -> tuple[dict[str, Any], Path, Path | None]:
    """Evaluate a model file or training checkpoint on a data file; (metrics, json path, plot).

    A model trained on top of a prior is scored on prior + learned part (the prior's values are
    cached, :mod:`piwsl.priors.cache`); ``allow_prior_mismatch`` runs it even when the installed
    prior differs from the recorded one.
    """
    from piwsl.data import read_frames
    from piwsl.evaluation import evaluate_model
    from piwsl.models import load_model
    from piwsl.registry import suggest
    from piwsl.units import ENERGY_UNITS, LENGTH_UNITS

    console = console or Console(quiet=True)
    for unit, known, what in (
        (getattr(keys, "energy_unit", "eV"), ENERGY_UNITS, "energy"),
        (getattr(keys, "length_unit", "Å"), LENGTH_UNITS, "length"),
    ):
        if unit not in known:
            raise ConfigError(f"unknown {what} unit {unit!r}{suggest(unit, known)}")
    checkpoint = Path(checkpoint)
    model = load_model(checkpoint)
    frames = read_frames(data, keys)
    if name is None:
        stem = str(data).split(":", 1)[1] if str(data).startswith("builtin:") else Path(data).stem
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "eval"
    out = Path(out_dir) if out_dir is not None else checkpoint.parent / "evaluation"
    from piwsl.priors import PriorUse, model_prior

    prior = model_prior(model, allow_prior_mismatch, what=f"model {str(checkpoint)!r}")
    if prior is not None:
        console.print(f"[bold]prior[/] {escape(prior.describe())} added to the model's predictions")
    use = PriorUse(
        allow_mismatch=allow_prior_mismatch,
        cache_dir=prior_cache_dir,
        workers=prior_workers,
        progress=console.is_terminal,
        built=prior,
    )
    metrics = evaluate_model(model, frames, out, batch_size=batch_size, name=name, prior=use)
    metrics_path = out / f"{name}_metrics.json"
    plot = out / f"{name}_parity.png"
    console.print(metrics_table(metrics, title=f"{name} ({checkpoint.name})"))
    console.print(f"[bold]metrics[/] {escape(str(metrics_path))}")
    if plot.exists():
        console.print(f"[bold]parity plot[/] {escape(str(plot))}")
    return metrics, metrics_path, plot if plot.exists() else None
