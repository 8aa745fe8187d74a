"""The MD runner: independent seeded trajectories through any ASE calculator, with failure checks.

Each trajectory k draws its own ``numpy.random.Generator`` from ``SeedSequence([seed, k])`` (so its
result does not depend on how many trajectories run), picks a start frame, draws Maxwell–Boltzmann
velocities at the target temperature, removes centre-of-mass motion (and, for molecules, rotation),
fixes the centre of mass with :class:`ase.constraints.FixCom`, and integrates with an ASE
integrator:

- ``nve`` — :class:`ase.md.verlet.VelocityVerlet`
- ``langevin`` — :class:`ase.md.langevin.Langevin` (stochastic NVT; ``fixcm=False`` + FixCom)
- ``bussi`` — :class:`ase.md.bussi.Bussi` (stochastic velocity rescaling NVT)
- ``nose-hoover`` — :class:`ase.md.nose_hoover_chain.NoseHooverChainNVT` (deterministic NVT)

Every ``check_interval`` steps the :class:`~piwsl.md.failure.FailureDetector` runs; the first
failure stops the trajectory and records its time (ps) and reason. Time spent inside the
calculator is measured by :class:`TimedCalculator` so the report can split wall time into model
and the rest (integrator, checks, I/O).

Temperatures are ASE's instantaneous kinetic temperatures, 2 E_kin / (k_B N_dof) with
N_dof = 3N − 3 under FixCom. For molecules the initial rotation is removed too and a conservative
model keeps it zero, so the true N_dof is 3N − 6 and the reported value is lower by
(3N − 6)/(3N − 3) (5 % for aspirin).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

from piwsl.calculator import state_changes
from piwsl.errors import ConfigError, PiwslError
from piwsl.md.config import MDConfig
from piwsl.md.failure import Failure, FailureDetector
from piwsl.md.metrics import DistanceHistogram, distance_histogram, energy_drift, hr_bins

log = logging.getLogger(__name__)

#: exceptions raised mid-run by a misbehaving potential: recorded as a failure, not re-raised
RUN_ERRORS = (PiwslError, FloatingPointError, ValueError, RuntimeError, np.linalg.LinAlgError)


class TimedCalculator(Calculator):
    """Wraps any ASE calculator and accumulates the wall time spent inside it (s)."""

    implemented_properties = ["energy", "free_energy", "forces"]  # noqa: RUF012 (ASE API)

    def __init__(self, inner: Calculator) -> None:
        super().__init__()
        self.inner = inner
        self.seconds = 0.0
        self.n_calls = 0

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's state check on what a model reads, faster (:func:`~piwsl.calculator.state_changes`)."""
        return state_changes(self.atoms, atoms, tol)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        start = time.perf_counter()
        try:
            forces = np.array(self.inner.get_property("forces", self.atoms), dtype=np.float64)
            if "energy" in self.inner.results:  # computed with the forces: no second state check
                energy = float(self.inner.results["energy"])
            else:
                energy = float(self.inner.get_property("energy", self.atoms))
            free = self.inner.results.get("free_energy", energy)
        finally:
            self.seconds += time.perf_counter() - start
            self.n_calls += 1
        self.results = {"energy": energy, "free_energy": float(free), "forces": forces}


