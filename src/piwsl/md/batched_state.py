"""A resumable state for long batched MD runs (``MDConfig.state_interval``).

Every ``state_interval`` steps the batched runner writes ``batched_state.pt`` in its output folder
(atomically: a killed run leaves the previous state or the new one): the step, every replica's
positions, momenta and activity, the thermostat variables, each replica's thermo rows, h(r)
frames, failure and step count, the byte length of each extxyz trajectory file, the potential's
timers and the wall time so far, and a fingerprint of the settings. Started again with the same
settings, the run continues from that step (trajectory files are cut back to the saved length, so
no frame appears twice); with other settings it starts afresh. The neighbour lists are rebuilt on
resumption, so a resumed run equals an uninterrupted one to rounding, not bit for bit. The file is
removed when the run ends.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from piwsl.md.config import MDConfig
from piwsl.models.io import atomic_save

log = logging.getLogger(__name__)

STATE_NAME = "batched_state.pt"
#: settings that do not change the trajectories (they may differ on resumption)
_FREE = ("progress", "plots", "state_interval")


def fingerprint(config: MDConfig, frames: list[int], source: str) -> dict[str, Any]:
    """What a saved state depends on."""
    settings = {k: v for k, v in asdict(config).items() if k not in _FREE}
    return {"config": settings, "frames": [int(f) for f in frames], "potential": source}


def save_state(path: Path, content: dict[str, Any]) -> None:
    atomic_save(content, path)


def load_state(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state at ``path`` if it was written with the ``expected`` fingerprint."""
    if not path.is_file():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a corrupt file: start afresh rather than fail
        log.warning("cannot read the batched MD state %s (%s); starting afresh", path, err)
        return None
    if content.get("fingerprint") != expected:
        log.warning(
            "the batched MD state %s was written with other settings; starting afresh", path
        )
        return None
    return content
