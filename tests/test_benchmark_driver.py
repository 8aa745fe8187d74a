"""The rMD17 benchmark driver (``benchmarks/rmd17.py``): its ``--quick`` smoke run end to end.

Runs two tiny trainings through ``piwsl train`` on the packaged rMD17 ethanol files, checks the
per-run result files, the summary and the plots, and that a second call skips finished runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "rmd17.py"
sys.path.insert(0, str(SCRIPT.parent))


def test_method_variants_become_overrides():
    import rmd17

    overrides = rmd17.method_overrides("piwsl_2nd[delta=0.01,taylor=12]")
    assert "physics.second_order=true" in overrides
    assert overrides[-2:] == ["physics.perturbation_scale=0.01", "physics.taylor_weight=12"]
    cheaper = rmd17.method_overrides("piwsl_2nd[fraction=0.25,every=4]")
    assert cheaper[-2:] == ["physics.fraction=0.25", "physics.every_n_steps=4"]
    with pytest.raises(SystemExit, match="unknown method"):
        rmd17.method_overrides("piwsl_3rd")
    with pytest.raises(SystemExit, match="unknown variant key"):
        rmd17.method_overrides("piwsl[dleta=0.1]")


def test_quick_run_writes_results_and_resumes(tmp_path):
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--data",
        str(ROOT / "src" / "piwsl" / "datasets"),
        "--results",
        str(tmp_path / "results"),
        "--work",
        str(tmp_path / "work"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    runs = sorted((tmp_path / "results" / "rmd17" / "grid_quick").glob("*.json"))
    assert [p.stem.split("-")[3] for p in runs] == ["piwsl_2nd", "plain"]
    for path in runs:
        record = json.loads(path.read_text())
        assert record["returncode"] == 0
        assert record["test"]["n_frames"] == 1000
        assert record["test"]["forces_mae_meV_per_A"] > 0
        assert record["steps"] == 10
        assert record["validation_curve"]
        assert record["commit"] and record["machine"]["cpu_count"] >= 1
    summary = (tmp_path / "results" / "rmd17_grid_quick.md").read_text()
    assert "| ethanol | E_only_100 | schnet_tiny | piwsl_2nd | 1 | " in summary
    assert (tmp_path / "results" / "rmd17_grid_quick_errors.png").stat().st_size > 0
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0
    assert "2 already done, 0 to train" in again.stdout
