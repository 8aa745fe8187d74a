"""One metrics accumulator for validation, ``piwsl evaluate``, the test curve and the benchmarks.

:class:`ErrorMetrics` streams batches of predictions against labels into float64 sums (and
maxima), which :meth:`ErrorMetrics.reduce` combines across DDP ranks (sum / max) before
:meth:`ErrorMetrics.metrics` divides. Units are in the keys: ``energy_mae_meV``,
``energy_rmse_meV``, ``energy_mae_meV_per_atom``, ``energy_rmse_meV_per_atom``,
``forces_mae_meV_per_A``, ``forces_rmse_meV_per_A`` (over Cartesian components of every atom of a
force-labelled structure); with ``full=True`` also the largest errors, the counts and the force
errors per element. Frames without an energy (forces) label are left out of the energy (force)
metrics, never counted as zero; a metric with no labelled frame at all is ``None`` (absent from
validation's ``val_*`` keys). :func:`compute_metrics` also reports the signed mean energy error
and the part of the energy errors a constant (per-element) offset explains — a reference at
another level of theory (:func:`energy_offset`, :func:`offset_note`).

Validation feeds the model output and the batch as they are (forces in the working dtype, their
difference taken before the cast to float64); evaluation feeds float64 predictions and labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols

from piwsl.data.frames import Frame

#: Atomic numbers the per-element sums cover.
MAX_Z = 119


@dataclass
class Labels:
    """The labels :meth:`ErrorMetrics.update` reads (a :class:`~piwsl.data.Batch` has them too)."""

    energy: torch.Tensor  # float64 [S] (NaN where missing)
    energy_mask: torch.Tensor  # bool [S]
    n_atoms: torch.Tensor  # long [S]
    forces: torch.Tensor  # [N, 3] (NaN where missing)
    forces_mask: torch.Tensor  # bool [S]
    atom_forces_mask: torch.Tensor  # bool [N]
    numbers: torch.Tensor  # long [N]

    @classmethod
    def from_frames(cls, frames: Sequence[Frame]) -> Labels:
        """Float64 labels of ``frames``, in their order."""
        n = torch.tensor([f.n_atoms for f in frames], dtype=torch.long)
        forces = [
            torch.as_tensor(f.forces, dtype=torch.float64)
            if f.has_forces
            else torch.full((f.n_atoms, 3), float("nan"), dtype=torch.float64)
            for f in frames
        ]
        forces_mask = torch.tensor([f.has_forces for f in frames], dtype=torch.bool)
        return cls(
            energy=torch.tensor(
                [float(f.energy) if f.has_energy else float("nan") for f in frames],
                dtype=torch.float64,
            ),
            energy_mask=torch.tensor([f.has_energy for f in frames], dtype=torch.bool),
            n_atoms=n,
            forces=torch.cat(forces) if forces else torch.zeros((0, 3), dtype=torch.float64),
            forces_mask=forces_mask,
            atom_forces_mask=forces_mask.repeat_interleave(n),
            numbers=torch.cat([torch.as_tensor(f.numbers, dtype=torch.long) for f in frames]),
        )


#: The error metrics (units in the names), in the order they are reported.
METRIC_KEYS = (
    "energy_mae_meV",
    "energy_rmse_meV",
    "energy_mae_meV_per_atom",
    "energy_rmse_meV_per_atom",
    "forces_mae_meV_per_A",
    "forces_rmse_meV_per_A",
)
#: sums of the energy and force errors (validation and evaluation)
_SUMS = ("e_abs", "e_sq", "epa_abs", "epa_sq", "n_e", "f_abs", "f_sq", "n_f")
#: further sums of ``full`` metrics
_FULL_SUMS = ("n_frames", "n_atoms", "n_frames_f", "n_force_atoms")
_MAXIMA = ("e_max", "f_max")
#: per-element sums (MAX_Z bins each) of ``full`` metrics
_ELEMENT_SUMS = ("z_abs", "z_sq", "z_atoms")

Reducer = Callable[[torch.Tensor, str], torch.Tensor]


def all_reduce(value: torch.Tensor, op: str) -> torch.Tensor:
    """Sum or max of ``value`` over the torch.distributed group (itself without one)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return value