@dataclass
class TrajectoryResult:
    """One trajectory: outcome, thermo series, throughput and files."""

    index: int
    seed: list[int]
    start_frame: int
    n_atoms: int
    n_steps_planned: int
    n_steps: int = 0
    failure: Failure | None = None
    wall_s: float = 0.0  # the integration loop; the first force evaluation is start-up
    calculator_s: float = 0.0  # inside the potential during the loop (start-up excluded)
    n_calculator_calls: int = 0
    startup_s: float = 0.0  # the first force evaluation: model loading, compilation, warm-up
    n_bonds: int = 0
    temperature_bound_K: float = 0.0  # noqa: N815
    thermo: dict[str, np.ndarray] = field(default_factory=dict)
    frames: list[np.ndarray] = field(default_factory=list)  # positions every traj_interval
    energy: dict[str, float | None] = field(default_factory=dict)
    conserved: dict[str, float | None] = field(default_factory=dict)
    hr: DistanceHistogram | None = None
    hr_error: float | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def stable(self) -> bool:
        return self.failure is None

    def summary(self, timestep_fs: float) -> dict[str, Any]:
        steps_per_s = self.n_steps / self.wall_s if self.wall_s > 0 else None
        temps = self.thermo.get("temperature_K", np.array([]))
        return {
            "index": self.index,
            "seed": self.seed,
            "start_frame": self.start_frame,
            "stable": self.stable,
            "failure_reason": None if self.failure is None else self.failure.reason,
            "failure_message": None if self.failure is None else self.failure.message,
            "failure_time_ps": None if self.failure is None else self.failure.time_ps,
            "n_steps": self.n_steps,
            "n_steps_planned": self.n_steps_planned,
            "simulated_ps": self.n_steps * timestep_fs / 1000.0,
            "n_bonds_checked": self.n_bonds,
            "temperature_bound_K": self.temperature_bound_K,
            "mean_temperature_K": float(np.nanmean(temps)) if temps.size else None,
            "temperature_std_K": float(np.nanstd(temps)) if temps.size > 1 else None,
            **self.energy,
            **{f"conserved_{k}": v for k, v in self.conserved.items()},
            "hr_error": self.hr_error,
            "wall_s": self.wall_s,
            "steps_per_s": steps_per_s,
            "ns_per_day": None if steps_per_s is None else steps_per_s * timestep_fs * 86400 / 1e6,
            "calculator_s": self.calculator_s,
            "calculator_share": self.calculator_s / self.wall_s if self.wall_s > 0 else None,
            "n_calculator_calls": self.n_calculator_calls,
            "startup_s": self.startup_s,
            "files": self.files,
        }


def trajectory_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of trajectory ``index``: independent of how many trajectories run."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def prepare_atoms(
    start: Atoms, temperature_K: float, rng: np.random.Generator, config: MDConfig
) -> Atoms:
    """Copy ``start``, draw Maxwell–Boltzmann velocities and fix the centre of mass."""
    atoms = start.copy()
    atoms.calc = None
    has_fixed_atoms = any(type(c).__name__ == "FixAtoms" for c in atoms.constraints)
    thermalize_momenta(atoms, temperature_K, rng=rng)
    if not has_fixed_atoms:
        if config.fix_com:
            Stationary(atoms)
        if config.zero_rotation and not atoms.pbc.any() and len(atoms) > 2:
            ZeroRotation(atoms)
        if config.fix_com:
            atoms.set_constraint([*atoms.constraints, FixCom()])
    return atoms


def make_integrator(atoms: Atoms, config: MDConfig, rng: np.random.Generator):
    dt = config.timestep_fs * units.fs
    T = config.temperature_K
    if config.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    if config.ensemble == "langevin":
        from ase.md.langevin import Langevin

        friction = config.friction_per_ps / (1000.0 * units.fs)
        return Langevin(atoms, dt, temperature_K=T, friction=friction, fixcm=False, rng=rng)
    if config.ensemble == "bussi":
        from ase.md.bussi import Bussi

        return Bussi(atoms, dt, temperature_K=T, taut=config.thermostat_time_fs * units.fs, rng=rng)
    from ase.md.nose_hoover_chain import NoseHooverChainNVT

    return NoseHooverChainNVT(
        atoms, dt, temperature_K=T, tdamp=config.thermostat_time_fs * units.fs
    )


def _conserved_energy(dyn, etot: float) -> float:
    """Thermostat-corrected total energy (eV), where the integrator defines one; else NaN."""
    if hasattr(dyn, "transferred_energy"):  # Bussi: energy the thermostat put in
        return etot - float(dyn.transferred_energy)
    if hasattr(dyn, "get_conserved_energy"):  # Nosé–Hoover chain
        return float(dyn.get_conserved_energy())
    return float("nan")


