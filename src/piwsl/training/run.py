"""A whole training run: data → model → Lightning fit → best/final models → test evaluation.

:func:`train` is what ``piwsl train`` calls. It prepares the run directory
(:mod:`~piwsl.training.rundir`: start, overwrite or resume), the data
(:func:`~piwsl.training.data.prepare_data`), and the model, objective, loaders, module, callbacks
and trainer (:mod:`~piwsl.training.builders`; fine-tuning in :mod:`~piwsl.training.finetune`),
fits, saves ``final_model.pt`` and ``best_model.pt``, and scores the best model on the test set
(:func:`piwsl.evaluation.evaluate_model`). ``piwsl evaluate`` is
:func:`piwsl.evaluation.evaluate_checkpoint`.

With ``prior.name`` (Δ-learning, :mod:`piwsl.priors`) the model learns the residuals to a prior;
the prior's spec is recorded on the model and so in every model file and checkpoint, ``--resume``
refuses another prior, and the test metrics score the total prediction, prior + model.

Console output goes through rich.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from piwsl.config import Config
from piwsl.physics.tuning import describe_choice
from piwsl.training.builders import (
    Callbacks,
    build_callbacks,
    build_force_field,
    build_loaders,
    build_module,
    build_objective,
    build_trainer,
    check_stress_terms,
    describe_model,
    monitor_of,
    prior_use,
    validation_batch_size,
)
from piwsl.training.data import PreparedData, prepare_data
from piwsl.training.finetune import resolve_init_from
from piwsl.training.rundir import (
    keep_run_evaluation,
    next_log_version,
    prepare_run_dir,
    write_summary,
)

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
    compile: dict[str, Any] | None = None  # training.compile: graphs, compile time, fallbacks
    #: physics.evaluation: the mode of the displaced copies (auto: the choice and its timings)
    physics_evaluation: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    test_metrics_path: Path | None = None
    test_plot_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The content of ``summary.json``."""

        def text(path: Path | None) -> str | None:
            return str(path) if path else None

        return {
            "run_dir": str(self.run_dir),
            "best_checkpoint": text(self.best_checkpoint),
            "last_checkpoint": text(self.last_checkpoint),
            "best_model": text(self.best_model),
            "final_model": str(self.final_model),
            "monitor": self.monitor,
            "best_score": self.best_score,
            "epochs": self.epochs,
            "steps": self.steps,
            "train_time_s": round(self.train_time_s, 2),
            "stopped_by": self.stopped_by,
            "compile": self.compile,
            "physics_evaluation": self.physics_evaluation,
            "test_metrics": text(self.test_metrics_path),
            "test_parity_plot": text(self.test_plot_path),
            "test": self.test_metrics,
        }


@contextlib.contextmanager
def quiet_lightning():
    """Lightning's info logs and the warnings of :data:`_QUIET_WARNINGS` silenced."""
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


