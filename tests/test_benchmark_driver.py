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


@pytest.fixture
def benchmarks(monkeypatch) -> Path:
    """The benchmarks folder on the import path for this test only (as when a script runs)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return SCRIPT.parent


@pytest.fixture
def rmd17(benchmarks):
    """The driver as a module."""
    import importlib

    return importlib.import_module("rmd17")


@pytest.fixture
def rmd17_cells(benchmarks):
    """The benchmark's cells (models, methods, regimes) as a module."""
    import importlib

    return importlib.import_module("rmd17_cells")


@pytest.fixture
def rmd17_report(benchmarks):
    """The benchmark's summary writer as a module."""
    import importlib

    return importlib.import_module("rmd17_report")


@pytest.fixture
def md_report(benchmarks):
    """The MD benchmark's report writer as a module."""
    import importlib

    return importlib.import_module("md_stability_report")


def test_method_variants_become_overrides(rmd17_cells):

    overrides = rmd17_cells.method_overrides("piwsl_2nd[delta=0.01,taylor=12]")
    assert "physics.second_order=true" in overrides
    assert overrides[-2:] == ["physics.perturbation_scale=0.01", "physics.taylor_weight=12"]
    cheaper = rmd17_cells.method_overrides("piwsl_2nd[fraction=0.25,every=4]")
    assert cheaper[-2:] == ["physics.fraction=0.25", "physics.every_n_steps=4"]
    with pytest.raises(SystemExit, match="unknown method"):
        rmd17_cells.method_overrides("piwsl_3rd")
    with pytest.raises(SystemExit, match="unknown variant key"):
        rmd17_cells.method_overrides("piwsl[dleta=0.1]")


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
    # every run records its warnings and split; the summary keeps every command that fed it
    for path in runs:
        record = json.loads(path.read_text())
        assert isinstance(record["warnings"], list) and record["split"] == "01"
    rewrite = subprocess.run(
        [*command, "--summary-only"], capture_output=True, text=True, env=env, timeout=600
    )
    assert rewrite.returncode == 0
    header = json.loads((tmp_path / "results" / "rmd17_grid_quick.json").read_text())
    assert len(header["commands"]) == 2 and header["commands"][1].endswith("--summary-only")
    assert all(c.startswith("python benchmarks/rmd17.py --quick") for c in header["commands"])
    summary = (tmp_path / "results" / "rmd17_grid_quick.md").read_text()
    (commands,) = [x for x in summary.splitlines() if x.startswith("Commands (oldest first): ")]
    assert commands.count("`python benchmarks/rmd17.py --quick") == 2


def test_split_atoms_per_batch_and_run_warnings(tmp_path, rmd17, rmd17_report):
    import numpy as np

    packaged = ROOT / "src" / "piwsl" / "datasets"
    common = ["--regimes", "E_only_100", "--models", "schnet_tiny", "--methods", "plain"]
    args = rmd17.parse_args([*common, "--molecules", "ethanol", "--atoms-per-batch", "144"])
    (run,) = rmd17.grid_runs(args, packaged)[:1]
    assert run.extra[-1] == "training.batch_size=16"  # 144 atoms / 9
    np.savez(tmp_path / "rmd17_aspirin_train_02.npz", nuclear_charges=np.ones(21))
    args = rmd17.parse_args(
        [*common, "--molecules", "aspirin", "--atoms-per-batch", "144", "--split", "02"]
    )
    run = rmd17.grid_runs(args, tmp_path)[0]
    assert run.extra[-1] == "training.batch_size=7"  # 144 atoms / 21
    assert run.name.endswith("-s0-split02")
    assert run.data("test").name == "rmd17_aspirin_test_02.npz"
    # recorded relative to the checkout when it shares its top-level folder (a checkout in /tmp)
    (given,) = [a for a in run.command(tmp_path / "r", 1) if a.startswith("data.test=")]
    given_path = Path(given.removeprefix("data.test="))
    assert (rmd17.ROOT / given_path).resolve() == run.data("test").resolve()
    split01 = rmd17.Run("ethanol", "schnet", "EF_50", "plain", 0, [], packaged)
    assert split01.name == "ethanol-schnet-EF_50-plain-s0"  # the committed runs' names
    with pytest.raises(SystemExit):
        rmd17.parse_args(["--atoms-per-batch", "144", "--set", "training.batch_size=8"])
    with pytest.raises(SystemExit):
        rmd17.parse_args(["--suite", "converged", "--atoms-per-batch", "144"])
    stderr = (
        "warning: file 'x.xyz': bond lengths are 1.93× the covalent ones\n"
        "Epoch 3: something else\n"
        "/venv/lib/x.py:12: UserWarning: the lr scheduler ...\n"
        "  warnings.warn(...)\n"
        "warning: file 'x.xyz': bond lengths are 1.93× the covalent ones\n"
    )
    assert rmd17.run_warnings(stderr) == [
        "warning: file 'x.xyz': bond lengths are 1.93× the covalent ones",
        "/venv/lib/x.py:12: UserWarning: the lr scheduler ...",
    ]
    lines = rmd17_report.warnings_section(
        [{"name": "a", "warnings": ["warning: w1"]}, {"name": "b", "warnings": ["warning: w1"]}]
    )
    assert "| 2 | warning: w1 |" in lines


