"""Training data: read the configured files, split them, resolve E0s and the energy normalisation.

:func:`prepare_data` turns a :class:`~piwsl.config.DataConfig` into train/validation/test frame
lists (label-free frames appended to training), the element list (the union over the training
frames), the E0s and the normalisation (``shift`` = mean per-atom residual energy after E0s, eV;
``scale`` = RMS of the force labels, eV/Å, or the std of the per-atom residual energy, eV, when no
frame has forces).

With a prior (``prior.name``, Δ-learning, :mod:`piwsl.priors`) the prior's energy and forces are
computed once for every labelled frame of every split (read from / added to the prior cache) and
the training and validation labels become residuals ``E_ref − E_prior``, ``F_ref − F_prior``
(label masks unchanged; label-free frames need no prior, since the physics terms act on the learned
part alone); E0s, shift and scale are then fitted to the residuals. The test frames keep their
full labels — the test errors are those of the total prediction — and so does
``PreparedData.val_reference`` (the validation frames with full labels). An analytic prior (ZBL)
is part of the model instead: every label stays whole and only the E0s and the normalisation are
fitted to the residuals.

Every file is read in the units ``data`` declares for it (``energy_unit`` / ``length_unit``,
overridden per split or per file by ``data.units``). It also warns (``logging``, naming the files
and frames) about data that is probably wrong but cannot be proven so
(:mod:`piwsl.data.checks`): frames shared between the training set and the validation/test sets,
atoms closer than :data:`MIN_DISTANCE` Å, and — per file — bond lengths or energies whose
magnitude fits another unit than the one declared for that file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import Sampler

from piwsl.config import DataConfig, PriorConfig
from piwsl.data import Frame, LabelKeys, label_coverage, read_frames, resolve_e0s, split_indices
from piwsl.data.checks import (  # noqa: F401 (re-exported: the checks' historical home)
    MIN_DISTANCE,
    check_plausibility,
    find_close_atoms,
    find_duplicates,
    guess_energy_unit,
)
from piwsl.data.readers import resolve_path
from piwsl.errors import ConfigError, DataError
from piwsl.priors import Prior, PriorValues

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
    prior: Prior | None = None  # the prior the labels of train/val are residuals to
    val_reference: list[Frame] | None = None  # validation frames with full labels (with a prior)

    @property
    def val_has_forces(self) -> bool:
        return any(f.has_forces for f in self.val)

    @property
    def val_has_energy(self) -> bool:
        return any(f.has_energy for f in self.val)


#: Units rMD17 ``.npz`` files are converted from on reading (kcal/mol, Å), whatever is declared.
NPZ_UNITS = ("eV", "Å")


def config_fix(source: str, kind: str, unit: str) -> str:
    """How a run's config declares ``unit`` (``kind``: energy or length) for file ``source``."""
    return (
        f"data.units: {{{source!r}: {{{kind}: {unit}}}}} in the config, or "
        f"data.{kind}_unit={unit} if every file stores {unit}"
    )


def read_split(cfg: DataConfig, split: str, read_in: dict[str, tuple[str, str]]) -> list[Frame]:
    """The frames of every file of ``split``, each read in its declared units (``data.units``);
    ``read_in`` collects (energy, length) unit of each file as converted, for the unit checks."""
    frames: list[Frame] = []
    for path in cfg.files_of(split):
        energy, length = cfg.units_for(split, path)
        if resolve_path(path).suffix == ".npz" and (energy, length) != NPZ_UNITS:
            raise ConfigError(
                f"data.units: {path!r} (data.{split}) is an rMD17 .npz file, always read from "
                f"kcal/mol and Å, but the config declares {energy} and {length} for it; declare "
                "the units of the other files for their split or file only, e.g. "
                "data.units: {train: {energy: Hartree}}, not data.energy_unit / data.length_unit"
            )
        keys = LabelKeys(cfg.energy_key, cfg.forces_key, energy, length)
        frames.extend(read_frames(path, keys))
        read_in[path] = NPZ_UNITS if resolve_path(path).suffix == ".npz" else (energy, length)
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


