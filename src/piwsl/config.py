"""The typed run configuration: pydantic models, YAML loading, dotted command-line overrides.

A configuration has seven sections — ``data``, ``model``, ``loss`` (the objective's terms, see
:mod:`piwsl.objective.config`), ``physics`` (the displaced copies), ``training``, ``prior`` and
``output`` — each a pydantic model that forbids unknown keys, plus an optional ``plugins`` list. :func:`load_config`
reads a YAML file (or ``builtin:NAME`` for a packaged config), applies overrides such as
``training.max_epochs=5 model.hparams.features=32`` and validates; every problem becomes a
:class:`~piwsl.errors.ConfigError` naming the full dotted key, with a "did you mean" suggestion for
unknown keys and the expected type for wrong values.

Units: lengths in Å, energies in eV unless a key says otherwise.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from piwsl.errors import ConfigError
from piwsl.objective.config import LossConfig, translate_legacy
from piwsl.physics.config import PhysicsConfig
from piwsl.registry import builtin_file, suggest
from piwsl.units import ENERGY_UNITS, LENGTH_UNITS, STRESS_UNITS

#: Packaged configurations, readable as ``builtin:NAME``.
BUILTIN_CONFIGS = {"ethanol": "configs/ethanol.yaml", "materials": "configs/materials.yaml"}
#: The config ``piwsl train`` uses when none is given.
DEFAULT_CONFIG = "builtin:ethanol"


def _as_list(value: Any) -> Any:
    """Accept a single path where a list of paths is expected."""
    if isinstance(value, (str, Path)):
        return [str(value)]
    return value


PathList = Annotated[list[str], BeforeValidator(_as_list)]
Count = Union[int, float, None]  # noqa: UP007 (a count ≥ 0, or a fraction in (0, 1))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: The splits ``data.units`` may name (each file of a split is read in that split's units).
UNIT_SPLITS = ("train", "validation", "test", "unlabelled")


def _check_unit(where: str, value: str | None, known: dict[str, float]) -> None:
    if value is not None and value not in known:
        raise ValueError(f"{where}: unknown unit {value!r}{suggest(value, known)}")


class FileUnits(_Section):
    """The units a split or a file stores (``data.units``); None: the data section's default."""

    energy: str | None = Field(None, description="energy unit, e.g. eV, Hartree, kcal/mol")
    length: str | None = Field(None, description="length unit: Å or Bohr")
    stress: str | None = Field(None, description="stress unit, e.g. eV/Å^3, GPa, kbar")


