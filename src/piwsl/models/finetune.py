"""Fine-tuning support for every backend: load a pre-trained model, freeze parameters by name.

:func:`load_pretrained` reads what ``model.init_from`` may name — a piwsl model file (written by
:func:`~piwsl.models.save_model`, e.g. a run's ``best_model.pt``), a piwsl Lightning training
checkpoint (``.ckpt``: its EMA model) or a model file written by mace-torch (a pickled
``ScaleShiftMACE``, converted by :func:`piwsl.models.mace.from_mace_model`; needs mace-torch) —
and returns a :class:`~piwsl.models.ForceField`. Anything else raises
:class:`~piwsl.errors.CheckpointError` saying what is accepted.

:func:`freeze` / :func:`unfreeze` switch ``requires_grad`` of parameters chosen by glob patterns
(:mod:`fnmatch`, ``*`` also crosses dots). A pattern may be written against

* the full parameter name: ``energy_model.readout.0.weight``;
* the name inside the energy model: ``readout.0.weight``, ``interactions.1.*``;
* for a backend that wraps one network holding all its parameters (MACE's ``mace`` module), the
  name inside that network: ``readouts.*``, ``node_embedding.*``.

A pattern starting with ``!`` selects the complement of a previous selection: ``["*",
"!readout.*"]`` freezes everything but SchNet's readout. Patterns are applied in order; every
pattern must match at least one parameter, otherwise :class:`~piwsl.errors.ConfigError` lists the
model's parameter names (a typo must not silently train everything).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
from torch import nn

from piwsl.errors import CheckpointError, ConfigError

#: The formats ``model.init_from`` accepts, for error messages.
ACCEPTED = (
    "a piwsl model file (best_model.pt / final_model.pt, written by `piwsl train` or "
    "piwsl.models.save_model), a piwsl training checkpoint (.ckpt) or a mace-torch model file"
)


# ----------------------------------------------------------------------------- loading


def _is_mace_module(obj: object) -> bool:
    return isinstance(obj, nn.Module) and type(obj).__module__.split(".")[0] == "mace"


def load_pretrained(source: str | Path):
    """The :class:`~piwsl.models.ForceField` stored in ``source`` (see the module docstring).

    The model is returned on the CPU, in the dtype it was saved in, in training mode.
    """
    from piwsl.models.io import model_from_state

    path = Path(source).expanduser()
    where = str(source)
    if not path.exists():
        raise CheckpointError(f"pre-trained model {where!r} does not exist (expected {ACCEPTED})")
    if path.is_dir():
        hint = ""
        for name in ("best_model.pt", "final_model.pt"):
            if (path / name).is_file():
                hint = f"; did you mean {str(path / name)!r}?"
                break
        raise CheckpointError(f"pre-trained model {where!r} is a directory, not a file{hint}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in ("mace", "e3nn"):
            from piwsl.models.mace import INSTALL_HINT

            raise CheckpointError(
                f"{where!r} looks like a mace-torch model file, but mace-torch (module "
                f"{err.name!r}) is not installed. Install it with: {INSTALL_HINT}"
            ) from err
        raise CheckpointError(
            f"cannot read pre-trained model {where!r}: it needs the Python module {err.name!r}, "
            f"which is not installed; expected {ACCEPTED}"
        ) from err
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(
            f"cannot read pre-trained model {where!r} ({type(err).__name__}: {err}); "
            f"expected {ACCEPTED}"
        ) from err
    if isinstance(obj, torch.jit.ScriptModule):
        raise CheckpointError(
            f"{where!r} is a TorchScript (compiled) model, which cannot be trained further; "
            f"expected {ACCEPTED} (for MACE, the un-compiled *.model file)"
        )
    if _is_mace_module(obj):
        from piwsl.models.mace import from_mace_model

        model = from_mace_model(obj)
        model.train()
        return model
    if isinstance(obj, nn.Module):
        raise CheckpointError(
            f"{where!r} holds a pickled {type(obj).__module__}.{type(obj).__name__}, which piwsl "
            f"cannot rebuild; expected {ACCEPTED}"
        )
    if isinstance(obj, dict) and "piwsl_model" in obj:  # a Lightning training checkpoint
        obj = obj["piwsl_model"]
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(
            f"{where!r} is not a piwsl model file (no 'piwsl-model' header, it holds a "
            f"{type(obj).__name__}); expected {ACCEPTED}"
        )
    model = model_from_state(obj, source=where)
    model.train()
    return model


# ----------------------------------------------------------------------------- freezing


def _aliases(model: nn.Module) -> list[str]:
    """Prefixes that a pattern may leave out of a parameter name (longest first)."""
    names = [n for n, _ in model.named_parameters()]
    prefixes: list[str] = []
    root = ""
    if names and all(n.startswith("energy_model.") for n in names):  # a ForceField
        root = "energy_model."
        prefixes.append(root)
    inside = [n[len(root) :] for n in names]
    # a wrapped network holding every parameter (MACE's `mace`): its name may be left out too
    tops = {n.split(".", 1)[0] for n in inside}
    if len(tops) == 1 and all("." in n for n in inside):
        prefixes.append(f"{root}{tops.pop()}.")
    return sorted(prefixes, key=len, reverse=True)


def parameter_names(model: nn.Module) -> list[str]:
    """Full names of the model's parameters, in registration order."""
    return [n for n, _ in model.named_parameters()]


def match_parameters(model: nn.Module, patterns: list[str] | str) -> list[str]:
    """Names of the parameters selected by ``patterns`` (in order; ``!`` removes, see module doc).

    Raises :class:`ConfigError` naming the pattern and listing every parameter name when a
    pattern matches nothing.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    names = parameter_names(model)
    prefixes = _aliases(model)

    def forms(full: str) -> list[str]:
        return [full] + [full[len(p) :] for p in prefixes if full.startswith(p)]

    selected: dict[str, None] = {}
    for raw in patterns:
        pattern = str(raw).strip()
        negate = pattern.startswith("!")
        if negate:
            pattern = pattern[1:].strip()
        if not pattern:
            raise ConfigError(f"parameter pattern {raw!r} is empty")
        hits = [n for n in names if any(fnmatch.fnmatchcase(x, pattern) for x in forms(n))]
        if not hits:
            listing = "\n  ".join(names)
            raise ConfigError(
                f"parameter pattern {raw!r} matches no parameter; the model has:\n  {listing}"
            )
        for n in hits:
            if negate:
                selected.pop(n, None)
            else:
                selected[n] = None
    order = {n: k for k, n in enumerate(names)}
    return sorted(selected, key=order.__getitem__)


def _set_requires_grad(model: nn.Module, patterns: list[str] | str, value: bool) -> list[str]:
    chosen = match_parameters(model, patterns)
    params = dict(model.named_parameters())
    for n in chosen:
        params[n].requires_grad_(value)
    return chosen


def freeze(model: nn.Module, patterns: list[str] | str) -> list[str]:
    """Set ``requires_grad=False`` on the parameters ``patterns`` select; return their names.

    Build the optimizer afterwards, or give it only the parameters that still require a gradient
    (``piwsl train`` does both).
    """
    return _set_requires_grad(model, patterns, False)


def unfreeze(model: nn.Module, patterns: list[str] | str = "*") -> list[str]:
    """Set ``requires_grad=True`` on the parameters ``patterns`` select; return their names."""
    return _set_requires_grad(model, patterns, True)