class _TrajectoryWriter:
    """Frames of one trajectory to extxyz or ASE ``.traj``; an extxyz file can be continued from
    a saved length (``resume_at``, bytes: what was written after it is cut off)."""

    def __init__(self, path: Path, fmt: str, resume_at: int | None = None) -> None:
        self.path = path
        self.fmt = fmt
        if fmt == "traj":
            from ase.io.trajectory import Trajectory

            self._traj = Trajectory(str(path), "w")
        elif resume_at is not None and path.is_file():
            self._handle = open(path, "r+")  # noqa: SIM115 (closed in close())
            self._handle.truncate(resume_at)
            self._handle.seek(resume_at)
        else:
            self._handle = open(path, "w")  # noqa: SIM115 (closed in close())

    def size(self) -> int | None:
        """Bytes written so far (extxyz; None for .traj, which cannot be continued)."""
        return None if self.fmt == "traj" else self._handle.tell()

    def write(self, atoms: Atoms, energy: float, forces: np.ndarray, info: dict) -> None:
        snap = atoms.copy()
        snap.set_constraint()
        snap.info.update(info)
        snap.calc = SinglePointCalculator(snap, energy=energy, forces=forces)
        if self.fmt == "traj":
            self._traj.write(snap)
        else:
            import ase.io

            ase.io.write(self._handle, snap, format="extxyz")
            self._handle.flush()

    def close(self) -> None:
        if self.fmt == "traj":
            self._traj.close()
        else:
            self._handle.close()


def _open_writer(
    result: TrajectoryResult, config: MDConfig, out_dir: str | Path | None
) -> _TrajectoryWriter | None:
    if out_dir is None or not config.write_trajectories:
        return None
    suffix = "extxyz" if config.trajectory_format == "extxyz" else "traj"
    path = Path(out_dir) / f"traj_{result.index:03d}.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    result.files["trajectory"] = str(path)
    return _TrajectoryWriter(path, config.trajectory_format)


class _Observer:
    """Records, writes and checks the state after a step; ``observe(step)`` is True to stop."""

    def __init__(self, atoms, timed, detector, dyn, config, result, writer, progress) -> None:
        self.atoms, self.timed, self.detector, self.dyn = atoms, timed, detector, dyn
        self.config, self.result, self.writer, self.progress = config, result, writer, progress
        self.rows: list[tuple[float, ...]] = []
        self.dt_ps = config.timestep_fs / 1000.0

    def state(self) -> tuple[float, np.ndarray]:
        timed, atoms = self.timed, self.atoms
        if "forces" in timed.results and not timed.check_state(atoms):
            # the integrator's last call was at these positions (same test as the calculator's)
            return float(timed.results["energy"]), timed.results["forces"]
        return float(atoms.get_potential_energy()), atoms.get_forces(apply_constraint=False)

    def __call__(self, step: int) -> bool:
        atoms, config, t = self.atoms, self.config, step * self.dt_ps
        energy, forces = self.state()
        log_now = step % config.log_interval == 0 or step == config.n_steps
        check_now = step % config.check_interval == 0 or step == config.n_steps
        temperature = atoms.get_temperature() if (log_now or check_now) else float("nan")
        found = None
        if check_now:
            found = self.detector.check(
                atoms.get_positions(), np.asarray(atoms.cell.array), energy, forces, temperature
            )
        if log_now or found is not None:  # the failing step is always logged and written
            ekin = atoms.get_kinetic_energy()
            etot = energy + ekin
            conserved = _conserved_energy(self.dyn, etot)
            self.rows.append((step, t, energy, ekin, etot, temperature, conserved))
            if self.progress is not None:
                self.progress.set_postfix_str(f"t={t:.3f} ps, T={temperature:.0f} K", refresh=False)
        if step % config.traj_interval == 0 or found is not None:
            self.result.frames.append(atoms.get_positions().copy())
            if self.writer is not None:
                info = {"step": step, "time_ps": t, "temperature_K": temperature}
                if found is not None:
                    info["failure"] = found[0]
                self.writer.write(atoms, energy, forces, info)
        if found is not None:
            self.result.failure = Failure(found[0], found[1], step, t)
            return True
        return False