class DataConfig(_Section):
    """Where the frames come from, how labels are read, how they are split and referenced.

    Units: every file is read in ``energy_unit`` / ``length_unit`` unless ``units`` says
    otherwise for its split or for the file itself, e.g.
    ``units: {train: {energy: Hartree, length: Bohr}, test.xyz: {energy: kcal/mol}}`` (a file's
    own entry wins over its split's). rMD17 ``.npz`` files always hold kcal/mol and Å. Stress
    labels (``REF_stress`` / ``stress``: Voigt xx yy zz yz xz xy, 9 numbers or 3×3, ASE's sign —
    positive is tensile) are read in ``stress_unit``, or ``units.<…>.stress``; unset, in the
    file's energy unit per length unit cubed (eV/Å³ by default).
    """

    train: PathList = Field(description="training file(s); `builtin:NAME` for packaged data")
    validation: PathList | None = Field(None, description="validation file(s); else a split")
    test: PathList | None = Field(None, description="test file(s); else a split (n_test)")
    unlabelled: PathList = Field(
        default_factory=list, description="label-free frames, added to training (physics terms)"
    )
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    energy_unit: str = Field("eV", description="unit of the energies in the files")
    length_unit: str = Field("Å", description="unit of positions and cells in the files")
    stress_unit: str | None = Field(
        None,
        description="unit of the stress labels (eV/Å^3, GPa, kbar, …); None: energy/length³",
    )
    units: dict[str, FileUnits] = Field(
        default_factory=dict,
        description=(
            "units per split (train, validation, test, unlabelled) or per file, e.g. "
            "{train: {energy: Hartree, length: Bohr}}; override energy_unit / length_unit"
        ),
    )
    n_train: Count = Field(None, description="count or fraction of the pool; None: all the rest")
    n_val: Count = Field(None, description="count or fraction; None: 5 % unless files are given")
    n_test: Count = Field(None, description="count or fraction of the pool held out as test set")
    split_seed: int = 0
    e0s: Literal["fit", "isolated", "zero"] | dict[str | int, float] = Field(
        "fit", description="fit, isolated, zero or {symbol or Z: eV}"
    )
    skin: float | None = Field(
        None,
        ge=0,
        description=(
            "neighbour-list skin, Å; None: just enough for the physics terms' displaced copies "
            "(1.05 × 2√3·δ), 0 without them"
        ),
    )
    train_labels: Literal["all", "energy", "forces"] = Field(
        "all",
        description=(
            "labels kept in the training and validation frames: 'energy' simulates an "
            "energy-only data set (e.g. CCSD(T)); the test set always keeps all its labels"
        ),
    )

    def files_of(self, split: str) -> list[str]:
        """The files configured for ``split`` (one of :data:`UNIT_SPLITS`)."""
        return list(getattr(self, split) or [])

    def units_for(self, split: str, path: str) -> tuple[str, str]:
        """(energy unit, length unit) of ``path`` read as part of ``split``."""
        energy, length = self.energy_unit, self.length_unit
        for key in (split, path):
            entry = self.units.get(key)
            if entry is not None:
                energy, length = entry.energy or energy, entry.length or length
        return energy, length

    def stress_unit_for(self, split: str, path: str) -> str | None:
        """The stress unit of ``path`` read as part of ``split`` (None: energy/length³)."""
        unit = self.stress_unit
        for key in (split, path):
            entry = self.units.get(key)
            if entry is not None and entry.stress is not None:
                unit = entry.stress
        return unit

    @model_validator(mode="after")
    def _check_units(self) -> DataConfig:
        _check_unit("data.energy_unit", self.energy_unit, ENERGY_UNITS)
        _check_unit("data.length_unit", self.length_unit, LENGTH_UNITS)
        _check_unit("data.stress_unit", self.stress_unit, STRESS_UNITS)
        files = {p: s for s in reversed(UNIT_SPLITS) for p in self.files_of(s)}
        for key, entry in self.units.items():
            where = f"data.units.{key}"
            _check_unit(where, entry.energy, ENERGY_UNITS)
            _check_unit(where, entry.length, LENGTH_UNITS)
            _check_unit(where, entry.stress, STRESS_UNITS)
            if key in UNIT_SPLITS and not self.files_of(key):
                raise ValueError(
                    f"{where}: no {key} files are configured (data.{key}); "
                    + (
                        f"{key} frames are drawn from data.train and read in its units"
                        if key in ("validation", "test")
                        else "drop the entry"
                    )
                )
            if key not in UNIT_SPLITS and key not in files:
                raise ValueError(
                    f"data.units: {key!r} is neither a split ({', '.join(UNIT_SPLITS)}) nor a "
                    f"file of data.train/validation/test/unlabelled"
                    f"{suggest(key, [*UNIT_SPLITS, *files])}"
                )
        for path in files:
            read_as = {s: self.units_for(s, path) for s in UNIT_SPLITS if path in self.files_of(s)}
            if len(set(read_as.values())) > 1:
                listing = "; ".join(f"data.{s}: {e}, {le}" for s, (e, le) in read_as.items())
                raise ValueError(
                    f"data.units: file {path!r} is listed in several splits whose units differ "
                    f"({listing}); give the file its own entry data.units[{path!r}]"
                )
        return self


