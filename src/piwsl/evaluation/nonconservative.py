"""Non-conservativeness of predicted forces: the curl on random planes and the work around loops.

Both vanish for a conservative model (F = −∇E); for a direct-force head they measure how far its
forces are from a gradient field (:mod:`piwsl.physics.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from piwsl.data.dataset import GraphDataset
from piwsl.data.frames import Frame
from piwsl.evaluation.predict import as_force_field, check_model_knows, model_device, model_dtype
from piwsl.physics.metrics import circulation, force_curl


def nonconservativeness(
    model,
    frames: Sequence[Frame],
    batch_size: int = 32,
    max_frames: int | None = 100,
    radius: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """How far a (direct-force) model's forces are from a gradient field, on up to ``max_frames``.

    Uses :mod:`piwsl.physics.metrics`: the exact curl ``|qᵀ(J − Jᵀ)p|`` on random
    configuration-space planes (eV/Å²) and the work around small loops of ``radius`` Å (meV per
    loop). Both vanish for a conservative model.
    """
    model = as_force_field(model)
    frames = list(frames)[:max_frames] if max_frames else list(frames)
    check_model_knows(model, frames)
    # loop points must stay inside the neighbour list: skin ≥ 2 × radius
    dataset = GraphDataset(frames, cutoff=model.cutoff, skin=4.0 * radius, dtype=model_dtype(model))
    device = model_device(model)
    curls, works, loop_curls = [], [], []
    was_training = model.training
    model.eval()
    try:
        for batch in dataset.loader(batch_size, shuffle=False):
            batch = batch.to(device=device)
            curls.append(force_curl(model, batch, seed=seed).detach().cpu())
            result = circulation(model, batch, radius=radius, seed=seed)
            works.append(result.work_mev.detach().cpu())
            loop_curls.append(result.curl_ev_a2.detach().cpu())
    finally:
        model.train(was_training)
    return {
        "nonconservative_n_frames": len(frames),
        "nonconservative_force_curl_eV_per_A2": float(torch.cat(curls).mean()),
        "nonconservative_circulation_meV": float(torch.cat(works).mean()),
        "nonconservative_circulation_curl_eV_per_A2": float(torch.cat(loop_curls).mean()),
        "nonconservative_circulation_radius_A": float(radius),
    }
