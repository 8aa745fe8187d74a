"""Cheaper physics steps: displaced copies for a fraction of each batch's structures.

With ``physics.fraction = f < 1`` a training step evaluates A (the training positions) for every
structure, as a plain step does, and the displaced copies B and C only for ``m = ⌈f·S⌉`` of the
``S`` structures (at least one). The physics terms are then means over those ``m`` structures, an
unbiased estimate of the full-batch terms, so the weights keep their meaning. A second-order step
evaluates S + 2m structures instead of 3S: about (1 + 2f) × a plain energy + force step.

Which structures: the ``m`` with the smallest hash of (seed, step, frame id) (the same hash that
seeds the displacement fields, salted), so the choice depends neither on the batch order nor on
the device, and every frame is chosen with probability ≈ f over an epoch.
"""

from __future__ import annotations

import math

import torch

from piwsl.data.batch import Batch
from piwsl.physics.displacements import hash32, structure_keys

_SALT = 0x2C1B3C6D  # decorrelates the choice from the displacement fields of the same step


def subset_size(n_structures: int, fraction: float) -> int:
    """⌈f·S⌉, at least 1 and at most S."""
    return min(n_structures, max(1, math.ceil(fraction * n_structures - 1e-9)))


def choose_structures(batch: Batch, fraction: float, seed: int, step: int) -> torch.Tensor | None:
    """Indices (long, on the batch's device) of the structures that get displaced copies.

    None when every structure does (``fraction`` = 1, or ⌈f·S⌉ = S).
    """
    S = batch.n_structures
    m = subset_size(S, fraction)
    if m >= S:
        return None
    keys = hash32(structure_keys(batch, seed, step) ^ _SALT)
    return torch.topk(keys, m, largest=False).indices.sort().values


def restrict(
    output: dict[str, torch.Tensor], batch: Batch, chosen: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The part of a model output on ``batch`` that belongs to the ``chosen`` structures."""
    out = {"energy": output["energy"][chosen]}
    if output.get("forces") is not None:
        out["forces"] = output["forces"][batch.atoms_of(chosen)]
    return out
