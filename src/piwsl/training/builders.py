"""Builders: the pieces of a run made from its configuration.

The model (:func:`build_force_field`: new, or fine-tuned from ``model.init_from``), the objective
(:func:`build_objective`, its displacements checked against the training skin), the data loaders,
the Lightning module (with EMA or without), the callbacks and the trainer. :func:`training_skin`
is the one place the neighbour-list skin of the training set is decided.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from piwsl.config import Config
from piwsl.errors import ConfigError
from piwsl.objective import Objective
from piwsl.training.data import EpochShuffleSampler, PreparedData, ShardSampler
from piwsl.training.finetune import (
    apply_freeze,
    check_pretrained_elements,
    inference_device,
    refit_reference,
    resolve_init_from,
)

log = logging.getLogger(__name__)


def working_dtype(cfg: Config) -> torch.dtype:
    """The dtype of the model's weights and the batches (``training.dtype``)."""
    return torch.float64 if cfg.training.dtype == "float64" else torch.float32


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

    dtype = working_dtype(cfg)
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
        check_pretrained_elements(model, data, cfg.model.init_from)
        if cfg.model.e0s_on_init == "refit":
            refit_reference(model, data, cfg.data.e0s, device=inference_device(cfg))
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
    from piwsl.priors import attach_prior

    attach_prior(model, spec)


def training_skin(cfg: Config) -> float:
    """The neighbour-list skin of the training set, Å (``data.skin``, or the physics minimum)."""
    if cfg.data.skin is not None:
        return cfg.data.skin
    physics = cfg.physics.required_skin if cfg.loss.displaces else 0.0
    # noisy-node jitter moves each atom by up to √3·x, a pair by up to 2√3·x
    noise = 2.0 * 3.0**0.5 * cfg.training.position_noise
    return 1.05 * max(physics, noise)


def build_objective(cfg: Config, cutoff: float) -> Objective:
    """The objective of ``cfg``; the training skin is checked against its displacements."""
    objective = Objective.from_config(cfg.loss, cfg.physics)
    objective.check_skin(training_skin(cfg), cutoff)
    return objective


def check_stress_terms(objective: Objective, model: Any, data: PreparedData) -> None:
    """A stress term needs a conservative model (ConfigError); stress labels without a stress
    term, or a stress term without stress labels, get a warning."""
    term = objective.term("stress")
    weight = term.weight if term is not None else 0.0
    n_labelled = sum(f.has_stress for f in data.train)
    if weight > 0 and n_labelled and model.direct_forces:
        raise ConfigError(
            f"loss.terms.stress: {n_labelled} training frames carry stress labels, but the model "
            "predicts forces directly and has no stress; use a conservative model (e.g. "
            "model.hparams.forces=conservative) or set loss.terms.stress=0"
        )
    if n_labelled and weight == 0:
        log.warning(
            "%d training frames carry stress labels that are not trained on; set "
            "loss.terms.stress=1 (or another weight) to use them",
            n_labelled,
        )
    if weight > 0 and not n_labelled:
        log.warning("loss.terms.stress is set but no training frame carries a stress label")


def monitor_of(data: PreparedData) -> str:
    """The validation metric that selects the best checkpoint (forces when validation has them)."""
    return "val_forces_mae_meV_per_A" if data.val_has_forces else "val_energy_mae_meV"


def describe_model(cfg: Config, model: Any, objective: Objective) -> str:
    """The console line about the model (size, cutoff, dtype, reference energies, physics)."""
    n_params = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trained = f", {n_trained:,} trained" if n_trained != n_params else ""
    em = model.energy_model
    return (
        f"[bold]model[/] {cfg.model.name} ({n_params:,} parameters{trained}, cutoff "
        f"{model.cutoff} Å, {cfg.training.dtype}); energy shift {float(em.energy_shift) * 1e3:.2f} "
        f"meV/atom, scale {float(em.energy_scale):.4g}; "
        f"physics {'on' if objective.displaces else 'off'}"
    )


def validation_batch_size(cfg: Config) -> int:
    return cfg.training.val_batch_size or 2 * cfg.training.batch_size


