"""Physics-informed losses: displacement sampling, PITC (Taylor) and PISC (spatial consistency).

Pure functions of (model, batch); see ``shared SPEC`` section 2 and the README.
"""

from piwsl.physics.config import PhysicsConfig

__all__ = ["PhysicsConfig"]
