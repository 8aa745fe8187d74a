"""Configuration of the displaced copies the physics terms are evaluated at (δ in Å)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Keys this section held before the loss terms became a list (``loss.terms``); see
#: :func:`piwsl.objective.config.translate_legacy`.
LEGACY_KEYS = (
    "taylor_weight",
    "spatial_weight",
    "two_point_weight",
    "weight_energy_unit",
    "second_order",
    "anchor_to_labels",
    "two_point",
)


class PhysicsConfig(BaseModel):
    """How the displaced copies B = A + d2 and C = A + d1 of the physics terms are drawn and
    evaluated. The terms themselves, their weights and variants are loss terms
    (``loss.terms.taylor``, ``spatial``, ``taylor_two_point``; :mod:`piwsl.objective.physics`).

    **Perturbations.** Per structure and step, ``u, v ~ Uniform[−1, 1)³`` per atom, zero on fixed
    atoms (and, with ``local_fraction < 1``, on atoms not selected), mean-centred over the displaced
    atoms, then ``d1 = δ·u``, ``d2 = δ·v`` (δ = ``perturbation_scale`` in Å). After centring a
    component can reach ``2δ(1 − 1/n)``, but the *difference* of two atoms' displacements is below
    ``2δ`` per component, so a pair distance changes by less than ``2√3·δ`` between A and B or C.
    Hence the neighbour-list skin (built at A) must be at least ``2√3·δ`` (0.173 Å for δ = 0.05 Å),
    see :func:`piwsl.physics.required_skin`.

    **Cheaper steps.** ``fraction`` gives displaced copies to a share of each batch's structures
    only, ``every_n_steps`` evaluates the terms that need copies on every n-th step only (see
    ``benchmarks/results/training_throughput.md`` for what each costs and keeps).

    **Cost.** Exact PISC needs the energy and a directional force at a second displaced point, so
    a step costs about 2–2.4× a plain energy+force step on CPU with ``evaluation="split"``
    (≈ 1.35–1.45× with the Taylor term alone), see ``benchmarks/results/physics_step_cost.md``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    #: old keys still read (rewritten into loss.terms), offered in "did you mean"
    legacy_keys: ClassVar[tuple[str, ...]] = LEGACY_KEYS

    perturbation_scale: float = Field(0.05, gt=0, description="δ, Å")
    local_fraction: float = Field(
        1.0, gt=0, le=1, description="probability that an atom is displaced"
    )
    fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description=(
            "fraction of each batch's structures that get displaced copies (⌈f·S⌉, at least "
            "one, drawn per step from (seed, step, frame id)); all structures keep their "
            "supervised terms. Cost of a second-order step ≈ (1 + 2f) × a plain one"
        ),
    )
    every_n_steps: int = Field(
        1,
        ge=1,
        description=(
            "evaluate the physics terms on every n-th training step only; the other steps train "
            "on the supervised terms alone"
        ),
    )
    seed: int = Field(0, ge=0, description="seed of the displacement fields")
    sampler: Literal["frame", "generator"] = Field(
        "frame",
        description=(
            "'frame': displacements are a deterministic function of (seed, step, frame_id), the "
            "same on any device, rank or batch composition; 'generator': one torch.Generator "
            "stream (state saved with state_dict)"
        ),
    )
    evaluation: Literal["auto", "fused", "split", "three_pass"] = Field(
        "auto",
        description=(
            "how the copies A, B, C are evaluated; all modes give identical losses and gradients. "
            "'split': one fused pass over the copies that need forces (A, B; plus C in second "
            "order), a second pass for energy-only copies (C in first order), so a conservative "
            "model builds no force graph for C; 'fused': A, B, C in one forward pass; "
            "'three_pass': one pass per copy; 'auto' (default): time the modes that differ on "
            "the first training steps with copies and keep the fastest (the choice and its "
            "timings go into the run's summary.json; piwsl.physics.tuning). For direct-force "
            "models, and whenever every copy needs forces, split is the fused pass."
        ),
    )
    verify_neighbors: bool = Field(
        True,
        description=(
            "on the first call, check (numpy, once) that the displaced copies stay covered by the "
            "neighbour list built at A; raises ConfigError if the data skin is too small"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [k for k in LEGACY_KEYS if k in data]
            if moved:
                from piwsl.objective.config import legacy_message

                raise ValueError(legacy_message({"physics": {k: data[k] for k in moved}}))
        return data

    @property
    def required_skin(self) -> float:
        """Smallest neighbour-list skin (Å) that keeps displaced copies covered: 2√3·δ."""
        return 2.0 * math.sqrt(3.0) * self.perturbation_scale
