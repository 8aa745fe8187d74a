"""Evaluation: predictions, errors (overall, per element), non-conservativeness, parity plots.

Units: predictions are in eV and eV/Å; every metric carries its unit in its key
(``energy_mae_meV``, ``energy_mae_meV_per_atom``, ``forces_mae_meV_per_A``, …). Energy errors
that are mostly a constant (per-element) offset — a reference at another level of theory — are
recognised and the offset reported (:func:`energy_offset`, :func:`offset_note`). Frames without
an energy (forces) label are left out of the energy (force) metrics, never counted as zero; a
metric with no labelled frame at all is ``None``. A model trained on top of a prior (Δ-learning,
:mod:`piwsl.priors`) is scored on its total prediction, prior + learned part, against the full
reference labels.
"""

from __future__ import annotations

import json
import logging
import math
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


def check_elements(model, frames: Sequence[Frame]) -> None:
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
    check_elements(model, frames)
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


def _mae_rmse(errors: np.ndarray) -> tuple[float | None, float | None]:
    if errors.size == 0:
        return None, None
    return float(np.mean(np.abs(errors))), float(np.sqrt(np.mean(errors**2)))


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


#: Energy errors are "dominated by an offset" when removing the best constant (per-element)
#: offset leaves less than this fraction of the MAE, over at least OFFSET_MIN_FRAMES frames.
OFFSET_DOMINATED = 0.5
OFFSET_MIN_FRAMES = 10


def energy_offset(errors: np.ndarray, frames: Sequence[Frame]) -> dict[str, Any]:
    """The part of the energy errors (eV) a constant offset explains.

    One composition: a constant per structure, the mean error. Several: a constant plus one
    offset per element, fitted by least squares to the element counts (a reference at another
    level of theory, or with other atomic reference energies, differs mainly that way). Returns
    the offset (meV per structure, mean over the frames; with several compositions also the
    constant and the per-element parts, meV), the MAE left after removing it (meV) and whether
    the offset dominates: the MAE left is below :data:`OFFSET_DOMINATED` × the MAE, with at least
    :data:`OFFSET_MIN_FRAMES` frames and 5 frames per fitted number.
    """
    elements = sorted({int(z) for f in frames for z in f.numbers})
    counts = np.array([[np.count_nonzero(f.numbers == z) for z in elements] for f in frames])
    single = len({c.tobytes() for c in counts}) == 1
    design = np.ones((len(frames), 1))
    if not single:
        design = np.hstack([design, counts.astype(np.float64)])
    coef, *_ = np.linalg.lstsq(design, errors, rcond=None)
    fitted = design @ coef
    left = errors - fitted
    mae, mae_left = float(np.mean(np.abs(errors))), float(np.mean(np.abs(left)))
    enough = len(frames) >= max(OFFSET_MIN_FRAMES, 5 * design.shape[1])
    out: dict[str, Any] = {
        "energy_offset_meV": float(np.mean(fitted)) * 1e3,
        "energy_mae_after_offset_meV": mae_left * 1e3,
        "energy_offset_dominated": bool(enough and mae > 0 and mae_left < OFFSET_DOMINATED * mae),
    }
    if not single:
        out["energy_offset_constant_meV"] = float(coef[0]) * 1e3
        out["energy_offset_per_element_meV"] = {
            chemical_symbols[z]: float(c) * 1e3 for z, c in zip(elements, coef[1:], strict=True)
        }
    return out


def offset_note(metrics: dict[str, Any]) -> str | None:
    """A sentence for users when the energy errors are mostly a constant offset (else None)."""
    if not metrics.get("energy_offset_dominated"):
        return None
    how = (
        "fitted as a constant plus one offset per element (energy_offset_per_element_meV in the "
        "metrics)"
        if metrics.get("energy_offset_per_element_meV")
        else "the same for every structure"
    )
    return (
        f"the energy errors are dominated by a constant offset: prediction − reference is "
        f"{metrics['energy_offset_meV']:+.1f} meV on average, {how}; without it the energy MAE "
        f"is {metrics['energy_mae_after_offset_meV']:.1f} meV instead of "
        f"{metrics['energy_mae_meV']:.1f} meV. The reference is probably another level of theory "
        "or has another energy zero (atomic reference energies); forces do not see an offset"
    )


