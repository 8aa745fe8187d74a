"""The physics-informed terms: PITC (``taylor``), PISC (``spatial``) and the two-point variant.

Each is the mean over structures of the squared residual of :mod:`piwsl.physics.terms`, a total
energy difference per structure converted to the convention's ``physics_unit`` before squaring
(kcal/mol by default, the unit of the paper's weights λ_PITC = 1.2, λ_PISC = 0.01)::

    taylor            r_s = E(C) − [E(A) − Σ d1·F̄_A]          copies A, C;    forces at A (+ C)
    spatial           r_s = E(C) − [E(B) − Σ (d1 − d2)·F̄_B]   copies A, B, C; forces at B (+ C)
    taylor_two_point  r_s = E(A) − [E(C) + Σ d1·F̄_C]          copies A, C;    forces at C (+ A)

with F̄ the start-point force, or with ``second_order`` the trapezoid ½(F(start) + F(end)).
``anchor_to_labels`` (taylor, two-point) builds the target from the reference labels where a
structure carries them (Cooper et al. 2020).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from piwsl.data.batch import Batch
from piwsl.objective.base import Needs, Term, register_term
from piwsl.physics.terms import spatial_residual, taylor_residual, two_point_residual
from piwsl.units import energy_factor

if TYPE_CHECKING:
    from piwsl.objective.config import EnergyConvention
    from piwsl.physics.terms import CopyOutputs


class ResidualTerm(Term):
    """A term ``mean_s (r_s / unit)²`` of a per-structure energy residual ``r_s`` (eV)."""

    config_options = ("second_order",)

    def __init__(self, weight: float = 1.0, unit: str = "kcal/mol", second_order: bool = False):
        super().__init__(weight)
        self.unit = energy_factor(unit)
        self.second_order = bool(second_order)

    @classmethod
    def from_config(cls, weight: float, convention: EnergyConvention, **options: Any) -> Term:
        return cls(weight, unit=convention.physics_unit, **options)

    def residual(self, out: CopyOutputs, batch: Batch) -> torch.Tensor:
        """Per-structure residual, eV, float64 [S]."""
        raise NotImplementedError

    def value(self, residual: torch.Tensor) -> torch.Tensor:
        """The raw loss of a residual: ``mean_s (r_s / unit)²``."""
        return ((residual / self.unit) ** 2).mean()

    def __call__(self, out: CopyOutputs, batch: Batch) -> torch.Tensor:
        return self.value(self.residual(out, batch))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight}, second_order={self.second_order})"


class AnchoredTerm(ResidualTerm):
    """A residual term whose target can be built from the labels (``anchor_to_labels``)."""

    config_options = ("second_order", "anchor_to_labels")

    def __init__(
        self,
        weight: float = 1.2,
        unit: str = "kcal/mol",
        second_order: bool = False,
        anchor_to_labels: bool = False,
    ) -> None:
        super().__init__(weight, unit, second_order)
        self.anchor_to_labels = bool(anchor_to_labels)


@register_term("taylor")
class TaylorTerm(AnchoredTerm):
    """PITC: the energy at C against the first-order extrapolation from A."""

    def needs(self) -> Needs:
        return Needs({"A", "C"}, {"A", "C"} if self.second_order else {"A"})

    def residual(self, out: CopyOutputs, batch: Batch) -> torch.Tensor:
        return taylor_residual(out, batch, self.second_order, self.anchor_to_labels)


@register_term("spatial")
class SpatialTerm(ResidualTerm):
    """PISC: the path A → B → C against the direct value at C."""

    def __init__(
        self, weight: float = 0.01, unit: str = "kcal/mol", second_order: bool = False
    ) -> None:
        super().__init__(weight, unit, second_order)

    def needs(self) -> Needs:
        return Needs({"A", "B", "C"}, {"B", "C"} if self.second_order else {"B"})

    def residual(self, out: CopyOutputs, batch: Batch) -> torch.Tensor:
        return spatial_residual(out, batch, self.second_order)


@register_term("taylor_two_point")
class TwoPointTerm(AnchoredTerm):
    """Extrapolation from C back to A, compared with E(A) (or E_ref(A) when anchored)."""

    def needs(self) -> Needs:
        return Needs({"A", "C"}, {"A", "C"} if self.second_order else {"C"})

    def residual(self, out: CopyOutputs, batch: Batch) -> torch.Tensor:
        return two_point_residual(out, batch, self.second_order, self.anchor_to_labels)
