"""Plugins: model backends, priors and loss terms registered from outside the package.

Two ways in:

- **entry points** of an installed distribution, loaded the first time a registry is asked::

      [project.entry-points."piwsl.terms"]
      energy_l1 = "my_package.terms:EnergyL1"        # a piwsl.objective.Term subclass
      [project.entry-points."piwsl.models"]
      my_net = "my_package.models:build_my_net"      # a builder returning an EnergyModel
      [project.entry-points."piwsl.priors"]
      my_prior = "my_package.priors:MyPrior"         # builder(charge, multiplicity, settings)

  An entry point that names a module (no ``:object``) is imported; the module registers what it
  defines with :func:`piwsl.objective.register_term`, :func:`piwsl.models.register_model` or
  :func:`piwsl.priors.register_prior`. One that names an object is registered under the entry
  point's name unless the import registered it already.
- **import paths** in the run's config, ``plugins: [my_package.terms, ./my_terms.py]``, imported
  before the config is validated (so its terms, models and priors can be named in it).

A plugin that fails to load is reported (a warning naming it) and skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from piwsl.errors import ConfigError

log = logging.getLogger(__name__)

#: The entry-point groups piwsl reads.
GROUPS = ("piwsl.models", "piwsl.priors", "piwsl.terms")

_loaded = False


def _registry(group: str):
    if group == "piwsl.terms":
        from piwsl.objective.base import TERMS

        return TERMS
    if group == "piwsl.models":
        from piwsl.models.registry import MODELS

        return MODELS
    from piwsl.priors.base import PRIORS

    return PRIORS


def _register(group: str, name: str, obj: Any) -> None:
    registry = _registry(group)
    key = name.lower() if group == "piwsl.priors" else name
    if key in registry:
        return
    if group == "piwsl.terms":
        from piwsl.objective.base import register_term

        register_term(key)(obj)
    else:
        registry.add(key, obj)


def load_entry_point(ep: EntryPoint) -> None:
    """Import one entry point and register what it names (see the module docstring)."""
    obj = ep.load()
    if ep.attr is not None:
        _register(ep.group, ep.name, obj)


def load_plugins(force: bool = False) -> None:
    """Load every entry point of :data:`GROUPS` (once per process unless ``force``)."""
    global _loaded
    if _loaded and not force:
        return
    _loaded = True
    for group in GROUPS:
        for ep in entry_points(group=group):
            try:
                load_entry_point(ep)
            except Exception as err:  # a broken plugin must not break piwsl
                log.warning(
                    "piwsl plugin %r (%s = %s) failed to load: %s", group, ep.name, ep.value, err
                )


def _import_file(path: Path) -> None:
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugins: cannot import {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise


def import_plugins(paths: list[str]) -> None:
    """Import the modules (dotted names) and ``.py`` files of a config's ``plugins`` list."""
    load_plugins()
    for text in paths:
        text = str(text).strip()
        try:
            if text.endswith(".py") or "/" in text:
                path = Path(text).expanduser().resolve()
                if not path.is_file():
                    raise ConfigError(f"plugins: file {text!r} does not exist")
                _import_file(path)
            else:
                importlib.import_module(text)
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError(
                f"plugins: importing {text!r} failed ({type(err).__name__}: {err})"
            ) from err
