"""Noisy-node augmentation (``training.position_noise``): the comparison method of the benchmark.

Each training step moves every movable atom by a uniform draw in [−x, x] per component and keeps
the labels; the neighbour-list skin must cover the jitter; a short training run works with it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from test_training import tiny_config, write_tiny_extxyz

from piwsl.config import TrainingConfig, config_from_dict
from piwsl.data.batch import frames_to_batch
from piwsl.data.readers import read_frames
from piwsl.training import train
from piwsl.training.builders import training_skin
from piwsl.training.module import PiwslModule

torch.set_num_threads(1)


def _jitter(batch, noise: float):
    holder = SimpleNamespace(train_cfg=TrainingConfig(position_noise=noise))
    return PiwslModule.jitter(holder, batch)


def test_jitter_is_bounded_keeps_labels_and_fixed_atoms():
    frames = read_frames("builtin:ethanol_train")[:4]
    batch = frames_to_batch(frames, cutoff=4.0, skin=0.5)
    batch.fixed[:3] = True
    torch.manual_seed(0)
    moved = _jitter(batch, 0.05)
    delta = moved.positions - batch.positions
    assert delta.abs().max() <= 0.05
    assert delta.abs().max() > 0.025  # it does move atoms (36 atoms × 3 draws)
    assert torch.equal(delta[:3], torch.zeros_like(delta[:3]))
    assert torch.equal(moved.forces, batch.forces)
    assert torch.equal(moved.energy, batch.energy)
    assert torch.equal(moved.edge_index, batch.edge_index)
    assert _jitter(batch, 0.0) is batch


def test_skin_covers_the_jitter_and_training_runs(tmp_path):
    data = write_tiny_extxyz(tmp_path / "tiny.xyz", n=10, unlabelled_every=1000)
    cfg = tiny_config(data, tmp_path / "run", data={"skin": None}, training={"max_epochs": 1})
    cfg["training"]["position_noise"] = 0.04
    config = config_from_dict(cfg)
    assert training_skin(config) == pytest.approx(1.05 * 2 * math.sqrt(3) * 0.04)
    result = train(config)
    assert result.steps > 0
    assert math.isfinite(result.best_score)
