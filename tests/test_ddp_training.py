"""Distributed training: 2 processes (Lightning ``strategy=ddp``, gloo on CPU) through the real
``piwsl train`` equal one process on the same global batch, physics terms on.

DDP averages gradients over ranks, so 2 ranks with batch ``b`` each match one process with batch
``2b``. Lightning wraps piwsl's :class:`~piwsl.training.data.EpochShuffleSampler` in a
``DistributedSamplerWrapper`` (rank ``r`` takes positions ``r, r + 2, …`` of the epoch's
permutation and ``set_epoch`` is forwarded), so the union of the two rank batches of step ``k`` is
the one-process batch ``k``; each rank evaluates the physics terms on its own structures, whose
displacements depend only on (seed, step, frame id). All frames carry both labels and equally many
atoms: DDP averages per-rank means, which equals the global mean only then.

Both runs go through a small wrapper of ``piwsl.cli`` that makes the loss of one training step
NaN — on rank 1 only under DDP, on the global batch in the one-process run: every rank must skip
that step together (no hang in the all-reduce, the same weights afterwards).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
import torch
import yaml

from piwsl.data import read_frames
from piwsl.models import load_model

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is needed",
)


def write_data(path: Path, n: int) -> Path:
    images = []
    for f in read_frames("builtin:ethanol_train")[:n]:
        atoms = f.to_atoms()
        atoms.calc = None
        atoms.info["REF_energy"] = f.energy
        atoms.arrays["REF_forces"] = f.forces
        images.append(atoms)
    ase.io.write(path, images, format="extxyz")
    return path


INJECT = """
import os, sys
from piwsl.objective import Objective

original = Objective.__call__
calls = [0]
nan_call, nan_rank = int(os.environ["NAN_CALL"]), os.environ["NAN_RANK"]


def call(self, model, batch):
    result = original(self, model, batch)
    if calls[0] == nan_call and os.environ.get("LOCAL_RANK", "0") == nan_rank:
        result.total = result.total * float("nan")
    calls[0] += 1
    return result


Objective.__call__ = call
from piwsl.cli import main

