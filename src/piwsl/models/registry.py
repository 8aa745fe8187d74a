"""The model registry: build a force field by name, with "did you mean" errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from piwsl.models.base import EnergyModel
from piwsl.models.forces import ForceField
from piwsl.registry import Registry

MODELS: Registry[Callable[..., EnergyModel]] = Registry("model")


def register_model(name: str):
    """Decorator: register an :class:`EnergyModel` builder under ``name``."""
    return MODELS.register(name)


def build_model(name: str, **hparams: Any) -> ForceField:
    """Build a registered model (``elements`` and ``cutoff`` among ``hparams``) as a ForceField."""
    _load_builtins()
    builder = MODELS.get(name)
    energy_model = builder(**hparams)
    energy_model.hparams = {"name": name, **hparams}
    return ForceField(energy_model)


def _load_builtins() -> None:
    # importing registers them; lazily, so optional backends stay optional
    import piwsl.models.mace  # mace-torch itself is imported only when a MACE is built
    import piwsl.models.painn
    import piwsl.models.schnet  # noqa: F401
    from piwsl.plugins import load_plugins

    load_plugins()
