"""The exponential moving average of the weights, as a subclass of the training module.

:class:`EmaModule` keeps a copy of the model whose weights follow
θ_ema ← d·θ_ema + (1 − d)·θ after every optimiser step that was taken (skipped steps do not
count), with the warm-up d = min(decay, (1 + n)/(10 + n)) after n updates. Validation, the saved
models and the checkpoints' ``piwsl_model`` use the EMA copy. Its weights and the update counter
``ema_updates`` are part of the module's state, so a resumed run continues the same average.
"""

from __future__ import annotations

from typing import Any

import torch

from piwsl.models.forces import ForceField
from piwsl.training.module import PiwslModule


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


class EmaModule(PiwslModule):
    """:class:`PiwslModule` with an EMA copy of the model (``training.ema_decay``)."""

    def __init__(self, model: ForceField, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.ema_model = rebuilt_copy(model)
        for p in self.ema_model.parameters():
            p.requires_grad_(False)
        self.ema = ExponentialMovingAverage(float(self.train_cfg.ema_decay))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._ema_count: int | None = None  # host copy of ema_updates (no device read per step)

    @property
    def eval_model(self) -> ForceField:
        return self.ema_model

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._skipped_step:  # no optimiser update this step: nothing to average
            return
        if self._ema_count is None:  # once per fit: the count read back from the device
            self._ema_count = int(self.ema_updates)
        self.ema.update(self.ema_model, self.model, self._ema_count)
        self._ema_count += 1
        self.ema_updates += 1

    def on_train_start(self) -> None:
        self._ema_count = None  # re-read after a checkpoint was restored
        super().on_train_start()
