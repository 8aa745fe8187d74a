"""The training loop: loss goes down, energy-only runs, resume, NaN guard, checkpoints."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from piwsl.config import config_from_dict
from piwsl.data import read_frames
from piwsl.errors import ConfigError, NonFiniteError
from piwsl.models import load_model

torch.set_num_threads(1)


def write_tiny_extxyz(
    path: Path, n: int = 20, unlabelled_every: int = 5, start: int = 0, unit: float = 1.0
) -> Path:
    """rMD17 ethanol frames ``start … start+n`` as extxyz with REF_ labels divided by ``unit``
    (eV); every ``unlabelled_every``-th frame carries no labels at all (0: all labelled)."""
    frames = read_frames("builtin:ethanol_train")[start : start + n]
    images = []
    for k, f in enumerate(frames):
        atoms = f.to_atoms()
        atoms.calc = None
        if not unlabelled_every or k % unlabelled_every != unlabelled_every - 1:
            atoms.info["REF_energy"] = f.energy / unit
            atoms.arrays["REF_forces"] = f.forces / unit
        images.append(atoms)
    ase.io.write(path, images, format="extxyz")
    return path


def tiny_config(data_path: Path, run_dir: Path, **sections) -> dict:
    cfg = {
        "data": {"train": str(data_path), "n_val": 4, "n_test": 0, "skin": 0.3},
        "model": {
            "name": "schnet",
            "cutoff": 4.0,
            "hparams": {"features": 16, "interactions": 2, "n_rbf": 8},
        },
        "training": {
            "batch_size": 4,
            "max_epochs": 2,
            "num_threads": 1,
            "lr": 3e-3,
            "scheduler": "plateau",
        },
        "output": {"run_dir": str(run_dir), "progress_bar": False},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def read_epoch_rows(run_dir: Path, version: int = 0) -> list[dict[str, str]]:
    with open(run_dir / "logs" / f"version_{version}" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_extxyz(tmp_path_factory.mktemp("data") / "tiny.xyz")


def test_prepare_data_splits_references_and_unlabelled(tiny_data, tmp_path):
    from piwsl.training import prepare_data

    extra = write_tiny_extxyz(tmp_path / "extra.xyz", n=3, unlabelled_every=1)
    cfg = config_from_dict(
        tiny_config(tiny_data, tmp_path / "run", data={"n_test": 2, "unlabelled": [str(extra)]})
    )
    data = prepare_data(cfg.data)
    assert (len(data.val), len(data.test)) == (4, 2)
    assert len(data.train) == 20 - 4 - 2 + 3
    assert sum(not f.has_energy and not f.has_forces for f in data.train[-3:]) == 3
    assert data.elements == [1, 6, 8]
    labelled = [f for f in data.train if f.has_forces]
    rms = math.sqrt(np.mean(np.concatenate([f.forces for f in labelled]) ** 2))
    assert data.scale == pytest.approx(rms)
    residual = [
        (f.energy - sum(data.e0s[int(z)] for z in f.numbers)) / f.n_atoms
        for f in data.train
        if f.has_energy
    ]
    assert data.shift == pytest.approx(np.mean(residual), abs=1e-9)
    # the split is seeded: same seed, same frames; another seed, another split
    again = prepare_data(cfg.data)
    assert [f.index for f in again.val] == [f.index for f in data.val]
    other = prepare_data(cfg.data.model_copy(update={"split_seed": 1}))
    assert [f.index for f in other.val] != [f.index for f in data.val]


def test_loss_decreases_and_run_dir_is_complete(tiny_data, tmp_path):
    from piwsl.training import train

    run = tmp_path / "run"
    cfg = config_from_dict(
        tiny_config(
            tiny_data,
            run,
            training={"max_epochs": 8, "lr": 1e-2},
            model={"hparams": {"features": 32, "interactions": 2, "n_rbf": 16}},
            loss={"force_weight": 10.0},
        )
    )
    result = train(cfg)
    rows = read_epoch_rows(run)
    loss = column(rows, "train_loss")
    val_f = column(rows, "val_forces_mae_meV_per_A")
    assert len(loss) == 8 and len(val_f) == 8
    assert np.mean(loss[-2:]) < 0.5 * loss[0]
    assert min(val_f[-3:]) < 0.7 * val_f[0]
    for key in (
        "train_energy_raw",
        "train_energy_weighted",
        "train_forces_raw",
        "train_forces_weighted",
        "val_energy_mae_meV",
        "val_energy_mae_meV_per_atom",
        "val_forces_rmse_meV_per_A",
        "lr",
    ):
        assert column(rows, key), key
    # weighted = weight × raw, logged per term
    raw, weighted = column(rows, "train_forces_raw"), column(rows, "train_forces_weighted")
    assert weighted[-1] == pytest.approx(cfg.loss.weight("forces") * raw[-1], rel=1e-5)
    for name in (
        "config.yaml",
        "best_model.pt",
        "final_model.pt",
        "summary.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).is_file(), name
    # with n_test=0 the best model is evaluated on the validation set
    assert result.test_metrics_path == run / "evaluation" / "validation_metrics.json"
    assert result.best_score == pytest.approx(min(val_f), rel=1e-5)
    # the Lightning checkpoint loads as a model and equals best_model.pt
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    assert ckpt["piwsl_model"]["name"] == "schnet"
    from_ckpt, from_pt = (
        load_model(run / "checkpoints" / "best.ckpt"),
        load_model(run / "best_model.pt"),
    )
    for key, value in from_pt.state_dict().items():
        torch.testing.assert_close(from_ckpt.state_dict()[key], value)


def test_energy_only_training_computes_no_force_loss(tiny_data, tmp_path, monkeypatch):
    from piwsl.models.forces import ForceField
    from piwsl.training import train

    calls: list[tuple[bool, bool]] = []
    original = ForceField.forward

    def spy(self, batch, compute_forces=True, create_graph=None):
        calls.append((self.training, compute_forces))
        return original(self, batch, compute_forces, create_graph)

    monkeypatch.setattr(ForceField, "forward", spy)
    run = tmp_path / "run"
    cfg = config_from_dict(tiny_config(tiny_data, run, loss={"force_weight": 0.0}))
    train(cfg, evaluate=False)
    training_calls = [forces for is_training, forces in calls if is_training]
    assert training_calls and not any(training_calls)
    rows = read_epoch_rows(run)
    assert "train_forces_raw" not in rows[0]
    assert column(rows, "train_energy_raw")
    # validation still reports force errors (the labels exist) and selects on them
    assert column(rows, "val_forces_mae_meV_per_A")


def test_resume_continues_to_the_same_state(tiny_data, tmp_path):
    from piwsl.training import train

    straight = tmp_path / "straight"
    train(
        config_from_dict(tiny_config(tiny_data, straight, training={"max_epochs": 4})),
        evaluate=False,
    )
    split = tmp_path / "split"
    first = train(config_from_dict(tiny_config(tiny_data, split)), evaluate=False)
    assert first.epochs == 2
    with pytest.raises(ConfigError, match="--resume"):
        train(config_from_dict(tiny_config(tiny_data, split, training={"max_epochs": 4})))
    second = train(
        config_from_dict(tiny_config(tiny_data, split, training={"max_epochs": 4})),
        resume=True,
        evaluate=False,
    )
    assert second.epochs == 4
    # the reported training time includes the first attempt's (saved with the checkpoint)
    assert second.train_time_s > first.train_time_s
    steps_per_epoch = math.ceil(14 / 4)
    assert second.steps == 4 * steps_per_epoch
    ckpt = torch.load(split / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 * steps_per_epoch
    assert int(ckpt["state_dict"]["ema_updates"]) == 4 * steps_per_epoch
    # the resumed run logged into a new log version, up to the last epoch (index 3); Lightning
    # re-runs the end of epoch 1 (its checkpoint was written during validation)
    assert {2.0, 3.0} <= set(column(read_epoch_rows(split, 1), "epoch")) <= {1.0, 2.0, 3.0}
    # 2 + 2 epochs with resume end where 4 epochs in one go end
    a, b = load_model(straight / "final_model.pt"), load_model(split / "final_model.pt")
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_nonfinite_loss_skips_then_raises(tiny_data, tmp_path):
    from piwsl.data import frames_to_batch
    from piwsl.objective import Objective, ObjectiveResult
    from piwsl.training import prepare_data
    from piwsl.training.builders import build_force_field
    from piwsl.training.module import PiwslModule

    cfg = config_from_dict(tiny_config(tiny_data, tmp_path, training={"max_nonfinite_steps": 3}))
    data = prepare_data(cfg.data)
    module = PiwslModule(
        build_force_field(cfg, data), Objective.from_config(cfg.loss, cfg.physics), cfg.training
    )
    batch = frames_to_batch([f for f in data.train if f.has_forces][:2], cfg.model.cutoff)
    assert module.training_step(batch, 0) is not None  # finite: a loss tensor

    def nan_objective(model, batch):
        nan = torch.tensor(float("nan"))
        return ObjectiveResult(total=nan, output={}, raw={"energy": nan}, weighted={"energy": nan})

    module.objective = nan_objective
    module.train_cfg = cfg.training
    assert module.training_step(batch, 0) is None
    assert module.training_step(batch, 1) is None
    with pytest.raises(NonFiniteError, match="non-finite for 3 steps in a row"):
        module.training_step(batch, 2)


def test_checkpoint_writes_are_atomic(tmp_path):
    from piwsl.training.callbacks import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 (pickling a lambda fails mid-write)
        io.save_checkpoint({"epoch": 2, "bad": lambda: None}, path)
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_bad_model_hparam_is_a_config_error(tiny_data, tmp_path):
    from piwsl.training import train

    cfg = config_from_dict(
        tiny_config(tiny_data, tmp_path / "r", model={"hparams": {"featres": 8}})
    )
    with pytest.raises(ConfigError, match="featres"):
        train(cfg)


def test_energy_only_data_scales_by_energy_spread(tmp_path):
    from piwsl.training import prepare_data

    frames = read_frames("builtin:ethanol_train")[:12]
    images = []
    for f in frames:
        atoms = f.to_atoms()
        atoms.info["REF_energy"] = atoms.calc.results["energy"]
        atoms.calc = None
        images.append(atoms)
    path = tmp_path / "energies.xyz"
    ase.io.write(path, images, format="extxyz")
    cfg = config_from_dict(tiny_config(path, tmp_path / "run", data={"e0s": "zero", "n_val": 2}))
    data = prepare_data(cfg.data)
    per_atom = [f.energy / f.n_atoms for f in data.train]
    assert data.shift == pytest.approx(np.mean(per_atom))
    assert data.scale == pytest.approx(np.std(per_atom))
    assert not data.val_has_forces and data.val_has_energy


def test_physics_terms_are_logged_and_their_state_resumes(tiny_data, tmp_path):
    from piwsl.training import train

    run = tmp_path / "run"
    physics = {"taylor_weight": 1.2, "spatial_weight": 0.01}
    train(
        config_from_dict(tiny_config(tiny_data, run, physics=physics, training={"max_epochs": 1})),
        evaluate=False,
    )
    rows = read_epoch_rows(run)
    for term in ("taylor", "spatial"):
        raw, weighted = column(rows, f"train_{term}_raw"), column(rows, f"train_{term}_weighted")
        assert raw and raw[0] > 0
        assert weighted[0] == pytest.approx(physics[f"{term}_weight"] * raw[0], rel=1e-5)
    cfg2 = config_from_dict(
        tiny_config(tiny_data, run, physics=physics, training={"max_epochs": 2})
    )
    train(cfg2, resume=True, evaluate=False)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    # last.ckpt is the latest epoch even when validation did not improve, and the displacement
    # sampler continued where it stopped (one draw per training step)
    assert ckpt["epoch"] == 1
    assert ckpt["piwsl_physics"]["step"] == ckpt["global_step"] == 2 * math.ceil(14 / 4)


def test_validation_every_n_epochs_drives_plateau_early_stop_and_test_curve(tmp_path):
    """The convergence protocol: validation every 2 epochs, the plateau schedule stepped on each
    validation, early stopping after `patience` validations without improvement (stopped_by
    'plateau'), and the EMA model's test errors recorded at the requested steps."""
    from piwsl.training import train

    data = write_tiny_extxyz(tmp_path / "d.xyz", n=16, unlabelled_every=0)
    test = write_tiny_extxyz(tmp_path / "t.xyz", n=6, unlabelled_every=0, start=100)
    cfg = tiny_config(
        data,
        tmp_path / "run",
        data={"test": [str(test)]},
        training={
            "max_epochs": 200,
            "lr": 1e-9,  # nothing improves: the plateau rule must end the run
            "val_every_n_epochs": 2,
            "plateau_patience": 0,
            "plateau_factor": 0.5,
            "early_stopping_patience": 3,
        },
        output={"test_curve_steps": [3, 6, 7, 1000]},
    )
    result = train(config_from_dict(cfg))
    steps_per_epoch = math.ceil(12 / 4)
    rows = read_epoch_rows(tmp_path / "run")
    val_epochs = sorted({int(float(r["epoch"])) for r in rows if r.get("val_loss")})
    assert val_epochs == list(range(1, result.epochs, 2))  # epochs 1, 3, 5, …: every 2nd
    # the first validation sets the best score; 3 more without improvement stop the run
    assert result.stopped_by == "plateau" and len(val_epochs) == 4
    assert result.steps == result.epochs * steps_per_epoch == 8 * steps_per_epoch
    curve = json.loads((tmp_path / "run" / "test_curve.json").read_text())
    assert [p["step"] for p in curve] == [3, 6, 7]
    assert all(p["forces_mae_meV_per_A"] > 0 and p["energy_mae_meV"] > 0 for p in curve)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by"] == "plateau"
    # with lr ≈ 0 the weights do not move: every point is the saved (EMA) model's test error,
    # computed the way `piwsl evaluate` computes it
    from piwsl.evaluation import compute_metrics, predict

    frames = read_frames(str(test))
    final = compute_metrics(
        frames, predict(load_model(tmp_path / "run" / "final_model.pt"), frames)
    )
    for point in curve:
        assert point["forces_mae_meV_per_A"] == pytest.approx(final["forces_mae_meV_per_A"], 1e-4)


