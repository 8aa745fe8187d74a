"""Seeded train/validation/test splits, by count or by fraction."""

from __future__ import annotations

import numpy as np

from piwsl.errors import ConfigError


def _count(value: int | float | None, n: int, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, float) and 0 < value < 1:
        return round(value * n)
    if float(value) != int(value) or value < 0:
        raise ConfigError(f"{name} must be a count ≥ 0 or a fraction in (0, 1), got {value}")
    return int(value)


def split_indices(
    n: int,
    n_train: int | float | None,
    n_val: int | float | None,
    n_test: int | float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random split of ``range(n)``. ``n_train=None`` takes all that is left."""
    v, t = _count(n_val, n, "n_val"), _count(n_test, n, "n_test")
    tr = n - v - t if n_train is None else _count(n_train, n, "n_train")
    if tr + v + t > n:
        raise ConfigError(
            f"split asks for {tr} train + {v} validation + {t} test frames, but only {n} exist"
        )
    if tr <= 0:
        raise ConfigError("the training split is empty; lower n_val/n_test or add data")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:tr], perm[tr : tr + v], perm[tr + v : tr + v + t]