class ModelConfig(_Section):
    """Which registered model, its cutoff and its hyper-parameters (passed to the builder).

    Fine-tuning: ``init_from`` names a pre-trained model — a piwsl model file (``best_model.pt``),
    a piwsl training checkpoint (``.ckpt``) or a mace-torch model file — which is trained further
    instead of a new model. Its architecture, cutoff and elements are the file's: ``name``,
    ``cutoff`` and ``hparams`` may be left out, and where given they must agree with the file
    (checked when the run starts). ``freeze`` lists glob patterns of parameter names kept fixed
    (``["*", "!readout.*"]``: all but SchNet's readout; see :mod:`piwsl.models.finetune`).
    ``e0s_on_init`` says what happens to the pre-trained reference energies: ``refit`` (default)
    re-fits the per-element E0s and the per-atom shift to the new training energies (as
    ``data.e0s`` says), on top of what the pre-trained network predicts, as needed when the new
    data come from another level of theory; ``keep`` keeps the pre-trained E0s and shift. The
    energy scale (the unit of the network's output, which sets its forces) is always kept.
    """

    name: str = "schnet"
    cutoff: float = Field(5.0, gt=0, description="Å")
    hparams: dict[str, Any] = Field(default_factory=dict)
    init_from: str | None = Field(
        None,
        description=(
            "fine-tune this pre-trained model: a piwsl model file (.pt), a piwsl training "
            "checkpoint (.ckpt) or a mace-torch model file"
        ),
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="glob patterns of parameter names not trained ('!pattern' takes back)",
    )
    e0s_on_init: Literal["refit", "keep"] = Field(
        "refit",
        description=(
            "with init_from: refit the E0s and energy shift on the new data (another level of "
            "theory), or keep the pre-trained ones; the energy scale is always kept"
        ),
    )

    @model_validator(mode="after")
    def _check_hparams(self) -> ModelConfig:
        for key, where in (("cutoff", "model.cutoff"), ("elements", "the training data")):
            if key in self.hparams:
                raise ValueError(f"model.hparams.{key} is not allowed: it is set from {where}")
        for pattern in self.freeze:
            if not pattern.strip().lstrip("!").strip():
                raise ValueError(f"model.freeze: empty parameter pattern {pattern!r}")
        if self.init_from is not None and not self.init_from.strip():
            raise ValueError("model.init_from: empty path (use null to train a new model)")
        return self


class TrainingConfig(_Section):
    """Optimiser, schedule, EMA, stopping, seeds, devices and precision."""

    batch_size: int = Field(16, gt=0)
    val_batch_size: int | None = Field(None, gt=0, description="None: 2 × batch_size")
    max_epochs: int | None = Field(100, gt=0)
    max_steps: int | None = Field(None, gt=0)
    max_time_minutes: float | None = Field(None, gt=0, description="wall-clock limit")
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["plateau", "cosine", "none"] = "plateau"
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    plateau_patience: int = Field(
        10, ge=0, description="validations without improvement before the lr is cut"
    )
    plateau_threshold: float = Field(
        1e-4, ge=0, lt=1, description="relative improvement a validation must make to count"
    )
    min_lr: float = Field(1e-6, ge=0)
    stop_lr: float | None = Field(
        None, gt=0, description="stop once the plateau schedule has cut the lr to this or below"
    )
    ema_decay: float | None = Field(0.99, ge=0, lt=1, description="None or 0: no EMA")
    gradient_clip: float | None = Field(10.0, gt=0)
    early_stopping_patience: int | None = Field(
        None, gt=0, description="stop after this many validations without improvement"
    )
    val_every_n_epochs: int = Field(
        1,
        gt=0,
        description="validate (and step the plateau schedule, save last.ckpt) every n epochs",
    )
    position_noise: float = Field(
        0.0,
        ge=0,
        description=(
            "noisy-node augmentation, Å: each training step jitters every movable atom by a "
            "uniform draw in [−x, x] per component, labels unchanged (0: off)"
        ),
    )
    max_nonfinite_steps: int = Field(10, gt=0, description="consecutive skipped steps allowed")
    seed: int = 0
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_threads: int | None = Field(None, gt=0, description="torch CPU threads; None: default")
    dtype: Literal["float32", "float64"] = "float32"
    compile: bool | Literal["inductor", "aot_eager"] = Field(
        False,
        description=(
            "compiled training: energies and forces from one compiled graph per kind of call "
            "(torch.compile; the first steps wait for the compilation). true = 'inductor'; "
            "'aot_eager' traces without generating code (checks, debugging). A model that "
            "cannot be traced trains eagerly, with a warning"
        ),
    )
    flush_denormal: bool = Field(
        True,
        description=(
            "CPU: treat denormal floats as zero while training (denormals, e.g. from SchNet's "
            "Gaussian basis, make matrix products many times slower)"
        ),
    )
    fused_optimizer: bool = Field(
        True,
        description=(
            "Adam/AdamW as one fused kernel over all parameters (on one CPU thread torch's "
            "per-tensor loop cost as much as a small model's forward pass); false: that loop, "
            "the optimiser of runs before issue 16 (same update to float rounding)"
        ),
    )
    log_every_n_steps: int = Field(50, gt=0)

    @model_validator(mode="after")
    def _check_stop(self) -> TrainingConfig:
        if self.max_epochs is None and self.max_steps is None and self.max_time_minutes is None:
            raise ValueError(
                "training: set max_epochs, max_steps or max_time_minutes, or training never stops"
            )
        if self.stop_lr is not None and self.stop_lr < self.min_lr:
            raise ValueError(
                f"training.stop_lr ({self.stop_lr:g}) is below training.min_lr ({self.min_lr:g}): "
                "the schedule never cuts the learning rate that far, so it would never stop"
            )
        if self.scheduler == "cosine" and self.max_epochs is None and self.max_steps is None:
            raise ValueError("training.scheduler: cosine needs max_epochs or max_steps as horizon")
        return self


