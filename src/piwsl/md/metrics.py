"""MD metrics: energy drift and fluctuation, survival statistics, and h(r) with its error.

Definitions (units in every name):

- **Energy drift** (meV/atom/ps): slope of a least-squares line fitted to the total energy per atom
  E_tot(t)/N against time t (ps). **Fluctuation** (meV/atom): standard deviation of E_tot/N about
  that line (``energy_fluctuation_meV_per_atom``) and about its mean (``energy_std_meV_per_atom``).
- **Time to failure** (ps): the time at which a failure criterion fired; for stable trajectories it
  is *censored* at the run length, i.e. the statistics count a stable run as failing at its last
  step, so means and medians are lower bounds whenever some runs are stable.
- **h(r)** (Fu et al. 2023, "Forces are not enough"): the distribution of interatomic distances,
  ``h(r) = < (1/P) Σ_{i<j} δ(r − |x_i − x_j|) >_frames`` with P the number of distinct pairs
  (for periodic cells: the pairs within ``r_max``, minimum-image and periodic images included),
  estimated as a histogram with bin width Δr on [0, r_max] so that Σ_b h_b Δr = 1 when all
  distances lie below r_max. **h(r) error** (Å⁰, dimensionless, in [0, 2]):
  ``∫ |<h(r)>_sim − <h(r)>_ref| dr ≈ Σ_b |h_sim,b − h_ref,b| Δr``; 0 for identical distance
  distributions, 2 for disjoint ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

MEV = 1000.0


def energy_drift(
    time_ps: np.ndarray, total_energy_eV: np.ndarray, n_atoms: int
) -> dict[str, float | None]:
    """Linear-fit drift (meV/atom/ps) and fluctuations (meV/atom) of the total energy."""
    t = np.asarray(time_ps, dtype=np.float64)
    e = np.asarray(total_energy_eV, dtype=np.float64) / n_atoms
    ok = np.isfinite(t) & np.isfinite(e)
    t, e = t[ok], e[ok]
    out: dict[str, float | None] = {
        "energy_drift_meV_per_atom_per_ps": None,
        "energy_fluctuation_meV_per_atom": None,
        "energy_std_meV_per_atom": None,
        "energy_change_meV_per_atom": None,
    }
    if t.size < 3 or np.ptp(t) <= 0:
        return out
    slope, intercept = np.polyfit(t, e, 1)
    residual = e - (slope * t + intercept)
    out["energy_drift_meV_per_atom_per_ps"] = float(slope * MEV)
    out["energy_fluctuation_meV_per_atom"] = float(residual.std() * MEV)
    out["energy_std_meV_per_atom"] = float(e.std() * MEV)
    out["energy_change_meV_per_atom"] = float((e[-1] - e[0]) * MEV)
    return out


def survival_curve(
    failure_times_ps: Sequence[float | None], length_ps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exact step function of the fraction of trajectories still stable (failure time > t).

    Returns ``(t, fraction)`` (ps, 0..1) for plotting with ``step(where="post")``: ``fraction[k]``
    holds from ``t[k]`` on; ``None`` in ``failure_times_ps`` means stable throughout.
    """
    n = len(failure_times_ps)
    if n == 0:
        return np.array([0.0, length_ps]), np.full(2, np.nan)
    fails = sorted(float(x) for x in failure_times_ps if x is not None)
    t = np.array([0.0, *fails, float(length_ps)])
    alive = np.array([1.0, *(1.0 - (k + 1) / n for k in range(len(fails))), 1.0 - len(fails) / n])
    return t, alive


def time_to_failure_stats(
    failure_times_ps: Sequence[float | None], length_ps: float
) -> dict[str, float | int | None]:
    """Stable fraction and mean/median time to failure (ps), censored at ``length_ps``."""
    n = len(failure_times_ps)
    censored = censored_times(failure_times_ps, length_ps)
    failed = [float(x) for x in failure_times_ps if x is not None]
    return {
        "n_trajectories": n,
        "n_stable": n - len(failed),
        "stable_fraction": (n - len(failed)) / n if n else None,
        "mean_time_to_failure_ps_censored": float(censored.mean()) if n else None,
        "median_time_to_failure_ps_censored": float(np.median(censored)) if n else None,
        "mean_time_to_failure_ps_failed_only": float(np.mean(failed)) if failed else None,
    }


