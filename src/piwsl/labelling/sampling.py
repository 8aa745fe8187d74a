"""Structure sampling for labelling: seeded Langevin MD at a temperature with a cheap calculator.

The calculator is a reference backend that gives forces (default ``gfn2-xtb`` through tblite, or
any ``ase:MOD.CLS``) or a piwsl model file (``*.pt``, run by
:class:`piwsl.calculator.PiwslCalculator`).
From each start structure: Maxwell–Boltzmann velocities at ``temperature_K`` (centre-of-mass
motion and rotation removed), ``equilibration_steps`` steps discarded, then one frame kept every
``every`` steps until ``n_frames`` frames are collected (split evenly over the start structures).
The centre of mass is held fixed with :class:`ase.constraints.FixCom`. Everything is seeded:
the same seed gives the same frames.

With a reference backend (GFN2-xTB, any ``ase:`` calculator) the energy and forces it computed
at each kept frame are kept as labels, in the format ``piwsl label`` writes: ``REF_energy`` (eV),
``REF_forces`` (eV/Å, the raw forces, before the FixCom constraint), ``REF_status="ok"`` and the
provenance ``REF_method``, ``REF_basis``, ``REF_program``, ``REF_program_version`` (+ method
details); ``piwsl train`` can use the file as it is. A piwsl model as calculator labels nothing
(its predictions are no reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from piwsl.errors import ConfigError
from piwsl.io.atomic import atomic_path


@dataclass
class SamplingConfig:
    """Langevin sampling settings (K, fs, 1/fs)."""

    temperature_K: float = 500.0  # noqa: N815 (unit in the name)
    n_frames: int = 100
    every: int = 20  # keep one frame every `every` MD steps
    equilibration_steps: int = 200
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.01
    seed: int = 0

    def validate(self) -> None:
        if not self.temperature_K > 0:
            raise ConfigError(f"temperature must be > 0 K, got {self.temperature_K}")
        if self.n_frames < 1 or self.every < 1 or self.equilibration_steps < 0:
            raise ConfigError("n_frames and every must be ≥ 1, equilibration_steps ≥ 0")
        if not self.timestep_fs > 0 or not self.friction_per_fs >= 0:
            raise ConfigError("timestep must be > 0 fs and friction ≥ 0 1/fs")


def make_sampling_calculator(spec: str = "gfn2-xtb", options: dict[str, Any] | None = None):
    """An ASE calculator from a backend name or a piwsl model file."""
    path = Path(spec)
    if spec.endswith((".pt", ".ckpt")) or path.is_file():
        from piwsl.calculator import PiwslCalculator

        return PiwslCalculator(spec, **(options or {}))
    from piwsl.labelling.backends import BackendCalculator, make_backend

    return BackendCalculator(make_backend(spec, **(options or {})))


def sample_md(
    start, calculator, config: SamplingConfig | None = None, progress: bool = False
) -> list:
    """Langevin frames from ``start`` (Atoms, a list of Atoms, or a file readable by piwsl),
    labelled where the calculator is a reference backend (module docstring); ``progress``
    shows a progress bar over the MD steps."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    from piwsl.labelling.runner import load_structures
    from piwsl.terminal import progress_bar

    config = config or SamplingConfig()
    config.validate()
    if isinstance(calculator, str):
        calculator = make_sampling_calculator(calculator)
    starts = load_structures([start] if hasattr(start, "positions") else start)
    rng = np.random.default_rng(config.seed)
    per_start = np.full(len(starts), config.n_frames // len(starts))
    per_start[: config.n_frames % len(starts)] += 1
    steps = int(sum(config.equilibration_steps + n * config.every for n in per_start if n))
    bar = progress_bar(steps, desc="sampling MD", unit="step", enabled=progress)
    frames = []
    try:
        for k, (atoms0, n_keep) in enumerate(zip(starts, per_start, strict=True)):
            if n_keep == 0:
                continue
            atoms = atoms0.copy()
            atoms.calc = calculator
            atoms.set_constraint(FixCom())
            _thermalize(atoms, config.temperature_K, rng)
            Stationary(atoms)
            if len(atoms) > 2 and not atoms.pbc.any():
                ZeroRotation(atoms)
            dyn = Langevin(
                atoms,
                timestep=config.timestep_fs * units.fs,
                temperature_K=config.temperature_K,
                friction=config.friction_per_fs / units.fs,
                fixcm=False,
                rng=rng,
            )
            if config.equilibration_steps:
                dyn.run(config.equilibration_steps)
                bar.update(config.equilibration_steps)
            for j in range(int(n_keep)):
                dyn.run(config.every)
                bar.update(config.every)
                step = config.equilibration_steps + (j + 1) * config.every
                frames.append(_snapshot(atoms, calculator, k, step, config))
    finally:
        bar.close()
    return frames


def _snapshot(atoms, calculator, start: int, step: int, config: SamplingConfig):
    """A copy of the current MD frame with its sampling record, and, for a reference backend,
    its energy and forces as labels with provenance."""
    from piwsl.labelling.backends import BackendCalculator
    from piwsl.labelling.runner import _flat

    snap = atoms.copy()
    snap.set_constraint()
    snap.calc = None
    snap.info = {
        "sample_start": start,
        "sample_step": step,
        "sample_temperature_K": config.temperature_K,
        "sample_seed": config.seed,
    }
    if isinstance(calculator, BackendCalculator):
        # the integrator's last call: these positions (cached, nothing is recomputed)
        energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces(apply_constraint=False), dtype=np.float64)
        for key, value in calculator.provenance.items():
            snap.info[f"REF_{key}"] = _flat(value)
        snap.info["REF_status"] = "ok"
        snap.info["REF_energy"] = energy
        snap.arrays["REF_forces"] = forces
    return snap


def _thermalize(atoms, temperature_K: float, rng) -> None:
    """Maxwell–Boltzmann momenta (ASE ≥ 3.29 ``thermalize_momenta``, older ASE's function)."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):
        vd.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:  # pragma: no cover - ASE < 3.29
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


def write_samples(frames: list, path: str | Path) -> Path:
    """Write sampled frames to extxyz (atomically)."""
    import ase.io

    with atomic_path(path) as tmp:
        ase.io.write(str(tmp), frames, format="extxyz")
    return Path(path)