def subtract_prior(frames: list[Frame], values: PriorValues) -> list[Frame]:
    """Frames whose labels are residuals ``E − E_prior``, ``F − F_prior`` (masks unchanged)."""
    out = []
    for f, energy, forces in zip(frames, values.energies, values.forces, strict=True):
        out.append(
            replace(
                f,
                energy=None if f.energy is None else f.energy - float(energy),
                forces=None if f.forces is None else f.forces - forces,
            )
        )
    return out


def in_model_residuals(prior: Prior, frames: list[Frame]) -> tuple[list[Frame], str]:
    """An analytic prior lives in the model, so the labels stay whole; the E0s and the
    normalisation are fitted to these residual frames (labelled ``frames`` minus the prior)."""
    import time

    labelled = [f for f in frames if f.has_energy or f.has_forces]
    start = time.perf_counter()
    energies, forces = prior.compute(labelled)
    values = PriorValues(energies, forces, n_computed=len(labelled))
    values.wall_time_s = time.perf_counter() - start
    line = (
        f"prior {prior.describe()}: part of the model (the E0s and normalisation fitted to "
        f"E_ref − E_prior of {len(labelled)} training frames, computed in "
        f"{values.wall_time_s:.1f} s)"
    )
    return subtract_prior(labelled, values), line


def apply_prior(
    cfg: PriorConfig, splits: dict[str, list[Frame]], progress: bool = False
) -> tuple[Prior, dict[str, list[Frame]], str]:
    """The prior of ``cfg`` and ``splits`` with residual labels (``test`` keeps its labels).

    Returns (prior, splits, summary line). Only labelled frames are evaluated.
    """
    from piwsl.priors import make_prior, prior_values

    prior = make_prior(cfg.name, cfg.charge, cfg.multiplicity, cfg.settings)
    if prior.in_model:
        return prior, splits, ""
    labelled = {
        name: [f for f in frames if f.has_energy or f.has_forces] for name, frames in splits.items()
    }
    everything = [f for frames in labelled.values() for f in frames]
    values = prior_values(
        prior,
        everything,
        cache_dir=cfg.cache_dir,
        workers=cfg.workers,
        progress=progress,
        executor=cfg.executor,
        scheduler=cfg.scheduler,
    )
    out, start = {}, 0
    for name, frames in splits.items():
        n = len(labelled[name])
        part = PriorValues(values.energies[start : start + n], values.forces[start : start + n])
        start += n
        if name == "test":
            out[name] = frames
            continue
        residual = iter(subtract_prior(labelled[name], part))
        out[name] = [next(residual) if f.has_energy or f.has_forces else f for f in frames]
    return prior, out, values.summary(prior)


def _check_splits(
    cfg: DataConfig, train: list[Frame], val: list[Frame], test: list[Frame], elements: list[int]
) -> None:
    """Errors for splits a run cannot use (no validation frames, no labels, unknown elements)."""
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


def _coverage(train, unlabelled, val, test) -> list[str]:
    """One label-coverage line per split."""
    coverage = [label_coverage(train).summary("train")]
    if unlabelled:
        coverage.append(label_coverage(unlabelled).summary("unlabelled (added to train)"))
    coverage.append(label_coverage(val).summary("validation"))
    if test:
        coverage.append(label_coverage(test).summary("test"))
    return coverage