sys.exit(main())
"""


def start(config: Path, run: Path, *overrides: str, nan_rank: str) -> subprocess.Popen:
    """``piwsl train`` through a wrapper that makes training call 3 NaN on rank ``nan_rank``."""
    script = config.parent / "inject.py"
    script.write_text(INJECT)
    env = dict(os.environ, OMP_NUM_THREADS="1", NAN_CALL="3", NAN_RANK=nan_rank)
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, str(script), "train", str(config), *overrides]
    return subprocess.Popen(
        [*command, "--run-dir", str(run)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one process group with the DDP children, killed on a hang
    )


def finish(process: subprocess.Popen, timeout: float = 150) -> str:
    try:
        return process.communicate(timeout=timeout)[0].decode()
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out = process.communicate()[0].decode()
        pytest.fail(f"piwsl train did not finish within {timeout} s (a DDP hang?):\n{out}")


def test_two_process_ddp_equals_one_process_on_the_global_batch(tmp_path):
    data = write_data(tmp_path / "d.xyz", 30)  # 24 training frames, 6 validation frames
    config = {
        "data": {"train": str(data), "n_val": 6, "n_test": 0, "skin": 0.3},
        "model": {"name": "schnet", "cutoff": 4.0, "hparams": {"features": 8, "interactions": 1}},
        "physics": {"taylor_weight": 1.0, "spatial_weight": 0.01},
        "training": {
            "max_epochs": 2,
            "num_threads": 1,
            "lr": 3e-3,
            "dtype": "float64",
            "accelerator": "cpu",
            "scheduler": "cosine",
        },
        "output": {"progress_bar": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    ddp = start(
        tmp_path / "c.yaml",
        tmp_path / "ddp",
        "training.strategy=ddp",
        "training.devices=2",
        "training.batch_size=2",
        nan_rank="1",
    )
    single = start(
        tmp_path / "c.yaml",
        tmp_path / "one",
        "training.devices=1",
        "training.batch_size=4",
        nan_rank="0",
    )
    log_ddp, log_one = finish(ddp), finish(single)
    assert ddp.returncode == 0, log_ddp
    assert single.returncode == 0, log_one
    # the NaN step: reported by rank 1, skipped by every rank; the data reported once
    assert "non-finite loss on rank 1 at epoch 0, step 3" in log_ddp
    assert log_ddp.count("non-finite gradient at epoch 0, step 3") == 2  # once per rank
    assert "non-finite loss at epoch 0, step 3" in log_one
    assert log_ddp.count("data train: 24 frames") == 1

    c_ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)
    c_one = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=False)
    # 24 frames per epoch: 6 steps of 2 × 2 frames (DDP) or of 4 frames (one process)
    assert c_ddp["global_step"] == c_one["global_step"] == 12
    assert int(c_ddp["state_dict"]["ema_updates"]) == int(c_one["state_dict"]["ema_updates"]) == 11
    assert c_ddp["piwsl_physics"] == c_one["piwsl_physics"]
    live = [k for k in c_one["state_dict"] if k.startswith("model.")]
    assert live
    moved = 0.0
    init = load_model(tmp_path / "one" / "final_model.pt")  # only for the key list / dtype
    assert next(init.parameters()).dtype == torch.float64
    for key in live:
        a, b = c_one["state_dict"][key], c_ddp["state_dict"][key]
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10, msg=f"{key} differs")
        ema = c_one["state_dict"]["ema_" + key]
        moved = max(moved, float((a - ema).abs().max()))
    assert moved > 0  # the parameters were trained (live differs from the EMA average)
    # the EMA models written at the end, and the validation errors, agree as well
    a, b = (
        load_model(tmp_path / "one" / "final_model.pt"),
        load_model(tmp_path / "ddp" / "final_model.pt"),
    )
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=1e-9, atol=1e-10)
    s_one = json.loads((tmp_path / "one" / "summary.json").read_text())
    s_ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert s_ddp["best_score"] == pytest.approx(s_one["best_score"], rel=1e-9)
    # the logged epoch means cover the batches of every rank (epoch 1: no skipped step), and
    # Lightning has nothing to warn about their synchronisation
    one, two = epoch_log(tmp_path / "one", 1), epoch_log(tmp_path / "ddp", 1)
    for key in ("train_loss", "train_forces_raw", "train_taylor_raw", "lr", "val_loss"):
        assert float(two[key]) == pytest.approx(float(one[key]), rel=1e-5), key
    assert "sync_dist" not in log_ddp


def epoch_log(run: Path, epoch: int) -> dict[str, str]:
    """The metrics.csv entries of ``epoch`` (Lightning writes train and validation rows apart)."""
    rows = csv.DictReader((run / "logs" / "version_0" / "metrics.csv").open())
    merged: dict[str, str] = {}
    for row in rows:
        if row["epoch"] == str(epoch):
            merged.update({k: v for k, v in row.items() if v != ""})
    return merged


def test_epoch_sampler_shards_like_one_process_on_the_global_batch(monkeypatch):
    """Without processes: rank r of W yields positions r, r + W, … of the one-process order."""
    from piwsl.training import data as training_data

    n, b, world = 11, 2, 3
    one = training_data.EpochShuffleSampler(n, seed=5)
    one.set_epoch(3)
    order = list(one)
    assert sorted(order) == list(range(n))
    shards = []
    for rank in range(world):
        monkeypatch.setattr(training_data, "_rank_world", lambda r=rank: (r, world))
        sampler = training_data.EpochShuffleSampler(n, seed=5)
        sampler.set_epoch(3)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1]) == 4  # ceil(11 / 3), padded by wrapping
    padded = order + order[:1]
    for step in range(2):  # the rank batches of a step are the one-process batch of W·b frames
        union = sorted(x for s in shards for x in s[step * b : (step + 1) * b])
        assert union == sorted(padded[step * world * b : (step + 1) * world * b])
    # another epoch, another order on every rank
    monkeypatch.setattr(training_data, "_rank_world", lambda: (0, world))
    sampler = training_data.EpochShuffleSampler(n, seed=5)
    sampler.set_epoch(4)
    assert list(sampler) != shards[0]
    # validation: every frame on exactly one rank
    seen = []
    for rank in range(world):
        monkeypatch.setattr(training_data, "_rank_world", lambda r=rank: (r, world))
        seen += list(training_data.ShardSampler(n))
    assert sorted(seen) == list(range(n))
