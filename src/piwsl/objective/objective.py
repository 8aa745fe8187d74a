"""The objective: the weighted sum of the run's terms, each copy evaluated once.

``Objective(terms)(model, batch)`` takes the union of what the active terms need (copies A, B, C
and where forces are needed, :class:`~piwsl.objective.Needs`), evaluates the model once — a plain
pass at A when no term needs a displaced copy, else the copies through
:class:`~piwsl.objective.Displacements` — and returns an :class:`ObjectiveResult`: the total, the
model output at A, and every active term raw and weighted (for logging). A term with weight 0
costs nothing; the supervised force term is inactive on batches without force labels, so
energy-only training computes no forces unless a physics term needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from piwsl.data.batch import Batch
from piwsl.objective.base import Needs, Term
from piwsl.objective.copies import Displacements
from piwsl.objective.physics import ResidualTerm
from piwsl.physics.config import PhysicsConfig
from piwsl.physics.terms import CopyOutputs

if TYPE_CHECKING:
    from piwsl.objective.config import LossConfig


@dataclass
class ObjectiveResult:
    total: torch.Tensor
    output: dict[str, torch.Tensor]  # the model output at A
    raw: dict[str, torch.Tensor] = field(default_factory=dict)
    weighted: dict[str, torch.Tensor] = field(default_factory=dict)
    residuals: dict[str, torch.Tensor] = field(default_factory=dict)  # per structure, eV


class Objective:
    """Σ_t w_t·ℓ_t over the configured terms (see the module docstring).

    ``terms``: :class:`~piwsl.objective.Term` objects, evaluated and summed in the given order
    (default: energy 1, forces 10 in the default convention). ``displacements``: the sampling
    state of the copies B and C (a :class:`Displacements`, or a :class:`PhysicsConfig` to build
    one); built with defaults when a term needs the copies and none is given.
    """

    def __init__(
        self,
        terms: Sequence[Term] | None = None,
        displacements: Displacements | PhysicsConfig | None = None,
    ) -> None:
        if terms is None:
            from piwsl.objective.supervised import EnergyTerm, ForcesTerm

            terms = [EnergyTerm(1.0), ForcesTerm(10.0)]
        self.terms = list(terms)
        names = [t.name for t in self.terms]
        if len(set(names)) != len(names):
            raise ValueError(f"a term may enter the objective once; got {names}")
        if isinstance(displacements, PhysicsConfig):
            displacements = Displacements(displacements)
        if displacements is None and self.displaces:
            displacements = Displacements()
        self.displacements = displacements

    @classmethod
    def from_config(cls, loss: LossConfig, physics: PhysicsConfig | None = None) -> Objective:
        """The objective of a run's ``loss`` and ``physics`` (displacement) sections."""
        terms = loss.build_terms()
        displaces = any(t.weight > 0 and t.needs().displaced for t in terms)
        return cls(terms, Displacements(physics) if displaces else None)

    @property
    def displaces(self) -> bool:
        """Whether a term with a positive weight needs a displaced copy."""
        return any(t.weight > 0 and t.needs().displaced for t in self.terms)

    def term(self, name: str) -> Term | None:
        return next((t for t in self.terms if t.name == name), None)

    def plan(self, batch: Batch) -> tuple[list[Term], Needs]:
        """The terms active on ``batch`` and the union of their needs."""
        active = [t for t in self.terms if t.active(batch)]
        return active, Needs.union(t.needs() for t in active)

    def __call__(
        self,
        model,
        batch: Batch,
        step: int | None = None,
        displacements: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> ObjectiveResult:
        """Evaluate every active term on ``batch``; ``step`` / ``displacements`` pin the fields
        (neither advances the step counter)."""
        active, needs = self.plan(batch)
        if needs.displaced and self.displacements is None:
            self.displacements = Displacements()
        if needs.displaced and self.displacements.skips(model, step, displacements):
            active = [t for t in active if not t.needs().displaced]  # physics.every_n_steps
            needs = Needs.union(t.needs() for t in active)
        # ``at``: what each term reads — the copies and the structures they belong to (with
        # physics.fraction < 1 a part of the batch), or the whole batch's output at A
        if needs.displaced:  # the copies, through the sampling state
            out, sub = self.displacements.evaluate(model, batch, needs, step, displacements)
            whole = out if sub is batch else CopyOutputs.of_a(out.output_a())
            at = {True: (out, sub), False: (whole, batch)}
        else:  # one plain pass at A
            kwargs = {"compute_stress": True} if needs.stress else {}
            out = CopyOutputs.of_a(model(batch, compute_forces=bool(needs.forces_at), **kwargs))
            at = {False: (out, batch)}
        # residual terms first, all residuals before their squares (the order of the autograd
        # graph, and so of the gradient sums, is that of the terms before issue 17)
        residual_terms = [t for t in active if isinstance(t, ResidualTerm)]
        residuals = {t.name: t.residual(*at[t.needs().displaced]) for t in residual_terms}
        values: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for t in residual_terms:
            raw = t.value(residuals[t.name])
            values[t.name] = (raw, t.weight * raw)
        for t in active:
            if t.name not in values:
                raw = t(*at[t.needs().displaced])
                values[t.name] = (raw, t.weight * raw)
        raw = {t.name: values[t.name][0] for t in active}
        weighted = {t.name: values[t.name][1] for t in active}
        output = out.output_a()
        total = sum(weighted.values(), output["energy"].new_zeros(()))
        return ObjectiveResult(total, output, raw, weighted, residuals)

    def step_done(self) -> None:
        """Call after each training step's optimiser step: ends a step that
        ``physics.evaluation = "auto"`` times (nothing otherwise)."""
        if self.displacements is not None:
            self.displacements.step_done()

    def evaluation_summary(self) -> dict | None:
        """How the displaced copies were evaluated (``auto``: the choice and its timings);
        None without displaced copies."""
        if not self.displaces or self.displacements is None:
            return None
        return self.displacements.evaluation_summary()

    # ------------------------------------------------------------------ state and skin rule
    def state_dict(self) -> dict:
        """The displacement sampling state ({} without displaced copies)."""
        return self.displacements.state_dict() if self.displacements is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.displacements is not None and state:
            self.displacements.load_state_dict(state)

    def check_skin(self, skin: float, cutoff: float | None = None) -> None:
        """Raise ConfigError if the training skin (Å) is too small for the displacements."""
        if self.displaces and self.displacements is not None:
            self.displacements.check_skin(skin, cutoff)