def compute_metrics(frames: Sequence[Frame], predictions: Predictions) -> dict[str, Any]:
    """Energy and force errors against the frames' labels (masked: unlabelled frames are skipped).

    Energy errors are per structure (total, meV) and per atom (|ΔE|/N, meV/atom); force errors are
    over Cartesian components of every atom in a force-labelled structure (meV/Å), overall and per
    element symbol.
    """
    frames = list(frames)
    if len(frames) != predictions.n_structures:
        raise ValueError(
            f"{len(frames)} frames but predictions for {predictions.n_structures} structures"
        )
    e_idx = [s for s, f in enumerate(frames) if f.has_energy]
    e_err = np.array([predictions.energy[s] - frames[s].energy for s in e_idx], dtype=np.float64)
    n_at = np.array([frames[s].n_atoms for s in e_idx], dtype=np.float64)
    e_mae, e_rmse = _mae_rmse(e_err)
    epa_mae, epa_rmse = _mae_rmse(e_err / n_at if e_idx else e_err)

    f_idx = [s for s, f in enumerate(frames) if f.has_forces]
    if f_idx and predictions.forces is None:
        raise ValueError("the frames carry forces but no forces were predicted")
    if f_idx:
        f_err = np.concatenate([predictions.forces_of(s) - frames[s].forces for s in f_idx])
        f_num = np.concatenate([frames[s].numbers for s in f_idx])
    else:
        f_err = np.zeros((0, 3))
        f_num = np.zeros(0, dtype=np.int64)
    f_mae, f_rmse = _mae_rmse(f_err)
    per_element: dict[str, dict[str, Any]] = {}
    for z in np.unique(f_num):
        sel = f_err[f_num == z]
        mae, rmse = _mae_rmse(sel)
        per_element[chemical_symbols[int(z)]] = {
            "mae_meV_per_A": _scaled(mae, 1e3),
            "rmse_meV_per_A": _scaled(rmse, 1e3),
            "n_atoms": int(sel.shape[0]),
        }
    offset = energy_offset(e_err, [frames[s] for s in e_idx]) if e_idx else {}
    return {
        **offset,
        "energy_mean_error_meV": _scaled(float(np.mean(e_err)) if e_idx else None, 1e3),
        "n_frames": len(frames),
        "n_atoms": int(sum(f.n_atoms for f in frames)),
        "n_frames_with_energy": len(e_idx),
        "n_frames_with_forces": len(f_idx),
        "n_force_atoms": int(f_err.shape[0]),
        "energy_mae_meV": _scaled(e_mae, 1e3),
        "energy_rmse_meV": _scaled(e_rmse, 1e3),
        "energy_max_abs_error_meV": float(np.abs(e_err).max()) * 1e3 if e_idx else None,
        "energy_mae_meV_per_atom": _scaled(epa_mae, 1e3),
        "energy_rmse_meV_per_atom": _scaled(epa_rmse, 1e3),
        "forces_mae_meV_per_A": _scaled(f_mae, 1e3),
        "forces_rmse_meV_per_A": _scaled(f_rmse, 1e3),
        "forces_max_abs_error_meV_per_A": float(np.abs(f_err).max()) * 1e3 if f_idx else None,
        "forces_per_element": per_element,
    }