def stop_reason(trainer: Any, tcfg: Any, early_stop: Any, floor: Any = None) -> str:
    """Why training ended: ``plateau`` (early stopping, or the plateau schedule reached
    ``stop_lr``), ``cap`` (max_steps / max_epochs) or ``time`` (max_time_minutes);
    ``interrupted`` otherwise (e.g. Ctrl-C)."""
    if early_stop is not None and early_stop.stopped_epoch > 0:
        return "plateau"
    if floor is not None and floor.triggered:
        return "plateau"
    if tcfg.max_steps is not None and trainer.global_step >= tcfg.max_steps:
        return "cap"
    if tcfg.max_epochs is not None and trainer.current_epoch >= tcfg.max_epochs:
        return "cap"
    if tcfg.max_time_minutes is not None:
        return "time"
    return "interrupted"


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


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
    schedule, epoch/step counters and the displacement sampling state).
    """
    import lightning
    from lightning.pytorch.utilities import rank_zero_only

    if run_dir is not None and Path(run_dir) != Path(cfg.output.run_dir):
        output = cfg.output.model_copy(update={"run_dir": str(run_dir)})
        cfg = cfg.model_copy(update={"output": output})
    run_dir = Path(cfg.output.run_dir)
    # a pre-trained model (model.init_from) is read first: a bad file fails before anything is
    # written, and config.yaml records the architecture actually trained
    cfg, pretrained = resolve_init_from(cfg)
    if resume:
        cfg = keep_run_evaluation(cfg, run_dir)
    resume_from = prepare_run_dir(cfg, run_dir, resume, console)
    if cfg.training.num_threads is not None:
        torch.set_num_threads(cfg.training.num_threads)
    lightning.seed_everything(cfg.training.seed, workers=True, verbose=False)
    rank_zero = getattr(rank_zero_only, "rank", 0) == 0
    # DDP ranks > 0: data coverage, warnings and model are reported once
    console = console if console is not None and rank_zero else Console(quiet=True)
    progress = cfg.output.progress_bar and rank_zero
    data = prepare_data(cfg.data, report=rank_zero, prior=cfg.prior, progress=progress)
    for line in data.coverage if rank_zero else []:
        log.info(line)
        console.print(f"[bold]data[/] {escape(line)}")
    model = build_force_field(cfg, data, pretrained)
    objective = build_objective(cfg, model.cutoff)
    if rank_zero:
        check_stress_terms(objective, model, data)
    if cfg.model.init_from is not None:
        kept = "re-fitted to the training energies" if cfg.model.e0s_on_init == "refit" else "kept"
        console.print(
            f"[bold]fine-tuning[/] from {escape(cfg.model.init_from)}; E0s and shift {kept}"
        )
    console.print(describe_model(cfg, model, objective))
    train_loader, val_loader = build_loaders(cfg, data, model.cutoff)
    monitor = monitor_of(data)
    module = build_module(cfg, model, objective, monitor)
    callbacks = build_callbacks(cfg, data, run_dir, monitor)
    with quiet_lightning():
        trainer = build_trainer(cfg, run_dir, callbacks, next_log_version(run_dir))
    with quiet_lightning(), flush_denormal(cfg.training.flush_denormal):
        trainer.fit(module, train_loader, val_loader, ckpt_path=_path(resume_from))
    # earlier attempts of a resumed run included (the time saved with the last checkpoint)
    result = _result(cfg, trainer, callbacks, monitor, module.train_seconds())
    result.compile = module.compile_stats()
    result.physics_evaluation = module.evaluation_stats()
    if trainer.is_global_zero:
        finish_run(cfg, module, data, result, console, evaluate)
    return result


def _result(
    cfg: Config, trainer: Any, callbacks: Callbacks, monitor: str, train_time: float
) -> TrainResult:
    run_dir = Path(cfg.output.run_dir)
    best = callbacks.best
    last = run_dir / "checkpoints" / "last.ckpt"
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=Path(best.best_model_path) if best.best_model_path else None,
        last_checkpoint=last if last.exists() else None,
        best_model=None,
        final_model=run_dir / "final_model.pt",
        monitor=monitor,
        best_score=float(best.best_model_score) if best.best_model_score is not None else None,
        epochs=int(trainer.current_epoch),
        steps=int(trainer.global_step),
        train_time_s=train_time,
        stopped_by=stop_reason(trainer, cfg.training, callbacks.early_stop, callbacks.floor),
    )


def finish_run(
    cfg: Config,
    module: Any,
    data: PreparedData,
    result: TrainResult,
    console: Console,
    evaluate: bool,
) -> None:
    """Save the final and best models, score the best on the test set, write summary.json."""
    from piwsl.models import load_model, save_model

    run_dir = result.run_dir
    metadata = {"run_dir": str(run_dir), "config": cfg.to_dict(), "prior": module.model.prior_spec}
    save_model(module.eval_model, result.final_model, metadata)
    eval_source = result.final_model
    if result.best_checkpoint is not None and result.best_checkpoint.is_file():
        result.best_model = run_dir / "best_model.pt"
        save_model(load_model(result.best_checkpoint), result.best_model, metadata)
        eval_source = result.best_model
    console.print(
        f"[bold]trained[/] {result.epochs} epochs / {result.steps} steps in "
        f"{result.train_time_s:.1f} s; best {result.monitor} = {_fmt(result.best_score)}"
    )
    if result.compile is not None:
        c = result.compile
        console.print(
            f"[bold]compiled[/] {c['graphs']} graph(s) in {c['compile_time_s']:.1f} s, "
            f"{c['recompiles']} recompilation(s); {c['compiled_calls']} compiled and "
            f"{c['eager_calls']} eager model calls"
        )
    auto = result.physics_evaluation
    if auto is not None and auto["mode"] == "auto":
        console.print(f"[bold]physics evaluation[/] {escape(describe_choice(auto))}")
    if evaluate:
        evaluate_run(cfg, data, eval_source, result, console)
    write_summary(run_dir, result.summary())
    for label, path in (
        ("metrics", result.test_metrics_path),
        ("parity plot", result.test_plot_path),
        ("best model", result.best_model),
        ("checkpoint", result.best_checkpoint),
    ):
        if path is not None:
            console.print(f"[bold]{label}[/] {escape(str(path))}")


def evaluate_run(
    cfg: Config, data: PreparedData, source: Path, result: TrainResult, console: Console
) -> None:
    """Score the model file ``source`` on the test frames (or, without them, the validation
    frames with full labels); with a prior, on the total prediction."""
    from piwsl.evaluation import evaluate_model, metrics_table
    from piwsl.models import load_model

    val_full = data.val_reference if data.val_reference is not None else data.val
    frames, name = (data.test, "test") if data.test else (val_full, "validation")
    if not frames:
        return
    out_dir = result.run_dir / "evaluation"
    metrics = evaluate_model(
        load_model(source),
        frames,
        out_dir,
        batch_size=validation_batch_size(cfg),
        name=name,
        prior=prior_use(cfg),
    )
    result.test_metrics = metrics
    result.test_metrics_path = out_dir / f"{name}_metrics.json"
    plot = out_dir / f"{name}_parity.png"
    result.test_plot_path = plot if plot.exists() else None
    console.print(metrics_table(metrics, title=f"{name} set ({source.name})"))
