"""Reliability: implausible data is reported, numerical faults are survived, killed runs resume.

Complements tests/test_bad_input.py (reader errors) and tests/test_training.py (resume in-process,
NaN loss skip): here duplicates across splits, absurd distances, energies in the wrong unit,
checkpoints of another version or model, empty training splits, unknown elements at MD time,
NaN loss and NaN gradients inside a real ``train()`` run, and a ``piwsl train`` process killed
with SIGKILL and resumed, compared with an uninterrupted run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.build import molecule
from test_training import tiny_config as training_tiny_config
from test_training import write_tiny_extxyz

from piwsl.config import config_from_dict
from piwsl.data import Frame, read_frames
from piwsl.errors import CheckpointError, ConfigError, DataError, NonFiniteError
from piwsl.models import build_model, load_model, save_model
from piwsl.units import HARTREE, KCAL_MOL

torch.set_num_threads(1)

DATA_LOG = "piwsl.training.data"
MODULE_LOG = "piwsl.training.module"


def write_extxyz(
    path: Path, n: int = 20, unit: float = 1.0, unlabelled_every: int = 0, start: int = 0
) -> Path:
    """rMD17 ethanol frames, all labelled unless ``unlabelled_every`` (see test_training)."""
    return write_tiny_extxyz(path, n, unlabelled_every, start, unit)


def tiny_config(data_path: Path, run_dir: Path, **sections) -> dict:
    """test_training's tiny config with a smaller SchNet (8 features, 1 interaction)."""
    sections["model"] = {"hparams": {"features": 8, "interactions": 1}, **sections.get("model", {})}
    return training_tiny_config(data_path, run_dir, **sections)