def test_provenance_lines_one_format_from_the_keys_present(benchmarks):
    """common.provenance_lines: every report's command, commit, machine and date lines in one
    format, built from the machine_info keys present (None or missing ones left out), a markdown
    line break after every line but the last."""
    import common

    machine = {
        "platform": "Linux-6.1-x86_64",
        "cpu": "AMD EPYC",
        "cpu_count": 16,
        "load_average_1_5_15": [0.5, 0.4, 0.3],
        "python": "3.11.7",
        "OMP_NUM_THREADS": "1",
        "torch": "2.5.1",
        "torch_threads": 2,
        "cuda": "NVIDIA H200",
    }
    assert common.provenance_lines(
        "python benchmarks/x.py", "abc123", machine, "2026-01-02 03:04:05 UTC", extra="shared"
    ) == [
        "Command: `python benchmarks/x.py`  ",
        "Commit: `abc123`  ",
        "Machine: AMD EPYC, 16 CPUs, Linux-6.1-x86_64, torch 2.5.1 (2 thread(s), "
        "OMP_NUM_THREADS=1), GPU NVIDIA H200; shared  ",
        "Date: 2026-01-02 03:04:05 UTC",
    ]
    # missing keys (and None values, as machine_info records an unset OMP_NUM_THREADS or no GPU)
    # are left out, and so are lines without a value
    assert common.provenance_lines(None, "abc123", {"cpu_count": 2, "OMP_NUM_THREADS": None}) == [
        "Commit: `abc123`  ",
        "Machine: 2 CPUs",
    ]
    assert common.provenance_lines(None, None, {"platform": "Linux", "torch": "2.5.1"}) == [
        "Machine: Linux, torch 2.5.1"
    ]
    assert common.provenance_lines(None, None, None) == []
    # several commands; runs in processes of their own; a note on the commit; lines after
    assert common.provenance_lines(
        ["python a.py", "python a.py --summary-only"],
        "abc123",
        machine,
        commit_note="working tree modified",
        per_run_threads=1,
        more=["Budget: 1000 steps"],
    ) == [
        "Commands (oldest first): `python a.py`; `python a.py --summary-only`  ",
        "Commit: `abc123` (working tree modified)  ",
        "Machine: AMD EPYC, 16 CPUs, Linux-6.1-x86_64, torch 2.5.1 (1 thread(s) per run), "
        "GPU NVIDIA H200  ",
        "Budget: 1000 steps",
    ]


