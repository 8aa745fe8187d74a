"""The objective: loss terms as named, registered parts, and their weighted sum.

- :mod:`~piwsl.objective.base`: the :class:`Term` contract (name, weight, :class:`Needs`, raw
  value), the registry :data:`TERMS` and :func:`register_term`;
- :mod:`~piwsl.objective.supervised`: ``energy``, ``forces`` and ``stress`` (masked to labelled
  structures);
- :mod:`~piwsl.objective.physics`: ``taylor`` (PITC), ``spatial`` (PISC), ``taylor_two_point``;
- :mod:`~piwsl.objective.copies`: :class:`Displacements`, the sampling state of the copies B, C;
- :mod:`~piwsl.objective.objective`: :class:`Objective`, which plans the union of the needs,
  evaluates each copy once and sums the weighted terms;
- :mod:`~piwsl.objective.config`: the ``loss`` section — presets, the energy convention, terms.
"""

from piwsl.objective.base import TERMS, Needs, Term, register_term, term_class
from piwsl.objective.config import CONVENTIONS, PRESETS, EnergyConvention, LossConfig
from piwsl.objective.copies import Displacements
from piwsl.objective.objective import Objective, ObjectiveResult
from piwsl.objective.physics import ResidualTerm, SpatialTerm, TaylorTerm, TwoPointTerm
from piwsl.objective.supervised import (
    EnergyTerm,
    ForcesTerm,
    StressTerm,
    SupervisedTerm,
    energy_mse,
    forces_mse,
    stress_mse,
)

__all__ = [
    "CONVENTIONS",
    "PRESETS",
    "TERMS",
    "Displacements",
    "EnergyConvention",
    "EnergyTerm",
    "ForcesTerm",
    "LossConfig",
    "Needs",
    "Objective",
    "ObjectiveResult",
    "ResidualTerm",
    "SpatialTerm",
    "StressTerm",
    "SupervisedTerm",
    "TaylorTerm",
    "Term",
    "TwoPointTerm",
    "energy_mse",
    "forces_mse",
    "register_term",
    "stress_mse",
    "term_class",
]