def warnings_of(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelname == "WARNING"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_extxyz(tmp_path_factory.mktemp("data") / "tiny.xyz", n=20, unlabelled_every=5)


# --------------------------------------------------------------------------- implausible data
def test_duplicates_between_train_and_test_are_named(tmp_path, caplog):
    from piwsl.training import prepare_data

    train = write_extxyz(tmp_path / "train.xyz", n=12)
    # the test file: frames 3 and 7 of the training file (one of them relabelled: labels do not
    # matter, positions do) and two new frames
    images = ase.io.read(train, index=":")
    copy7 = images[7].copy()
    copy7.info["REF_energy"] = images[7].info["REF_energy"] + 1.0
    copy7.arrays["REF_forces"] = images[7].arrays["REF_forces"]
    new = list(ase.io.read(write_extxyz(tmp_path / "new.xyz", n=2, start=500), index=":"))
    ase.io.write(tmp_path / "test.xyz", [images[3], new[0], copy7, new[1]], format="extxyz")
    cfg = config_from_dict(
        tiny_config(train, tmp_path / "run", data={"test": str(tmp_path / "test.xyz")})
    )
    with caplog.at_level(logging.WARNING, logger=DATA_LOG):
        data = prepare_data(cfg.data)
    (message,) = [m for m in warnings_of(caplog, DATA_LOG) if "duplicate" in m]
    test_file = str(tmp_path / "test.xyz")
    # which test frames, and which training frames they copy
    assert message.startswith("2 validation/test frames duplicate")
    assert f"test {test_file!r} frame 0 = train {str(train)!r} frame 3" in message
    assert f"test {test_file!r} frame 2 = train {str(train)!r} frame 7" in message
    assert "frame 1 =" not in message and "frame 3 =" not in message
    # frames 3/7 may have been split into validation: then they are not training frames
    train_idx = {f.index for f in data.train}
    assert {3, 7} <= train_idx

    # a slightly moved copy (1e-3 Å) is a different structure: no warning
    caplog.clear()
    moved = images[3].copy()
    moved.positions[0, 0] += 1e-3
    ase.io.write(tmp_path / "test2.xyz", [moved, *new], format="extxyz")
    cfg2 = config_from_dict(
        tiny_config(train, tmp_path / "run", data={"test": str(tmp_path / "test2.xyz")})
    )
    with caplog.at_level(logging.WARNING, logger=DATA_LOG):
        prepare_data(cfg2.data)
    assert not [m for m in warnings_of(caplog, DATA_LOG) if "duplicate" in m]


def test_atoms_closer_than_half_an_angstrom_are_named(tmp_path, caplog):
    from piwsl.training import prepare_data
    from piwsl.training.data import MIN_DISTANCE, find_close_atoms

    path = write_extxyz(tmp_path / "close.xyz", n=10)
    images = ase.io.read(path, index=":")
    # frame 6: put H 8 at 0.3 Å from O 2; frame 2: a structure given in Bohr read as Å is not
    # absurd (bonds 1.8 "Å"), nothing fires there
    direction = images[6].positions[8] - images[6].positions[2]
    images[6].positions[8] = images[6].positions[2] + 0.3 * direction / np.linalg.norm(direction)
    ase.io.write(path, images, format="extxyz")
    cfg = config_from_dict(tiny_config(path, tmp_path / "run", data={"n_val": 2}))
    with caplog.at_level(logging.WARNING, logger=DATA_LOG):
        prepare_data(cfg.data)
    (message,) = [m for m in warnings_of(caplog, DATA_LOG) if "closer than" in m]
    assert message.startswith(f"1 frames have atoms closer than {MIN_DISTANCE} Å")
    assert f"{str(path)!r} frame 6: 0.300 Å" in message
    # periodic images count: two atoms 0.4 Å apart across a cell face
    crystal = Frame(
        numbers=[29, 29],
        positions=[[0.1, 0, 0], [2.7, 0, 0]],
        cell=np.diag([3.0, 3.0, 3.0]),
        pbc=True,
        source="cu.xyz",
        index=4,
    )
    assert find_close_atoms([crystal]) == ["'cu.xyz' frame 4: 0.400 Å"]
    assert find_close_atoms([crystal], threshold=0.3) == []


def test_energy_unit_heuristic(tmp_path, caplog):
    """Hartree or kcal/mol numbers declared as eV are flagged, correct data is not."""
    from piwsl.training import prepare_data

    def warned(path: Path, unit: str = "eV", **data) -> list[str]:
        caplog.clear()
        cfg = config_from_dict(
            tiny_config(path, tmp_path / "run", data={"energy_unit": unit, "n_val": 2, **data})
        )
        with caplog.at_level(logging.WARNING, logger=DATA_LOG):
            prepare_data(cfg.data)
        return [m for m in warnings_of(caplog, DATA_LOG) if "energies look like" in m]

    in_ev = write_extxyz(tmp_path / "ev.xyz", n=10)
    in_ha = write_extxyz(tmp_path / "ha.xyz", n=10, unit=HARTREE)
    in_kcal = write_extxyz(tmp_path / "kcal.xyz", n=10, unit=KCAL_MOL)
    assert warned(in_ev) == []
    assert warned(in_ha, "Hartree") == []
    assert warned(in_kcal, "kcal/mol") == []
    (message,) = warned(in_ha)
    assert "energies look like Hartree, but they were read as 'eV'" in message
    assert f"{str(in_ha)!r} frame" in message and "data.energy_unit=Hartree" in message
    (message,) = warned(in_kcal)
    assert "look like kcal/mol" in message
    (message,) = warned(in_ev, "kcal/mol")  # eV numbers declared as kcal/mol
    assert "look like eV, but they were read as 'kcal/mol'" in message
    # the built-in data (kcal/mol on disk, converted by the reader) is fine
    assert warned(Path("builtin:ethanol_train"), n_train=40, n_val=10) == []
    # energies with a reference removed (atomisation-like, a few eV per atom) match no unit
    from piwsl.training.data import guess_energy_unit

    frames = read_frames(in_ev)
    for f in frames:
        f.energy = -3.0 * f.n_atoms + 0.01 * f.index
    assert guess_energy_unit(frames, "eV") is None


def test_empty_training_split_after_filtering(tmp_path):
    from piwsl.training import prepare_data

    path = write_extxyz(tmp_path / "d.xyz", n=10)
    cfg = config_from_dict(tiny_config(path, tmp_path / "run", data={"n_val": 6, "n_test": 4}))
    with pytest.raises(ConfigError, match="training split is empty"):
        prepare_data(cfg.data)
    # forces only, but training keeps energies only: nothing left to fit
    images = ase.io.read(path, index=":")
    for atoms in images:
        del atoms.info["REF_energy"]
    ase.io.write(tmp_path / "forces_only.xyz", images, format="extxyz")
    cfg = config_from_dict(
        tiny_config(
            tmp_path / "forces_only.xyz",
            tmp_path / "run",
            data={"n_val": 2, "train_labels": "energy"},
        )
    )
    with pytest.raises(DataError, match="carries an energy or forces") as info:
        prepare_data(cfg.data)
    assert "forces_only.xyz" in str(info.value)


def test_checkpoint_of_another_format_version(tmp_path):
    torch.manual_seed(0)
    model = build_model("schnet", elements=[1, 8], cutoff=3.0, features=8, interactions=1)
    path = tmp_path / "m.pt"
    save_model(model, path)
    state = torch.load(path, weights_only=False)
    state["format_version"] = 99
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"format 99.*reads format 1.*retrain") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_resume_from_a_checkpoint_of_another_model(tiny_data, tmp_path):
    """--resume with a changed model section is refused before Lightning touches the weights,
    also when config.yaml was deleted (the checkpoint carries the config)."""
    from piwsl.training import train

    run = tmp_path / "run"
    train(config_from_dict(tiny_config(tiny_data, run, training={"max_epochs": 1})), evaluate=False)
    (run / "config.yaml").unlink()
    other = tiny_config(tiny_data, run, model={"hparams": {"features": 16, "interactions": 1}})
    with pytest.raises(ConfigError, match=r"belongs to another run: .*model\.hparams\.") as info:
        train(config_from_dict(other), resume=True, evaluate=False)
    assert "last.ckpt" in str(info.value)
    assert "model.hparams.features: 8 there, 16 now" in str(info.value)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        train(config_from_dict(other), resume=True, evaluate=False)