class PriorConfig(_Section):
    """Δ-learning: a cheap physical baseline the model learns on top of (see :mod:`piwsl.priors`).

    ``name``: ``gfn2-xtb`` / ``gfn1-xtb`` (tblite), ``zbl`` (short-range nuclear repulsion) or
    ``ase:module.Class`` (any ASE calculator); null: no prior. The model learns E_ref − E_prior
    and F_ref − F_prior; the saved model records the prior and adds it at inference.
    """

    name: str | None = Field(
        None, description="gfn2-xtb, gfn1-xtb, zbl, ase:module.Class; null: none"
    )
    charge: int = Field(0, description="total charge, e (xTB)")
    multiplicity: int = Field(1, ge=1, description="2S + 1 (xTB: uhf = multiplicity − 1)")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "method options: xTB accuracy / electronic_temperature (K) / max_iterations; zbl "
            "inner / outer (× covalent-radius sum); ase: the calculator's keyword arguments"
        ),
    )
    cache_dir: str | None = Field(
        None,
        description=(
            "folder of the prior cache; null: .piwsl_prior_cache/ next to each data file when "
            "writable, else ~/.cache/piwsl/priors"
        ),
    )
    workers: int = Field(
        1,
        ge=1,
        description="processes computing the prior (one thread each); with executor dask and no "
        "scheduler: the workers of a local Dask cluster",
    )
    executor: Literal["local", "dask"] = Field(
        "local",
        description="where the prior is computed: local processes, or a Dask cluster "
        "(pip install 'piwsl[dask]')",
    )
    scheduler: str | None = Field(
        None, description="Dask scheduler address (tcp://host:port); null: a local Dask cluster"
    )

    @model_validator(mode="after")
    def _check_name(self) -> PriorConfig:
        if self.scheduler is not None and self.executor != "dask":
            raise ValueError(
                f"prior.scheduler={self.scheduler!r} needs prior.executor=dask "
                f"(prior.executor is {self.executor!r})"
            )
        if self.name is not None:
            from piwsl.priors import check_prior_name

            try:
                check_prior_name(self.name)
            except ConfigError as err:
                raise ValueError(f"prior.name: {err}") from None
        return self


class OutputConfig(_Section):
    """Where the run is written and how chatty it is."""

    run_dir: str = "runs/piwsl"
    overwrite: bool = Field(False, description="start afresh in a run_dir that holds a run")
    progress_bar: bool = True
    test_curve_steps: list[int] = Field(
        default_factory=list,
        description=(
            "training steps at which the EMA model's test-set errors are appended to "
            "test_curve.jsonl (a learning curve for reports; never used for model selection)"
        ),
    )


