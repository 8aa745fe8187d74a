"""Per-element reference energies (E0s): least-squares fit, user-given, or isolated-atom frames."""

from __future__ import annotations

import numpy as np
from ase.data import atomic_numbers as _symbol_to_z

from piwsl.data.frames import Frame
from piwsl.errors import ConfigError, DataError


def fit_e0s(frames: list[Frame], elements: list[int]) -> dict[int, float]:
    """Least-squares E0 per element from frames with energies (eV).

    With a single composition the system is rank-deficient; the minimum-norm solution is returned,
    which still reproduces the mean energy exactly.
    """
    labelled = [f for f in frames if f.has_energy]
    if not labelled:
        raise DataError(
            "cannot fit E0s: no training frame carries an energy",
            key="energy",
            hint="give e0s explicitly or add energy labels",
        )
    index = {z: k for k, z in enumerate(elements)}
    counts = np.zeros((len(labelled), len(elements)))
    for row, frame in enumerate(labelled):
        for z, c in zip(*np.unique(frame.numbers, return_counts=True), strict=True):
            counts[row, index[int(z)]] = c
    energies = np.array([f.energy for f in labelled])
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {z: float(solution[k]) for z, k in index.items()}


def isolated_atom_e0s(frames: list[Frame]) -> dict[int, float]:
    """E0s from single-atom, non-periodic frames that carry an energy."""
    out: dict[int, float] = {}
    for f in frames:
        if f.n_atoms == 1 and f.has_energy and not f.pbc.any():
            out[int(f.numbers[0])] = float(f.energy)
    return out


def parse_e0s(given: dict[str | int, float]) -> dict[int, float]:
    """Accept ``{"H": -13.6, 8: -2040.0}`` (symbols or atomic numbers), in eV."""
    out: dict[int, float] = {}
    for key, value in given.items():
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            z = int(key)
        elif key in _symbol_to_z:
            z = _symbol_to_z[key]
        else:
            raise ConfigError(f"e0s: {key!r} is neither an element symbol nor an atomic number")
        out[z] = float(value)
    return out


def resolve_e0s(mode: str | dict, train: list[Frame], elements: list[int]) -> dict[int, float]:
    """``"fit"``, ``"isolated"`` (isolated-atom frames, fit for the rest), ``"zero"`` or a dict."""
    if isinstance(mode, dict):
        e0s = parse_e0s(mode)
        missing = [z for z in elements if z not in e0s]
        if missing:
            raise ConfigError(f"e0s: no value given for atomic numbers {missing}")
        return e0s
    if mode == "fit":
        return fit_e0s(train, elements)
    if mode == "zero":
        return dict.fromkeys(elements, 0.0)
    if mode == "isolated":
        e0s = isolated_atom_e0s(train)
        missing = [z for z in elements if z not in e0s]
        if missing:
            raise DataError(
                f"no isolated-atom frame with an energy for atomic numbers {missing}",
                key="energy",
                hint="add single-atom frames or use e0s: fit",
            )
        return e0s
    raise ConfigError(f"e0s must be 'fit', 'isolated', 'zero' or a mapping, got {mode!r}")