def test_step_cap_is_reported_as_cap(tiny_data, tmp_path):
    from piwsl.training import train

    cfg = tiny_config(tiny_data, tmp_path / "run", training={"max_epochs": None, "max_steps": 5})
    result = train(config_from_dict(cfg), evaluate=False)
    assert result.steps == 5 and result.stopped_by == "cap"


def test_the_run_stops_when_the_plateau_schedule_reaches_stop_lr(tiny_data, tmp_path):
    from piwsl.training import train

    lr = 1e-3
    training = {
        "max_epochs": 50,
        "lr": lr,
        "val_every_n_epochs": 2,
        "plateau_patience": 0,
        "plateau_threshold": 0.99,  # no validation improves by 99 %: each one after the first cuts
        "stop_lr": lr / 4,
    }
    result = train(
        config_from_dict(tiny_config(tiny_data, tmp_path / "run", training=training)),
        evaluate=False,
    )
    # validations after epochs 1, 3, 5: the first sets the best score, the next two halve the
    # lr (only when they ran: the schedule steps on validations); epoch 6 trains no step
    assert result.steps == 6 * math.ceil(14 / 4) and result.stopped_by == "plateau"
    lrs = column(read_epoch_rows(tmp_path / "run"), "lr")
    assert lrs == pytest.approx([lr] * 4 + [lr / 2] * 2 + [lr / 4])  # the last: epoch 6
    with pytest.raises(ConfigError, match="never stop"):
        config_from_dict(tiny_config(tiny_data, tmp_path, training={"stop_lr": 1e-7}))


