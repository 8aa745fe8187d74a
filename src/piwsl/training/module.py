"""The Lightning module: a force field, its EMA copy, the objective, optimiser and schedule.

Training steps evaluate the :class:`~piwsl.objective.Objective` on the live model (with
``training.compile``, through :class:`~piwsl.models.compiled.CompiledForceField`) and log every
term raw and weighted (``train_<term>_raw`` / ``train_<term>_weighted``). Validation runs on the EMA
copy (forces by autograd inside ``torch.enable_grad``, ``create_graph=False``) and logs MAE/RMSE
with units in the names: ``val_energy_mae_meV``, ``val_energy_mae_meV_per_atom``,
``val_forces_mae_meV_per_A``, … Every checkpoint carries a ``piwsl_model`` entry (the EMA model as
:func:`piwsl.models.io.model_state`), so :func:`piwsl.models.load_model` reads it directly.

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
from typing import Any

import lightning
import torch

from piwsl.config import LossConfig, TrainingConfig
from piwsl.data.batch import Batch
from piwsl.errors import NonFiniteError
from piwsl.models.base import trusted_species
from piwsl.models.forces import ForceField
from piwsl.models.io import model_state
from piwsl.objective import Objective

log = logging.getLogger(__name__)

#: Validation sums accumulated per epoch (reduced over devices before division).
_SUMS = (
    "e_abs",
    "e_sq",
    "epa_abs",
    "epa_sq",
    "n_e",
    "f_abs",
    "f_sq",
    "n_f",
    "loss_e",
    "loss_f",
    "n_batches",
)


def _world_size() -> int:
    """Processes in the initialised torch.distributed group (1 without one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rebuilt_copy(model: ForceField) -> ForceField:
    """A copy of ``model`` built anew from its hyper-parameters, with its weights and prior.

    Not ``copy.deepcopy``: deep copies of e3nn's compiled modules (MACE) gain buffers that a
    freshly built model lacks, so the EMA weights saved from them would not load again.
    """
    from piwsl.models.io import model_from_state, model_state

    return model_from_state(model_state(model), source="the model being trained")


class ExponentialMovingAverage:
    """θ_ema ← d·θ_ema + (1 − d)·θ, with d = min(decay, (1 + n)/(10 + n)) after n updates.

    Buffers (E0s, shift, scale) are copied, not averaged.
    """

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)

    @torch.no_grad()
    def update(self, ema: torch.nn.Module, model: torch.nn.Module, n_updates: int) -> None:
        d = min(self.decay, (1.0 + n_updates) / (10.0 + n_updates))
        # matched by name: a deep copy need not list shared tensors in the same order (e3nn
        # modules in MACE rebuild some buffers when copied)
        ema_params = dict(ema.named_parameters())
        pairs = [(ema_params[name], p.detach()) for name, p in model.named_parameters()]
        if pairs:  # one fused update (few kernel launches on a GPU)
            torch._foreach_lerp_([a for a, _ in pairs], [b for _, b in pairs], 1.0 - d)
        ema_buffers = dict(ema.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)


