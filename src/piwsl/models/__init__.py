"""Models: the contract, the force wrapper, built-in SchNet/PaiNN, adapters, the registry."""

from piwsl.models.base import EnergyModel, validate_output
from piwsl.models.forces import ForceField, conservative_forces
from piwsl.models.io import load_model, save_model
from piwsl.models.registry import MODELS, build_model, register_model

__all__ = [
    "MODELS",
    "EnergyModel",
    "ForceField",
    "build_model",
    "conservative_forces",
    "load_model",
    "register_model",
    "save_model",
    "validate_output",
]
