"""Physics-informed consistency: displacement sampling, the copies A, B, C, PITC/PISC residuals.

Pure functions of (model, batch, displacements); the loss terms built on them, their weights and
the sampling state live in :mod:`piwsl.objective`. See the shared SPEC, section 2.
"""

from piwsl.physics.config import PhysicsConfig
from piwsl.physics.displacements import check_skin, required_skin, sample_displacements
from piwsl.physics.terms import (
    CopyOutputs,
    evaluate_copies,
    per_structure_dot,
    spatial_residual,
    taylor_residual,
    two_point_residual,
)

__all__ = [
    "CopyOutputs",
    "PhysicsConfig",
    "check_skin",
    "evaluate_copies",
    "per_structure_dot",
    "required_skin",
    "sample_displacements",
    "spatial_residual",
    "taylor_residual",
    "two_point_residual",
]
