"""The ``zbl`` prior: ZBL screened nuclear repulsion, smoothly cut off (an analytic prior).

The potential itself is :class:`piwsl.models.zbl.ZBLRepulsion`, a differentiable, batched torch
module. A run with ``prior.name: zbl`` puts it *inside* the force field
(:attr:`piwsl.models.ForceField.priors`): the model predicts the total, learned part + ZBL, its
forces come from autograd, and training fits the total against the full labels (the E0s and the
normalisation are fitted to the residuals ``E_ref − E_ZBL``, as for any prior). So MD, the ASE
calculator and evaluation run it batched on the model's device, with no per-frame call and no
cache. :class:`ZBLPrior` is its entry in the prior registry: spec and settings (``inner``,
``outer`` × covalent-radius sum), and :meth:`ZBLPrior.compute_one` for a single frame (the same
torch module, float64).

The numbers depend only on piwsl's implementation: its ``program_version`` is
:data:`ZBL_VERSION`, raised whenever they change.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from piwsl.data.frames import Frame
from piwsl.errors import ConfigError
from piwsl.priors.base import PRIORS, Prior

#: Version of this implementation (recorded by models trained on top of it).
ZBL_VERSION = "1"


class ZBLPrior(Prior):
    """Short-range ZBL repulsion (see the module docstring); part of the model when trained on."""

    name = "zbl"
    method = "ZBL"
    program = "piwsl"
    in_model = True
    OPTIONS = ("inner", "outer")

    def __init__(
        self, charge: int = 0, multiplicity: int = 1, settings: dict[str, Any] | None = None
    ) -> None:
        super().__init__(charge, multiplicity)
        if charge != 0 or multiplicity != 1:
            raise ConfigError(
                "prior 'zbl' is a bare nuclear repulsion: it has no charge or spin (leave "
                "prior.charge=0, prior.multiplicity=1)"
            )
        opts = dict(settings or {})
        unknown = sorted(set(opts) - set(self.OPTIONS))
        if unknown:
            from piwsl.registry import suggest

            raise ConfigError(
                f"prior.settings.{unknown[0]}: unknown option of prior 'zbl'"
                f"{suggest(unknown[0], self.OPTIONS)}"
            )
        try:
            self.inner = float(opts.get("inner", 0.5))
            self.outer = float(opts.get("outer", 0.8))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"prior.settings of 'zbl' must be numbers: {err}") from None
        self.module()  # checks inner < outer

    def program_version(self) -> str:
        return ZBL_VERSION

    def settings(self) -> dict[str, Any]:
        return {"inner": self.inner, "outer": self.outer}

    def module(self):
        """The torch module a force field carries (:class:`~piwsl.models.zbl.ZBLRepulsion`)."""
        from piwsl.models.zbl import ZBLRepulsion

        return ZBLRepulsion(self.inner, self.outer)

    def compute_one(self, frame: Frame) -> tuple[float, np.ndarray]:
        import torch

        from piwsl.data.batch import frames_to_batch
        from piwsl.models.zbl import zbl_range

        if frame.n_atoms < 2 and not frame.pbc.any():
            return 0.0, np.zeros((frame.n_atoms, 3))
        cutoff = zbl_range(np.unique(frame.numbers).tolist(), self.outer)
        batch = frames_to_batch([frame], cutoff, dtype=torch.float64)
        positions = batch.positions.requires_grad_(True)
        energy = self.module()(batch.with_positions(positions))
        if not energy.requires_grad:
            return float(energy.sum()), np.zeros((frame.n_atoms, 3))
        (grad,) = torch.autograd.grad(energy.sum(), positions)
        return float(energy.detach().sum()), -grad.numpy()


PRIORS.add("zbl", ZBLPrior)
