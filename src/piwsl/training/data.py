"""Training data: read the configured files, split them, resolve E0s and the energy normalisation.

:func:`prepare_data` turns a :class:`~piwsl.config.DataConfig` into train/validation/test frame
lists (label-free frames appended to training), the element list (the union over the training
frames), the E0s and the normalisation (``shift`` = mean per-atom residual energy after E0s, eV;
``scale`` = RMS of the force labels, eV/Å, or the std of the per-atom residual energy, eV, when no
frame has forces).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import Sampler

from piwsl.config import DataConfig
from piwsl.data import Frame, LabelKeys, label_coverage, read_frames, resolve_e0s, split_indices
from piwsl.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Frames of each split plus the reference quantities the model is built with."""

    train: list[Frame]
    val: list[Frame]
    test: list[Frame]
    elements: list[int]
    e0s: dict[int, float]
    shift: float  # eV per atom
    scale: float  # eV (energy-scale of the network output)
    coverage: list[str] = field(default_factory=list)  # one summary line per split

    @property
    def val_has_forces(self) -> bool:
        return any(f.has_forces for f in self.val)

    @property
    def val_has_energy(self) -> bool:
        return any(f.has_energy for f in self.val)


def _read_all(paths: list[str], keys: LabelKeys) -> list[Frame]:
    frames: list[Frame] = []
    for path in paths:
        frames.extend(read_frames(path, keys))
    return frames


def _strip_labels(frames: list[Frame]) -> list[Frame]:
    """Frames of an ``unlabelled`` file are label-free whatever the file holds."""
    for f in frames:
        f.energy = None
        f.forces = None
    return frames


def reference_statistics(frames: list[Frame], e0s: dict[int, float]) -> tuple[float, float]:
    """(shift eV/atom, scale) from the labelled frames; (0, 1) where nothing is labelled."""
    residual = [
        (f.energy - sum(e0s.get(int(z), 0.0) for z in f.numbers)) / f.n_atoms
        for f in frames
        if f.has_energy
    ]
    shift = float(np.mean(residual)) if residual else 0.0
    forces = [f.forces for f in frames if f.has_forces]
    if forces:
        scale = float(np.sqrt(np.mean(np.concatenate(forces) ** 2)))
    elif len(residual) > 1:
        scale = float(np.std(residual))
    else:
        scale = 1.0
    if not math.isfinite(scale) or scale < 1e-6:
        scale = 1.0
    return shift, scale


def _keep_labels(frames: list[Frame], which: str) -> list[Frame]:
    """Drop the forces (``which="energy"``) or the energies (``"forces"``) of every frame."""
    if which == "energy":
        return [replace(f, forces=None) for f in frames]
    if which == "forces":
        return [replace(f, energy=None) for f in frames]
    return frames


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Read, split and reference the data of a run (see the module docstring)."""
    keys = LabelKeys(
        energy_key=cfg.energy_key,
        forces_key=cfg.forces_key,
        energy_unit=cfg.energy_unit,
        length_unit=cfg.length_unit,
    )
    pool = _read_all(cfg.train, keys)
    n_val = cfg.n_val
    if n_val is None:
        n_val = 0 if cfg.validation else max(1, round(0.05 * len(pool)))
    if cfg.validation and cfg.n_val:
        raise ConfigError("data.n_val: give validation files or a validation split, not both")
    if cfg.test and cfg.n_test:
        raise ConfigError("data.n_test: give test files or a test split, not both")
    tr, va, te = split_indices(len(pool), cfg.n_train, n_val, cfg.n_test, seed=cfg.split_seed)
    train = [pool[k] for k in tr]
    val = _read_all(cfg.validation, keys) if cfg.validation else [pool[k] for k in va]
    test = _read_all(cfg.test, keys) if cfg.test else [pool[k] for k in te]
    train, val = _keep_labels(train, cfg.train_labels), _keep_labels(val, cfg.train_labels)
    unlabelled = _strip_labels(_read_all(cfg.unlabelled, keys)) if cfg.unlabelled else []
    if not val:
        raise ConfigError(
            "no validation frames: set data.n_val > 0 or data.validation files "
            "(the best checkpoint is chosen on validation errors)"
        )
    if not any(f.has_energy or f.has_forces for f in val):
        raise DataError(
            "no validation frame carries an energy or forces; the best checkpoint cannot be chosen",
            file=", ".join(cfg.validation or cfg.train),
        )
    if not any(f.has_energy or f.has_forces for f in train):
        raise DataError(
            "no training frame carries an energy or forces",
            file=", ".join(cfg.train),
            hint="check data.energy_key / data.forces_key",
        )
    train_all = train + unlabelled
    elements = sorted({int(z) for f in train_all for z in np.unique(f.numbers)})
    for name, frames in (("validation", val), ("test", test)):
        for f in frames:
            extra = set(np.unique(f.numbers).tolist()) - set(elements)
            if extra:
                raise DataError(
                    f"{name} frame has atomic numbers {sorted(extra)} absent from training",
                    file=f.source,
                    frame=f.index,
                    hint="add such structures to the training set",
                )
    mode = cfg.e0s
    if isinstance(mode, dict):
        mode = dict(mode)
    e0s = resolve_e0s(mode, train, elements)
    shift, scale = reference_statistics(train, e0s)
    coverage = [label_coverage(train).summary("train")]
    if unlabelled:
        coverage.append(label_coverage(unlabelled).summary("unlabelled (added to train)"))
    coverage.append(label_coverage(val).summary("validation"))
    if test:
        coverage.append(label_coverage(test).summary("test"))
    return PreparedData(
        train=train_all,
        val=val,
        test=test,
        elements=elements,
        e0s=e0s,
        shift=shift,
        scale=scale,
        coverage=coverage,
    )


class EpochShuffleSampler(Sampler[int]):
    """Random order that depends only on (seed, epoch): reproducible, and identical after resume.

    Lightning calls :meth:`set_epoch` at the start of every epoch.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())
