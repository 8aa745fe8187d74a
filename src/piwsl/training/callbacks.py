"""Training plumbing: atomic checkpoint writes, the progress bars, a learning-rate floor.

On a terminal the progress bar is tqdm's (:class:`PiwslProgressBar`); when the output goes to a
file or a pipe, :class:`PlainProgressBar` writes a plain line every
:data:`~piwsl.terminal.PLAIN_INTERVAL_S` seconds instead of a carriage-return bar
(:func:`training_progress_bar` picks one).

Lightning's own checkpoint writer goes through an fsspec transaction; piwsl writes local
checkpoints itself — to a temporary file in the same folder, fsync, then ``os.replace`` — so a
run killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
A run folder may move between attempts (copied from a cluster or a GPU machine, renamed):
:class:`RunCheckpoint` reads the paths the checkpoint recorded under the old folder in the new one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any

from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    ProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.plugins.io import TorchCheckpointIO

from piwsl.models.io import atomic_save
from piwsl.terminal import PLAIN_INTERVAL_S, is_terminal


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` is temp-file + fsync + rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "://" in str(path):  # remote file systems: keep Lightning's fsspec transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, path)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that resumes in a run folder that moved: Lightning keeps the best
    score, the best checkpoints and the last path only when the checkpoint folder is where it was
    (else a resumed run forgets its best score and points at a file on another machine). In piwsl
    the folder is always ``<run>/checkpoints``, so another folder means the run moved, and every
    path recorded under the old folder is read under the new one."""

    @property
    def state_key(self) -> str:
        """Lightning's ``ModelCheckpoint`` key, so that checkpoints written with it resume."""
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__) :]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            state_dict = relocated(state_dict, str(old), str(new))
        super().load_state_dict(state_dict)


def relocated(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state with the paths under ``old`` moved under ``new``."""

    def move(path: Any) -> Any:
        if isinstance(path, str) and (path == old or path.startswith(old.rstrip("/") + "/")):
            return new + path[len(old) :]
        return path

    out = {**state, "dirpath": new}
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        out[key] = move(state.get(key))
    out["best_k_models"] = {move(k): v for k, v in (state.get("best_k_models") or {}).items()}
    return out


class PiwslProgressBar(TQDMProgressBar):
    """The TQDM bar without the version number, showing the validation errors (meV, meV/Å)."""

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def _metric_text(items: dict[str, Any]) -> str:
    parts = []
    for key, value in items.items():
        if key == "v_num":
            continue
        number = float(value) if isinstance(value, (int, float)) else None
        parts.append(f"{key} {number:.4g}" if number is not None else f"{key} {value}")
    return ", ".join(parts)


class PlainProgressBar(ProgressBar):
    """Plain progress lines for logs: at most one every ``interval_s`` seconds during training
    (epoch, step, losses), after the first epoch and at the end (with the validation errors)."""

    def __init__(self, interval_s: float | None = None, stream: IO[str] | None = None):
        super().__init__()
        self.interval_s = PLAIN_INTERVAL_S if interval_s is None else interval_s
        self.stream = stream
        self._enabled = True
        self._start = self._last = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, file=self.stream if self.stream is not None else sys.stderr, flush=True)
            self._last = time.perf_counter()

    def _where(self, trainer) -> str:
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        steps = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        elapsed = time.perf_counter() - self._start
        return (
            f"epoch {trainer.current_epoch + 1}{epochs}, step {trainer.global_step}{steps}, "
            f"{elapsed:.0f} s"
        )

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.perf_counter() - self._last >= self.interval_s:
            metrics = _metric_text(self.get_metrics(trainer, pl_module))
            self._print(f"training: {self._where(trainer)}" + (f": {metrics}" if metrics else ""))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        first = trainer.current_epoch == 0
        if first or time.perf_counter() - self._last >= self.interval_s:
            self._print(
                f"training: {self._where(trainer)} (end of epoch): "
                f"{_metric_text(self.get_metrics(trainer, pl_module))}"
            )

    def on_train_end(self, trainer, pl_module) -> None:
        self._print(
            f"training done: {trainer.current_epoch} epochs, {trainer.global_step} steps, "
            f"{time.perf_counter() - self._start:.0f} s"
        )


def training_progress_bar() -> ProgressBar:
    """tqdm's bar on a terminal, plain lines in a log (output redirected or piped)."""
    return PiwslProgressBar() if is_terminal() else PlainProgressBar()


class LearningRateFloor(Callback):
    """Stop training once the schedule has cut the learning rate to ``stop_lr`` or below.

    Checked at the start of every epoch (after the plateau schedule stepped on the last
    validation), so the run ends without training another epoch; ``triggered`` says it did.
    """

    def __init__(self, stop_lr: float) -> None:
        self.stop_lr = float(stop_lr)
        self.triggered = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        lr = max(group["lr"] for group in trainer.optimizers[0].param_groups)
        if lr <= self.stop_lr * (1 + 1e-9):
            self.triggered = True
            trainer.should_stop = True


class ConfiguredEarlyStopping(EarlyStopping):
    """Lightning's early stopping, checked after validations only (on a train-epoch end a
    resumed run has no score yet), whose patience stays the configured one when a checkpoint is
    restored (Lightning would restore the saved patience; its counters and best score are kept)."""

    def __init__(self, monitor: str, patience: int) -> None:
        super().__init__(
            monitor=monitor, mode="min", patience=patience, check_on_train_epoch_end=False
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        configured = self.patience
        super().load_state_dict(state_dict)
        self.patience = configured
