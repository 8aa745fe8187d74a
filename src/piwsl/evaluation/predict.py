"""Predictions of a model for a list of frames (eV, eV/Å), with the prior it was trained on.

A model trained on top of a prior (Δ-learning, :mod:`piwsl.priors`) predicts its total, prior +
learned part. :meth:`Predictions.from_frames` turns frames that carry another method's energies
and forces (a reference calculation, a cheaper level of theory) into predictions to score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols

from piwsl.data.dataset import GraphDataset
from piwsl.data.frames import Frame
from piwsl.errors import ConfigError, UnknownElementError
from piwsl.priors.base import Prior, PriorUse, model_prior

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Model predictions for a list of frames, in the frames' order.

    ``forces`` concatenates all atoms; structure ``s`` owns rows ``ptr[s]:ptr[s+1]``.
    """

    energy: np.ndarray  # float64 [S], eV
    forces: np.ndarray | None  # float64 [N, 3], eV/Å (None if not computed)
    numbers: np.ndarray  # int64 [N]
    ptr: np.ndarray  # int64 [S + 1]
    prior: dict[str, Any] | None = None  # spec of the prior included in energy/forces, if any
    prior_energy: np.ndarray | None = None  # float64 [S], eV: the prior's share of ``energy``
    prior_forces: np.ndarray | None = None  # float64 [N, 3], eV/Å: its share of ``forces``

    @property
    def n_structures(self) -> int:
        return int(self.ptr.shape[0] - 1)

    def forces_of(self, s: int) -> np.ndarray:
        if self.forces is None:
            raise ValueError("forces were not predicted")
        return self.forces[self.ptr[s] : self.ptr[s + 1]]

    @classmethod
    def of(
        cls,
        frames: Sequence[Frame],
        energies: Sequence[float] | np.ndarray,
        forces: Sequence[np.ndarray] | np.ndarray | None = None,
        energy_offset: float = 0.0,
    ) -> Predictions:
        """Predictions for ``frames`` from another source: energies (eV) per frame, forces
        (eV/Å) per frame or concatenated, plus a constant ``energy_offset`` (eV) on every
        energy (e.g. fitted between two levels of theory)."""
        frames = list(frames)
        energy = np.asarray(energies, dtype=np.float64).reshape(-1) + float(energy_offset)
        if energy.shape[0] != len(frames):
            raise ValueError(f"{len(frames)} frames but {energy.shape[0]} energies")
        ptr = np.zeros(len(frames) + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([f.n_atoms for f in frames])
        if forces is not None and not isinstance(forces, np.ndarray):
            forces = np.concatenate([np.asarray(f, dtype=np.float64) for f in forces])
        if forces is not None and forces.shape != (int(ptr[-1]), 3):
            raise ValueError(f"forces of shape {forces.shape}, expected ({int(ptr[-1])}, 3)")
        numbers = np.concatenate([f.numbers for f in frames]).astype(np.int64)
        return cls(energy=energy, forces=forces, numbers=numbers, ptr=ptr)

    @classmethod
    def from_frames(cls, frames: Sequence[Frame], energy_offset: float = 0.0) -> Predictions:
        """The energies and forces that ``frames`` carry, as predictions (e.g. a cheaper method's
        labels of the test structures, scored against the reference with
        :func:`~piwsl.evaluation.compute_metrics`). Every frame needs an energy; forces are kept
        when every frame has them."""
        frames = list(frames)
        missing = [f for f in frames if not f.has_energy]
        if missing:
            f = missing[0]
            raise ValueError(
                f"Predictions.from_frames: file {f.source!r} frame {f.index} has no energy "
                f"({len(missing)} of {len(frames)} frames lack one)"
            )
        with_forces = all(f.has_forces for f in frames)
        return cls.of(
            frames,
            [float(f.energy) for f in frames],
            [f.forces for f in frames] if with_forces else None,
            energy_offset,
        )


def as_force_field(model):
    """Accept a :class:`~piwsl.models.ForceField`, a bare :class:`EnergyModel` or a model file."""
    from piwsl.models import EnergyModel, ForceField, load_model

    if isinstance(model, (str, Path)):
        return load_model(model)
    if isinstance(model, EnergyModel):
        return ForceField(model)
    if isinstance(model, ForceField):
        return model
    raise TypeError(f"expected a piwsl ForceField, EnergyModel or model path, got {type(model)}")


@dataclass
class InferenceModel:
    """A force field ready to run (eval mode, on its device and dtype) and the external prior
    that must be added to its results (None: none, or an analytic one inside the model)."""

    model: Any
    device: torch.device
    dtype: torch.dtype
    prior: Prior | None
    source: str  # the model file, or a placeholder for an in-memory model


def inference_model(
    model,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    allow_prior_mismatch: bool = False,
    placeholder: str = "<model>",
) -> InferenceModel:
    """Load (a path), wrap (an EnergyModel) or take (a ForceField) ``model`` for inference: a
    copy cast to ``dtype`` when it differs, moved to ``device``, in eval mode, with its recorded
    prior rebuilt and checked (:func:`piwsl.priors.model_prior`)."""
    import copy

    force_field = as_force_field(model)
    if dtype is not None and dtype != model_dtype(force_field):
        force_field = copy.deepcopy(force_field).to(dtype)
    device = torch.device(device)
    force_field = force_field.to(device).eval()
    named = isinstance(model, (str, Path))
    source = str(model) if named else placeholder
    what = f"model {source!r}" if named else "this model"
    prior = model_prior(force_field, allow_prior_mismatch, what=what)
    return InferenceModel(force_field, device, model_dtype(force_field), prior, source)


def model_dtype(model) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 if it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def check_model_knows(model, frames: Sequence[Frame]) -> None:
    """Raise :class:`UnknownElementError` naming file and frame for elements the model lacks."""
    known = set(model.elements)
    for k, frame in enumerate(frames):
        unknown = sorted(set(np.unique(frame.numbers).tolist()) - known)
        if unknown:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            known_names = ", ".join(chemical_symbols[z] for z in sorted(known))
            raise UnknownElementError(
                f"file {frame.source!r}, frame {frame.index} (structure {k}): the model was not "
                f"trained on {names}; it knows {known_names}. Retrain with these elements in the "
                "training data."
            )


def predict(
    model,
    frames_or_dataset: Sequence[Frame] | GraphDataset,
    batch_size: int = 32,
    compute_forces: bool = True,
    device: str | torch.device | None = None,
    prior: PriorUse | None = None,
) -> Predictions:
    """Predicted energies (eV) per structure and forces (eV/Å) per atom, in the input's order.

    Frames are turned into graphs with the model's cutoff (no skin); a :class:`GraphDataset` is used
    as is if its cutoff covers the model's. Forces come from :class:`~piwsl.models.ForceField`
    (autograd for conservative models, the force head for direct ones). A model trained on top of
    a prior predicts the total, prior + learned part (the prior's values come from its disk
    cache, :mod:`piwsl.priors.cache`); ``prior`` (:class:`~piwsl.priors.PriorUse`) says how, or
    ``PriorUse(enabled=False)`` for the learned part alone.
    """
    model = as_force_field(model)
    use = prior if prior is not None else PriorUse()
    the_prior = None
    if use.enabled:
        the_prior = use.built if use.built is not None else model_prior(model, use.allow_mismatch)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    if isinstance(frames_or_dataset, GraphDataset):
        dataset = frames_or_dataset
        if dataset.cutoff + dataset.skin < model.cutoff:
            raise ConfigError(
                f"the data set's neighbour lists reach {dataset.cutoff + dataset.skin} Å, less "
                f"than the model's cutoff {model.cutoff} Å; rebuild the GraphDataset with the "
                "model's cutoff"
            )
        frames = list(dataset.frames)
    else:
        frames = list(frames_or_dataset)
        if not frames:
            raise ValueError("predict: no frames given")
        dataset = None
    check_model_knows(model, frames)
    dtype = model_dtype(model)
    device = torch.device(device) if device is not None else model_device(model)
    if dataset is None:
        dataset = GraphDataset(frames, cutoff=model.cutoff, skin=0.0, dtype=dtype)

    n_atoms = np.array([f.n_atoms for f in frames], dtype=np.int64)
    ptr = np.zeros(len(frames) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(n_atoms)
    energy = np.full(len(frames), np.nan)
    forces = np.full((int(ptr[-1]), 3), np.nan) if compute_forces else None
    was_training = model.training
    model.eval()
    try:
        for batch in dataset.loader(batch_size, shuffle=False):
            batch = batch.to(device=device, dtype=dtype)
            with torch.no_grad():  # conservative forces re-enable grad inside the ForceField
                out = model(batch, compute_forces=compute_forces, create_graph=False)
            e = out["energy"].detach().to("cpu", torch.float64).numpy()
            ids = batch.frame_id.cpu().numpy()
            energy[ids] = e
            if compute_forces:
                f = out["forces"].detach().to("cpu", torch.float64).numpy()
                bptr = batch.ptr.cpu().numpy()
                for s, k in enumerate(ids):
                    forces[ptr[k] : ptr[k + 1]] = f[bptr[s] : bptr[s + 1]]
    finally:
        model.train(was_training)
    numbers = np.concatenate([f.numbers for f in frames]).astype(np.int64)
    out = Predictions(energy=energy, forces=forces, numbers=numbers, ptr=ptr)
    if the_prior is not None:
        add_prior(out, the_prior, frames, use)
    return out


def add_prior(
    predictions: Predictions, prior: Prior, frames: Sequence[Frame], use: PriorUse
) -> None:
    """Add the prior's energies and forces (cached, :func:`piwsl.priors.prior_values`) in place."""
    from piwsl.priors import prior_values

    values = prior_values(
        prior,
        frames,
        cache_dir=use.cache_dir,
        workers=use.workers,
        progress=use.progress,
        executor=use.executor,
        scheduler=use.scheduler,
    )
    predictions.prior_energy = np.asarray(values.energies, dtype=np.float64)
    predictions.energy = predictions.energy + predictions.prior_energy
    if predictions.forces is not None:
        predictions.prior_forces = np.concatenate(values.forces).astype(np.float64)
        predictions.forces = predictions.forces + predictions.prior_forces
    predictions.prior = prior.spec()
