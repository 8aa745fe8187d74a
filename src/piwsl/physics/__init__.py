"""Physics-informed losses: displacement sampling, PITC (Taylor) and PISC (spatial consistency).

``build_physics(PhysicsConfig(...))`` gives the :class:`PhysicsTerms` that
:class:`~piwsl.objective.Objective` calls; the pieces are pure functions of (model, batch) and
displacements. See the shared SPEC, section 2, and :class:`PhysicsConfig` for units.
"""

from piwsl.physics.config import PhysicsConfig
from piwsl.physics.displacements import check_skin, required_skin, sample_displacements
from piwsl.physics.terms import (
    CopyOutputs,
    PhysicsResult,
    PhysicsTerms,
    build_physics,
    evaluate_copies,
    per_structure_dot,
    spatial_residual,
    taylor_residual,
    two_point_residual,
)

__all__ = [
    "CopyOutputs",
    "PhysicsConfig",
    "PhysicsResult",
    "PhysicsTerms",
    "build_physics",
    "check_skin",
    "evaluate_copies",
    "per_structure_dot",
    "required_skin",
    "sample_displacements",
    "spatial_residual",
    "taylor_residual",
    "two_point_residual",
]