class PiwslModule(lightning.LightningModule):
    """LightningModule over a :class:`ForceField` (see the module docstring)."""

    def __init__(
        self,
        model: ForceField,
        loss: LossConfig,
        training: TrainingConfig,
        physics: Any = None,
        monitor: str = "val_forces_mae_meV_per_A",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_cfg = loss
        self.train_cfg = training
        self.objective = Objective(
            loss.energy_weight,
            loss.force_weight,
            physics=physics,
            energy_unit=loss.energy_unit,
            per_atom_energy=loss.per_atom_energy,
        )
        self.monitor = monitor
        self.config_dict = config or {}
        self.use_ema = bool(training.ema_decay)
        if self.use_ema:
            self.ema_model = rebuilt_copy(model)
            for p in self.ema_model.parameters():
                p.requires_grad_(False)
            self.ema = ExponentialMovingAverage(float(training.ema_decay))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._ema_count: int | None = None  # host copy of ema_updates (no device read per step)
        self._compiled = None  # training.compile: a CompiledForceField over self.model
        if training.compile:
            from piwsl.models.compiled import CompiledForceField

            backend = "inductor" if training.compile is True else training.compile
            self._compiled = CompiledForceField(model, backend=backend)
        self._nonfinite_in_row = 0
        self._skipped_step = False
        self._cosine_total = 1
        self._val_sums: dict[str, torch.Tensor] = {}

    # ---- the model used for validation and saving ------------------------------------------
    @property
    def eval_model(self) -> ForceField:
        return self.ema_model if self.use_ema else self.model

    @property
    def training_model(self) -> Any:
        """What the training steps evaluate: the model, or its compiled wrapper."""
        return self._compiled if self._compiled is not None else self.model

    def compile_stats(self) -> dict[str, Any] | None:
        """What compiled training did (graphs, compilations, time, eager calls), or None."""
        return self._compiled.stats.as_dict() if self._compiled is not None else None

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
        self.log(
            "train_loss", total.detach(), on_step=False, on_epoch=True, batch_size=n, prog_bar=False
        )
        for name, value in result.raw.items():
            self.log(
                f"train_{name}_raw", value.detach(), on_step=False, on_epoch=True, batch_size=n
            )
        for name, value in result.weighted.items():
            self.log(
                f"train_{name}_weighted", value.detach(), on_step=False, on_epoch=True, batch_size=n
            )
        return total

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

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self._skipped_step:  # no optimiser update this step: nothing to average
            return
        if self.use_ema:
            if self._ema_count is None:  # once per fit: the count read back from the device
                self._ema_count = int(self.ema_updates)
            self.ema.update(self.ema_model, self.model, self._ema_count)
            self._ema_count += 1
            self.ema_updates += 1

    def on_train_epoch_start(self) -> None:
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True)

    # ---- validation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums = {
            k: torch.zeros((), dtype=torch.float64, device=self.device) for k in _SUMS
        }

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        model = self.eval_model
        need_forces = bool(batch.forces_mask.any())
        out = model(batch, compute_forces=need_forces, create_graph=False)
        s = self._val_sums
        em = batch.energy_mask
        if bool(em.any()):
            err = (out["energy"][em] - batch.energy[em]).double()
            per_atom = err / batch.n_atoms[em]
            s["e_abs"] += err.abs().sum()
            s["e_sq"] += (err**2).sum()
            s["epa_abs"] += per_atom.abs().sum()
            s["epa_sq"] += (per_atom**2).sum()
            s["n_e"] += em.sum()
            s["loss_e"] += self.objective.energy_loss(out, batch).double() * em.sum()
        if need_forces:
            am = batch.atom_forces_mask
            err = (out["forces"][am] - batch.forces[am]).double()
            s["f_abs"] += err.abs().sum()
            s["f_sq"] += (err**2).sum()
            s["n_f"] += err.numel()
            s["loss_f"] += self.objective.forces_loss(out, batch).double() * err.numel()
        s["n_batches"] += 1

    def on_validation_epoch_end(self) -> None:
        s = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._val_sums.items()}
        metrics: dict[str, float] = {}
        n_e, n_f = float(s["n_e"]), float(s["n_f"])
        loss = 0.0
        if n_e > 0:
            metrics["val_energy_mae_meV"] = 1e3 * float(s["e_abs"]) / n_e
            metrics["val_energy_rmse_meV"] = 1e3 * (float(s["e_sq"]) / n_e) ** 0.5
            metrics["val_energy_mae_meV_per_atom"] = 1e3 * float(s["epa_abs"]) / n_e
            metrics["val_energy_rmse_meV_per_atom"] = 1e3 * (float(s["epa_sq"]) / n_e) ** 0.5
            loss += self.loss_cfg.energy_weight * float(s["loss_e"]) / n_e
        if n_f > 0:
            metrics["val_forces_mae_meV_per_A"] = 1e3 * float(s["f_abs"]) / n_f
            metrics["val_forces_rmse_meV_per_A"] = 1e3 * (float(s["f_sq"]) / n_f) ** 0.5
            loss += self.loss_cfg.force_weight * float(s["loss_f"]) / n_f
        metrics["val_loss"] = loss
        show = {"val_energy_mae_meV", "val_forces_mae_meV_per_A"}
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key in show, sync_dist=False)

    # ---- optimiser and schedule ---------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.train_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        # the fused kernel: one call for all parameters instead of ~10 small ops per tensor (on
        # one CPU thread the per-tensor loop took as long as a small model's forward pass)
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        optimizer = cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
        if cfg.scheduler == "none":
            return optimizer
        if cfg.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
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

    def on_train_start(self) -> None:
        self._ema_count = None  # re-read after a checkpoint was restored
        if self.train_cfg.scheduler == "cosine":
            self._cosine_total = self._total_steps()

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
        physics = self.objective.physics
        if physics is not None and hasattr(physics, "state_dict"):
            checkpoint["piwsl_physics"] = physics.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        physics = self.objective.physics
        state = checkpoint.get("piwsl_physics")
        if physics is not None and state is not None and hasattr(physics, "load_state_dict"):
            physics.load_state_dict(state)
