"""Training plumbing: atomic checkpoint writes, a quieter progress bar, a learning-rate floor.

Lightning's own checkpoint writer goes through an fsspec transaction; piwsl writes local
checkpoints itself — to a temporary file in the same folder, fsync, then ``os.replace`` — so a
run killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, EarlyStopping, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from piwsl.models.io import atomic_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` is temp-file + fsync + rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "://" in str(path):  # remote file systems: keep Lightning's fsspec transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, path)


class PiwslProgressBar(TQDMProgressBar):
    """The TQDM bar without the version number, showing the validation errors (meV, meV/Å)."""

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


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