def _best_state(run: Path) -> dict:
    """The best-score ModelCheckpoint's state in ``run``'s last checkpoint."""
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    (state,) = (
        v
        for k, v in ckpt["callbacks"].items()
        if k.startswith("ModelCheckpoint{") and "'monitor': None" not in k
    )
    return state


def test_a_moved_run_folder_resumes_with_its_best_score(tiny_data, tmp_path, recwarn):
    """A run folder copied elsewhere (another machine, another name) resumes with its best
    validation score and best checkpoint, read in the new folder (Lightning alone drops both when
    the checkpoint folder changed)."""
    import shutil

    from piwsl.training import train

    first, moved = tmp_path / "there", tmp_path / "here"
    train(config_from_dict(tiny_config(tiny_data, first)), evaluate=False)
    before = _best_state(first)
    shutil.move(first, moved)
    result = train(
        config_from_dict(tiny_config(tiny_data, moved, training={"max_epochs": 4})),
        resume=True,
        evaluate=False,
    )
    assert result.epochs == 4
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    after = _best_state(moved)
    assert after["dirpath"] == str(moved / "checkpoints")
    assert Path(after["best_model_path"]).is_file()
    assert Path(after["best_model_path"]).parent == moved / "checkpoints"
    assert float(after["best_model_score"]) <= float(before["best_model_score"])