def build_loaders(cfg: Config, data: PreparedData, cutoff: float) -> tuple[Any, Any]:
    """(training loader, validation loader); only the training set needs a skin (the physics
    terms displace its structures), and its order depends only on (seed, epoch)."""
    from torch.utils.data import DataLoader

    from piwsl.data import GraphDataset, collate

    dtype = working_dtype(cfg)
    train_ds = GraphDataset(data.train, cutoff, training_skin(cfg), dtype)
    val_ds = GraphDataset(data.val, cutoff, 0.0, dtype)
    train_loader = DataLoader(
        train_ds,
        batch_size=cfg.training.batch_size,
        sampler=EpochShuffleSampler(len(train_ds), seed=cfg.training.seed),
        collate_fn=collate,
        num_workers=0,
    )
    val_loader = DataLoader(
        val_ds,
        batch_size=validation_batch_size(cfg),
        sampler=ShardSampler(len(val_ds)),
        collate_fn=collate,
    )
    return train_loader, val_loader


def build_module(cfg: Config, model: Any, objective: Objective, monitor: str) -> Any:
    """The Lightning module: :class:`~piwsl.training.ema.EmaModule` with ``training.ema_decay``,
    else :class:`~piwsl.training.module.PiwslModule`."""
    from piwsl.training.ema import EmaModule
    from piwsl.training.module import PiwslModule

    cls = EmaModule if cfg.training.ema_decay else PiwslModule
    return cls(model, objective, cfg.training, monitor=monitor, config=cfg.to_dict())


@dataclass
class Callbacks:
    """The callbacks of a run, and the two whose state the run reads afterwards."""

    all: list[Any]
    best: Any  # ModelCheckpoint of the best validation score
    early_stop: Any = None
    floor: Any = None  # LearningRateFloor (training.stop_lr)


def build_callbacks(cfg: Config, data: PreparedData, run_dir: Path, monitor: str) -> Callbacks:
    """Best and last checkpoints, early stopping, the learning-rate floor, the test curve and
    the progress bar."""
    from piwsl.training.callbacks import (
        ConfiguredEarlyStopping,
        LearningRateFloor,
        RunCheckpoint,
        training_progress_bar,
    )

    ckpt_dir = run_dir / "checkpoints"
    best = RunCheckpoint(
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
    last = RunCheckpoint(
        dirpath=ckpt_dir,
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
    )
    out = Callbacks([best, last], best)
    if cfg.training.early_stopping_patience:
        out.early_stop = ConfiguredEarlyStopping(monitor, cfg.training.early_stopping_patience)
        out.all.append(out.early_stop)
    if cfg.training.stop_lr is not None:
        out.floor = LearningRateFloor(cfg.training.stop_lr)
        out.all.append(out.floor)
    if cfg.output.test_curve_steps and data.test:
        out.all.append(build_test_curve(cfg, data, run_dir))
    if cfg.output.progress_bar:
        out.all.append(training_progress_bar())
    return out


def prior_use(cfg: Config) -> Any:
    """How the run's test evaluations add an external prior (its cache, workers, executor)."""
    from piwsl.priors import PriorUse

    p = cfg.prior
    return PriorUse(
        cache_dir=p.cache_dir, workers=p.workers, executor=p.executor, scheduler=p.scheduler
    )


def build_test_curve(cfg: Config, data: PreparedData, run_dir: Path) -> Any:
    """The :class:`~piwsl.training.test_curve.TestCurve` of ``output.test_curve_steps``."""
    from piwsl.training.test_curve import TestCurve

    return TestCurve(
        data.test,
        cfg.output.test_curve_steps,
        run_dir / "test_curve.json",
        batch_size=validation_batch_size(cfg),
        prior=prior_use(cfg),
    )


def build_trainer(cfg: Config, run_dir: Path, callbacks: Callbacks, log_version: int) -> Any:
    """The Lightning trainer: limits, gradient clipping, CSV logs, atomic checkpoint writes."""
    import lightning
    from lightning.pytorch.loggers import CSVLogger

    from piwsl.training.callbacks import AtomicCheckpointIO

    tcfg = cfg.training
    return lightning.Trainer(
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        strategy=tcfg.strategy,
        max_epochs=tcfg.max_epochs if tcfg.max_epochs is not None else -1,
        max_steps=tcfg.max_steps if tcfg.max_steps is not None else -1,
        max_time=timedelta(minutes=tcfg.max_time_minutes) if tcfg.max_time_minutes else None,
        gradient_clip_val=tcfg.gradient_clip,
        callbacks=callbacks.all,
        logger=CSVLogger(save_dir=run_dir, name="logs", version=log_version),
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