def test_unknown_element_at_md_time_is_an_error_naming_it(tmp_path, capsys):
    from piwsl.cli import main

    torch.manual_seed(0)
    model = build_model("schnet", elements=[1, 6, 8], cutoff=3.0, features=8, interactions=1)
    save_model(model, tmp_path / "m.pt")
    ase.io.write(tmp_path / "hcn.xyz", molecule("HCN"), format="extxyz")
    rc = main(
        [
            "md",
            str(tmp_path / "m.pt"),
            str(tmp_path / "hcn.xyz"),
            "-o",
            str(tmp_path / "md"),
            "--no-plots",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "error:" in err and "Z=7" in err


# --------------------------------------------------------------------------- numerical faults
class _NaNGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def inject(monkeypatch, plan: dict[int, str], record: list | None = None) -> list[int]:
    """Make the n-th training objective call (0-based) return a NaN loss ("loss") or a finite
    loss with NaN gradients ("grad"); ``record`` receives a copy of the parameters per call."""
    from piwsl.objective import Objective

    original = Objective.__call__
    calls = [0]

    def wrapped(self, model, batch):
        n = calls[0]
        calls[0] += 1
        if record is not None:
            record.append([p.detach().clone() for p in model.parameters()])
        result = original(self, model, batch)
        kind = plan.get(n) or plan.get("rest" if n >= plan.get("from", 10**9) else None)
        if kind == "loss":
            result.total = result.total * float("nan")
        elif kind == "grad":
            result.total = _NaNGrad.apply(result.total)
        return result

    monkeypatch.setattr(Objective, "__call__", wrapped)
    return calls


def test_nan_loss_and_nan_gradient_steps_are_skipped(tmp_path, monkeypatch, caplog):
    from piwsl.training import train

    # 16 labelled training frames, batch 4: 4 steps per epoch, 8 steps in 2 epochs
    data = write_extxyz(tmp_path / "d.xyz", n=20)
    run = tmp_path / "run"
    params: list[list[torch.Tensor]] = []
    calls = inject(monkeypatch, {2: "loss", 5: "grad"}, record=params)
    cfg = config_from_dict(tiny_config(data, run, training={"max_nonfinite_steps": 2}))
    with caplog.at_level(logging.WARNING, logger=MODULE_LOG):
        result = train(cfg, evaluate=False)
    assert calls[0] == 8 and result.steps == 8
    messages = warnings_of(caplog, MODULE_LOG)
    assert len(messages) == 2
    assert "non-finite loss at epoch 0, step 2" in messages[0] and "step skipped" in messages[0]
    assert "non-finite gradient at epoch 1" in messages[1] and "parameters " in messages[1]
    # the skipped steps left the weights alone; the others moved them
    same = [
        all(torch.equal(a, b) for a, b in zip(params[k], params[k + 1], strict=True))
        for k in range(7)
    ]
    assert same == [False, False, True, False, False, True, False]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(ckpt["state_dict"]["ema_updates"]) == 6  # the EMA skipped both
    final = load_model(run / "final_model.pt")
    assert all(bool(torch.isfinite(p).all()) for p in final.parameters())


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_persistent_nan_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, kind
):
    from piwsl.training import train

    data = write_extxyz(tmp_path / "d.xyz", n=20)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    snapshot: dict[str, str] = {}
    from piwsl.objective import Objective

    inject(monkeypatch, {"from": 5, "rest": kind})
    injected = Objective.__call__

    def remember_checkpoint(self, model, batch):
        if last.is_file() and "sha" not in snapshot:  # epoch 0 is done: its checkpoint exists
            snapshot["sha"] = hashlib.sha256(last.read_bytes()).hexdigest()
        return injected(self, model, batch)

    monkeypatch.setattr(Objective, "__call__", remember_checkpoint)
    cfg = config_from_dict(
        tiny_config(data, run, training={"max_nonfinite_steps": 3, "max_epochs": 3})
    )
    with pytest.raises(NonFiniteError, match=f"training {kind}\\w* was non-finite for 3 steps"):
        train(cfg, evaluate=False)
    assert snapshot["sha"] == hashlib.sha256(last.read_bytes()).hexdigest()
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 4
    model = load_model(last)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert not (run / "final_model.pt").exists()


def test_checkpoint_with_nan_weights_is_refused(tiny_data, tmp_path):
    from piwsl.objective import Objective
    from piwsl.training import prepare_data
    from piwsl.training.builders import build_force_field
    from piwsl.training.module import PiwslModule

    cfg = config_from_dict(tiny_config(tiny_data, tmp_path))
    data = prepare_data(cfg.data)
    module = PiwslModule(
        build_force_field(cfg, data), Objective.from_config(cfg.loss, cfg.physics), cfg.training
    )
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert "piwsl_model" in checkpoint
    with torch.no_grad():
        next(module.model.parameters())[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite weights.*last good"):
        module.on_save_checkpoint({})


# --------------------------------------------------------------------------- killed and resumed
def _piwsl_train(config: Path, run: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.Popen(
        [sys.executable, "-m", "piwsl.cli", "train", str(config), "--run-dir", str(run), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A real ``piwsl train`` (physics terms on) killed with SIGKILL after its first checkpoint,
    resumed with ``--resume``: the same weights, metrics and sampler state as one straight run."""
    data = write_extxyz(tmp_path / "d.xyz", n=30, unlabelled_every=6)
    config = tiny_config(
        data,
        tmp_path / "unused",
        training={"batch_size": 1, "max_epochs": 5, "scheduler": "cosine"},
        # one evaluation mode: with "auto" each process keeps the mode its own timings favour,
        # and two modes agree to rounding only, not bit for bit
        physics={"taylor_weight": 1.0, "spatial_weight": 0.01, "evaluation": "split"},
    )
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = _piwsl_train(tmp_path / "tiny.yaml", straight)
    victim = _piwsl_train(tmp_path / "tiny.yaml", killed)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240  # start-up alone took ~60 s on the loaded 2-core machine
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.15)  # into the next epoch (26 steps per epoch, a few ms each)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "final_model.pt").exists()
    epoch_at_kill = torch.load(last, weights_only=False)["epoch"]
    assert epoch_at_kill < 4
    # it died inside the next epoch: that epoch never reached the log (written at epoch end)
    with open(killed / "logs" / "version_0" / "metrics.csv", newline="") as handle:
        logged = {int(row["epoch"]) for row in csv.DictReader(handle)}
    assert max(logged) == epoch_at_kill

    resumed = _piwsl_train(tmp_path / "tiny.yaml", killed, "--resume")
    log_resumed = resumed.communicate(timeout=120)[0].decode()
    log_straight = reference.communicate(timeout=120)[0].decode()
    assert resumed.returncode == 0, log_resumed
    assert reference.returncode == 0, log_straight

    # the label coverage is reported once per split, and this clean data raises no warning
    assert log_straight.count("data train: 26 frames") == 1
    assert log_straight.count("data validation: 4 frames") == 1
    for warning in ("duplicate", "closer than", "look like", "non-finite"):
        assert warning not in log_straight + log_resumed
    a, b = load_model(straight / "final_model.pt"), load_model(killed / "final_model.pt")
    mismatch = [k for k, v in a.state_dict().items() if not torch.equal(v, b.state_dict()[k])]
    assert mismatch == [], f"weights differ after resume: {mismatch}"  # bit-identical on CPU
    ca = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)
    cb = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)
    assert ca["global_step"] == cb["global_step"] == 5 * 26
    assert ca["piwsl_physics"] == cb["piwsl_physics"]
    sa = json.loads((straight / "summary.json").read_text())
    sb = json.loads((killed / "summary.json").read_text())
    assert sa["best_score"] == sb["best_score"]
    assert sa["test"] == sb["test"]
