"""Fine-tuning (``model.init_from``): the pre-trained model, its elements, E0 re-fit, freezing.

:func:`resolve_init_from` loads the pre-trained model and checks the model section against it;
:func:`check_pretrained_elements` refuses training data with elements it does not know;
:func:`refit_reference` re-fits its E0s and per-atom shift to the new training energies
(``model.e0s_on_init=refit``, another level of theory); :func:`apply_freeze` switches off the
gradients of the parameters ``model.freeze`` selects. The optimiser only ever sees the parameters
that still require a gradient.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from piwsl.config import Config
from piwsl.errors import ConfigError, UnknownElementError
from piwsl.training.data import PreparedData

log = logging.getLogger(__name__)


def as_lists(value: Any) -> Any:
    """Tuples as lists, recursively (hyper-parameters from YAML vs from a model file)."""
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: as_lists(v) for k, v in value.items()}
    return value


def resolve_init_from(cfg: Config) -> tuple[Config, Any]:
    """``(cfg, pre-trained ForceField)`` for ``model.init_from``; ``(cfg, None)`` without it.

    The model's architecture is the file's. ``model.name``, ``model.cutoff`` and
    ``model.hparams`` given in the configuration must agree with it (:class:`ConfigError` naming
    each disagreement); the returned configuration carries the file's name and cutoff, so that the
    run's ``config.yaml`` says what was trained.
    """
    if cfg.model.init_from is None:
        return cfg, None
    from piwsl.models.finetune import load_pretrained

    source = cfg.model.init_from
    model = load_pretrained(source)
    name, cutoff = str(model.hparams["name"]), float(model.cutoff)
    saved = {k: v for k, v in model.hparams.items() if k not in ("name", "elements", "cutoff")}
    given = cfg.model.model_fields_set
    problems = []
    if "name" in given and cfg.model.name != name:
        problems.append(f"model.name: config {cfg.model.name!r}, file {name!r}")
    if "cutoff" in given and abs(cfg.model.cutoff - cutoff) > 1e-9:
        problems.append(f"model.cutoff: config {cfg.model.cutoff} Å, file {cutoff} Å")
    for key, value in cfg.model.hparams.items():
        if key not in saved:
            problems.append(f"model.hparams.{key}: config {value!r}, not set in the file")
        elif as_lists(value) != as_lists(saved[key]):
            problems.append(f"model.hparams.{key}: config {value!r}, file {saved[key]!r}")
    if problems:
        raise ConfigError(
            f"model.init_from {source!r} holds a {name!r} model (cutoff {cutoff} Å) that the "
            f"model section contradicts: {'; '.join(problems)}. The architecture of a "
            "fine-tuned model is the pre-trained one: leave model.name, model.cutoff and "
            "model.hparams out of the config (override: model.hparams={}) or make them agree"
        )
    update = {"name": name, "cutoff": cutoff}
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=update)})
    return cfg, model


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}"


def check_pretrained_elements(model: Any, data: PreparedData, source: str) -> None:
    """Raise :class:`UnknownElementError` if the training data hold elements ``model`` lacks."""
    import numpy as np

    known = set(model.elements)
    missing = sorted(set(data.elements) - known)
    if not missing:
        return
    where = []
    for z in missing:
        frame = next(f for f in data.train if bool(np.any(f.numbers == z)))
        where.append(f"{_symbol(z)} (Z={z}, e.g. file {frame.source!r} frame {frame.index})")
    raise UnknownElementError(
        f"model.init_from {source!r}: the training data contain {', '.join(where)}, which the "
        f"pre-trained model does not know (it knows {', '.join(_symbol(z) for z in sorted(known))})"
        ". Fine-tuning cannot add elements: remove these structures from data.train / "
        "data.unlabelled, or train a new model"
    )


def inference_device(cfg: Config) -> torch.device:
    """Where the pre-trained model evaluates the training frames for the E0 re-fit."""
    if cfg.training.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def interaction_energies(
    model: Any, frames: list, batch_size: int = 32, device: torch.device | None = None
) -> list[float]:
    """What ``model`` predicts for each frame minus its E0s and shift, eV (no forces computed)."""
    from piwsl.data import frames_to_batch

    em = model.energy_model
    dtype = next(model.parameters()).dtype
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    model.to(device)
    e0 = em.e0.detach().cpu().double().numpy()
    shift = float(em.energy_shift)
    out: list[float] = []
    try:
        with torch.no_grad():
            for k in range(0, len(frames), batch_size):
                chunk = frames[k : k + batch_size]
                batch = frames_to_batch(chunk, model.cutoff, dtype=dtype).to(device=device)
                energy = model(batch, compute_forces=False)["energy"].double().cpu().tolist()
                for f, e in zip(chunk, energy, strict=True):
                    out.append(e - float(e0[f.numbers].sum()) - shift * f.n_atoms)
    finally:
        model.to("cpu")
        model.train(was_training)
    return out


def refit_reference(
    model: Any, data: PreparedData, e0s_mode: Any, device: torch.device | None = None
) -> dict[int, float]:
    """Re-fit the E0s and the per-atom shift of a pre-trained model to the training energies.

    The targets are the residuals ``E_f − I_f``, ``I_f`` the pre-trained network's interaction
    energy of frame f (:func:`interaction_energies`): E0s as ``e0s_mode`` says (``data.e0s``:
    least-squares fit, isolated atoms, zero or given values), the shift as the mean per-atom
    residual left. With ``fit`` the model's mean energy error on the training frames is then zero;
    a per-element offset between two levels of theory is absorbed exactly. The energy scale stays
    (it sets the forces). Elements the model knows but the new data lack keep their effective
    reference ``E0 + shift``. Without energy labels nothing is changed (a warning says so).
    Returns the new E0s, eV.
    """
    from dataclasses import replace

    from piwsl.data import resolve_e0s
    from piwsl.training.data import reference_statistics

    em = model.energy_model
    labelled = [f for f in data.train if f.has_energy]
    if not labelled:
        log.warning(
            "model.e0s_on_init=refit: no training frame has an energy; the pre-trained E0s and "
            "shift are kept"
        )
        return {z: float(em.e0[z]) for z in em.elements}
    inter = interaction_energies(model, labelled, device=device)
    residual = [
        replace(f, energy=float(f.energy) - i, forces=None)
        for f, i in zip(labelled, inter, strict=True)
    ]
    mode = dict(e0s_mode) if isinstance(e0s_mode, dict) else e0s_mode
    fitted = resolve_e0s(mode, residual, data.elements)
    shift, _ = reference_statistics(residual, fitted)
    old_shift = float(em.energy_shift)
    e0s = {z: float(em.e0[z]) + old_shift - shift for z in em.elements}
    e0s.update({int(z): float(v) for z, v in fitted.items() if int(z) in e0s})
    em.set_reference(e0s, shift, float(em.energy_scale))
    return e0s


def apply_freeze(model: Any, patterns: list[str]) -> list[str]:
    """Freeze the parameters ``patterns`` select (``model.freeze``); names of the frozen ones."""
    from piwsl.models.finetune import freeze

    try:
        frozen = freeze(model, patterns)
    except ConfigError as err:
        raise ConfigError(f"model.freeze: {err}") from None
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"model.freeze {patterns!r} freezes all {len(frozen)} parameter tensors: nothing "
            "would be trained. Take some back with '!pattern' (e.g. '!readout.*')"
        )
    return frozen


def zero_shot(
    cfg: Config, frames: list, out_dir: Any, name: str = "zero_shot", batch_size: int = 32
) -> dict[str, Any]:
    """The pre-trained model of ``model.init_from`` on ``frames``, before any fine-tuning step:
    ``raw`` (as it is) and ``refit`` (its E0s and shift re-fitted to the training energies of
    ``cfg``, as ``model.e0s_on_init=refit`` does when the fine-tuning run starts). Writes
    ``<name>_raw_metrics.json`` / ``<name>_refit_metrics.json`` under ``out_dir``; returns
    ``{"raw": metrics, "refit": metrics, "n_energies": training energies used}``."""
    from piwsl.evaluation import evaluate_model
    from piwsl.training.data import prepare_data

    if cfg.model.init_from is None:
        raise ConfigError("zero_shot: model.init_from names no pre-trained model")
    cfg, model = resolve_init_from(cfg)
    data = prepare_data(cfg.data, report=False, prior=cfg.prior)
    kw = {"batch_size": batch_size, "plot": False}
    raw = evaluate_model(model, frames, out_dir, name=f"{name}_raw", **kw)
    refit_reference(model, data, cfg.data.e0s)
    model.eval()
    refit = evaluate_model(model, frames, out_dir, name=f"{name}_refit", **kw)
    return {"raw": raw, "refit": refit, "n_energies": sum(f.has_energy for f in data.train)}