def censored_times(failure_times_ps: Sequence[float | None], length_ps: float) -> np.ndarray:
    """Times to failure (ps) with stable trajectories counted at the run length."""
    return np.array([length_ps if x is None else float(x) for x in failure_times_ps], dtype=float)


STATISTICS = {"mean": np.mean, "median": np.median}


def bootstrap_interval(
    values: Sequence[float],
    statistic: str = "mean",
    level: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` (mean or median) of ``values``."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = STATISTICS[statistic](x[rng.integers(0, x.size, (n_resamples, x.size))], axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_difference(
    a: Sequence[float],
    b: Sequence[float],
    statistic: str = "mean",
    level: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> dict[str, float]:
    """``statistic(b) − statistic(a)`` with a percentile bootstrap interval (each sample resampled
    on its own) and the fraction of resamples in which the difference is > 0."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        return {"difference": math.nan, "low": math.nan, "high": math.nan, "p_positive": math.nan}
    rng = np.random.default_rng(seed)
    stat = STATISTICS[statistic]
    draws = stat(y[rng.integers(0, y.size, (n_resamples, y.size))], axis=1) - stat(
        x[rng.integers(0, x.size, (n_resamples, x.size))], axis=1
    )
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {
        "difference": float(stat(y) - stat(x)),
        "low": float(low),
        "high": float(high),
        "p_positive": float(np.mean(draws > 0)),
    }


@dataclass
class DistanceHistogram:
    """A frame-averaged h(r) on fixed bins: ``density[b]`` in 1/Å, bin edges in Å."""

    edges: np.ndarray  # [B + 1], Å
    density: np.ndarray  # [B], 1/Å
    n_frames: int

    @property
    def centres(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def width(self) -> float:
        return float(self.edges[1] - self.edges[0])


def hr_bins(r_max: float = 10.0, dr: float = 0.02) -> np.ndarray:
    """Bin edges (Å) for h(r): ``[0, dr, …, r_max]``."""
    if not (r_max > 0 and dr > 0):
        raise ValueError(f"r_max and dr must be > 0 Å, got {r_max}, {dr}")
    return np.linspace(0.0, r_max, round(r_max / dr) + 1)


def _pair_distances(positions: np.ndarray, atoms: Atoms | None, r_max: float) -> np.ndarray:
    if atoms is not None and atoms.pbc.any():
        from ase.neighborlist import neighbor_list

        frame = atoms.copy()
        frame.positions = positions
        d = neighbor_list("d", frame, r_max, self_interaction=False)
        return d  # each pair twice (i→j and j→i); the normalisation removes the factor
    n = positions.shape[0]
    iu, ju = np.triu_indices(n, k=1)
    return np.linalg.norm(positions[ju] - positions[iu], axis=1)


def distance_histogram(
    frames: Iterable[np.ndarray | Atoms],
    edges: np.ndarray | None = None,
    template: Atoms | None = None,
) -> DistanceHistogram:
    """h(r) averaged over ``frames`` (positions [N, 3] in Å, or ``Atoms``); see module docstring.

    ``template`` supplies cell and pbc for position arrays (periodic systems only).
    """
    edges = hr_bins() if edges is None else np.asarray(edges, dtype=np.float64)
    dr = np.diff(edges)
    r_max = float(edges[-1])
    total = np.zeros(edges.shape[0] - 1)
    n_frames = 0
    for frame in frames:
        if isinstance(frame, Atoms):
            atoms, positions = frame, frame.positions
        else:
            atoms, positions = template, np.asarray(frame, dtype=np.float64)
        d = _pair_distances(positions, atoms, r_max)
        periodic = atoms is not None and atoms.pbc.any()
        n_pairs = d.size if periodic else positions.shape[0] * (positions.shape[0] - 1) // 2
        if n_pairs == 0:
            continue
        counts, _ = np.histogram(d, bins=edges)
        total += counts / (n_pairs * dr)
        n_frames += 1
    if n_frames == 0:
        raise ValueError("h(r) needs at least one frame with two or more atoms")
    return DistanceHistogram(edges=edges, density=total / n_frames, n_frames=n_frames)


def hr_error(a: DistanceHistogram, b: DistanceHistogram) -> float:
    """∫ |h_a(r) − h_b(r)| dr (dimensionless, 0..2) on identical bins."""
    if a.edges.shape != b.edges.shape or not np.allclose(a.edges, b.edges):
        raise ValueError("h(r) histograms must share their bins to be compared")
    return float(np.sum(np.abs(a.density - b.density) * np.diff(a.edges)))