def _integrate(observe: _Observer) -> None:
    """Step until ``n_steps`` or a failure; run-time errors become the trajectory's failure."""
    dyn, result, progress = observe.dyn, observe.result, observe.progress
    begin = time.perf_counter()
    try:
        if not observe(0):
            for _ in range(observe.config.n_steps):
                dyn.step()
                dyn.nsteps += 1
                result.n_steps = dyn.nsteps
                if progress is not None:
                    progress.update(1)
                if observe(dyn.nsteps):
                    break
    except RUN_ERRORS as err:
        step = result.n_steps
        reason = "non_finite" if not np.all(np.isfinite(observe.atoms.positions)) else "error"
        result.failure = Failure(reason, f"{type(err).__name__}: {err}", step, step * observe.dt_ps)
    finally:
        result.wall_s = time.perf_counter() - begin
        if progress is not None:
            progress.close()
        if observe.writer is not None:
            observe.writer.close()


def run_trajectory(
    calculator: Calculator,
    start: Atoms,
    config: MDConfig,
    index: int = 0,
    start_frame: int = 0,
    out_dir: str | Path | None = None,
    rng: np.random.Generator | None = None,
) -> TrajectoryResult:
    """Run one trajectory from ``start`` until ``length_ps`` or the first failure."""
    rng = trajectory_rng(config.seed, index) if rng is None else rng
    atoms = prepare_atoms(start, config.temperature_K, rng, config)
    timed = TimedCalculator(calculator)
    atoms.calc = timed
    detector = FailureDetector(config.failure, start, config.temperature_K)
    result = TrajectoryResult(
        index=index,
        seed=[int(config.seed), int(index)],
        start_frame=int(start_frame),
        n_atoms=len(atoms),
        n_steps_planned=config.n_steps,
        n_bonds=0 if detector.bonds is None else len(detector.bonds),
        temperature_bound_K=detector.max_temperature_K,
    )
    writer = _open_writer(result, config, out_dir)
    # setup errors (unknown element, bad checkpoint) propagate: evaluate the start outside the loop
    try:
        atoms.get_forces()
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    result.startup_s, timed.seconds = timed.seconds, 0.0  # start-up is not loop time
    dyn = make_integrator(atoms, config, rng)
    progress = _progress_bar(config, index)
    observe = _Observer(atoms, timed, detector, dyn, config, result, writer, progress)
    _integrate(observe)
    result.calculator_s = timed.seconds
    result.n_calculator_calls = timed.n_calls
    if result.failure is not None:
        f = result.failure
        log.info("trajectory %d failed at %.4f ps (%s): %s", index, f.time_ps, f.reason, f.message)
    return finish_result(result, observe.rows, config, out_dir)


THERMO_COLUMNS = (
    "step",
    "time_ps",
    "potential_eV",
    "kinetic_eV",
    "total_eV",
    "temperature_K",
    "conserved_eV",
)


def finish_result(
    result: TrajectoryResult,
    rows: list[tuple[float, ...]],
    config: MDConfig,
    out_dir: str | Path | None,
) -> TrajectoryResult:
    """Thermo series (``THERMO_COLUMNS`` rows), energy drift and the thermo CSV of a trajectory."""
    table = np.array(rows, dtype=np.float64).reshape(-1, len(THERMO_COLUMNS))
    result.thermo = {name: table[:, k] for k, name in enumerate(THERMO_COLUMNS)}
    result.energy = energy_drift(
        result.thermo["time_ps"], result.thermo["total_eV"], result.n_atoms
    )
    if config.ensemble != "nve" and np.isfinite(result.thermo["conserved_eV"]).any():
        result.conserved = energy_drift(
            result.thermo["time_ps"], result.thermo["conserved_eV"], result.n_atoms
        )
    if out_dir is not None:
        path = Path(out_dir) / f"thermo_{result.index:03d}.csv"
        np.savetxt(
            path,
            table,
            delimiter=",",
            header=",".join(THERMO_COLUMNS),
            comments="",
            fmt=["%d", "%.6f", "%.10g", "%.10g", "%.10g", "%.4f", "%.10g"],
        )
        result.files["thermo"] = str(path)
    return result


