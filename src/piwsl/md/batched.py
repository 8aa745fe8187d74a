"""All trajectories of a stability run as one batch of replicas (``MDConfig(batched=True)``).

The replicas start exactly as the one-at-a-time runner starts them (:func:`~piwsl.md.runner.
prepare_atoms` with each trajectory's own seeded generator: Maxwell–Boltzmann velocities, no
centre-of-mass motion or rotation), advance together through :mod:`piwsl.md.integrators` (NVE
velocity Verlet or a Nosé–Hoover chain, centre of mass fixed) with one model call per step for all
of them (:class:`~piwsl.md.potential.BatchedPotential`), and are checked with the same
:class:`~piwsl.md.failure.FailureDetector`. A replica that fails is frozen and leaves the batch; the
others go on. Each replica yields a :class:`~piwsl.md.runner.TrajectoryResult` like the serial
runner's, so the report, plots and h(r) are the same. Wall and model time are those of the whole
batch (the replicas ran concurrently): ``steps_per_s`` of a trajectory is steps per second per
replica.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units

from piwsl.errors import ConfigError
from piwsl.md.batched_state import STATE_NAME, fingerprint, load_state, save_state
from piwsl.md.config import MDConfig
from piwsl.md.failure import Failure, FailureDetector
from piwsl.md.integrators import NoseHooverChain, Replicas, verlet_step
from piwsl.md.potential import BatchedPotential
from piwsl.md.runner import (
    RUN_ERRORS,
    TrajectoryResult,
    _TrajectoryWriter,
    finish_result,
    prepare_atoms,
    trajectory_rng,
)

log = logging.getLogger(__name__)

#: Ensembles the batched integrators implement (deterministic ones).
BATCHED_ENSEMBLES = ("nve", "nose-hoover")


@dataclass
class _Replica:
    """Book-keeping of one replica: its result, failure detector, thermo rows and writer."""

    result: TrajectoryResult
    detector: FailureDetector
    template: Atoms
    rows: list[tuple[float, ...]] = field(default_factory=list)
    writer: _TrajectoryWriter | None = None


def _start(
    starts: list[Atoms], frames: list[int], config: MDConfig, out_dir: Path | None
) -> tuple[Replicas, list[_Replica]]:
    """Initial state of every replica (as the serial runner draws it) and its book-keeping."""
    prepared, replicas = [], []
    for k, frame in enumerate(frames):
        atoms = prepare_atoms(
            starts[frame], config.temperature_K, trajectory_rng(config.seed, k), config
        )
        atoms.set_constraint()
        prepared.append(atoms)
        detector = FailureDetector(config.failure, starts[frame], config.temperature_K)
        result = TrajectoryResult(
            index=k,
            seed=[int(config.seed), k],
            start_frame=int(frame),
            n_atoms=len(atoms),
            n_steps_planned=config.n_steps,
            n_bonds=0 if detector.bonds is None else len(detector.bonds),
            temperature_bound_K=detector.max_temperature_K,
        )
        if out_dir is not None and config.write_trajectories:
            suffix = "extxyz" if config.trajectory_format == "extxyz" else "traj"
            result.files["trajectory"] = str(out_dir / f"traj_{k:03d}.{suffix}")
        replicas.append(_Replica(result, detector, atoms))
    sizes = [len(a) for a in prepared]
    state = Replicas(
        positions=np.concatenate([a.positions for a in prepared]).astype(np.float64),
        momenta=np.concatenate([a.get_momenta() for a in prepared]).astype(np.float64),
        masses=np.concatenate([a.get_masses() for a in prepared]).astype(np.float64),
        ptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        active=np.ones(len(prepared), dtype=bool),
        fix_com=config.fix_com,
    )
    return state, replicas


class _Observer:
    """Logs, writes and checks every active replica after a step (the serial runner's rules)."""

    def __init__(self, state: Replicas, replicas: list[_Replica], config: MDConfig, nhc) -> None:
        self.state, self.replicas, self.config, self.nhc = state, replicas, config, nhc
        self.dt_ps = config.timestep_fs / 1000.0

    def __call__(self, step: int, energies: np.ndarray, forces: np.ndarray) -> None:
        cfg, state = self.config, self.state
        log_now = step % cfg.log_interval == 0 or step == cfg.n_steps
        check_now = step % cfg.check_interval == 0 or step == cfg.n_steps
        write_now = step % cfg.traj_interval == 0
        kinetic = state.kinetic_energy()
        temperature = state.temperature()
        thermostat = self.nhc.energy() if self.nhc is not None else None
        t = step * self.dt_ps
        for k in np.flatnonzero(state.active):
            rep, lo, hi = self.replicas[k], state.ptr[k], state.ptr[k + 1]
            pos, f = state.positions[lo:hi], forces[lo:hi]
            found = None
            if check_now:
                cell = np.asarray(rep.template.cell.array)
                found = rep.detector.check(pos, cell, energies[k], f, temperature[k])
            if log_now or found is not None:
                etot = energies[k] + kinetic[k]
                conserved = etot + thermostat[k] if thermostat is not None else float("nan")
                rep.rows.append((step, t, energies[k], kinetic[k], etot, temperature[k], conserved))
            if write_now or found is not None:
                rep.result.frames.append(pos.copy())
                if rep.writer is not None:
                    self._write(rep, pos, k, energies[k], f, step, t, temperature[k], found)
            if found is not None:
                self.fail(k, found[0], found[1], step)
            else:
                rep.result.n_steps = step

    def fail(self, k: int, reason: str, message: str, step: int) -> None:
        """Record replica k's failure at ``step`` and freeze it (it leaves the batch)."""
        state = self.state
        self.replicas[k].result.failure = Failure(reason, message, step, step * self.dt_ps)
        state.active[k] = False
        state.momenta[state.ptr[k] : state.ptr[k + 1]] = 0.0

    def _write(self, rep, pos, k, energy, forces, step, t, temperature, found) -> None:
        atoms = rep.template.copy()
        atoms.positions = pos
        atoms.set_momenta(self.state.momenta[self.state.ptr[k] : self.state.ptr[k + 1]])
        info = {"step": step, "time_ps": t, "temperature_K": temperature}
        if found is not None:
            info["failure"] = found[0]
        rep.writer.write(atoms, float(energy), forces, info)


class _BatchedRun:
    """The state of a batched run: replicas, thermostat, potential, observer and step."""

    def __init__(self, potential, starts, frames, config: MDConfig, out: Path | None) -> None:
        self.potential, self.config, self.out = potential, config, out
        self.state, self.replicas = _start(starts, frames, config, out)
        potential.set_structures([r.template for r in self.replicas])
        self.nhc = None
        if config.ensemble == "nose-hoover":
            tdamp = config.thermostat_time_fs * units.fs
            self.nhc = NoseHooverChain(self.state.n_dof, config.temperature_K, tdamp)
        self.observe = _Observer(self.state, self.replicas, config, self.nhc)
        self.step = 0
        self.wall_before = 0.0  # wall time of earlier attempts of a resumed run (s)
        self.startup_s = 0.0  # the first force evaluation of this attempt (s)
        self.energy = np.full(self.state.n_replicas, np.nan)
        self.forces = np.zeros_like(self.state.positions)

    def compute(self, positions: np.ndarray) -> np.ndarray:
        """The potential at ``positions``; replicas it cannot evaluate fail (not the batch)."""
        state = self.state
        finite = np.isfinite(positions).all(1)
        for k in np.flatnonzero(state.active):
            if not finite[state.ptr[k] : state.ptr[k + 1]].all():
                self.observe.fail(k, "non_finite", "non-finite positions", self.step)
        try:
            self.energy, self.forces = self.potential(positions, state.ptr, state.active)
        except RUN_ERRORS as err:  # a misbehaving potential ends the replicas it was running
            for k in np.flatnonzero(state.active):
                self.observe.fail(k, "error", f"{type(err).__name__}: {err}", self.step)
            self.energy = np.full(state.n_replicas, np.nan)
            self.forces = np.zeros_like(positions)
        return self.forces

    def snapshot(self, wall: float, fingerprint: dict) -> dict:
        s, nhc = self.state, self.nhc
        return {
            "fingerprint": fingerprint,
            "step": self.step,
            "wall_s": wall,
            "arrays": {"positions": s.positions, "momenta": s.momenta, "active": s.active},
            "nhc": None if nhc is None else {"eta": nhc.eta, "p_eta": nhc.p_eta},
            "timers": [self.potential.model_s, self.potential.prior_s, self.potential.n_calls],
            "replicas": [
                {
                    "rows": r.rows,
                    "frames": r.result.frames,
                    "failure": r.result.failure,
                    "n_steps": r.result.n_steps,
                    "file_size": None if r.writer is None else r.writer.size(),
                }
                for r in self.replicas
            ],
        }

    def restore(self, saved: dict) -> None:
        s = self.state
        s.positions, s.momenta = saved["arrays"]["positions"], saved["arrays"]["momenta"]
        s.active[:] = saved["arrays"]["active"]
        if self.nhc is not None:
            self.nhc.eta, self.nhc.p_eta = saved["nhc"]["eta"], saved["nhc"]["p_eta"]
        p = self.potential
        p.model_s, p.prior_s, p.n_calls = saved["timers"]
        for rep, r in zip(self.replicas, saved["replicas"], strict=True):
            rep.rows, rep.result.frames = r["rows"], r["frames"]
            rep.result.failure, rep.result.n_steps = r["failure"], r["n_steps"]
        self.step, self.wall_before = int(saved["step"]), float(saved["wall_s"])

    def open_writers(self, saved: dict | None) -> None:
        """Trajectory files: new, or continued from the saved lengths of a resumed run."""
        sizes = (
            [r["file_size"] for r in saved["replicas"]] if saved else [None] * len(self.replicas)
        )
        for rep, size in zip(self.replicas, sizes, strict=True):
            path = rep.result.files.get("trajectory")
            if path is not None:
                rep.writer = _TrajectoryWriter(Path(path), self.config.trajectory_format, size)

    def close(self) -> None:
        for rep in self.replicas:
            if rep.writer is not None:
                rep.writer.close()


def run_batched(
    potential: BatchedPotential,
    starts: list[Atoms],
    frames: list[int],
    config: MDConfig,
    out_dir: str | Path | None = None,
) -> list[TrajectoryResult]:
    """Run trajectory k from ``starts[frames[k]]`` for every k, all at once (module docstring);
    with ``out_dir`` and ``config.state_interval``, a killed run resumes from its last state."""
    if config.ensemble not in BATCHED_ENSEMBLES:
        raise ConfigError(
            f"batched MD integrates {' and '.join(BATCHED_ENSEMBLES)}, not {config.ensemble!r}; "
            "run it one trajectory at a time (batched=False)"
        )
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    keep_state = (
        out is not None and config.state_interval > 0 and config.trajectory_format != "traj"
    )
    stamp = fingerprint(config, frames, potential.source)
    saved = load_state(out / STATE_NAME, stamp) if keep_state else None
    run = _BatchedRun(potential, starts, frames, config, out)
    try:
        wall = _advance(run, saved, stamp if keep_state else None)
    finally:
        run.close()
    results = []
    for rep in run.replicas:
        rep.result.wall_s = wall
        rep.result.startup_s = run.startup_s
        rep.result.calculator_s = potential.model_s + potential.prior_s
        rep.result.n_calculator_calls = potential.n_calls
        results.append(finish_result(rep.result, rep.rows, config, out))
    if keep_state:
        (out / STATE_NAME).unlink(missing_ok=True)
    return results


def startup(run: _BatchedRun) -> np.ndarray:
    """The forces at the start (or the resumed state), timed as start-up: the first call loads
    and, compiled, traces the model, so it is left out of the potential's loop timers."""
    potential, begin = run.potential, time.perf_counter()
    model_s, prior_s = potential.model_s, potential.prior_s
    forces = run.state.constrain(run.compute(run.state.positions))
    potential.model_s, potential.prior_s = model_s, prior_s
    run.startup_s = time.perf_counter() - begin
    return forces


def _advance(run: _BatchedRun, saved: dict | None, stamp: dict | None) -> float:
    """Integrate until every replica failed or ran its length; returns the wall time (s)."""
    state, config = run.state, run.config
    dt = config.timestep_fs * units.fs
    if saved is not None:
        run.restore(saved)
        log.info("batched MD resumed at step %d", run.step)
    run.open_writers(saved)
    forces = startup(run)
    if saved is None:
        run.observe(0, run.energy, run.forces)
    progress = _progress_bar(config, run.step)
    begin = time.perf_counter()
    try:
        while run.step < config.n_steps and state.active.any():
            run.step += 1
            forces = verlet_step(state, forces, dt, run.compute, run.nhc)
            run.observe(run.step, run.energy, run.forces)
            if progress is not None:
                progress.update(1)
                if run.step % 100 == 0:
                    progress.set_postfix_str(
                        f"{int(state.active.sum())}/{state.n_replicas} running"
                    )
            if stamp is not None and run.step % config.state_interval == 0:
                wall = run.wall_before + time.perf_counter() - begin
                save_state(run.out / STATE_NAME, run.snapshot(wall, stamp))
    finally:
        if progress is not None:
            progress.close()
    return run.wall_before + time.perf_counter() - begin


def _progress_bar(config: MDConfig, done: int = 0):
    from piwsl.md.runner import md_progress_bar

    desc = f"MD {config.ensemble}, {config.n_trajectories} replicas"
    return md_progress_bar(config, desc, initial=done)
