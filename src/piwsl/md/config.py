"""Settings of a stability run (:class:`MDConfig`) and the ensemble names; light to import."""

from __future__ import annotations

from dataclasses import dataclass, field

from piwsl.errors import ConfigError
from piwsl.md.failure import FailureCriteria
from piwsl.registry import suggest

ENSEMBLES = ("nve", "langevin", "bussi", "nose-hoover")
ALIASES = {
    "verlet": "nve",
    "velocity-verlet": "nve",
    "nvt": "langevin",
    "nvt-langevin": "langevin",
    "nvt-bussi": "bussi",
    "csvr": "bussi",
    "nhc": "nose-hoover",
    "nvt-nhc": "nose-hoover",
    "nosehoover": "nose-hoover",
}


def resolve_ensemble(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in ENSEMBLES:
        raise ConfigError(f"unknown ensemble {name!r}{suggest(key, [*ENSEMBLES, *ALIASES])}")
    return key


@dataclass
class MDConfig:
    """Settings of a stability run (units in the names: K, fs, ps, Å; intervals in steps)."""

    ensemble: str = "nve"
    temperature_K: float = 300.0  # noqa: N815
    timestep_fs: float = 0.5
    length_ps: float = 10.0
    n_trajectories: int = 5
    seed: int = 0
    frame_selection: str = "random"  # "random" (seeded) or "sequential"
    friction_per_ps: float = 10.0  # Langevin friction (1/ps); 10/ps = 0.01/fs
    thermostat_time_fs: float = 100.0  # Bussi τ_T and Nosé–Hoover damping time
    log_interval: int = 10  # thermo record (energies, temperature) every … steps
    traj_interval: int = 100  # trajectory frame (and h(r) sample) every … steps
    check_interval: int = 1  # failure checks every … steps
    failure: FailureCriteria = field(default_factory=FailureCriteria)
    min_start_distance_A: float = 0.5  # noqa: N815 (start structures: atoms closer are an error)
    hr_r_max_A: float = 10.0  # noqa: N815
    hr_dr_A: float = 0.02  # noqa: N815
    fix_com: bool = True
    zero_rotation: bool = True  # for non-periodic systems only
    write_trajectories: bool = True
    trajectory_format: str = "extxyz"  # "extxyz" or "traj"
    plots: bool = True
    progress: bool = True
    state_interval: int = 2000  # batched runs: save a resumable state every … steps (0: never)

    def __post_init__(self) -> None:
        self.ensemble = resolve_ensemble(self.ensemble)
        for name in ("timestep_fs", "length_ps", "friction_per_ps", "thermostat_time_fs"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.temperature_K >= 0:
            raise ConfigError(f"temperature_K must be ≥ 0 K, got {self.temperature_K}")
        if self.ensemble != "nve" and not self.temperature_K > 0:
            raise ConfigError(f"{self.ensemble} needs a temperature > 0 K")
        if self.n_trajectories < 1:
            raise ConfigError(f"n_trajectories must be ≥ 1, got {self.n_trajectories}")
        if not self.min_start_distance_A >= 0:
            raise ConfigError(
                f"min_start_distance_A must be ≥ 0 Å, got {self.min_start_distance_A}"
            )
        for name in ("log_interval", "traj_interval", "check_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1 step, got {getattr(self, name)}")
        if self.frame_selection not in ("random", "sequential"):
            raise ConfigError(
                f"frame_selection must be 'random' or 'sequential', got {self.frame_selection!r}"
            )
        if self.trajectory_format not in ("extxyz", "traj"):
            raise ConfigError(
                f"trajectory_format must be 'extxyz' or 'traj', got {self.trajectory_format!r}"
            )
        if isinstance(self.failure, dict):
            self.failure = FailureCriteria(**self.failure)

    @property
    def n_steps(self) -> int:
        return max(1, round(self.length_ps * 1000.0 / self.timestep_fs))
