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
``PreparedData.val_reference`` (the validation frames with full labels).

It also warns (``logging``, once per kind, naming the frames) about data that is probably wrong but
cannot be proven so: frames shared between the training set and the validation/test sets
(:func:`find_duplicates`), atoms closer than :data:`MIN_DISTANCE` Å (:func:`find_close_atoms`) and
energies whose magnitude fits another unit than the declared one (:func:`guess_energy_unit`).
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
from piwsl.errors import ConfigError, DataError
from piwsl.priors import Prior, PriorValues
from piwsl.units import ENERGY_UNITS, HARTREE

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


# --------------------------------------------------------------------------------------------
# plausibility checks (warnings: the data may be right, but usually is not)

#: Atoms closer than this (Å) are physically absurd: the shortest bond, H–H in H₂, is 0.74 Å and
#: even strongly compressed or high-energy MD structures stay above ~0.6 Å.
MIN_DISTANCE = 0.5
#: Positions are rounded to this many decimals (Å) when looking for duplicate frames.
DUPLICATE_DECIMALS = 5
#: Relative tolerance of the all-electron energy estimate used by :func:`guess_energy_unit`.
UNIT_TOLERANCE = 0.12
#: Candidate storage units, each with the name users write in ``data.energy_unit``.
_UNIT_CANDIDATES = {
    "eV": 1.0,
    "Hartree": HARTREE,
    "kcal/mol": ENERGY_UNITS["kcal/mol"],
    "kJ/mol": ENERGY_UNITS["kJ/mol"],
    "meV": 1e-3,
}
_MAX_LISTED = 8


