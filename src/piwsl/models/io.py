"""Model files: save and load a trained force field (atomic write, version and model checks).

A model trained on top of a prior (Δ-learning, :mod:`piwsl.priors`) carries the prior's spec in
the file (``"prior"``, format version 2); :func:`load_model` restores it as
``ForceField.prior_spec`` — an analytic prior (ZBL) as a module inside the model, an external one
for inference to add.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from piwsl import __version__
from piwsl.errors import CheckpointError
from piwsl.io.atomic import atomic_path

FORMAT = "piwsl-model"
FORMAT_VERSION = 1
#: Files of models trained on top of a prior (``"prior"`` entry): an older piwsl, which would
#: silently drop the prior, refuses them instead.
PRIOR_FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, PRIOR_FORMAT_VERSION)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename (never a torn file)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def model_state(model) -> dict[str, Any]:
    """What is needed to rebuild ``model`` (a ForceField): its name, hyper-parameters, weights,
    and the spec of the prior it was trained on top of (if any)."""
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "piwsl_version": __version__,
        "name": model.hparams["name"],
        "hparams": {k: v for k, v in model.hparams.items() if k != "name"},
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "state_dict": model.state_dict(),
    }
    prior = getattr(model, "prior_spec", None)
    if prior:
        state["prior"] = copy.deepcopy(prior)
        state["format_version"] = PRIOR_FORMAT_VERSION
    return state


def save_model(model, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    state = model_state(model)
    state["metadata"] = metadata or {}
    atomic_save(state, path)


def model_from_state(state: dict[str, Any], source: str = "<state>"):
    from piwsl.models.registry import build_model

    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{source} is not a piwsl model file (no '{FORMAT}' header); "
            "pass a file written by `piwsl train`"
        )
    if state.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{source} has model-file format {state.get('format_version')}, this piwsl "
            f"({__version__}) reads format {FORMAT_VERSION} ({PRIOR_FORMAT_VERSION} for models "
            "with a prior); retrain or use the matching version"
        )
    model = build_model(state["name"], **state["hparams"])
    dtype = getattr(torch, state.get("dtype", "float32"), None)
    if isinstance(dtype, torch.dtype):
        model = model.to(dtype=dtype)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{source}: weights do not fit model {state['name']!r}: {err}"
        ) from err
    prior = state.get("prior")
    if prior is not None and not isinstance(prior, dict):
        raise CheckpointError(f"{source}: the recorded prior is not a mapping ({prior!r})")
    from piwsl.priors import attach_prior

    attach_prior(model, prior, what=source)
    return model


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a force field saved by :func:`save_model` or a piwsl training checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err}") from err
    if isinstance(state, dict) and "piwsl_model" in state:  # a Lightning training checkpoint
        state = state["piwsl_model"]
    model = model_from_state(state, source=str(path))
    model.eval()
    return model