def nonconservativeness(
    model,
    frames: Sequence[Frame],
    batch_size: int = 32,
    max_frames: int | None = 100,
    radius: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """How far a (direct-force) model's forces are from a gradient field, on up to ``max_frames``.

    Uses :mod:`piwsl.physics.metrics`: the exact curl ``|qᵀ(J − Jᵀ)p|`` on random
    configuration-space planes (eV/Å²) and the work around small loops of ``radius`` Å (meV per
    loop). Both vanish for a conservative model. Returns ``{}`` (and logs why) if those functions
    are not available, so evaluation never breaks because of this optional metric.
    """
    try:
        from piwsl.physics import metrics as physics_metrics
    except ImportError as err:
        log.info("non-conservativeness metric unavailable (%s)", err)
        return {}
    force_curl = getattr(physics_metrics, "force_curl", None)
    circulation = getattr(physics_metrics, "circulation", None)
    if force_curl is None and circulation is None:
        log.info("piwsl.physics.metrics has neither force_curl nor circulation; metric skipped")
        return {}
    model = as_force_field(model)
    frames = list(frames)[:max_frames] if max_frames else list(frames)
    check_elements(model, frames)
    # loop points must stay inside the neighbour list: skin ≥ 2 × radius
    dataset = GraphDataset(frames, cutoff=model.cutoff, skin=4.0 * radius, dtype=model_dtype(model))
    device = model_device(model)
    curls, works, loop_curls = [], [], []
    was_training = model.training
    model.eval()
    try:
        for batch in dataset.loader(batch_size, shuffle=False):
            batch = batch.to(device=device)
            if force_curl is not None:
                curls.append(force_curl(model, batch, seed=seed).detach().cpu())
            if circulation is not None:
                result = circulation(model, batch, radius=radius, seed=seed)
                works.append(result.work_mev.detach().cpu())
                loop_curls.append(result.curl_ev_a2.detach().cpu())
    finally:
        model.train(was_training)
    out: dict[str, Any] = {"nonconservative_n_frames": len(frames)}
    if curls:
        out["nonconservative_force_curl_eV_per_A2"] = float(torch.cat(curls).mean())
    if works:
        out["nonconservative_circulation_meV"] = float(torch.cat(works).mean())
        out["nonconservative_circulation_curl_eV_per_A2"] = float(torch.cat(loop_curls).mean())
        out["nonconservative_circulation_radius_A"] = float(radius)
    return out


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


def parity_plot(
    frames: Sequence[Frame], predictions: Predictions, metrics: dict[str, Any], path: str | Path
) -> Path:
    """Energy (meV/atom, relative to the mean reference) and force-component (eV/Å) parity
    panels, MAEs in the titles, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = list(frames)
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 4.6))
    e_idx = [s for s, f in enumerate(frames) if f.has_energy]
    if e_idx:
        ref = np.array([frames[s].energy / frames[s].n_atoms for s in e_idx])
        pred = np.array([predictions.energy[s] / frames[s].n_atoms for s in e_idx])
        # relative to the mean reference, in meV/atom: absolute totals (≈ −468 eV/atom) would
        # leave unreadable tick labels for a spread of a few meV
        offset = float(ref.mean())
        _parity_panel(ax_e, 1e3 * (ref - offset), 1e3 * (pred - offset))
        ax_e.set_title(
            f"Energy: MAE {metrics['energy_mae_meV_per_atom']:.2f} meV/atom "
            f"({metrics['energy_mae_meV']:.1f} meV)"
        )
    else:
        ax_e.text(0.5, 0.5, "no energy labels", ha="center", va="center", transform=ax_e.transAxes)
        ax_e.set_title("Energy")
    shift = f" − ({offset:.3f} eV/atom)" if e_idx else ""
    ax_e.set_xlabel(f"reference energy{shift} (meV/atom)")
    ax_e.set_ylabel(f"predicted energy{shift} (meV/atom)")
    f_idx = [s for s, f in enumerate(frames) if f.has_forces]
    if f_idx and predictions.forces is not None:
        ref = np.concatenate([frames[s].forces for s in f_idx]).ravel()
        pred = np.concatenate([predictions.forces_of(s) for s in f_idx]).ravel()
        _parity_panel(ax_f, ref, pred)
        ax_f.set_title(f"Forces: MAE {metrics['forces_mae_meV_per_A']:.1f} meV/Å")
    else:
        ax_f.text(0.5, 0.5, "no force labels", ha="center", va="center", transform=ax_f.transAxes)
        ax_f.set_title("Forces")
    ax_f.set_xlabel("reference force component (eV/Å)")
    ax_f.set_ylabel("predicted force component (eV/Å)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _parity_panel(ax, ref: np.ndarray, pred: np.ndarray) -> None:
    lo = float(min(ref.min(), pred.min()))
    hi = float(max(ref.max(), pred.max()))
    pad = 0.02 * (hi - lo) if hi > lo else 1.0
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1, zorder=0)
    ax.scatter(ref, pred, s=4, alpha=0.5)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")


def evaluate_model(
    model,
    frames: Sequence[Frame] | str | Path,
    out_dir: str | Path,
    batch_size: int = 32,
    name: str = "test",
    plot: bool = True,
    nonconservative: bool | None = None,
    prior: PriorUse | None = None,
    write_predictions: bool = False,
) -> dict[str, Any]:
    """Predict, score and report: writes ``<name>_metrics.json`` and ``<name>_parity.png``.

    ``write_predictions`` also writes the predictions (:mod:`piwsl.predictions`) to
    ``<name>_predictions.extxyz``; so does a set of frames without any label, which has nothing
    to be scored against (a warning says so; no parity plot). ``metrics["predictions"]`` is
    that file's path.

    ``model`` is a ForceField, an EnergyModel or a model file; ``frames`` a list of frames or a data
    path readable by :func:`piwsl.data.read_frames`. Returns the metrics dict (units in the keys).
    ``nonconservative`` (default: only for direct-force models) adds the curl/circulation of the
    predicted forces (see :func:`nonconservativeness`). For a model trained on top of a prior the
    errors are those of the total prediction, prior + learned part (``prior``: see
    :func:`predict`), and ``metrics["prior"]`` records the prior's spec.
    """
    from piwsl.data.readers import read_frames

    model = as_force_field(model)
    if isinstance(frames, (str, Path)):
        frames = read_frames(frames)
    frames = list(frames)
    if not frames:
        raise ValueError("evaluate_model: no frames given")
    need_forces = any(f.has_forces for f in frames) or model.direct_forces
    need_forces = need_forces or write_predictions or not any(f.has_energy for f in frames)
    predictions = predict(
        model, frames, batch_size=batch_size, compute_forces=need_forces, prior=prior
    )
    metrics = compute_metrics(frames, predictions)
    metrics["name"] = name
    metrics["prior"] = predictions.prior
    metrics["model"] = model.hparams.get("name", type(model.energy_model).__name__)
    metrics["direct_forces"] = bool(model.direct_forces)
    if nonconservative is None:
        nonconservative = bool(model.direct_forces)
    if nonconservative:
        try:
            metrics.update(nonconservativeness(model, frames, batch_size=batch_size))
        except Exception as err:  # a broken optional metric must not lose the main numbers
            log.warning("non-conservativeness metric failed: %s", err)
            metrics["nonconservativeness_error"] = f"{type(err).__name__}: {err}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labelled = metrics["n_frames_with_energy"] or metrics["n_frames_with_forces"]
    if write_predictions or not labelled:
        from piwsl.predictions import write_predictions as write

        path = out_dir / f"{name}_predictions.extxyz"
        metrics["predictions"] = str(write(frames, predictions, path, model=metrics["model"]))
    if not labelled:
        log.warning(
            "none of the %d frames carries an energy or force label (if the file has labels, "
            "name their keys: energy_key / forces_key, --energy-key / --forces-key): there is "
            "nothing to score; the predictions are in %s",
            len(frames),
            metrics["predictions"],
        )
    metrics_path = out_dir / f"{name}_metrics.json"
    metrics_path.write_text(json.dumps(_finite_or_none(metrics), indent=2, sort_keys=True) + "\n")
    if plot and labelled:
        parity_plot(frames, predictions, metrics, out_dir / f"{name}_parity.png")
    return metrics