def prepare_data(
    cfg: DataConfig,
    report: bool = True,
    prior: PriorConfig | None = None,
    progress: bool = False,
) -> PreparedData:
    """Read, split and reference the data of a run (see the module docstring).

    ``report=False`` skips the plausibility warnings (DDP ranks other than 0). ``prior`` (the
    run's ``prior`` section) with a name turns the training and validation labels into residuals
    to that prior; ``progress`` shows a progress bar while the prior is computed.
    """
    read_in: dict[str, tuple[str, str]] = {}
    pool = read_split(cfg, "train", read_in)
    n_val = cfg.n_val
    if n_val is None:
        n_val = 0 if cfg.validation else max(1, round(0.05 * len(pool)))
    if cfg.validation and cfg.n_val:
        raise ConfigError("data.n_val: give validation files or a validation split, not both")
    if cfg.test and cfg.n_test:
        raise ConfigError("data.n_test: give test files or a test split, not both")
    tr, va, te = split_indices(len(pool), cfg.n_train, n_val, cfg.n_test, seed=cfg.split_seed)
    train = [pool[k] for k in tr]
    val = read_split(cfg, "validation", read_in) if cfg.validation else [pool[k] for k in va]
    test = read_split(cfg, "test", read_in) if cfg.test else [pool[k] for k in te]
    train, val = _keep_labels(train, cfg.train_labels), _keep_labels(val, cfg.train_labels)
    unlabelled = _strip_labels(read_split(cfg, "unlabelled", read_in))
    train_all = train + unlabelled
    elements = sorted({int(z) for f in train_all for z in np.unique(f.numbers)})
    _check_splits(cfg, train, val, test, elements)
    others = {"validation": val, "test": test}
    if report:

        def units_of(source: str) -> tuple[str, str]:
            return read_in.get(source, (cfg.energy_unit, cfg.length_unit))

        for message in check_plausibility(train_all, others, units_of, config_fix):
            log.warning(message)
    the_prior, val_reference, prior_line, fit = None, None, None, train
    if prior is not None and prior.name is not None:
        splits = {"train": train, "validation": val, "test": test}
        the_prior, splits, prior_line = apply_prior(prior, splits, progress=progress)
        if the_prior.in_model:
            fit, prior_line = in_model_residuals(the_prior, train)
        else:
            val_reference = val
            train, val = splits["train"], splits["validation"]
            train_all, fit = train + unlabelled, splits["train"]
    mode = cfg.e0s
    if isinstance(mode, dict):
        mode = dict(mode)
    e0s = resolve_e0s(mode, fit, elements)
    shift, scale = reference_statistics(fit, e0s)
    coverage = _coverage(train, unlabelled, val, test)
    if prior_line is not None:
        residual = "" if the_prior.in_model else "; training labels are residuals to it"
        coverage.append(f"{prior_line}{residual}")
    return PreparedData(
        train=train_all,
        val=val,
        test=test,
        elements=elements,
        e0s=e0s,
        shift=shift,
        scale=scale,
        coverage=coverage,
        prior=the_prior,
        val_reference=val_reference,
    )


def _rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochShuffleSampler(Sampler[int]):
    """Random order that depends only on (seed, epoch): reproducible, and identical after resume.

    Lightning calls :meth:`set_epoch` at the start of every epoch. Under torch.distributed (DDP)
    rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, …`` of the same permutation (padded by
    wrapping around to a multiple of ``W``, so every rank makes as many steps): the ``W`` rank
    batches of step ``k`` with batch size ``b`` together are the one-process batch ``k`` with batch
    size ``W·b``. ``piwsl train`` therefore turns Lightning's own sampler injection off
    (``use_distributed_sampler=False``), which would re-shuffle this order with its own seed.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        _, world = _rank_world()
        return math.ceil(self.n / world)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        rank, world = _rank_world()
        if world > 1:
            total = math.ceil(self.n / world) * world
            order = (order * math.ceil(total / max(1, self.n)))[:total]
            order = order[rank::world]
        return iter(order)


class ShardSampler(Sampler[int]):
    """Validation order: rank ``r`` of ``W`` takes frames ``r, r + W, …`` (no padding, so no frame
    is counted twice; the validation sums are reduced over ranks)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        rank, world = _rank_world()
        return len(range(rank, self.n, world))

    def __iter__(self):
        rank, world = _rank_world()
        return iter(range(rank, self.n, world))