def test_relocated_moves_only_the_paths_under_the_old_folder():
    from piwsl.training.callbacks import relocated

    state = {
        "dirpath": "/a/run/checkpoints",
        "best_model_path": "/a/run/checkpoints/best.ckpt",
        "last_model_path": "",
        "kth_best_model_path": "/a/run/checkpoints2/x.ckpt",  # a sibling, not inside
        "best_k_models": {"/a/run/checkpoints/best.ckpt": 1.0},
        "best_model_score": 1.0,
    }
    out = relocated(state, "/a/run/checkpoints", "/b/checkpoints")
    assert out["best_model_path"] == "/b/checkpoints/best.ckpt"
    assert (
        out["kth_best_model_path"] == "/a/run/checkpoints2/x.ckpt" and out["last_model_path"] == ""
    )
    assert out["best_k_models"] == {"/b/checkpoints/best.ckpt": 1.0}
    assert out["best_model_score"] == 1.0 and state["dirpath"] == "/a/run/checkpoints"


def test_resume_with_early_stopping_and_validation_every_epoch(tiny_data, tmp_path):
    """Early stopping is checked after validations: a resumed run (no score yet) used to raise."""
    from piwsl.training import train

    run = tmp_path / "run"
    training = {"early_stopping_patience": 5}
    train(config_from_dict(tiny_config(tiny_data, run, training=training)), evaluate=False)
    resumed = train(
        config_from_dict(tiny_config(tiny_data, run, training={**training, "max_epochs": 4})),
        resume=True,
        evaluate=False,
    )
    assert resumed.epochs == 4 and resumed.stopped_by == "cap"


def test_changed_plateau_settings_take_effect_on_resume(tiny_data, tmp_path):
    """A checkpoint restores the scheduler's and early stopping's saved settings; the configured
    ones must win (their counters and best score are kept)."""
    from piwsl.training import train
    from piwsl.training.callbacks import ConfiguredEarlyStopping

    run, lr = tmp_path / "run", 1e-3
    first = {"max_epochs": 2, "lr": lr, "plateau_patience": 50, "early_stopping_patience": 50}
    train(config_from_dict(tiny_config(tiny_data, run, training=first)), evaluate=False)
    strict = {"plateau_patience": 0, "plateau_threshold": 0.99, "stop_lr": lr / 4}
    second = {**first, "max_epochs": 50, **strict}
    result = train(
        config_from_dict(tiny_config(tiny_data, run, training=second)), resume=True, evaluate=False
    )
    # with the saved patience (50) nothing would be cut; with 0 each validation halves the lr
    assert result.stopped_by == "plateau" and result.epochs < 10
    stop = ConfiguredEarlyStopping("val_loss", patience=3)
    stop.load_state_dict({"wait_count": 2, "stopped_epoch": 0, "best_score": 1.0, "patience": 50})
    assert stop.patience == 3 and stop.wait_count == 2