def test_delta_learning_summary_defaults_and_honest_target(tmp_path, monkeypatch, benchmarks):
    """delta_learning.py on the committed runs: N counts training + validation energies, every
    cell shows its number of seeds, the target column judges Δ alone (PaiNN on ethanol: 3.9×,
    not met, though Δ + PIWSL reaches 4.3×), and existing outputs are never replaced unasked."""
    pytest.importorskip("tblite")
    import delta_learning

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert not Path(delta_learning.parse_args([]).out).is_absolute()  # under runs/, not results
    assert delta_learning.parse_args([]).out.startswith("runs/")
    out = tmp_path / "dl"
    args = ["--molecules", "ethanol", "--data", str(ROOT / "src" / "piwsl" / "datasets")]
    delta_learning.main([*args, "--out", str(out)])
    text = out.with_suffix(".md").read_text()
    row = next(
        x
        for x in text.splitlines()
        if x.startswith("| ethanol | 1000 (950 train + 50 val) | painn_conservative")
    )
    assert row.endswith("| 3.9× | 4.3× | not met (3.9×) |")
    assert "63.7 ± 0.0 (3) / 336.3 ± 0.0 (3)" in row  # GFN2-xTB alone, three seeds
    record = json.loads(out.with_suffix(".json").read_text())
    assert "--data src/piwsl/datasets" in record["command"]  # relative to the checkout
    assert str(ROOT) not in json.dumps(record)
    with pytest.raises(SystemExit, match="--overwrite"):
        delta_learning.main([*args, "--out", str(out)])


