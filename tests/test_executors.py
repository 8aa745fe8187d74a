"""Tests of piwsl.io.executors: labelling and the prior cache on a local pool and on Dask —
identical results to a serial run, one task per finite-difference energy, a worker killed
mid-run (every frame journaled exactly once), an unreachable scheduler, a missing extra."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from piwsl.errors import ConfigError
from piwsl.io import ExecutorSpec, make_executor
from piwsl.labelling import Backend, label_structures, make_backend
from piwsl.labelling.runner import iter_records, journal_path

EMT = "ase:ase.calculators.emt.EMT"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def waters(n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(atoms)
    return out


def toy_energy(atoms: Atoms) -> float:
    return float(np.sum(atoms.get_all_distances()))


class DyingBackend(Backend):
    """Toy energy that SIGKILLs its own worker process on the frames ``die_on``: the first time
    only, or every time (``always``). Every call is logged to ``folder/calls.txt``."""

    name = "dying"
    program = "test"

    def __init__(self, folder: str, die_on: list[int], always: bool = False, delay: float = 0.0):
        super().__init__(folder=folder, die_on=die_on, always=always, delay=delay)
        self.folder, self.die_on, self.always, self.delay = Path(folder), die_on, always, delay

    def compute(self, atoms):
        i = atoms.info["label_index"]
        with open(self.folder / "calls.txt", "a") as handle:
            handle.write(f"{i}\n")
        marker = self.folder / f"died-{i}"
        if i in self.die_on and (self.always or not marker.exists()):
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.delay)
        return {"energy": toy_energy(atoms), "forces": np.zeros((len(atoms), 3))}


def calls(folder: Path) -> collections.Counter:
    return collections.Counter(int(x) for x in (folder / "calls.txt").read_text().split())


def assert_each_frame_once(output: Path, images: list[Atoms], failed: tuple[int, ...] = ()):
    records = list(iter_records(journal_path(output)))
    assert sorted(r["index"] for r in records) == list(range(len(images))), "lost or doubled"
    back = ase.io.read(output, ":")
    assert [a.info["REF_frame"] for a in back] == list(range(len(images)))
    for i, atoms in enumerate(back):
        if i in failed:
            assert atoms.info["REF_status"] == "failed"
            continue
        assert atoms.info["REF_status"] == "ok"
        assert atoms.info["REF_energy"] == toy_energy(images[i])


def assert_same_labels(a: Path, b: Path) -> None:
    first, second = ase.io.read(a, ":"), ase.io.read(b, ":")
    assert len(first) == len(second)
    for x, y in zip(first, second, strict=True):
        assert x.info["REF_energy"] == y.info["REF_energy"]  # bit-identical
        np.testing.assert_array_equal(x.arrays["REF_forces"], y.arrays["REF_forces"])


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 single-threaded worker processes, shared by the Dask tests."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"OMP_NUM_THREADS": "1"},
    ) as local:
        yield local.scheduler_address


# ----------------------------------------------------------------------------------------------
# the spec


def test_executor_spec_refuses_bad_settings():
    with pytest.raises(ConfigError, match="choose one of local, dask"):
        ExecutorSpec("slurm")
    with pytest.raises(ConfigError, match="needs the dask executor"):
        ExecutorSpec("local", scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigError, match="workers must be"):
        ExecutorSpec("dask", workers=0)


def test_missing_dask_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed → ImportError
    with pytest.raises(ConfigError, match=r"pip install 'piwsl\[dask\]'"):
        label_structures(waters(2), tmp_path / "o.xyz", EMT, executor="dask", progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_a_clear_error_without_traceback(tmp_path, capsys):
    pytest.importorskip("distributed")
    from piwsl.cli import main

    source = tmp_path / "in.xyz"
    ase.io.write(source, waters(2))
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    argv = ["label", str(source), str(tmp_path / "out.xyz"), "--method", EMT, "--no-progress"]
    code = main([*argv, "--executor", "dask", "--scheduler", address, "--connect-timeout", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"cannot reach the Dask scheduler at '{address}'" in " ".join(err.split())
    assert "Traceback" not in err
    with pytest.raises(ConfigError, match="needs the dask executor"):
        main([*argv, "--scheduler", address, "--debug"])


# ----------------------------------------------------------------------------------------------
# Dask


def test_dask_local_cluster_labels_gfn2_xtb_like_the_serial_run(tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("tblite")
    images = waters(6)
    serial = label_structures(images, tmp_path / "serial.xyz", "gfn2-xtb", progress=False)
    dask = label_structures(
        images, tmp_path / "dask.xyz", "gfn2-xtb", executor="dask", n_workers=2, progress=False
    )
    assert (serial.n_ok, dask.n_ok, dask.n_computed_now) == (6, 6, 6)
    assert_same_labels(tmp_path / "serial.xyz", tmp_path / "dask.xyz")
    back = ase.io.read(tmp_path / "dask.xyz", ":")
    host = socket.gethostname()
    workers = {a.info["REF_worker"] for a in back}
    assert all(w.startswith(f"{host}:") and w != f"{host}:{os.getpid()}" for w in workers)
    assert all(a.info["REF_wall_time_s"] > 0 and a.info["REF_cpu_time_s"] > 0 for a in back)
    assert all(a.info["REF_method"] == "GFN2-xTB" for a in back)


def test_dask_runs_one_task_per_finite_difference_energy_and_resumes_a_local_run(tmp_path, cluster):
    images = waters(3, seed=1)
    options = {"finite_difference_forces": True}
    backend = make_backend(EMT, **options)
    assert backend.n_subtasks(images[0]) == len(backend.subtasks(images[0])) == 6 * 3 + 1
    reference = label_structures(images, tmp_path / "serial.xyz", EMT, options, progress=False)
    assert reference.n_ok == 3
    out = tmp_path / "mixed.xyz"
    first = label_structures(images, out, EMT, options, progress=False, max_frames=1)
    assert (first.n_computed_now, out.exists()) == (1, False)
    rest = label_structures(images, out, EMT, options, executor="dask", scheduler=cluster)
    assert (rest.n_from_journal, rest.n_computed_now, rest.n_ok) == (1, 2, 3)
    assert_same_labels(tmp_path / "serial.xyz", out)
    records = list(iter_records(journal_path(out)))
    assert [r["index"] for r in records][:1] == [0] and len(records) == 3  # local run first
    # the analytic EMT forces agree with the finite differences (h = 0.005 Å: O(h²) error)
    analytic_backend = make_backend(EMT)
    for i, atoms in enumerate(ase.io.read(out, ":")):
        assert atoms.info["REF_energy_evaluations"] == 19
        analytic = analytic_backend.compute(images[i])["forces"]
        np.testing.assert_allclose(atoms.arrays["REF_forces"], analytic, atol=2e-3)


def test_dask_worker_killed_mid_run_still_labels_every_frame_once(tmp_path, cluster):
    images = waters(8, seed=2)
    backend = DyingBackend(str(tmp_path), die_on=[3], delay=0.05)
    output = tmp_path / "out.xyz"
    summary = label_structures(
        images, output, backend, executor="dask", scheduler=cluster, progress=False
    )
    assert (tmp_path / "died-3").exists(), "the worker was not killed"
    assert calls(tmp_path)[3] == 2, "the killed task was not retried exactly once"
    assert (summary.n_ok, summary.n_failed, summary.n_computed_now) == (8, 0, 8)
    assert_each_frame_once(output, images)


def test_prior_cache_on_dask_gives_the_serial_values(tmp_path, cluster):
    pytest.importorskip("tblite")
    from piwsl.data import read_frames
    from piwsl.priors import make_prior, prior_values

    frames = read_frames("builtin:ethanol_train")[:8]
    prior = make_prior("gfn2-xtb")
    dask = prior_values(
        prior, frames, tmp_path / "a", workers=2, executor="dask", scheduler=cluster
    )
    serial = prior_values(prior, frames, tmp_path / "b")
    assert (dask.n_computed, serial.n_computed) == (8, 8)
    np.testing.assert_array_equal(dask.energies, serial.energies)
    for a, b in zip(dask.forces, serial.forces, strict=True):
        np.testing.assert_array_equal(a, b)
    again = prior_values(prior, frames, tmp_path / "a", executor="dask", scheduler=cluster)
    assert (again.n_cached, again.n_computed) == (8, 0)


# ----------------------------------------------------------------------------------------------
# local pool


def test_pool_worker_killed_mid_run_still_labels_every_frame_once(tmp_path):
    images = waters(8, seed=3)
    backend = DyingBackend(str(tmp_path), die_on=[2, 5], delay=0.02)
    output = tmp_path / "out.xyz"
    summary = label_structures(images, output, backend, n_workers=2, progress=False)
    assert (summary.n_ok, summary.n_computed_now) == (8, 8)
    assert (tmp_path / "died-2").exists() and (tmp_path / "died-5").exists()
    # each killer ran again after its death; a frame in flight when a worker dies is rerun too,
    # and the pool's teardown can stop a killer after it logged its call but before it died
    # (then it dies on the rerun and needs a third call): at most 3 calls a frame
    counts = calls(tmp_path)
    assert 2 <= counts[2] <= 3 and 2 <= counts[5] <= 3, counts
    assert max(counts.values()) <= 3, counts
    assert_each_frame_once(output, images)


def test_pool_frame_that_always_kills_its_worker_is_recorded_failed(tmp_path):
    images = waters(6, seed=4)
    backend = DyingBackend(str(tmp_path), die_on=[1], always=True)
    output = tmp_path / "out.xyz"
    summary = label_structures(images, output, backend, n_workers=2, progress=False)
    assert (summary.n_ok, summary.n_failed) == (5, 1)
    assert "died 4 times" in summary.failed[0]["error"]
    counts = calls(tmp_path)
    assert counts[1] >= 4  # given up after 3 retries, each running alone
    assert all(counts[i] <= 2 for i in range(6) if i != 1)  # the others at most retried once
    assert_each_frame_once(output, images, failed=(1,))
    saved = json.loads(output.with_name(output.name + ".summary.json").read_text())
    assert saved["n_failed"] == 1


def test_executors_stream_every_task_once():
    def tasks():
        for k in range(7):
            yield k, (k,)

    for spec in (ExecutorSpec("local", 1), ExecutorSpec("local", 2)):
        with make_executor(spec) as pool:
            got = dict(pool.map_unordered(_square_plus, 10, tasks()))
        assert got == {k: k * k + 10 for k in range(7)}


def _square_plus(context: int, k: int) -> int:
    return k * k + context


def test_prior_executor_option_reaches_training_and_evaluation(tmp_path, cluster, monkeypatch):
    import piwsl.priors.cache as cache
    from piwsl.config import PriorConfig
    from piwsl.data import read_frames
    from piwsl.evaluation import Predictions, add_prior
    from piwsl.priors import PriorUse
    from piwsl.training.data import apply_prior

    used: list[ExecutorSpec] = []

    def spy(spec: ExecutorSpec, n_tasks: int | None = None):
        used.append(spec)
        return make_executor(spec, n_tasks)

    monkeypatch.setattr(cache, "make_executor", spy)
    frames = read_frames("builtin:ethanol_train")[:4]
    cfg = PriorConfig(name=EMT, cache_dir=str(tmp_path / "a"), executor="dask", scheduler=cluster)
    prior, splits, _ = apply_prior(cfg, {"train": frames[:3], "test": frames[3:]})
    serial, _ = prior.compute(frames[:3])
    got = np.array([f.energy for f in splits["train"]])
    np.testing.assert_array_equal(got, np.array([f.energy for f in frames[:3]]) - serial)
    n_atoms = sum(f.n_atoms for f in frames)
    predictions = Predictions(
        energy=np.zeros(4),
        forces=np.zeros((n_atoms, 3)),
        numbers=np.concatenate([f.numbers for f in frames]),
        ptr=np.cumsum([0] + [f.n_atoms for f in frames]),
    )
    use = PriorUse(cache_dir=str(tmp_path / "b"), executor="dask", scheduler=cluster)
    add_prior(predictions, prior, frames, use)
    np.testing.assert_array_equal(predictions.energy, prior.compute(frames)[0])
    assert [(s.kind, s.scheduler) for s in used] == [("dask", cluster)] * 2
