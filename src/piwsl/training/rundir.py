"""The run directory: start, overwrite or resume; config.yaml, log versions, summary.json.

A run directory holds::

    config.yaml               the resolved configuration
    checkpoints/best.ckpt     Lightning checkpoint with the best validation score
    checkpoints/last.ckpt     the latest checkpoint (``--resume`` continues from it)
    best_model.pt             the evaluation (EMA) model of best.ckpt (piwsl.models.load_model)
    final_model.pt            the evaluation model at the end of training
    logs/version_K/metrics.csv  per-epoch losses (raw and weighted) and validation errors
    evaluation/test_metrics.json, evaluation/test_parity.png
    summary.json              paths, timing and the headline numbers

``--resume`` continues from ``checkpoints/last.ckpt`` and refuses a configuration that differs
from the run's — in ``config.yaml`` or in the checkpoint itself — anywhere but in ``training``,
``output``, ``prior.cache_dir`` / ``prior.workers`` and ``plugins`` (which only make names
available), naming every key that changed. Both sides are compared in their resolved form, so a
run written with the old loss keys resumes under their new spelling.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from piwsl.config import Config, config_from_dict, read_yaml
from piwsl.errors import CheckpointError, ConfigError
from piwsl.io.atomic import write_json, write_text

log = logging.getLogger(__name__)

#: Top-level keys that may change when resuming.
RESUMABLE_SECTIONS = ("training", "output", "plugins")
#: Keys inside other sections that may change when resuming: where the prior's values are cached
#: and computed, the loss preset (only the starting point: the resolved terms and convention
#: are compared) and how the displaced copies are evaluated (the same losses, another speed).
RESUMABLE_KEYS = (
    "prior.cache_dir",
    "prior.workers",
    "prior.executor",
    "prior.scheduler",
    "loss.preset",
    "physics.evaluation",
)
#: What the --resume error lists as changeable (from the two tuples above).
RESUMABLE = ", ".join([*(f"{s}.*" for s in RESUMABLE_SECTIONS), *RESUMABLE_KEYS])


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """``"key: old there, new now"`` for every dotted key whose value differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for name in sorted(set(old) | set(new), key=str):
            sub = f"{key}.{name}" if key else str(name)
            out += differences(old.get(name, "(unset)"), new.get(name, "(unset)"), sub)
        return out
    return [] if old == new else [f"{key}: {old!r} there, {new!r} now"]


