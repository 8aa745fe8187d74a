"""The Lightning module: a force field, the objective, the NaN guard, optimiser and schedule.

Training steps evaluate the :class:`~piwsl.objective.Objective` on the live model (with
``training.compile``, through :class:`~piwsl.models.compiled.CompiledForceField`) and log every
term raw and weighted (``train_<term>_raw`` / ``train_<term>_weighted``). Validation runs on
:attr:`PiwslModule.eval_model` (the model itself; the EMA copy with
:class:`~piwsl.training.ema.EmaModule`), forces by autograd inside ``torch.enable_grad`` with
``create_graph=False``, through the one metrics accumulator
(:class:`~piwsl.evaluation.ErrorMetrics`, summed over DDP ranks): ``val_energy_mae_meV``,
``val_energy_mae_meV_per_atom``, ``val_forces_mae_meV_per_A``, … and ``val_loss``, the weighted
supervised terms averaged over the whole validation set. Every checkpoint carries a
``piwsl_model`` entry (the evaluation model as :func:`piwsl.models.io.model_state`), so
:func:`piwsl.models.load_model` reads it directly.

A non-finite loss skips the step with a warning; so does a finite loss whose gradient is
non-finite (checked in :meth:`PiwslModule.on_before_optimizer_step`, after the DDP all-reduce, so
every rank skips the same step: the gradients are set to ``None`` and the optimiser leaves the
weights, and the EMA copy is not updated). Under DDP a rank with a non-finite loss still runs
backward, on a loss whose gradient is NaN for every parameter, so that all ranks skip the step
together instead of hanging in the all-reduce. ``max_nonfinite_steps`` skipped steps in a row raise
:class:`~piwsl.errors.NonFiniteError`. A checkpoint is never written with non-finite weights
(:meth:`PiwslModule.on_save_checkpoint` raises instead), so the checkpoints on disk stay the last
good ones.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning
import torch

from piwsl.config import TrainingConfig
from piwsl.data.batch import Batch
from piwsl.errors import NonFiniteError
from piwsl.evaluation.metrics import ErrorMetrics
from piwsl.models.base import trusted_species
from piwsl.models.forces import ForceField
from piwsl.models.io import model_state
from piwsl.objective import Objective
from piwsl.physics.terms import CopyOutputs

log = logging.getLogger(__name__)


def _world_size() -> int:
    """Processes in the initialised torch.distributed group (1 without one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class PiwslModule(lightning.LightningModule):
    """LightningModule over a :class:`ForceField` (see the module docstring)."""

    def __init__(
        self,
        model: ForceField,
        objective: Objective,
        training: TrainingConfig,
        monitor: str = "val_forces_mae_meV_per_A",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.train_cfg = training
        self.objective = objective
        self.monitor = monitor
        self.config_dict = config or {}
        self._compiled = None  # training.compile: a CompiledForceField over self.model
        if training.compile:
            from piwsl.models.compiled import CompiledForceField

            backend = "inductor" if training.compile is True else training.compile
            self._compiled = CompiledForceField(model, backend=backend)
        self._nonfinite_in_row = 0
        self._skipped_step = False
        self._cosine_total = 1
        self._val = ErrorMetrics()

    # ---- the model used for validation and saving ------------------------------------------
    @property
    def eval_model(self) -> ForceField:
        """The model validation, the saved models and the checkpoints use."""
        return self.model

    @property
    def training_model(self) -> Any:
        """What the training steps evaluate: the model, or its compiled wrapper."""
        return self._compiled if self._compiled is not None else self.model

    def compile_stats(self) -> dict[str, Any] | None:
        """What compiled training did (graphs, compilations, time, eager calls), or None."""
        return self._compiled.stats.as_dict() if self._compiled is not None else None

    def evaluation_stats(self) -> dict[str, Any] | None:
        """How the displaced copies were evaluated (``auto``: choice and timings), or None."""
        return self.objective.evaluation_summary()

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int):
        return batch.to(device=device, non_blocking=True)

    # ---- training ---------------------------------------------------------------------------
    def jitter(self, batch: Batch) -> Batch:
        """Noisy-node augmentation: positions moved by U[−x, x] per component, labels unchanged."""
        x = self.train_cfg.position_noise
        if not x > 0:
            return batch
        pos = batch.positions
        noise = (2.0 * torch.rand(pos.shape, dtype=pos.dtype, device=pos.device) - 1.0) * x
        noise = noise * (~batch.fixed).to(pos.dtype).unsqueeze(1)
        return batch.with_positions(pos + noise)

    def training_step(self, batch: Batch, batch_idx: int):
        batch = self.jitter(batch)
        with trusted_species():  # the training data's elements were checked when prepared
            result = self.objective(self.training_model, batch)
        total = result.total
        n = batch.n_structures
        self._skipped_step = False
        if not bool(torch.isfinite(total)):
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in result.raw.items())
            if _world_size() > 1:
                # Under DDP every rank must run backward (the gradient all-reduce would hang):
                # a NaN gradient on every parameter makes all ranks skip this step together in
                # on_before_optimizer_step, which also counts it.
                log.warning(
                    "non-finite loss on rank %d at epoch %d, step %d (%s); all ranks skip it",
                    torch.distributed.get_rank(),
                    self.current_epoch,
                    self.global_step,
                    terms,
                )
                return self._poisoned_loss()
            self._skipped_step = True
            self._count_nonfinite("loss", terms)
            return None
        if not total.requires_grad:  # a batch of label-free frames and no physics term
            if _world_size() > 1:  # DDP: contribute zero gradients instead of skipping backward
                return sum((0.0 * p.sum() for p in self._trainable()), total.new_zeros(()))
            self._skipped_step = True
            return None
        self._log_epoch_mean("train_loss", total, n)
        for name, value in result.raw.items():
            self._log_epoch_mean(f"train_{name}_raw", value, n)
        for name, value in result.weighted.items():
            self._log_epoch_mean(f"train_{name}_weighted", value, n)
        return total

    def _log_epoch_mean(self, key: str, value: torch.Tensor, n: int) -> None:
        """Log a per-batch training value as its epoch mean over all batches of all ranks (under
        DDP the ranks' sums are reduced once, at the epoch's end)."""
        self.log(key, value.detach(), on_step=False, on_epoch=True, batch_size=n, sync_dist=True)

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        self.objective.step_done()  # physics.evaluation=auto times whole steps

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _poisoned_loss(self) -> torch.Tensor:
        """A NaN loss whose gradient is NaN for every trainable parameter."""
        return sum(p.reshape(-1)[0] * float("nan") for p in self._trainable())

    def _count_nonfinite(self, what: str, detail: str) -> None:
        """Warn about a skipped step; raise NonFiniteError after max_nonfinite_steps in a row."""
        self._nonfinite_in_row += 1
        log.warning(
            "non-finite %s at epoch %d, step %d (%s); step skipped (%d in a row)",
            what,
            self.current_epoch,
            self.global_step,
            detail,
            self._nonfinite_in_row,
        )
        if self._nonfinite_in_row >= self.train_cfg.max_nonfinite_steps:
            raise NonFiniteError(
                f"the training {what} was non-finite for {self._nonfinite_in_row} steps in a row "
                f"(epoch {self.current_epoch}, step {self.global_step}; {detail}). Lower "
                "training.lr, set training.gradient_clip, use training.dtype=float64, or "
                "check the data for absurd labels; the checkpoints on disk are the last good ones"
            )

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the update when a gradient is NaN/inf (the loss was finite)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:  # no backward this step (loss skipped or label-free batch)
            return
        if bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all()):
            self._nonfinite_in_row = 0
            return
        names = [n for n, p in self.model.named_parameters() if p.grad is not None]
        bad = [
            n for n, p in zip(names, params, strict=True) if not bool(torch.isfinite(p.grad).all())
        ]
        for p in params:
            p.grad = None  # torch optimisers leave parameters without a gradient untouched
        self._skipped_step = True
        more = f" … {len(bad) - 3} more" if len(bad) > 3 else ""
        self._count_nonfinite("gradient", f"parameters {', '.join(bad[:3])}{more}")

    def on_train_epoch_start(self) -> None:
        lr = self.optimizers().param_groups[0]["lr"]  # the same on every rank
        self.log("lr", lr, on_step=False, on_epoch=True, sync_dist=True)

    # ---- validation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = ErrorMetrics(device=self.device)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        need_forces = bool(batch.forces_mask.any())
        need_stress = batch.has_stress and not getattr(self.eval_model, "direct_forces", False)
        kwargs = {"compute_stress": True} if need_stress else {}
        out = self.eval_model(batch, compute_forces=need_forces, create_graph=False, **kwargs)
        self._val.update(out["energy"], out.get("forces"), batch, out.get("stress"))
        copies = CopyOutputs.of_a(out)
        for term in self.objective.terms:  # the supervised terms, averaged over the whole set
            count = None if term.needs().displaced else term.count(batch)
            if count is not None and bool(count > 0):
                self._val.add(f"loss_{term.name}", term(copies, batch).double() * count)
                self._val.add(f"count_{term.name}", count)

    def on_validation_epoch_end(self) -> None:
        self._val.reduce(lambda value, op: self.trainer.strategy.reduce(value, reduce_op=op))
        metrics = self._val.metrics(prefix="val_")
        loss, sums = 0.0, self._val.sums
        for term in self.objective.terms:
            count = float(sums.get(f"count_{term.name}", 0.0))
            if count > 0:
                loss += term.weight * float(sums[f"loss_{term.name}"]) / count
        metrics["val_loss"] = loss
        show = {"val_energy_mae_meV", "val_forces_mae_meV_per_A"}
        # already global (the sums were reduced above); the sync only makes every rank log the
        # one number explicitly, which is also what keeps Lightning from asking for it
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key in show, sync_dist=True)

    # ---- optimiser and schedule ---------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.train_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        # the fused kernel: one call for all parameters instead of ~10 small ops per tensor (on
        # one CPU thread the per-tensor loop took as long as a small model's forward pass)
        fused = cfg.fused_optimizer and all(p.device.type in ("cpu", "cuda") for p in params)
        optimizer = cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
        if cfg.scheduler == "none":
            return optimizer
        if cfg.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
                threshold=cfg.plateau_threshold,
                min_lr=cfg.min_lr,
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {
                    "scheduler": scheduler,
                    "monitor": self.monitor,
                    "interval": "epoch",
                    # stepped after each validation (the monitor is fresh only then)
                    "frequency": cfg.val_every_n_epochs,
                    "strict": True,
                },
            }
        self._cosine_total = self._total_steps()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._cosine_factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def _total_steps(self) -> int:
        total = float(self.trainer.estimated_stepping_batches)
        return max(1, int(total)) if math.isfinite(total) else 1

    def _cosine_factor(self, step: int) -> float:
        """Closed-form cosine decay from lr to min_lr over the run's total steps.

        Stateless apart from the step counter, so a resumed run with a new max_epochs follows the
        new horizon (the total is re-read at the start of every fit).
        """
        cfg = self.train_cfg
        floor = min(1.0, cfg.min_lr / cfg.lr)
        progress = min(1.0, step / max(1, self._cosine_total))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    def train_seconds(self) -> float:
        """Training time of this run so far (s), earlier attempts of a resumed run included."""
        started = getattr(self, "_fit_started", None)
        now = 0.0 if started is None else time.perf_counter() - started
        return getattr(self, "earlier_train_s", 0.0) + now

    def on_train_start(self) -> None:
        if self.train_cfg.scheduler == "cosine":
            self._cosine_total = self._total_steps()
        self._apply_plateau_settings()

    def _apply_plateau_settings(self) -> None:
        """The configured plateau rule, also on a resumed run: a checkpoint restores the
        scheduler's saved patience/factor/threshold/min_lr, and changed training settings must
        take effect (its counters and best score stay as saved)."""
        cfg = self.train_cfg
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.patience = cfg.plateau_patience
                scheduler.factor = cfg.plateau_factor
                scheduler.threshold = cfg.plateau_threshold
                scheduler.default_min_lr = cfg.min_lr
                scheduler.min_lrs = [cfg.min_lr] * len(scheduler.min_lrs)

    # ---- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name, net in (("model", self.model), ("EMA model", self.eval_model)):
            bad = [n for n, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
            if bad:
                raise NonFiniteError(
                    f"the {name} has non-finite weights ({', '.join(bad[:3])}) at epoch "
                    f"{self.current_epoch}, step {self.global_step}; no checkpoint was written, "
                    "the ones on disk are the last good ones. Lower training.lr or set "
                    "training.gradient_clip"
                )
        checkpoint["piwsl_model"] = model_state(self.eval_model)
        checkpoint["piwsl_config"] = self.config_dict
        checkpoint["piwsl_train_time_s"] = self.train_seconds()
        if self.objective.displacements is not None:
            checkpoint["piwsl_physics"] = self.objective.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not hasattr(self, "ema_updates"):  # a run without EMA: checkpoints before issue 17
            checkpoint.get("state_dict", {}).pop("ema_updates", None)  # held the counter anyway
        state = checkpoint.get("piwsl_physics")
        if state is not None:
            self.objective.load_state_dict(state)
        self.earlier_train_s = float(checkpoint.get("piwsl_train_time_s", 0.0))
