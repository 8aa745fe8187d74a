"""The displaced copies of a run: displacement sampling state, the skin check, one evaluation.

:class:`Displacements` draws ``d1`` (A → C) and ``d2`` (A → B) for a batch
(:func:`piwsl.physics.sample_displacements`), checks once that the copies stay inside the
neighbour lists built at A, and evaluates the copies a set of terms needs with
:func:`piwsl.physics.evaluate_copies`. Its state — the step counter (advanced by every call on a
model in training mode) and, for the ``generator`` sampler, the generator — goes into every
checkpoint (``piwsl_physics``), so a resumed run draws the fields it would have drawn. With the
default ``frame`` sampler the fields depend only on (seed, step, frame_id): every DDP rank, and
one process on the union of their data, draw the same field for the same frame.

Cheaper steps: with ``fraction`` < 1 only a share of each batch's structures gets copies
(:mod:`piwsl.physics.subset`); with ``every_n_steps`` = k only every k-th training step evaluates
them (:meth:`Displacements.skips`), the others train on the terms that need no copy.

With ``evaluation = "auto"`` an :class:`~piwsl.physics.tuning.EvaluationTuner` picks the mode of
each evaluation: it times the candidate modes on the first training steps and keeps the fastest;
the training loop ends each timed step with :meth:`Displacements.step_done`. The choice is saved
with the sampling state, so a resumed run keeps it.
"""

from __future__ import annotations

import torch

from piwsl.data.batch import Batch
from piwsl.errors import ConfigError
from piwsl.objective.base import Needs
from piwsl.physics.config import PhysicsConfig
from piwsl.physics.displacements import check_skin, missing_pairs, sample_displacements
from piwsl.physics.subset import choose_structures
from piwsl.physics.terms import CopyOutputs, candidate_modes, evaluate_copies
from piwsl.physics.tuning import EvaluationTuner


class Displacements:
    """Sampling state and evaluation of the copies B, C (see the module docstring)."""

    def __init__(self, config: PhysicsConfig | None = None) -> None:
        self.config = config if config is not None else PhysicsConfig()
        self.step = 0
        self.verified = not self.config.verify_neighbors
        self.generator: torch.Generator | None = None
        if self.config.sampler == "generator":
            self.generator = torch.Generator().manual_seed(self.config.seed)
        self.tuner = EvaluationTuner() if self.config.evaluation == "auto" else None

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        state: dict = {"step": self.step, "seed": self.config.seed}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        if self.tuner is not None:
            state["evaluation"] = self.tuner.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])
        if self.tuner is not None and "evaluation" in state:
            self.tuner.load_state_dict(state["evaluation"])

    # ------------------------------------------------------------------------- evaluation mode
    def mode(self, model, batch: Batch, needs: Needs, timed: bool) -> str:
        """The evaluation mode of this call (``auto``: the tuner's pick)."""
        if self.tuner is None:
            return self.config.evaluation
        names = ["A", *sorted(needs.copies - {"A"})]
        direct = getattr(model, "direct_forces", False)
        candidates = candidate_modes(direct, names, tuple(sorted(needs.forces_at)))
        return self.tuner.pick(candidates, timed, batch.positions.device)

    def step_done(self) -> None:
        """End of a training step (after the optimiser): closes a step the tuner times."""
        if self.tuner is not None:
            self.tuner.stop()

    def evaluation_summary(self) -> dict:
        """The evaluation mode used, and for ``auto`` the choice and its timings."""
        if self.tuner is None:
            return {"mode": self.config.evaluation}
        return self.tuner.summary()

    # ------------------------------------------------------------------------------ skin rule
    def check_skin(self, skin: float, cutoff: float | None = None) -> None:
        """Raise ConfigError if a data skin (Å) is too small for the displacements."""
        check_skin(skin, self.config.perturbation_scale, cutoff)

    def verify(self, model, batch: Batch, d1: torch.Tensor, d2: torch.Tensor) -> None:
        """Once per run: check that B and C stay covered by A's neighbour list (the skin)."""
        cutoff = getattr(model, "cutoff", None)
        if cutoff is None and hasattr(model, "module"):  # DistributedDataParallel
            cutoff = getattr(model.module, "cutoff", None)
        if cutoff is None:
            return
        pos = batch.positions.detach()
        for name, d in (("C", d1), ("B", d2)):
            missing = missing_pairs(batch, pos + d, float(cutoff))
            if missing:
                raise ConfigError(
                    f"{missing} atom pairs come within the model cutoff {cutoff} Å in the "
                    f"displaced copy {name} but are not in the neighbour list built at A: the "
                    f"data skin is too small for perturbation_scale δ = "
                    f"{self.config.perturbation_scale} Å. Use a skin of at least 2√3·δ = "
                    f"{self.config.required_skin:.4f} Å."
                )
        self.verified = True

    # -------------------------------------------------------------------------------- sampling
    def sample(self, batch: Batch, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(d1, d2) for ``batch`` at ``step`` (default: the current step), Å."""
        c = self.config
        return sample_displacements(
            batch,
            c.perturbation_scale,
            seed=c.seed,
            step=self.step if step is None else step,
            local_fraction=c.local_fraction,
            generator=self.generator,
        )

    def skips(self, model, step: int | None, displacements: object) -> bool:
        """``every_n_steps``: whether this training step leaves the copies out. Only a step of a
        model in training mode without a pinned step or field can; it advances the counter."""
        k = self.config.every_n_steps
        if k == 1 or step is not None or displacements is not None:
            return False
        if not getattr(model, "training", False) or self.step % k == 0:
            return False
        self.step += 1
        return True

    def evaluate(
        self,
        model,
        batch: Batch,
        needs: Needs,
        step: int | None = None,
        displacements: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[CopyOutputs, Batch]:
        """Draw the fields (or take ``displacements``), advance the step counter in training
        mode, and evaluate the copies and forces ``needs`` names.

        Returns the outputs and the structures the displaced copies belong to: ``batch``, or with
        ``fraction`` < 1 the chosen part of it (the outputs then hold those structures, the whole
        batch's output at A is ``CopyOutputs.output``; given ``displacements`` are theirs).
        """
        c = self.config
        at = self.step if step is None else step
        chosen = choose_structures(batch, c.fraction, c.seed, at) if c.fraction < 1 else None
        sub = batch if chosen is None else batch.select(chosen)
        d1, d2 = displacements if displacements is not None else self.sample(sub, at)
        training = step is None and displacements is None and getattr(model, "training", False)
        if training:
            self.step += 1
        if not self.verified:
            self.verify(model, sub, d1, d2)
        out = evaluate_copies(
            model,
            batch,
            d1,
            d2,
            copies=tuple(sorted(needs.copies)),
            forces_at=tuple(sorted(needs.forces_at)),
            mode=self.mode(model, batch, needs, timed=training),
            chosen=chosen,
            sub=sub,
            stress=needs.stress,
        )
        return out, sub