def frozen_part(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a resolved config mapping that must not change when resuming."""
    out = {k: v for k, v in config.items() if k not in RESUMABLE_SECTIONS}
    for dotted in RESUMABLE_KEYS:
        section, key = dotted.split(".")
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k != key}
    terms = (out.get("loss") or {}).get("terms")
    if isinstance(terms, dict):  # a term with weight 0 is no term at all
        kept = {
            n: t for n, t in terms.items() if not (isinstance(t, dict) and t.get("weight") == 0)
        }
        out["loss"] = {**out["loss"], "terms": kept}
    return out


def _resolved(recorded: dict[str, Any], source: Path) -> dict[str, Any]:
    try:
        return config_from_dict(recorded).to_dict()
    except ConfigError as err:
        raise ConfigError(
            f"--resume: the configuration recorded in {str(source)!r} is not valid for this "
            f"piwsl ({err}); start the run afresh (output.overwrite=true)"
        ) from None


def check_resumed_config(recorded: dict[str, Any], cfg: Config, source: Path) -> None:
    """ConfigError naming every key outside ``training``/``output`` in which the run's recorded
    configuration differs from ``cfg``."""
    problems = differences(frozen_part(_resolved(recorded, source)), frozen_part(cfg.to_dict()))
    if problems:
        shown = problems[:12] + ([f"… {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise ConfigError(
            f"--resume: {str(source)!r} belongs to another run: {'; '.join(shown)}. Only "
            f"{RESUMABLE} may change when resuming; start afresh (output.overwrite=true or "
            "another --run-dir) to train with these settings, or restore this run's checkpoint"
        )


def _load_last(last: Path) -> dict[str, Any]:
    if not last.is_file():
        raise CheckpointError(
            f"--resume: no checkpoint {str(last)!r}; start the run without --resume"
        )
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"--resume: cannot read checkpoint {str(last)!r} ({type(err).__name__}: {err}); "
            "start the run afresh (output.overwrite=true) or restore the file"
        ) from err
    if not isinstance(ckpt, dict) or "piwsl_model" not in ckpt:
        raise CheckpointError(
            f"--resume: {str(last)!r} is not a piwsl training checkpoint; start afresh"
        )
    return ckpt


def check_resumed_model(model_state: dict[str, Any], cfg: Config, source: Path) -> None:
    """Without any recorded configuration: ConfigError when the checkpoint's model (name,
    cutoff, the hyper-parameters the config gives) differs from the model section."""
    from piwsl.training.finetune import as_lists

    hparams = model_state.get("hparams") or {}
    recorded = {
        "name": model_state.get("name"),
        "cutoff": hparams.get("cutoff"),
        "hparams": {k: as_lists(v) for k, v in hparams.items() if k in cfg.model.hparams},
    }
    given = {"name": cfg.model.name, "cutoff": cfg.model.cutoff, "hparams": cfg.model.hparams}
    problems = differences(recorded, as_lists(given), "model")
    if problems:
        raise ConfigError(
            f"--resume: {str(source)!r} belongs to another run: {'; '.join(problems[:12])}. Only "
            "training/output settings may change when resuming; start afresh "
            "(output.overwrite=true or another --run-dir) or restore this run's checkpoint"
        )


def _say_resumed(last: Path, ckpt: dict[str, Any], console: Any) -> None:
    """Tell the user where training continues (epochs and steps already done)."""
    from lightning.pytorch.utilities import rank_zero_only
    from rich.markup import escape

    epochs, step = int(ckpt.get("epoch", -1)) + 1, int(ckpt.get("global_step", 0))
    text = (
        f"from {str(last)!r}: {epochs} epoch(s) and {step} step(s) done, continuing with epoch "
        f"{epochs + 1}"
    )
    log.info("resumed %s", text)
    if console is not None and getattr(rank_zero_only, "rank", 0) == 0:
        console.print(f"[bold]resumed[/] {escape(text)}")


def resume_checkpoint(cfg: Config, run_dir: Path, console: Any = None) -> Path:
    """The checkpoint ``--resume`` continues from, after checking that it belongs to this run
    (its configuration and config.yaml's; without either, its model) and that its prior can be
    run here; ``console`` is told the epoch and step it continues from."""
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = _load_last(last)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        check_resumed_config(read_yaml(saved), cfg, saved)
    if ckpt.get("piwsl_config"):  # another run's last.ckpt copied here has another config
        check_resumed_config(ckpt["piwsl_config"], cfg, last)
    elif not saved.is_file():
        check_resumed_model(ckpt.get("piwsl_model") or {}, cfg, last)
    _say_resumed(last, ckpt, console)
    recorded = (ckpt.get("piwsl_model") or {}).get("prior")
    del ckpt
    if recorded:
        from piwsl.priors import prior_from_spec

        prior_from_spec(
            recorded,
            what=f"--resume: the checkpoint {str(last)!r}",
            opt_out="start the run afresh (output.overwrite=true)",
        )
    return last


def keep_run_evaluation(cfg: Config, run_dir: Path) -> Config:
    """``cfg`` for resuming the run in ``run_dir``: where ``cfg`` does not set
    ``physics.evaluation``, the mode the run's config.yaml records, so that a run continues as
    it began (a run trained before ``auto`` became the default continues bit for bit; an
    ``auto`` run keeps the choice saved in its checkpoint)."""
    from typing import get_args

    from piwsl.physics.config import PhysicsConfig

    saved = run_dir / "config.yaml"
    if "evaluation" in cfg.physics.model_fields_set or not saved.is_file():
        return cfg
    try:
        recorded = (read_yaml(saved).get("physics") or {}).get("evaluation")
    except (ConfigError, OSError, AttributeError):
        return cfg  # resume_checkpoint names what is wrong with the file
    modes = get_args(PhysicsConfig.model_fields["evaluation"].annotation)
    if recorded not in modes or recorded == cfg.physics.evaluation:
        return cfg
    physics = cfg.physics.model_copy(update={"evaluation": recorded})
    return cfg.model_copy(update={"physics": physics})


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool, console: Any = None) -> Path | None:
    """Check (``resume``) or clean the run directory and write config.yaml; the checkpoint to
    resume from, or None."""
    resume_from = resume_checkpoint(cfg, run_dir, console) if resume else None
    holds_run = (run_dir / "checkpoints" / "last.ckpt").exists() or (
        run_dir / "final_model.pt"
    ).exists()
    if not resume and holds_run:
        if not cfg.output.overwrite:
            raise ConfigError(
                f"run directory {str(run_dir)!r} already holds a run; pass --resume to continue "
                "it, --run-dir to start elsewhere, or output.overwrite=true to replace it"
            )
        for name in ("checkpoints", "logs", "evaluation"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        for name in ("best_model.pt", "final_model.pt", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", cfg.to_yaml())
    return resume_from


def next_log_version(run_dir: Path) -> int:
    """The next ``logs/version_K`` (a resumed run logs into a new version)."""
    logs = run_dir / "logs"
    if not logs.is_dir():
        return 0
    versions = [int(p.name.split("_")[1]) for p in logs.glob("version_*") if p.name[8:].isdigit()]
    return max(versions, default=-1) + 1


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """``summary.json`` of the run (written whole, then renamed)."""
    return write_json(run_dir / "summary.json", summary)
