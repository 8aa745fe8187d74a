"""The ``piwsl`` command end to end: train on a tiny extxyz (with label-free frames), evaluate,
friendly errors and exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
import torch
import yaml

from piwsl import __version__
from piwsl.cli import main
from piwsl.data import read_frames
from piwsl.errors import ConfigError

torch.set_num_threads(1)

METRIC_KEYS = {
    "energy_mae_meV",
    "energy_rmse_meV",
    "energy_mae_meV_per_atom",
    "energy_rmse_meV_per_atom",
    "forces_mae_meV_per_A",
    "forces_rmse_meV_per_A",
    "n_frames",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder with 20 training frames (4 label-free), 6 test frames and a tiny config."""
    root = tmp_path_factory.mktemp("cli")
    frames = read_frames("builtin:ethanol_train")[:26]
    images = []
    for k, f in enumerate(frames):
        atoms = f.to_atoms()
        energy, forces = atoms.calc.results["energy"], atoms.calc.results["forces"]
        atoms.calc = None
        if k % 5 != 4:
            atoms.info["REF_energy"] = energy
            atoms.arrays["REF_forces"] = forces
        images.append(atoms)
    ase.io.write(root / "train.xyz", images[:20], format="extxyz")
    ase.io.write(root / "test.xyz", images[20:], format="extxyz")
    config = {
        "data": {"train": "train.xyz", "test": "test.xyz", "n_val": 4, "skin": 0.3},
        "model": {
            "name": "schnet",
            "cutoff": 4.0,
            "hparams": {"features": 16, "interactions": 2, "n_rbf": 8},
        },
        "training": {"batch_size": 4, "max_epochs": 2, "num_threads": 1},
        "output": {"run_dir": "runs/tiny", "progress_bar": False},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return root


def test_train_then_evaluate(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    rc = main(["train", "tiny.yaml", "training.max_epochs=2", "--run-dir", "runs/e2e"])
    out = capsys.readouterr().out
    assert rc == 0
    run = project / "runs" / "e2e"
    for name in (
        "config.yaml",
        "best_model.pt",
        "final_model.pt",
        "summary.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "evaluation/test_metrics.json",
        "evaluation/test_parity.png",
        "logs/version_0/metrics.csv",
    ):
        assert (run / name).is_file(), name
    # the override and --run-dir reached the saved config
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"]["max_epochs"] == 2
    assert saved["output"]["run_dir"] == "runs/e2e"
    metrics = json.loads((run / "evaluation" / "test_metrics.json").read_text())
    assert metrics.keys() >= METRIC_KEYS
    assert metrics["n_frames"] == 6 and metrics["n_frames_with_forces"] == 5  # 1 label-free
    assert metrics["forces_mae_meV_per_A"] > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["test"]["n_frames"] == 6
    # the console table and the paths
    assert "meV/Å" in out and "test_parity.png" in out and "best.ckpt" in out
    # the label coverage of each split was reported once: 4 label-free frames in train + val
    counts = re.findall(r"data (?:train|validation): \d+ frames .* unlabelled (\d+)", out)
    assert len(counts) == 2 and sum(map(int, counts)) == 4

    # evaluate a model file and a Lightning checkpoint: the same numbers
    rc = main(["evaluate", str(run / "best_model.pt"), "test.xyz", "--out", "eval_pt"])
    assert rc == 0
    rc = main(
        [
            "evaluate",
            str(run / "checkpoints" / "best.ckpt"),
            "test.xyz",
            "--out",
            "eval_ck",
            "--batch-size",
            "2",
        ]
    )
    assert rc == 0
    a = json.loads((project / "eval_pt" / "test_metrics.json").read_text())
    b = json.loads((project / "eval_ck" / "test_metrics.json").read_text())
    assert (project / "eval_pt" / "test_parity.png").is_file()
    for key in METRIC_KEYS:
        assert a[key] == pytest.approx(metrics[key], rel=1e-4)
        assert b[key] == pytest.approx(a[key], rel=1e-4)


def test_unknown_key_is_a_friendly_error(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    rc = main(["train", "tiny.yaml", "training.max_epoch=3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ")
    assert "did you mean 'training.max_epochs'" in err
    assert "Traceback" not in err
    with pytest.raises(ConfigError):
        main(["--debug", "train", "tiny.yaml", "training.max_epoch=3"])


def test_wrong_type_and_missing_files(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert main(["train", "tiny.yaml", "training.batch_size=many"]) == 2
    assert "training.batch_size" in capsys.readouterr().err
    assert main(["train", "missing.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "tiny.yaml", "data.train=nope.xyz", "--run-dir", "runs/x"]) == 2
    assert "nope.xyz" in capsys.readouterr().err
    assert main(["evaluate", "no_model.pt", "test.xyz"]) == 2
    assert "no_model.pt" in capsys.readouterr().err


def test_run_dir_protection_and_resume_errors(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert main(["train", "tiny.yaml", "--resume", "--run-dir", "runs/never"]) == 2
    assert "--resume" in capsys.readouterr().err
    args = ["train", "tiny.yaml", "training.max_epochs=1", "--run-dir", "runs/again"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    # resuming with a different model is refused before touching the checkpoint
    assert main([*args, "--resume", "model.hparams.features=8"]) == 2
    err = capsys.readouterr().err
    assert "belongs to another run" in err and "model.hparams.features: 16 there, 8 now" in err
    # a plain --resume says where it continues
    assert main([*args, "--resume", "training.max_epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "resumed from 'runs/again/checkpoints/last.ckpt': 1 epoch(s) and" in out
    assert "continuing with epoch 2" in out


def test_version_and_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "piwsl.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"piwsl {__version__}"


def test_train_arguments_reach_the_library(monkeypatch):
    """`piwsl train` without a config runs builtin:ethanol; overrides may follow options."""
    import piwsl.training

    seen = {}

    def fake_train(cfg, run_dir=None, resume=False, console=None):
        seen.update(cfg=cfg, run_dir=run_dir, resume=resume)

    monkeypatch.setattr(piwsl.training, "train", fake_train)
    assert main(["train", "training.max_epochs=1", "--run-dir", "r", "model.cutoff=4.5"]) == 0
    cfg = seen["cfg"]
    assert cfg.data.train == ["builtin:ethanol_train"]
    assert (cfg.training.max_epochs, cfg.model.cutoff) == (1, 4.5)
    assert (seen["run_dir"], seen["resume"]) == ("r", False)
    assert main(["train", "builtin:ethanol", "--resume"]) == 0
    assert seen["resume"] is True and seen["cfg"].training.max_epochs == 100


def test_evaluate_rejects_unknown_units(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert main(["evaluate", "any.pt", "test.xyz", "--energy-unit", "kcal"]) == 2
    assert "did you mean 'kcal/mol'" in capsys.readouterr().err


# --- output that is not a terminal, predict, README, committed paths (issue #18) -------------


def test_off_a_terminal_training_prints_plain_progress_lines(project, monkeypatch, capsys):
    """No carriage-return bar in a log and no value broken over two lines: plain lines (here
    with the 30 s interval set to 0, so that a tiny run prints some)."""
    from piwsl.training import callbacks

    monkeypatch.chdir(project)
    monkeypatch.setattr(callbacks, "PLAIN_INTERVAL_S", 0.0)
    args = ["train", "tiny.yaml", "output.progress_bar=true", "training.max_epochs=2"]
    assert main([*args, "--run-dir", "runs/plain"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    lines = [x for x in captured.err.splitlines() if x.startswith("training")]
    assert any(x.startswith("training: epoch 1/2, step 4, ") for x in lines)
    assert any("(end of epoch)" in x and "val_forces_mae_meV_per_A" in x for x in lines)
    assert lines[-1].startswith("training done: 2 epochs, 8 steps")
    # the console does not wrap: the model line keeps "energy shift … meV/atom" on one line
    model_line = next(x for x in captured.out.splitlines() if x.startswith("model "))
    assert "meV/atom, scale" in model_line and len(model_line) > 80


def test_plain_progress_writes_occasional_lines():
    import io

    from piwsl.terminal import NullProgress, PlainProgress, make_console, progress_bar

    stream = io.StringIO()
    bar = PlainProgress(200, desc="label", unit="frame", interval_s=3600, stream=stream)
    for _ in range(200):
        bar.update(1)
    assert stream.getvalue() == ""  # nothing before the interval
    bar.set_postfix_str("T=300 K")
    bar.close()
    bar.close()
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("label: 200/200 frame (100 %), ") and line.endswith("[T=300 K]")
    fast = PlainProgress(10, desc="x", unit="step", interval_s=0.0, stream=stream)
    fast.update(4)
    assert "x: 4/10 step (40 %)" in stream.getvalue() and "left" in stream.getvalue()
    assert isinstance(progress_bar(5, enabled=False), NullProgress)
    assert make_console().soft_wrap  # pytest's captured output is not a terminal


def test_predict_command(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    args = ["train", "tiny.yaml", "training.max_epochs=1", "--run-dir", "runs/pred"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["predict", "runs/pred/best_model.pt", "test.xyz", "out/p.extxyz"]) == 0
    assert "6 frames" in capsys.readouterr().out
    written = ase.io.read(project / "out" / "p.extxyz", ":")
    assert len(written) == 6 and all("PRED_energy" in a.info for a in written)
    assert all(a.arrays["PRED_forces"].shape == (9, 3) for a in written)
    assert "PRIOR_energy" not in written[0].info  # no prior
    # bad input: a clear error, exit 2
    assert main(["predict", "runs/pred/best_model.pt", "nope.xyz", "p.xyz"]) == 2
    assert "nope.xyz" in capsys.readouterr().err
    assert main(["predict", "test.xyz", "test.xyz", "p.xyz"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_readme_quick_start_names_the_label_extra():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert '".[label]"' in quick
    for use in ("piwsl sample", "piwsl label", "prior.name=gfn2-xtb"):
        assert use in quick


def test_committed_results_record_no_absolute_paths():
    """Result files record paths relative to the checkout (or its parent), never this
    machine's absolute paths."""
    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    pattern = re.compile(r"(?<![\w.])/(?:work|home|tmp|root|Users|mnt)/")
    offenders = [
        str(p.relative_to(root))
        for p in sorted(root.rglob("*"))
        if p.suffix in (".json", ".md", ".csv") and pattern.search(p.read_text(errors="ignore"))
    ]
    assert offenders == []