def md_progress_bar(config: MDConfig, desc: str, initial: int = 0):
    """The steps bar of one MD run (None with ``progress`` off)."""
    if not config.progress:
        return None
    from piwsl.terminal import progress_bar

    return progress_bar(config.n_steps, desc=desc, unit="step", initial=initial, leave=False)


def _progress_bar(config: MDConfig, index: int):
    return md_progress_bar(config, f"MD {config.ensemble} traj {index + 1}/{config.n_trajectories}")


def load_structures(source: str | Path | Sequence[Any]) -> list[Atoms]:
    """Start or reference structures from a file (any piwsl-readable format), Atoms or Frames."""
    from piwsl.data import read_frames
    from piwsl.data.frames import Frame

    if isinstance(source, (str, Path)):
        return [frame.to_atoms() for frame in read_frames(source)]
    out = []
    for k, item in enumerate(source):
        if isinstance(item, Atoms):
            out.append(item)
        elif isinstance(item, Frame):
            out.append(item.to_atoms())
        else:
            raise ConfigError(f"structure {k} is a {type(item).__name__}, not ase.Atoms or Frame")
    if not out:
        raise ConfigError("no structures given")
    return out


def warn_if_not_conservative(calculator: Any, config: MDConfig) -> bool:
    """Warn before NVE with a model whose forces are its own head's output, not −∂E/∂R: they
    conserve no energy, so without a thermostat the system heats up. Returns True if it warned."""
    model = getattr(calculator, "model", None)
    if config.ensemble != "nve" or not getattr(model, "direct_forces", False):
        return False
    log.warning(
        "this model predicts forces directly (not as −∂E/∂R): they conserve no energy, and NVE "
        "heats the system until it breaks (in piwsl's converged aspirin study, README 'MD of the "
        "converged models', none of the 72 NVE trajectories of such models lasted 2 ps, while "
        "most ran 50 ps under a Nosé–Hoover thermostat). Use --ensemble nose-hoover (or bussi, "
        "langevin), or a conservative model"
    )
    return True


def check_start_structures(
    starts: Sequence[Atoms], frames: Sequence[int], config: MDConfig, source: str
) -> None:
    """Refuse start structures MD cannot run from: a single atom (no interatomic forces, no
    temperature to speak of) or two atoms closer than ``config.min_start_distance_A``."""
    from piwsl.data.checks import min_distance
    from piwsl.data.frames import Frame
    from piwsl.errors import DataError

    for k in sorted(set(frames)):
        atoms = starts[k]
        if len(atoms) < 2:
            raise DataError(
                f"a single {atoms.get_chemical_formula() or 'atom'} atom: MD of one atom has no "
                "interatomic forces (a periodic lattice of it neither) and its centre of mass is "
                "held fixed, so nothing would move",
                file=source,
                frame=k,
                hint="start from a molecule or a periodic structure",
            )
        if config.min_start_distance_A <= 0:
            continue
        frame = Frame.from_atoms(atoms, source, k)
        close = min_distance(frame, config.min_start_distance_A)
        if close is not None:
            raise DataError(
                f"two atoms are {close:.3f} Å apart, closer than {config.min_start_distance_A} "
                "Å: no model gives meaningful forces there and the run would explode at once",
                file=source,
                frame=k,
                key="positions",
                hint="check the structure and its length unit (--min-distance sets the bound)",
            )


def pick_start_frames(n_frames: int, config: MDConfig) -> list[int]:
    """Start-frame index of each trajectory (seeded random draws, or 0, 1, 2, …)."""
    if config.frame_selection == "sequential":
        return [k % n_frames for k in range(config.n_trajectories)]
    return [
        int(
            np.random.default_rng(np.random.SeedSequence([int(config.seed), k, 1])).integers(
                n_frames
            )
        )
        for k in range(config.n_trajectories)
    ]


def hr_edges(config: MDConfig) -> np.ndarray:
    return hr_bins(config.hr_r_max_A, config.hr_dr_A)


def trajectory_hr(result: TrajectoryResult, template: Atoms, config: MDConfig) -> DistanceHistogram:
    return distance_histogram(result.frames, hr_edges(config), template=template)
