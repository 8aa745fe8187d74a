"""Configuration of the physics-informed terms (names after the physics, units stated)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from piwsl.units import ENERGY_UNITS


class PhysicsConfig(BaseModel):
    """Weights and switches of PITC (``taylor``) and PISC (``spatial``).

    **Units.** Every physics residual is an energy difference of *total* energies of one structure,
    computed in eV and converted to ``weight_energy_unit`` before squaring, so the raw losses
    ``taylor`` / ``spatial`` are mean squared residuals in ``weight_energy_unit``² per structure
    (kcal²/mol² by default) and the weights are those of the paper (λ_PITC = 1.2, λ_PISC = 0.01,
    total energies in kcal/mol). Concretely ``L_taylor = mean_s (r_s[eV] / u)²`` with
    ``u = 0.0433641 eV`` for kcal/mol. The supervised terms of :class:`~piwsl.objective.Objective`
    are in other units (energy: per-atom eV²; forces: (eV/Å)²), so the balance between supervised
    and physics terms is set by the weights in these stated units.

    **Perturbations.** Per structure and step, ``u, v ~ Uniform[−1, 1)³`` per atom, zero on fixed
    atoms (and, with ``local_fraction < 1``, on atoms not selected), mean-centred over the displaced
    atoms, then ``d1 = δ·u``, ``d2 = δ·v`` (δ = ``perturbation_scale`` in Å). After centring a
    component can reach ``2δ(1 − 1/n)``, but the *difference* of two atoms' displacements is below
    ``2δ`` per component, so a pair distance changes by less than ``2√3·δ`` between A and B or C.
    Hence the neighbour-list skin (built at A) must be at least ``2√3·δ`` (0.173 Å for δ = 0.05 Å),
    see :func:`piwsl.physics.required_skin`.

    **Variants** (each a switch): ``second_order`` (trapezoid: F(start) → ½(F(start) + F(C)) in
    both targets), ``anchor_to_labels`` (Cooper et al.: the Taylor target is built from E_ref(A)
    and F_ref(A) for structures that carry both labels), ``two_point`` (an extra term
    ``taylor_two_point``: extrapolate from C back to A and compare with E_θ(A), or E_ref(A) when
    anchored; weight ``two_point_weight``, default ``taylor_weight``), ``local_fraction`` (each
    atom is displaced with probability p).

    **Cheaper steps.** ``fraction`` gives displaced copies to a share of each batch's structures
    only, ``every_n_steps`` evaluates the terms on every n-th step only (see
    ``benchmarks/results/training_throughput.md`` for what each costs and keeps).

    **Cost.** Exact PISC needs the energy and a directional force at a second displaced point, so
    a step costs about 2–2.4× a plain energy+force step on CPU with ``evaluation="split"``
    (≈ 1.35–1.45× with the Taylor term alone), see ``benchmarks/results/physics_step_cost.md``.
    """

    model_config = ConfigDict(extra="forbid")

    taylor_weight: float = Field(
        0.0, ge=0, description="λ_PITC per (weight_energy_unit)²; 1.2 in the paper (kcal/mol)"
    )
    spatial_weight: float = Field(
        0.0, ge=0, description="λ_PISC per (weight_energy_unit)²; 0.01 in the paper (kcal/mol)"
    )
    two_point_weight: float | None = Field(
        None, ge=0, description="weight of the two-point term; None: taylor_weight"
    )
    perturbation_scale: float = Field(0.05, gt=0, description="δ, Å")
    weight_energy_unit: str = Field(
        "kcal/mol", description="energy unit in which residuals are squared (total energies)"
    )
    second_order: bool = Field(False, description="trapezoid rule: ½(F(start) + F(C))")
    anchor_to_labels: bool = Field(
        False, description="Taylor target from E_ref(A), F_ref(A) where both labels exist"
    )
    two_point: bool = Field(False, description="add the C→A back-extrapolation term")
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
    evaluation: Literal["fused", "split", "three_pass"] = Field(
        "split",
        description=(
            "'split' (default): one fused pass over the copies that need forces (A, B; plus C in "
            "second order), a second pass for energy-only copies (C in first order), so a "
            "conservative model builds no force graph for C; 'fused': A, B, C in one forward pass; "
            "'three_pass': one pass per copy. All give identical losses and gradients; on CPU "
            "split was fastest (benchmarks/results/physics_step_cost.md). For direct-force "
            "models split is the fused pass."
        ),
    )
    verify_neighbors: bool = Field(
        True,
        description=(
            "on the first call, check (numpy, once) that the displaced copies stay covered by the "
            "neighbour list built at A; raises ConfigError if the data skin is too small"
        ),
    )

    @field_validator("weight_energy_unit")
    @classmethod
    def _known_unit(cls, unit: str) -> str:
        if unit not in ENERGY_UNITS:
            from piwsl.registry import suggest

            raise ValueError(f"unknown energy unit {unit!r}{suggest(unit, ENERGY_UNITS)}")
        return unit

    @property
    def enabled(self) -> bool:
        return self.taylor_weight > 0 or self.spatial_weight > 0 or self.effective_two_point > 0

    @property
    def effective_two_point(self) -> float:
        """Weight of the two-point term (0 unless ``two_point``)."""
        if not self.two_point:
            return 0.0
        return self.taylor_weight if self.two_point_weight is None else self.two_point_weight

    @property
    def required_skin(self) -> float:
        """Smallest neighbour-list skin (Å) that keeps displaced copies covered: 2√3·δ."""
        return 2.0 * math.sqrt(3.0) * self.perturbation_scale