class ErrorMetrics:
    """Streaming energy/force error sums (see the module docstring).

    ``full``: also maxima, counts and per-element force errors (evaluation); validation keeps
    the six MAE/RMSE metrics. :meth:`add` accumulates further named sums (validation's loss).
    """

    def __init__(self, full: bool = False, device: torch.device | str | None = None) -> None:
        self.full = full
        zero = torch.zeros((), dtype=torch.float64, device=device)
        names = _SUMS + (_FULL_SUMS if full else ())
        self.sums: dict[str, torch.Tensor] = {k: zero.clone() for k in names}
        self.maxima: dict[str, torch.Tensor] = {k: zero.clone() for k in _MAXIMA} if full else {}
        self.elements: dict[str, torch.Tensor] = (
            {k: zero.new_zeros(MAX_Z) for k in _ELEMENT_SUMS} if full else {}
        )

    # ------------------------------------------------------------------------------ streaming
    def update(self, energy: torch.Tensor, forces: torch.Tensor | None, labels: Any) -> None:
        """Add one batch: predicted ``energy`` [S] (eV), ``forces`` [N, 3] (eV/Å, or None) against
        ``labels`` (a :class:`~piwsl.data.Batch` or :class:`Labels`)."""
        s = self.sums
        em = labels.energy_mask
        if bool(em.any()):
            err = (energy[em] - labels.energy[em]).double()
            per_atom = err / labels.n_atoms[em]
            s["e_abs"] += err.abs().sum()
            s["e_sq"] += (err**2).sum()
            s["epa_abs"] += per_atom.abs().sum()
            s["epa_sq"] += (per_atom**2).sum()
            s["n_e"] += em.sum()
            if self.full:
                self.maxima["e_max"] = torch.maximum(self.maxima["e_max"], err.abs().max())
        if forces is not None and bool(labels.forces_mask.any()):
            am = labels.atom_forces_mask
            err = (forces[am] - labels.forces[am]).double()
            s["f_abs"] += err.abs().sum()
            s["f_sq"] += (err**2).sum()
            s["n_f"] += err.numel()
            if self.full:
                self._update_forces_full(err, labels.numbers[am])
        if self.full:
            s["n_frames"] += em.numel()
            s["n_atoms"] += labels.n_atoms.sum()
            s["n_frames_f"] += labels.forces_mask.sum()

    def _update_forces_full(self, err: torch.Tensor, numbers: torch.Tensor) -> None:
        self.sums["n_force_atoms"] += err.shape[0]
        self.maxima["f_max"] = torch.maximum(self.maxima["f_max"], err.abs().max())
        z = self.elements
        z["z_abs"].index_add_(0, numbers, err.abs().sum(-1))
        z["z_sq"].index_add_(0, numbers, (err**2).sum(-1))
        z["z_atoms"].index_add_(0, numbers, torch.ones_like(err[:, 0]))

    def add(self, name: str, value: torch.Tensor | float) -> None:
        """Accumulate a further named sum (float64)."""
        if name not in self.sums:
            self.sums[name] = torch.zeros_like(self.sums["n_e"])
        self.sums[name] += value

    def reduce(self, reducer: Reducer = all_reduce) -> None:
        """Combine the sums (and maxima) of every rank, in place; ``reducer(tensor, op)`` with
        ``op`` "sum" or "max" (default: torch.distributed when initialised)."""
        self.sums = {k: reducer(v, "sum") for k, v in self.sums.items()}
        self.maxima = {k: reducer(v, "max") for k, v in self.maxima.items()}
        self.elements = {k: reducer(v, "sum") for k, v in self.elements.items()}

    # -------------------------------------------------------------------------------- results
    def metrics(self, prefix: str = "") -> dict[str, Any]:
        """MAE/RMSE in meV, meV/atom and meV/Å (``prefix`` + key; see the module docstring)."""
        s = self.sums
        n_e, n_f = float(s["n_e"]), float(s["n_f"])
        out: dict[str, Any] = {}
        if n_e > 0:
            out["energy_mae_meV"] = 1e3 * float(s["e_abs"]) / n_e
            out["energy_rmse_meV"] = 1e3 * (float(s["e_sq"]) / n_e) ** 0.5
            out["energy_mae_meV_per_atom"] = 1e3 * float(s["epa_abs"]) / n_e
            out["energy_rmse_meV_per_atom"] = 1e3 * (float(s["epa_sq"]) / n_e) ** 0.5
        if n_f > 0:
            out["forces_mae_meV_per_A"] = 1e3 * float(s["f_abs"]) / n_f
            out["forces_rmse_meV_per_A"] = 1e3 * (float(s["f_sq"]) / n_f) ** 0.5
        if self.full:
            out = self._full_metrics(out)
        return {f"{prefix}{k}": v for k, v in out.items()}

    def _full_metrics(self, partial: dict[str, Any]) -> dict[str, Any]:
        s, has_e, has_f = self.sums, float(self.sums["n_e"]) > 0, float(self.sums["n_f"]) > 0
        return {
            "n_frames": int(s["n_frames"]),
            "n_atoms": int(s["n_atoms"]),
            "n_frames_with_energy": int(s["n_e"]),
            "n_frames_with_forces": int(s["n_frames_f"]),
            "n_force_atoms": int(s["n_force_atoms"]),
            **{k: partial.get(k) for k in METRIC_KEYS},
            "energy_max_abs_error_meV": 1e3 * float(self.maxima["e_max"]) if has_e else None,
            "forces_max_abs_error_meV_per_A": 1e3 * float(self.maxima["f_max"]) if has_f else None,
            "forces_per_element": self._per_element(),
        }

    def _per_element(self) -> dict[str, dict[str, Any]]:
        z = self.elements
        out = {}
        for number in torch.nonzero(z["z_atoms"] > 0).flatten().tolist():
            n = float(z["z_atoms"][number])
            out[chemical_symbols[number]] = {
                "mae_meV_per_A": 1e3 * float(z["z_abs"][number]) / (3 * n),
                "rmse_meV_per_A": 1e3 * (float(z["z_sq"][number]) / (3 * n)) ** 0.5,
                "n_atoms": int(n),
            }
        return out


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


