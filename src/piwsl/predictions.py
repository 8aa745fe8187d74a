"""Predictions to a file: what ``piwsl predict`` and ``piwsl evaluate --write-predictions`` write.

One extxyz frame per input frame, in the input's order, positions in Å:

- ``PRED_energy`` (info, eV) and ``PRED_forces`` (arrays, eV/Å): the model's prediction — for a
  model trained on top of a prior (Δ-learning) the total, prior + learned part;
- ``PRED_stress`` (info, 3×3, eV/Å³, ASE's sign): the stress of a conservative model for cells
  periodic in all three directions;
- ``PRIOR_energy`` / ``PRIOR_forces``: the prior's share of them (Δ models only);
- ``REF_energy`` / ``REF_forces`` / ``REF_stress``: the frame's reference labels, where it has them (eV, eV/Å,
  whatever unit the input was read in);
- ``PRED_model``, ``PRED_prior`` (the prior's method, Δ models only), ``source_file`` and
  ``source_frame``: where the numbers come from.

``piwsl train data.train=predictions.extxyz data.energy_key=PRED_energy …`` reads them back as
labels (e.g. to distil a model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from piwsl.data.frames import Frame
from piwsl.io.atomic import atomic_path

log = logging.getLogger(__name__)


def prediction_atoms(frames: Sequence[Frame], predictions: Any, model: str = "") -> list:
    """The frames as ASE ``Atoms`` carrying predictions and labels (keys: module docstring)."""
    out = []
    for s, frame in enumerate(frames):
        atoms = frame.to_atoms()
        atoms.calc = None
        info: dict[str, Any] = {
            "PRED_energy": float(predictions.energy[s]),
            "PRED_model": model,
            "source_file": frame.source,
            "source_frame": int(frame.index),
        }
        if predictions.forces is not None:
            atoms.arrays["PRED_forces"] = np.array(predictions.forces_of(s))
        stress = getattr(predictions, "stress", None)
        if stress is not None and np.all(np.isfinite(stress[s])):
            info["PRED_stress"] = np.array(stress[s])
        if predictions.prior_energy is not None:
            info["PRIOR_energy"] = float(predictions.prior_energy[s])
            info["PRED_prior"] = str((predictions.prior or {}).get("name", "prior"))
        if predictions.prior_forces is not None:
            atoms.arrays["PRIOR_forces"] = np.array(
                predictions.prior_forces[predictions.ptr[s] : predictions.ptr[s + 1]]
            )
        if frame.has_energy:
            info["REF_energy"] = float(frame.energy)
        if frame.has_forces:
            atoms.arrays["REF_forces"] = np.array(frame.forces)
        if frame.has_stress:
            info["REF_stress"] = np.array(frame.stress)
        atoms.info = info
        out.append(atoms)
    return out


def write_predictions(
    frames: Sequence[Frame], predictions: Any, path: str | Path, model: str = ""
) -> Path:
    """Write :func:`prediction_atoms` to extxyz at ``path`` (atomically); returns the path."""
    import ase.io

    with atomic_path(path) as tmp:
        ase.io.write(str(tmp), prediction_atoms(frames, predictions, model), format="extxyz")
    return Path(path)


def predict_file(
    model_path: str | Path,
    data: str | Path,
    output: str | Path,
    keys: Any = None,
    batch_size: int = 32,
    prior: Any = None,
) -> tuple[Path, int, dict[str, Any] | None]:
    """Predict every frame of ``data`` with the model file ``model_path`` and write ``output``.

    ``keys`` (:class:`~piwsl.data.LabelKeys`) says how the input is read (units, label keys);
    ``prior`` (:class:`~piwsl.priors.PriorUse`) how a Δ model's prior is run. Returns (output
    path, number of frames, the prior's spec or None). Lengths and energies that look like
    other units than declared are warned about (:func:`piwsl.data.checks.check_read_file`).
    """
    from piwsl.data import read_frames
    from piwsl.data.checks import check_read_file
    from piwsl.evaluation import predict
    from piwsl.models import load_model

    model = load_model(model_path)
    frames = read_frames(data, keys)
    for message in check_read_file(frames, str(data), keys):
        log.warning(message)
    predictions = predict(model, frames, batch_size=batch_size, compute_forces=True, prior=prior)
    path = write_predictions(frames, predictions, output, model=str(model_path))
    return path, len(frames), predictions.prior
