"""A test-set learning curve: the EMA model's test errors at chosen training steps.

``output.test_curve_steps: [500, 1000, 2000, …]`` makes :class:`TestCurve` evaluate the model that
validation sees (the EMA copy) on the run's test frames when training reaches each of those steps
and write one record per step to ``<run_dir>/test_curve.json`` (rewritten atomically, so a killed
run never leaves a torn file; a resumed run keeps the steps already recorded and skips them). The
curve is for reports — how the test error falls with training — and is never read by model
selection, which sees validation data only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from piwsl.data.frames import Frame
from piwsl.io.atomic import write_json

#: The metrics kept per point (units in the names).
KEPT = (
    "energy_mae_meV",
    "energy_rmse_meV",
    "energy_mae_meV_per_atom",
    "forces_mae_meV_per_A",
    "forces_rmse_meV_per_A",
)


def read_curve(path: Path) -> list[dict[str, Any]]:
    """The records of a ``test_curve.json`` (empty when there is none yet)."""
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")))


def write_curve(path: Path, records: list[dict[str, Any]]) -> None:
    """Write the records atomically (temporary file, fsync, rename)."""
    write_json(path, sorted(records, key=lambda r: r["step"]), indent=1)


class TestCurve(Callback):
    """Evaluate the EMA model on ``frames`` at the given global steps (see the module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        frames: Sequence[Frame],
        steps: Sequence[int],
        path: str | Path,
        batch_size: int = 32,
        prior: Any = None,
    ) -> None:
        self.frames = list(frames)
        self.path = Path(path)
        self.batch_size = batch_size
        self.prior = prior  # a piwsl.priors.PriorUse, or None
        done = {r["step"] for r in read_curve(self.path)}
        self.pending = sorted({int(s) for s in steps} - done)
        self._dataset = None

    def _evaluate(self, trainer, module, step: int) -> None:
        from piwsl.data.dataset import GraphDataset
        from piwsl.evaluation import compute_metrics, predict

        model = module.eval_model
        if self._dataset is None:
            dtype = next(model.parameters()).dtype
            self._dataset = GraphDataset(self.frames, cutoff=model.cutoff, skin=0.0, dtype=dtype)
        start = time.perf_counter()
        need_forces = any(f.has_forces for f in self.frames)
        with torch.no_grad():
            predictions = predict(
                model,
                self._dataset,
                batch_size=self.batch_size,
                compute_forces=need_forces,
                prior=self.prior,
            )
        metrics = compute_metrics(self.frames, predictions)
        record = {"step": step, "epoch": int(trainer.current_epoch)}
        record.update({k: metrics.get(k) for k in KEPT})
        record["seconds"] = round(time.perf_counter() - start, 2)
        write_curve(self.path, [*read_curve(self.path), record])

    def _maybe(self, trainer, module) -> None:
        step = int(trainer.global_step)
        while self.pending and self.pending[0] < step:  # passed while the run was not watching
            self.pending.pop(0)
        if self.pending and self.pending[0] == step:
            self.pending.pop(0)
            if trainer.is_global_zero and self.frames:
                self._evaluate(trainer, module, step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # global_step counts finished optimiser steps (and EMA updates): the model after `step`
        self._maybe(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._maybe(trainer, pl_module)