def compute_metrics(frames: Sequence[Frame], predictions: Any) -> dict[str, Any]:
    """The full :class:`ErrorMetrics` of ``predictions`` (a :class:`~piwsl.evaluation.Predictions`)
    against the labels of ``frames`` (masked: unlabelled frames are skipped).

    Energy errors are per structure (total, meV) and per atom (|ΔE|/N, meV/atom); force errors are
    over Cartesian components of every atom in a force-labelled structure (meV/Å), overall and per
    element symbol.
    """
    frames = list(frames)
    if len(frames) != predictions.n_structures:
        raise ValueError(
            f"{len(frames)} frames but predictions for {predictions.n_structures} structures"
        )
    if any(f.has_forces for f in frames) and predictions.forces is None:
        raise ValueError("the frames carry forces but no forces were predicted")
    metrics = ErrorMetrics(full=True)
    if frames:
        forces = predictions.forces
        metrics.update(
            torch.as_tensor(np.asarray(predictions.energy, dtype=np.float64)),
            None if forces is None else torch.as_tensor(np.asarray(forces, dtype=np.float64)),
            Labels.from_frames(frames),
        )
    e_idx = [s for s, f in enumerate(frames) if f.has_energy]
    errors = np.array([predictions.energy[s] - frames[s].energy for s in e_idx], np.float64)
    offset = energy_offset(errors, [frames[s] for s in e_idx]) if e_idx else {}
    mean_error = 1e3 * float(np.mean(errors)) if e_idx else None
    return {**offset, "energy_mean_error_meV": mean_error, **metrics.metrics()}
