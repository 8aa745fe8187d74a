"""Parity plots: predicted against reference energies (meV/atom) and force components (eV/Å)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from piwsl.data.frames import Frame
from piwsl.evaluation.predict import Predictions


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