def frame_key(frame: Frame) -> bytes:
    """A hash key of atomic numbers and positions rounded to 1e-5 Å (labels ignored)."""
    import hashlib

    pos = np.round(frame.positions, DUPLICATE_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    digest = hashlib.blake2b(frame.numbers.astype(np.int64).tobytes(), digest_size=16)
    digest.update(pos.astype(np.float64).tobytes())
    return digest.digest()


def _where(f: Frame) -> str:
    return f"{f.source!r} frame {f.index}"


def find_duplicates(train: list[Frame], others: dict[str, list[Frame]]) -> list[str]:
    """``"<split> 'file' frame k = train 'file' frame m"`` for every frame of ``others`` whose
    numbers and positions (rounded to 1e-5 Å) equal those of a training frame."""
    seen: dict[bytes, Frame] = {}
    for f in train:
        seen.setdefault(frame_key(f), f)
    found = []
    for name, frames in others.items():
        for f in frames:
            twin = seen.get(frame_key(f))
            if twin is not None:
                found.append(f"{name} {_where(f)} = train {_where(twin)}")
    return found


def min_distance(frame: Frame, below: float = MIN_DISTANCE) -> float | None:
    """The shortest interatomic distance (Å, periodic images included) if it is < ``below``."""
    from piwsl.data.neighbors import neighbor_list

    if frame.n_atoms < 2 and not frame.pbc.any():
        return None
    edge_index, shifts = neighbor_list(frame.positions, frame.cell, frame.pbc, below)
    if edge_index.shape[1] == 0:
        return None
    i, j = edge_index
    vec = frame.positions[j] - frame.positions[i] + shifts @ frame.cell
    return float(np.linalg.norm(vec, axis=1).min())


def find_close_atoms(frames: list[Frame], threshold: float = MIN_DISTANCE) -> list[str]:
    """``"'file' frame k: 0.31 Å"`` for every frame with two atoms closer than ``threshold``."""
    found = []
    for f in frames:
        d = min_distance(f, threshold)
        if d is not None:
            found.append(f"{_where(f)}: {d:.3f} Å")
    return found


def all_electron_energy(numbers: np.ndarray) -> float:
    """Estimate (eV) of the non-relativistic all-electron energy of the free atoms.

    Thomas–Fermi with the Scott and Schwinger corrections, per atom
    ``E(Z) ≈ −0.7687 Z^{7/3} + 0.5 Z² − 0.2699 Z^{5/3}`` Hartree: within ~2 % of Hartree–Fock
    atomic energies from C to Cu (C −37.6 vs −37.7, O −75.0 vs −74.8, Cu −1641 vs −1639 Ha).
    Chemical binding changes a molecule's total by well under 1 %.
    """
    z = np.asarray(numbers, dtype=np.float64)
    per_atom = -0.7687 * z ** (7 / 3) + 0.5 * z**2 - 0.2699 * z ** (5 / 3)
    return float(per_atom.sum()) * HARTREE


def guess_energy_unit(frames: list[Frame], declared: str) -> tuple[str, float] | None:
    """(unit, median ratio) when the energies look like all-electron totals in another unit.

    The heuristic: ``r = E / E_ae`` with ``E`` the energy as read (declared unit → eV) and
    ``E_ae`` :func:`all_electron_energy`. All-electron total energies (Gaussian, ORCA, PySCF,
    rMD17) have ``r ≈ 1`` in eV. Read in the wrong unit, ``r`` is off by the unit ratio: ≈ 1/27.2
    for Hartree values declared as eV, ≈ 23.1 for kcal/mol, ≈ 96.5 for kJ/mol. rMD17 ethanol:
    E = −4210 eV (−468 eV/atom), E_ae = −4178 eV, r = 1.008; the same numbers stored in Hartree
    (−154.7) give r = 0.037, in kcal/mol (−97 080) r = 23.2. A unit is suggested only when at
    least 90 % of the energy-labelled frames lie within ±12 % of the same hypothesis ``r = 1/k``
    (k converting the candidate unit to eV, relative to the declared one), and it differs from the
    declared unit. Energies with a reference subtracted (E0s, atomisation energies) or from
    pseudopotential codes (VASP, QE) have ``|r| ≪ 1`` (VASP ethanol ≈ 0.011) and match nothing,
    except by coincidence the Hartree window (r ≈ 0.037): hence a warning, not an error.
    """
    ratios = np.array([f.energy / all_electron_energy(f.numbers) for f in frames if f.has_energy])
    if ratios.size == 0:
        return None
    declared_factor = ENERGY_UNITS.get(declared, 1.0)
    for unit, factor in _UNIT_CANDIDATES.items():
        # stored in `unit`, read as `declared`: r = factor(declared) / factor(unit)
        expected = declared_factor / factor
        close = np.abs(ratios / expected - 1.0) < UNIT_TOLERANCE
        if close.mean() >= 0.9:
            same = factor == declared_factor
            return None if same else (unit, float(np.median(ratios)))
    return None


def _listed(items: list[str]) -> str:
    more = f" … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return "; ".join(items[:_MAX_LISTED]) + more


def check_plausibility(
    train: list[Frame], others: dict[str, list[Frame]], energy_unit: str
) -> list[str]:
    """Log one warning per kind of implausible data (see the module docstring); return them."""
    warnings: list[str] = []
    dups = find_duplicates(train, others)
    if dups:
        warnings.append(
            f"{len(dups)} validation/test frames duplicate training frames (same numbers and "
            f"positions to 1e-5 Å): {_listed(dups)}. Their errors measure memorisation, not "
            "generalisation: remove them from one of the sets"
        )
    everything = train + [f for frames in others.values() for f in frames]
    close = find_close_atoms(everything)
    if close:
        warnings.append(
            f"{len(close)} frames have atoms closer than {MIN_DISTANCE} Å (physically absurd; "
            f"wrong length unit, e.g. Bohr read as Å, or broken structures?): {_listed(close)}"
        )
    labelled = [f for f in everything if f.has_energy]
    guess = guess_energy_unit(labelled, energy_unit)
    if guess is not None:
        unit, ratio = guess
        example = labelled[0]
        warnings.append(
            f"energies look like {unit}, but data.energy_unit is {energy_unit!r}: e.g. "
            f"{_where(example)} reads as {example.energy:.6g} eV for {example.n_atoms} atoms, "
            f"while all-electron energies of these atoms are about "
            f"{all_electron_energy(example.numbers):.6g} eV (median ratio {ratio:.4g}). "
            f"Set data.energy_unit={unit} if the file stores {unit}"
        )
    for text in warnings:
        log.warning(text)
    return warnings


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


def apply_prior(
    cfg: PriorConfig, splits: dict[str, list[Frame]], progress: bool = False
) -> tuple[Prior, dict[str, list[Frame]], str]:
    """The prior of ``cfg`` and ``splits`` with residual labels (``test`` keeps its labels).

    Returns (prior, splits, summary line). Only labelled frames are evaluated.
    """
    from piwsl.priors import make_prior, prior_values

    prior = make_prior(cfg.name, cfg.charge, cfg.multiplicity, cfg.settings)
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
    others = {"validation": val, "test": test}
    if report:
        check_plausibility(train_all, others, cfg.energy_unit)
    the_prior, val_reference, prior_line = None, None, None
    if prior is not None and prior.name is not None:
        splits = {"train": train, "validation": val, "test": test}
        the_prior, splits, prior_line = apply_prior(prior, splits, progress=progress)
        val_reference = val
        train, val = splits["train"], splits["validation"]
        train_all = train + unlabelled
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
    if prior_line is not None:
        coverage.append(f"{prior_line}; training labels are residuals to it")
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