def test_converged_suite_resumes_an_unfinished_run(tmp_path):
    """The converged suite's run resumes from the last checkpoint a killed attempt left (here: a
    finished short attempt whose result file was removed), records its stop reason, the test
    curve and checkout-relative paths."""
    tiny = "model.hparams={features: 8, interactions: 1, n_rbf: 8, forces: conservative}"
    base = [sys.executable, str(SCRIPT), "--suite", "converged", "--molecules", "ethanol"]
    base += ["--regimes", "EF_100", "--models", "painn32_conservative", "--methods", "plain"]
    base += ["--seeds", "0", "--data", str(ROOT / "src" / "piwsl" / "datasets")]
    base += ["--results", str(tmp_path / "results"), "--work", str(tmp_path / "work")]
    common = [tiny, "training.val_every_n_epochs=1", "output.test_curve_steps=[10, 30]"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(
        [*base, "--set", *common, "training.max_steps=20"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    (result,) = (tmp_path / "results" / "rmd17" / "converged").glob("*.json")
    record = json.loads(result.read_text())
    assert record["steps"] == 20 and record["stopped_by"] == "cap" and not record["resumed"]
    assert record["code_path"] == "eager"  # ethanol trains eager; aspirin compiled
    assert [a["device"] for a in record["attempts"]] == ["cpu"]
    assert [p["step"] for p in record["test_curve"]] == [10]
    assert str(ROOT) not in record["command"]  # paths relative to the checkout
    result.unlink()  # as if the attempt had been killed before writing its result
    second = subprocess.run(
        [*base, "--set", *common, "training.max_steps=40"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    record = json.loads(result.read_text())
    assert record["resumed"] and record["steps"] == 40
    assert [a["resumed"] for a in record["attempts"]] == [False, True]  # both attempts logged
    assert [p["step"] for p in record["test_curve"]] == [10, 30]  # 10 kept, 30 added
    assert record["validation_curve"][0]["step"] < 20  # the curve spans both attempts
    assert (tmp_path / "results" / "converged.md").is_file()


def md_model(times: list[float | None], length: float = 50.0, **summary) -> dict:
    """A model entry of the MD report: one protocol whose trajectories fail at ``times``."""
    import numpy as np

    censored = [length if t is None else t for t in times]
    runs = [{"failure_time_ps": t} for t in times]
    protocol = "nvt300" if length == 50.0 else "nve300"
    return {
        "protocols": {
            protocol: {
                "length_ps": length, "trajectories": runs, "n_trajectories": len(times),
                "n_stable": sum(t is None for t in times),
                "mean_time_to_failure_ps_censored": float(np.mean(censored)), **summary,
            }
        }
    }  # fmt: skip


def test_md_survival_pools_seeds_per_cell_and_method(md_report, tmp_path):
    """The MD report's survival plot pools each method's trajectories over seeds, one panel per
    (cell, protocol); a label outside the seed scheme is a cell of its own."""
    result = {
        "models": {
            "aspirin-painn32_direct-EF_100-plain-s0": md_model([None, 12.0]),
            "aspirin-painn32_direct-EF_100-plain-s1": md_model([3.0]),
            "aspirin-painn32_direct-EF_100-piwsl_2nd-s0": md_model([None, None]),
            "N300_delta_ft_plain_s1": md_model([None]),
        }
    }
    groups = md_report.survival_groups(result)
    cell = ("aspirin-painn32_direct-EF_100", "nvt300")
    assert sorted(groups) == [("N300_delta_ft_plain", "nvt300"), cell]
    assert groups[cell]["plain"]["times"] == [None, 12.0, 3.0]
    assert groups[cell]["piwsl_2nd"] == {"times": [None, None], "hr": [], "length_ps": 50.0}
    path = md_report.survival_figure(result, tmp_path / "survival.png")
    assert path.stat().st_size > 0


def test_md_report_pools_each_method_over_its_seeds(md_report):
    """Per cell and method: stable trajectories summed over seeds, the mean time to failure over
    all of them (not the mean of the seeds' means), h(r) and drift over the seeds that have them;
    baselines are listed before the methods."""
    result = {
        "protocols": {"nvt300": {}, "nve300": {}},
        "models": {
            "aspirin-m-EF_100-piwsl_2nd-s0": md_model([2.0], 20.0, energy_drift_meV_per_atom_per_ps_mean=3.0),
            "aspirin-m-EF_100-plain-s0": md_model([None, 5.0], hr_error_pooled_stable=0.2),
            "aspirin-m-EF_100-plain-s1": md_model([None, None, None, 10.0], hr_error_pooled_stable=0.4),
        },
    }  # fmt: skip
    rows = md_report.pooled_rows(result)
    assert [(r["protocol"], r["method"]) for r in rows] == [
        ("nvt300", "plain"),
        ("nve300", "piwsl_2nd"),
    ]
    plain = rows[0]
    assert plain["seeds"] == 2 and (plain["stable"], plain["trajectories"]) == (4, 6)
    assert plain["mean_ttf_ps"] == pytest.approx((50 + 5 + 3 * 50 + 10) / 6)
    assert plain["hr_error_mean"] == pytest.approx(0.3) and plain["drift_mean"] is None
    assert rows[1]["drift_mean"] == 3.0 and rows[1]["hr_error_mean"] is None
    table = "\n".join(md_report.pooled_lines(rows))
    assert "| aspirin-m-EF_100 | nvt300 | plain | 2 | 4/6 |" in table


def test_converged_runs_train_aspirin_compiled(rmd17):
    """The converged suite compiles the aspirin runs (converged_protocol.COMPILED_MOLECULES) and
    leaves ethanol eager; an explicit --set comes after and wins."""
    args = rmd17.parse_args(["--suite", "converged", "--seeds", "0"])
    runs = rmd17.converged_runs(args, Path("data"))
    compiled = {r.molecule for r in runs if "training.compile=true" in r.extra}
    assert compiled == {"aspirin"}
    args = rmd17.parse_args(
        ["--suite", "converged", "--seeds", "0", "--set", "training.compile=false"]
    )
    run = next(r for r in rmd17.converged_runs(args, Path("data")) if r.molecule == "aspirin")
    assert run.extra[-1] == "training.compile=false"


def test_driver_records_where_and_how_each_attempt_trained(rmd17, rmd17_report, tmp_path):
    """The last ``training.compile`` override decides the code path; each attempt is logged with
    its device, and a run that moved from a GPU machine to this one says so."""
    command = ["piwsl", "training.compile=true", "training.compile=false"]
    assert rmd17.code_path(command) == "eager"
    assert rmd17.code_path(["training.compile=true"]) == "compiled"
    gpu = {"commit": "abc", "machine": {"cuda": "NVIDIA H200", "cpu": "x86", "cpu_count": 16}}
    cpu = {"commit": "abc", "machine": {"cuda": None, "cpu": "Xeon", "cpu_count": 2}}
    rmd17.log_attempt(tmp_path, ["training.accelerator=gpu"], gpu, resumed=False)
    attempts = rmd17.log_attempt(tmp_path, ["training.accelerator=auto"], cpu, resumed=True)
    assert [a["device"] for a in attempts] == ["cuda (NVIDIA H200)", "cpu"]
    assert attempts[1]["host"] == "Xeon, 2 cores"
    assert rmd17_report.trained_on({"attempts": attempts}) == "cuda (NVIDIA H200) → cpu (2 cores)"
    old = {"machine": {"cuda": None, "cpu": "Xeon", "cpu_count": 2}}  # before attempts were logged
    assert rmd17_report.trained_on(old) == "cpu (2 cores)"


def test_driver_stops_at_the_deadline_and_skips_runs_finished_elsewhere(rmd17, tmp_path):
    """A training still running at the deadline is stopped (to resume later); a run whose
    result another driver wrote meanwhile is not trained again."""
    start = rmd17.time.monotonic()
    code, _, _ = rmd17.train(
        [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), start + 1.0
    )
    assert code is None and rmd17.time.monotonic() - start < 30
    args = rmd17.parse_args(["--suite", "converged", "--seeds", "0"])
    run = rmd17.converged_runs(args, tmp_path)[0]
    (tmp_path / f"{run.name}.json").write_text(json.dumps({"name": run.name, "steps": 7}))
    header = {"commit": "abc", "machine": {}}
    record = rmd17.execute(run, tmp_path / "work", tmp_path, 1, header)
    assert record["skipped"] == "finished elsewhere" and record["steps"] == 7
    (tmp_path / f"{run.name}.json").unlink()
    late = rmd17.execute(run, tmp_path / "work", tmp_path, 1, header, deadline=start)
    assert late == {"name": run.name, "skipped": "deadline"}
    assert not (tmp_path / "work").exists()  # nothing started


def test_md_run_reused_across_machines_by_content(benchmarks, tmp_path):
    """A finished MD run is reused when only the device or, with equal content hashes, the
    checkpoint's mtime differ (a copy run on a GPU machine); older fingerprints without a hash
    still compare the mtime."""
    import importlib

    md = importlib.import_module("md_stability")
    now = {"checkpoint": "m.pt", "checkpoint_mtime": 2.0, "checkpoint_sha256": "aa",
           "device": "cpu", "protocol": "nvt300"}  # fmt: skip
    assert md.same_run({**now, "checkpoint_mtime": 1.0, "device": "cuda"}, now)
    assert not md.same_run({**now, "checkpoint_sha256": "bb"}, now)
    assert not md.same_run({**now, "protocol": "nve300"}, now)
    old = {k: v for k, v in now.items() if k != "checkpoint_sha256"}
    assert md.same_run(old, now)
    assert not md.same_run({**old, "checkpoint_mtime": 1.0}, now)
    report = importlib.import_module("md_stability_report")
    assert report.on_device({"device": "cuda"}) == " (cuda)" and report.on_device({}) == ""
    assert report.on_device({"device": "cuda", "compiled": True}) == " (cuda, compiled)"


def test_curl_table_compares_each_method_with_its_baseline(benchmarks):
    """rmd17_report.curl_section: one row per cell and method, mean ± std over seeds, ratio =
    baseline / method; cells without the metric (conservative models) are left out."""
    import rmd17_report

    def record(method: str, curl: float | None, model: str = "painn32_direct") -> dict:
        test = {} if curl is None else {rmd17_report.CURL_KEY: curl}
        return {"molecule": "aspirin", "regime": "EF_100", "model": model, "method": method,
                "test": test}  # fmt: skip

    records = [
        record("plain", 0.6),
        record("plain", 0.8),
        record("piwsl_2nd", 0.35),
        record("piwsl_2nd", 0.35),
        record("plain", None, model="painn32_conservative"),
    ]
    lines = rmd17_report.curl_section(records)
    rows = [x for x in lines if x.startswith("| aspirin")]
    assert rows == [
        "| aspirin | EF_100 | painn32_direct | plain | 2 | 0.700 ± 0.141 | — |",
        "| aspirin | EF_100 | painn32_direct | piwsl_2nd | 2 | 0.350 ± 0.000 | 2.00 |",
    ]
    assert rmd17_report.curl_section([record("plain", None)]) == []


def test_md_report_states_provenance_and_each_runs_commit(md_report):
    """The MD report opens with the provenance lines every benchmark report shares and lists, per
    run folder, the commit that ran it, or says that none was recorded."""

    def run(commit: str | None) -> dict:
        summary = {"n_trajectories": 2, "n_stable": 1, "length_ps": 1.0,
                   "mean_time_to_failure_ps_censored": 0.75,
                   "median_time_to_failure_ps_censored": 0.75, "failure_reasons": {"bond": 1},
                   "hr_error_pooled_stable": 0.1, "steps_per_s": 10.0, "calculator_share": 0.9,
                   "run_dir": "out/m/nvt300"}  # fmt: skip
        return {"protocols": {"nvt300": {**summary, **({"git_commit": commit} if commit else {})}}}

    machine = {"cpu": "Test CPU", "cpu_count": 2, "torch": "2.13.0", "torch_threads": 1,
               "OMP_NUM_THREADS": "1", "cuda": None}  # fmt: skip
    result = {"date_utc": "2026-12-01 00:00:00", "command": "python md_stability.py m.pt",
              "git_commit": "abc", "machine": machine, "quick": False, "data": "d.npz",
              "timestep_fs": 0.5, "trajectories": 2, "thermostat": "nose-hoover",
              "no_checks": False, "protocols": {"nvt300": {}},
              "models": {"a-s0": run("def"), "b-s0": run(None), "c-s0": run("fed (+ uncommitted changes)")}}  # fmt: skip
    text = md_report.markdown(result)
    assert "Command: `python md_stability.py m.pt`  \n" in text
    assert "Commit: `abc` (of this report; each run's own is listed" in text
    assert "Machine: Test CPU, 2 CPUs, torch 2.13.0 (1 thread(s), OMP_NUM_THREADS=1)" in text
    assert "Date: 2026-12-01 00:00:00 UTC\n" in text
    assert "- a-s0 / nvt300: `out/m/nvt300` (commit `def`)" in text
    assert "- b-s0 / nvt300: `out/m/nvt300` (commit not recorded)" in text
    assert "- c-s0 / nvt300: `out/m/nvt300` (commit `fed` (+ uncommitted changes))" in text


def test_md_comparison_pairs_each_method_with_its_baseline(md_report):
    """compare_methods pools a cell's seeds, censors stable trajectories at the run length, and
    compares the h(r) errors of the stable trajectories only; a method without its baseline in the
    report is left out."""

    def run(failures: list[float | None], hr: list[float | None]) -> dict:
        trajectories = [
            {"failure_time_ps": f, "hr_error": h} for f, h in zip(failures, hr, strict=True)
        ]
        return {"protocols": {"nvt300": {"length_ps": 10.0, "trajectories": trajectories}}}

    models = {
        "asp-m-EF-plain-s0": run([None, None], [0.2, 0.4]),
        "asp-m-EF-plain-s1": run([5.0, None], [None, 0.3]),
        "asp-m-EF-piwsl_2nd-s0": run([None, 2.0], [0.1, None]),
        "asp-m-EF-delta_piwsl_2nd-s0": run([None], [0.5]),  # no Δ run: no comparison
    }
    rows = md_report.compare_methods({"models": models})
    assert len(rows) == 1
    row = rows[0]
    assert (row["cell"], row["baseline"], row["method"]) == ("asp-m-EF", "plain", "piwsl_2nd")
    assert (row["n_baseline"], row["n_method"]) == (4, 2)
    assert row["baseline_mean_ps"] == pytest.approx((10 + 10 + 5 + 10) / 4)
    assert row["method_mean_ps"] == pytest.approx((10 + 2) / 2)
    assert row["baseline_hr_error"] == pytest.approx(0.3)  # stable ones: 0.2, 0.4, 0.3
    assert row["method_hr_error"] == pytest.approx(0.1)
    assert row["hr_error_difference"]["difference"] == pytest.approx(-0.2)
    line = md_report.comparison_lines(rows)[-1]
    assert line.endswith("| 0.300 → 0.100 | -0.200 [-0.300, -0.100] |")