class Config(_Section):
    """A whole training run.

    ``plugins``: modules (dotted import paths or ``.py`` files) imported before the rest is
    validated, so that the model backends, priors and loss terms they register can be named
    (:mod:`piwsl.plugins`). Old loss keys are rewritten into ``loss.terms`` first
    (:func:`piwsl.objective.config.translate_legacy`).
    """

    plugins: list[str] = Field(
        default_factory=list,
        description="modules or .py files that register models, priors or loss terms",
    )
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    physics: PhysicsConfig = Field(default_factory=PhysicsConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    prior: PriorConfig = Field(default_factory=PriorConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _plugins_and_old_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        plugins = data.get("plugins")
        if plugins:
            from piwsl.plugins import import_plugins

            import_plugins(list(plugins) if isinstance(plugins, (list, tuple)) else [plugins])
        return translate_legacy(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready mapping (round-trips through :func:`config_from_dict`)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------
# loading and overrides


def resolve_config_path(source: str | Path) -> Path:
    """``builtin:NAME`` → the packaged YAML; otherwise a path that must exist."""
    text = str(source)
    packaged = builtin_file(text, BUILTIN_CONFIGS, "piwsl", ConfigError, "config")
    if packaged is not None:
        return packaged
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {text!r} does not exist")
    return path


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` → (["a", "b", "c"], value parsed as YAML: numbers, bools, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted key like training.lr")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested mapping (a copy); intermediate mappings are created."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override {text!r}: {where} is a value ({child!r}), not a section"
                )
            node = child
        node[parts[-1]] = value
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a mapping; any problem becomes a :class:`ConfigError` naming the dotted key."""
    if isinstance(data, dict):
        data = translate_legacy(data)  # its ConfigErrors name the keys themselves
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read ``source`` (a YAML path or ``builtin:NAME``; default :data:`DEFAULT_CONFIG`)."""
    path = resolve_config_path(source if source is not None else DEFAULT_CONFIG)
    data = translate_legacy(read_yaml(path))
    for text in overrides or []:  # an old loss key given later wins over the file's new form
        data = translate_legacy(apply_overrides(data, [text]), later=True)
    return config_from_dict(data)


# --------------------------------------------------------------------------------------------
# error messages

#: Names people write for piwsl's keys (other codes' spellings); matched case-insensitively,
#: before the spelling-based suggestion (which would offer ``early_stopping_patience`` for
#: ``learning_rate``).
KEY_SYNONYMS = {
    **dict.fromkeys(("learning_rate", "learningrate", "lr_rate", "eta"), "lr"),
    **dict.fromkeys(("epochs", "num_epochs", "n_epochs", "epoch", "nepochs"), "max_epochs"),
    **dict.fromkeys(("steps", "num_steps", "n_steps", "max_iter", "iterations"), "max_steps"),
    **dict.fromkeys(("batch", "batchsize", "bs", "batch_sz", "train_batch_size"), "batch_size"),
    **dict.fromkeys(("valid_batch_size", "eval_batch_size"), "val_batch_size"),
    **dict.fromkeys(("cutoff_radius", "r_cut", "rcut", "r_max", "rmax", "cut_off"), "cutoff"),
    **dict.fromkeys(("patience", "early_stopping", "es_patience"), "early_stopping_patience"),
    **dict.fromkeys(("optimiser", "optim"), "optimizer"),
    **dict.fromkeys(("lr_scheduler", "schedule", "scheduler_name"), "scheduler"),
    **dict.fromkeys(("clip", "grad_clip", "gradient_clipping", "clip_grad_norm"), "gradient_clip"),
    **dict.fromkeys(("ema", "ema_weight"), "ema_decay"),
    **dict.fromkeys(("wd", "l2"), "weight_decay"),
    **dict.fromkeys(("threads", "n_threads", "nthreads"), "num_threads"),
    **dict.fromkeys(("precision", "default_dtype"), "dtype"),
    **dict.fromkeys(("gpus", "device"), "devices"),
    **dict.fromkeys(("forces_weight", "f_weight", "force_loss_weight"), "force_weight"),
    **dict.fromkeys(("e_weight", "energy_loss_weight"), "energy_weight"),
    **dict.fromkeys(("train_size", "n_training", "num_train", "ntrain"), "n_train"),
    **dict.fromkeys(("val_size", "valid_size", "n_valid", "n_validation", "num_val"), "n_val"),
    **dict.fromkeys(("test_size", "num_test", "ntest"), "n_test"),
    **dict.fromkeys(("val", "valid", "val_file", "valid_file", "validation_file"), "validation"),
    **dict.fromkeys(("train_file", "train_files", "training", "training_file"), "train"),
    **dict.fromkeys(("test_file", "test_files"), "test"),
    **dict.fromkeys(("energy_units", "e_unit"), "energy_unit"),
    **dict.fromkeys(("length_units", "distance_unit", "position_unit"), "length_unit"),
    **dict.fromkeys(("model_name", "architecture", "arch", "model_type"), "name"),
    **dict.fromkeys(("output_dir", "out_dir", "outdir", "dir", "directory"), "run_dir"),
    **dict.fromkeys(("progress", "show_progress"), "progress_bar"),
    **dict.fromkeys(("taylor", "pitc", "pitc_weight", "lambda_pitc"), "taylor_weight"),
    **dict.fromkeys(("spatial", "pisc", "pisc_weight", "lambda_pisc"), "spatial_weight"),
    **dict.fromkeys(("delta", "perturbation", "displacement", "sigma"), "perturbation_scale"),
}


def suggest_key(path: list[str], owner: type[BaseModel]) -> str:
    """``"; did you mean 'training.lr'?"`` for the unknown key ``path`` of section ``owner``:
    a known synonym first (also in another section: ``training.cutoff`` → ``model.cutoff``),
    then the closest spelling."""
    prefix = ".".join(path[:-1])
    name = path[-1]
    canonical = KEY_SYNONYMS.get(name.lower().replace("-", "_"), name)

    def dotted(key: str, where: str = prefix) -> str:
        return f"{where}.{key}" if where else key

    known = [*owner.model_fields, *getattr(owner, "legacy_keys", ())]  # old keys still work
    if canonical != name and canonical in known:
        return f"; did you mean {dotted(canonical)!r}?"
    if len(path) == 2:  # a key of a section: it may belong to another section
        for section, field in Config.model_fields.items():
            other = _submodel(field.annotation)
            if other is not None and other is not owner and canonical in other.model_fields:
                return f"; did you mean {dotted(canonical, section)!r}?"
    return suggest(dotted(name), [dotted(key) for key in known])


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _walk(loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None, Any]:
    """Follow ``loc`` through the config classes: (field path, model owning the last, its field)."""
    cls: type[BaseModel] | None = Config
    path: list[str] = []
    owner: type[BaseModel] | None = Config
    field = None
    parts = iter(loc)
    for part in parts:
        if cls is None or not isinstance(part, str):
            break
        if part not in cls.model_fields:
            path.append(part)
            owner, field = cls, None
            break
        owner, field = cls, cls.model_fields[part]
        path.append(part)
        cls = _submodel(field.annotation)
        if cls is not None and typing.get_origin(field.annotation) is dict:
            path.append(str(next(parts, "")))  # a mapping of sections (data.units): its key
        if cls is None:
            # inside a free-form mapping (model.hparams, data.e0s): keep string keys as given
            rest = [p for p in loc[len(path) :] if isinstance(p, str)]
            if field.annotation is not None and typing.get_origin(field.annotation) is dict:
                path.extend(rest[:1])
            break
    return path, owner, field


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if annotation is type(None):
        return "null"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    if annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation))


def format_validation_error(err: ValidationError) -> str:
    """One line per offending key: unknown keys with suggestions, wrong types with the expected."""
    lines: list[str] = []
    seen: set[str] = set()
    for item in err.errors():
        path, owner, field = _walk(tuple(item["loc"]))
        key = ".".join(path) if path else "<config>"
        if key in seen:
            continue
        seen.add(key)
        kind = item["type"]
        if kind == "extra_forbidden" and owner is not None:
            lines.append(f"unknown config key {key!r}{suggest_key(path, owner)}")
        elif kind == "missing":
            lines.append(f"{key}: required key is missing")
        elif kind == "value_error":
            message = str(item.get("ctx", {}).get("error", item["msg"]))
            lines.append(message if message.startswith(key) else f"{key}: {message}")
        else:
            expected = _type_name(field.annotation) if field is not None else "a valid value"
            got = item.get("input")
            lines.append(f"{key}: {item['msg'].lower()} (expected {expected}, got {got!r})")
    return "invalid configuration: " + "; ".join(lines) if len(lines) != 1 else lines[0]
