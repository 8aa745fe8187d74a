"""Evaluate a model on frames and report: metrics JSON, parity plot, a console table.

:func:`evaluate_model` predicts, scores (:func:`~piwsl.evaluation.compute_metrics`) and writes
``<name>_metrics.json`` and ``<name>_parity.png``; :func:`evaluate_checkpoint` is ``piwsl
evaluate`` (a model file or training checkpoint on a data file); :func:`metrics_table` is the
table ``piwsl train`` and ``piwsl evaluate`` print.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from piwsl.data.frames import Frame
from piwsl.errors import ConfigError
from piwsl.evaluation.metrics import compute_metrics, offset_note
from piwsl.evaluation.nonconservative import nonconservativeness
from piwsl.evaluation.plots import parity_plot
from piwsl.evaluation.predict import as_force_field, predict
from piwsl.io.atomic import write_json
from piwsl.priors.base import PriorUse

log = logging.getLogger(__name__)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


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
        _write_predictions(frames, predictions, metrics, out_dir / f"{name}_predictions.extxyz")
    metrics_path = out_dir / f"{name}_metrics.json"
    write_json(metrics_path, _finite_or_none(metrics), sort_keys=True)
    if plot and labelled:
        parity_plot(frames, predictions, metrics, out_dir / f"{name}_parity.png")
    return metrics


def _write_predictions(frames, predictions, metrics: dict[str, Any], path: Path) -> None:
    """The predictions as extxyz (``metrics["predictions"]``); a warning when nothing is scored."""
    from piwsl.predictions import write_predictions as write

    metrics["predictions"] = str(write(frames, predictions, path, model=metrics["model"]))
    if not (metrics["n_frames_with_energy"] or metrics["n_frames_with_forces"]):
        log.warning(
            "none of the %d frames carries an energy or force label (if the file has labels, "
            "name their keys: energy_key / forces_key, --energy-key / --forces-key): there is "
            "nothing to score; the predictions are in %s",
            len(frames),
            metrics["predictions"],
        )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def metrics_table(metrics: dict[str, Any], title: str = "test set") -> Table:
    """A rich table of energy (meV, meV/atom), force (meV/Å) and stress (meV/Å³) MAE/RMSE."""
    table = Table(title=f"{title}: {metrics.get('n_frames', '?')} frames")
    table.add_column("quantity")
    table.add_column("MAE", justify="right")
    table.add_column("RMSE", justify="right")
    table.add_row(
        "energy (meV)", _fmt(metrics.get("energy_mae_meV")), _fmt(metrics.get("energy_rmse_meV"))
    )
    table.add_row(
        "energy (meV/atom)",
        _fmt(metrics.get("energy_mae_meV_per_atom")),
        _fmt(metrics.get("energy_rmse_meV_per_atom")),
    )
    table.add_row(
        "forces (meV/Å)",
        _fmt(metrics.get("forces_mae_meV_per_A")),
        _fmt(metrics.get("forces_rmse_meV_per_A")),
    )
    if metrics.get("stress_mae_meV_per_A3") is not None:
        table.add_row(
            "stress (meV/Å³)",
            _fmt(metrics.get("stress_mae_meV_per_A3")),
            _fmt(metrics.get("stress_rmse_meV_per_A3")),
        )
    return table


def check_read_units(keys: Any) -> None:
    """ConfigError for unknown unit names in ``keys`` (a :class:`~piwsl.data.LabelKeys`)."""
    from piwsl.registry import suggest
    from piwsl.units import ENERGY_UNITS, LENGTH_UNITS, STRESS_UNITS

    for unit, known, what in (
        (getattr(keys, "energy_unit", "eV"), ENERGY_UNITS, "energy"),
        (getattr(keys, "length_unit", "Å"), LENGTH_UNITS, "length"),
        (getattr(keys, "stress_unit", None), STRESS_UNITS, "stress"),
    ):
        if unit is not None and unit not in known:
            raise ConfigError(f"unknown {what} unit {unit!r}{suggest(unit, known)}")


def _read_checked(data: str | Path, keys: Any) -> list[Frame]:
    """The frames of ``data``, with warnings where lengths or energies do not fit the units."""
    from piwsl.data import read_frames
    from piwsl.data.checks import check_read_file

    frames = read_frames(data, keys)
    for message in check_read_file(frames, str(data), keys):
        log.warning(message)
    return frames


def _report(console: Console, metrics: dict[str, Any], title: str, out: Path, name: str) -> None:
    # without any label evaluate_model has warned that there is nothing to score
    if metrics["n_frames_with_energy"] or metrics["n_frames_with_forces"]:
        console.print(metrics_table(metrics, title=title))
    note = offset_note(metrics)
    if note is not None:
        console.print(f"[bold]offset[/] {escape(note)}")
    console.print(f"[bold]metrics[/] {escape(str(out / f'{name}_metrics.json'))}")
    if metrics.get("predictions"):
        console.print(f"[bold]predictions[/] {escape(metrics['predictions'])}")
    plot = out / f"{name}_parity.png"
    if plot.exists():
        console.print(f"[bold]parity plot[/] {escape(str(plot))}")


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out_dir: str | Path | None = None,
    batch_size: int = 32,
    name: str | None = None,
    console: Console | None = None,
    keys: Any = None,
    allow_prior_mismatch: bool = False,
    prior_cache_dir: str | None = None,
    prior_workers: int = 1,
    write_predictions: bool = False,
) -> tuple[dict[str, Any], Path, Path | None]:
    """Evaluate a model file or training checkpoint on a data file; (metrics, json path, plot).

    A model trained on top of a prior is scored on prior + learned part (the prior's values are
    cached, :mod:`piwsl.priors.cache`); ``allow_prior_mismatch`` runs it even when the installed
    prior differs from the recorded one. ``write_predictions`` writes the predictions
    (:mod:`piwsl.predictions`); frames without labels get theirs written in any case, and the
    console says that there was nothing to score. Energy errors dominated by a constant offset
    (another level of theory) are pointed out. The file's lengths and energies are checked
    against the declared units (:func:`piwsl.data.checks.check_read_file`, warnings).
    """
    from piwsl.models import load_model
    from piwsl.priors import model_prior

    console = console or Console(quiet=True)
    check_read_units(keys)
    checkpoint = Path(checkpoint)
    model = load_model(checkpoint)
    frames = _read_checked(data, keys)
    if name is None:
        stem = str(data).split(":", 1)[1] if str(data).startswith("builtin:") else Path(data).stem
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "eval"
    out = Path(out_dir) if out_dir is not None else checkpoint.parent / "evaluation"
    prior = model_prior(model, allow_prior_mismatch, what=f"model {str(checkpoint)!r}")
    if prior is not None:
        console.print(f"[bold]prior[/] {escape(prior.describe())} added to the model's predictions")
    use = PriorUse(
        enabled=prior is not None,  # None: no prior, or an analytic one inside the model
        allow_mismatch=allow_prior_mismatch,
        cache_dir=prior_cache_dir,
        workers=prior_workers,
        progress=not console.quiet,
        built=prior,
    )
    metrics = evaluate_model(
        model,
        frames,
        out,
        batch_size=batch_size,
        name=name,
        prior=use,
        write_predictions=write_predictions,
    )
    _report(console, metrics, f"{name} ({checkpoint.name})", out, name)
    metrics_path, plot = out / f"{name}_metrics.json", out / f"{name}_parity.png"
    return metrics, metrics_path, plot if plot.exists() else None
