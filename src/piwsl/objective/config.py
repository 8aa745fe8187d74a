"""The ``loss`` section: a preset, an energy convention and a mapping of named terms.

::

    loss:
      preset: default            # default | paper (see PRESETS)
      convention: default        # default | paper | {energy_unit, per_atom_energy, physics_unit}
      terms:                     # merged over the preset's terms; weight 0 switches one off
        energy: 1.0              # a number is the weight
        forces: {weight: 10.0}
        taylor: {weight: 1.2, second_order: true}

Terms are evaluated and summed in a fixed order (energy, forces, taylor, spatial,
taylor_two_point, then terms registered from outside), however they are written. After validation
the section holds the resolved form — every term of the preset and of ``terms`` with its weight
and all its options (defaults filled in), and the convention by name where it is a named one —
which is what ``config.yaml`` records.

**The energy convention** (one key instead of three): ``default`` trains on per-atom energies in
eV (eV²/atom²) and forces in eV/Å, and squares the physics residuals (total energies) in
kcal/mol, the unit of the paper's weights; ``paper`` uses total energies in kcal/mol for every
term (forces in kcal/mol/Å), the convention in which the paper's weights were tuned.

**Old keys** (``loss.energy_weight``, ``loss.force_weight``, ``loss.energy_unit``,
``loss.per_atom_energy``, ``physics.taylor_weight``, ``physics.spatial_weight``,
``physics.two_point``, ``physics.two_point_weight``, ``physics.second_order``,
``physics.anchor_to_labels``, ``physics.weight_energy_unit``) keep working: :func:`translate_legacy`
rewrites them into this form (a log line shows the new form) and gives the same numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from piwsl.errors import ConfigError
from piwsl.registry import suggest
from piwsl.units import ENERGY_UNITS

log = logging.getLogger(__name__)


class EnergyConvention(BaseModel):
    """The units of the loss terms (``loss.convention``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    energy_unit: str = Field(
        "eV", description="unit of the supervised energy term; forces in energy_unit/Å"
    )
    per_atom_energy: bool = Field(True, description="energy term on E/N_atoms (else total E)")
    physics_unit: str = Field(
        "kcal/mol", description="unit in which the physics residuals (total energies) are squared"
    )

    @field_validator("energy_unit", "physics_unit")
    @classmethod
    def _known_unit(cls, unit: str) -> str:
        if unit not in ENERGY_UNITS:
            raise ValueError(f"unknown energy unit {unit!r}{suggest(unit, ENERGY_UNITS)}")
        return unit


#: The named conventions (see the module docstring).
CONVENTIONS: dict[str, EnergyConvention] = {
    "default": EnergyConvention(),
    "paper": EnergyConvention(
        energy_unit="kcal/mol", per_atom_energy=False, physics_unit="kcal/mol"
    ),
}


@dataclass(frozen=True)
class Preset:
    """A convention and a set of weighted terms."""

    convention: str
    terms: dict[str, dict[str, Any]]
    description: str = ""


#: The presets ``loss.preset`` names.
PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        {"energy": {"weight": 1.0}, "forces": {"weight": 10.0}},
        "supervised energies (per atom, eV) and forces (eV/Å); no physics term",
    ),
    "paper": Preset(
        "paper",
        {
            "energy": {"weight": 1.0},
            "forces": {"weight": 10.0},
            "taylor": {"weight": 1.2},
            "spatial": {"weight": 0.01},
        },
        "the paper's PITC/PISC weights (1.2, 0.01) on total energies in kcal/mol, first order",
    ),
}


class TermSpec(BaseModel):
    """One entry of ``loss.terms``: a weight and the term's options."""

    model_config = ConfigDict(extra="allow")

    weight: float = Field(0.0, ge=0, description="the term's weight (0: off)")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _as_mapping(terms: Any) -> Any:
    """``[{name: taylor, weight: 1.2}, …]`` or ``{taylor: 1.2}`` → ``{taylor: {weight: 1.2}}``."""
    if terms is None:
        return {}
    if isinstance(terms, list):
        out: dict[str, Any] = {}
        for k, item in enumerate(terms):
            if not isinstance(item, dict) or "name" not in item:
                raise ValueError(
                    f"loss.terms[{k}]: a list entry must be a mapping with a name, e.g. "
                    "{name: taylor, weight: 1.2}"
                )
            item = dict(item)
            out[str(item.pop("name"))] = item
        terms = out
    if not isinstance(terms, dict):
        return terms  # pydantic reports the type
    return {
        str(name): {"weight": spec} if isinstance(spec, (int, float)) else spec
        for name, spec in terms.items()
    }


def _resolve_convention(raw: Any, preset: Preset) -> Any:
    base = CONVENTIONS[preset.convention]
    if raw is None:
        return preset.convention
    if isinstance(raw, str):
        if raw not in CONVENTIONS:
            raise ValueError(
                f"loss.convention: unknown convention {raw!r}{suggest(raw, CONVENTIONS)} "
                "(or give {energy_unit, per_atom_energy, physics_unit})"
            )
        return raw
    if isinstance(raw, EnergyConvention):
        raw = raw.model_dump()
    if not isinstance(raw, dict):
        return raw  # pydantic reports the type
    merged = EnergyConvention(**{**base.model_dump(), **raw})
    for name, known in CONVENTIONS.items():
        if known == merged:
            return name
    return merged.model_dump()


def _resolve_terms(raw: Any, preset: Preset) -> Any:
    from piwsl.objective.base import check_term_options, term_class, term_options, term_order

    raw = _as_mapping(raw)
    if not isinstance(raw, dict):
        return raw
    merged: dict[str, dict[str, Any]] = {n: dict(s) for n, s in preset.terms.items()}
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise ValueError(
                f"loss.terms.{name}: give a weight or a mapping of weight and options, "
                f"e.g. {{weight: 1.2}} (got {spec!r})"
            )
        try:
            term_class(name)
        except ConfigError as err:
            raise ValueError(f"loss.terms.{name}: {err}") from None
        merged[name] = {**merged.get(name, {}), **spec}
    order = {n: k for k, n in enumerate(term_order())}
    out = {}
    for name in sorted(merged, key=lambda n: order.get(n, len(order))):
        options = {k: v for k, v in merged[name].items() if k != "weight"}
        try:
            check_term_options(name, options, f"loss.terms.{name}")
        except ConfigError as err:
            raise ValueError(str(err)) from None
        defaults = term_options(term_class(name))
        out[name] = {"weight": merged[name].get("weight", 0.0), **defaults, **options}
    return out


class LossConfig(BaseModel):
    """The objective: a preset, an energy convention and named terms (module docstring)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    #: old keys still read (rewritten into terms / convention), offered in "did you mean"
    legacy_keys: ClassVar[tuple[str, ...]] = (
        "energy_weight",
        "force_weight",
        "energy_unit",
        "per_atom_energy",
    )

    preset: str = Field("default", description="default or paper: the starting terms and units")
    convention: str | EnergyConvention = Field(
        "default", description="default, paper, or {energy_unit, per_atom_energy, physics_unit}"
    )
    terms: dict[str, TermSpec] = Field(
        default_factory=lambda: {n: TermSpec(**s) for n, s in PRESETS["default"].terms.items()},
        description="term name → weight or {weight, options}; merged over the preset's terms",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        moved = [k for k in LEGACY_LOSS_KEYS if k in data]
        if moved:
            raise ValueError(legacy_message({"loss": {k: data[k] for k in moved}}))
        data = dict(data)
        name = data.get("preset", "default")
        if name not in PRESETS:
            raise ValueError(f"loss.preset: unknown preset {name!r}{suggest(str(name), PRESETS)}")
        preset = PRESETS[name]
        data["convention"] = _resolve_convention(data.get("convention"), preset)
        data["terms"] = _resolve_terms(data.get("terms"), preset)
        return data

    @property
    def units(self) -> EnergyConvention:
        """The resolved energy convention."""
        c = self.convention
        return CONVENTIONS[c] if isinstance(c, str) else c

    def weight(self, name: str) -> float:
        """The weight of term ``name`` (0 when it is not configured)."""
        spec = self.terms.get(name)
        return spec.weight if spec is not None else 0.0

    def build_terms(self) -> list:
        """The configured :class:`~piwsl.objective.Term` objects, in evaluation order."""
        from piwsl.objective.base import term_class

        return [
            term_class(name).from_config(spec.weight, self.units, **spec.options)
            for name, spec in self.terms.items()
        ]

    @property
    def displaces(self) -> bool:
        """Whether a term with a positive weight needs the displaced copies B or C (then the
        training neighbour lists need a skin and the run samples displacements)."""
        return any(t.weight > 0 and t.needs().displaced for t in self.build_terms())


# --------------------------------------------------------------------------------------------
# the old keys

#: Keys of the loss section before the terms became a mapping.
LEGACY_LOSS_KEYS = ("energy_weight", "force_weight", "energy_unit", "per_atom_energy")


@dataclass
class _Legacy:
    terms: dict[str, dict[str, Any]] = field(default_factory=dict)
    convention: dict[str, Any] = field(default_factory=dict)

    def new_form(self) -> dict[str, Any]:
        loss: dict[str, Any] = {}
        if self.convention:
            loss["convention"] = self.convention
        if self.terms:
            loss["terms"] = self.terms
        return {"loss": loss}


def _physics_term(out: _Legacy, name: str, weight: Any, physics: dict, anchored: bool) -> None:
    spec: dict[str, Any] = {}
    if weight is not None:
        spec["weight"] = weight
    if "second_order" in physics:
        spec["second_order"] = physics["second_order"]
    if anchored and "anchor_to_labels" in physics:
        spec["anchor_to_labels"] = physics["anchor_to_labels"]
    if spec:
        out.terms[name] = spec


def legacy_parts(loss: dict[str, Any], physics: dict[str, Any]) -> _Legacy:
    """The new-form terms and convention that the old keys of ``loss`` / ``physics`` mean."""
    out = _Legacy()
    for old, name in (("energy_weight", "energy"), ("force_weight", "forces")):
        if old in loss:
            out.terms[name] = {"weight": loss[old]}
    _physics_term(out, "taylor", physics.get("taylor_weight"), physics, True)
    _physics_term(out, "spatial", physics.get("spatial_weight"), physics, False)
    if physics.get("two_point"):
        weight = physics.get("two_point_weight")
        weight = physics.get("taylor_weight", 0.0) if weight is None else weight
        _physics_term(out, "taylor_two_point", weight, physics, True)
    for old, new, section in (
        ("energy_unit", "energy_unit", loss),
        ("per_atom_energy", "per_atom_energy", loss),
        ("weight_energy_unit", "physics_unit", physics),
    ):
        if old in section:
            out.convention[new] = section[old]
    return out


def legacy_message(old: dict[str, dict[str, Any]]) -> str:
    """``"physics.taylor_weight … moved: write loss: {terms: …}"`` for keys used directly."""
    import yaml

    parts = legacy_parts(old.get("loss", {}), old.get("physics", {}))
    keys = ", ".join(f"{s}.{k}" for s, v in old.items() for k in v)
    new = yaml.safe_dump(parts.new_form(), default_flow_style=True, sort_keys=False).strip()
    return f"{keys}: the loss terms are configured under loss.terms now; write {new}"


_TOLD: set[str] = set()


def _merge_terms(terms: dict[str, Any], legacy: _Legacy, later: bool) -> dict[str, Any]:
    terms = {n: dict(s) for n, s in _as_mapping(terms).items()}
    for name, spec in legacy.terms.items():
        given = terms.setdefault(name, {})
        for key, value in spec.items():
            if key in given and given[key] != value and not later:
                raise ConfigError(
                    f"loss.terms.{name}.{key} is {given[key]!r}, but an old key sets it to "
                    f"{value!r}; give it once (the new form: loss.terms.{name}.{key})"
                )
            given[key] = value
    return terms


def _merge_convention(given: Any, legacy: _Legacy, later: bool, old: dict[str, Any]) -> Any:
    if given is None:
        return legacy.convention
    if not later:
        keys = [f"loss.{k}" for k in ("energy_unit", "per_atom_energy") if k in old]
        raise ConfigError(
            f"loss.convention is given, and so are the old unit keys {', '.join(keys)}"
            f"{' physics.weight_energy_unit' if 'weight_energy_unit' in old else ''}; give "
            "the convention once, as loss.convention"
        )
    if isinstance(given, str) and given in CONVENTIONS:
        given = CONVENTIONS[given].model_dump()
    return {**(given if isinstance(given, dict) else {}), **legacy.convention}


def translate_legacy(data: dict[str, Any], later: bool = False) -> dict[str, Any]:
    """``data`` (a whole config mapping) with the old loss/physics keys rewritten into
    ``loss.terms`` / ``loss.convention`` (see the module docstring); unchanged without them.

    An old key and the new form that set the same thing differently are an error, unless
    ``later``: the old keys were given after the new form (a command-line override on top of a
    config file) and win."""
    from piwsl.physics.config import LEGACY_KEYS

    loss, physics = data.get("loss") or {}, data.get("physics") or {}
    if not isinstance(loss, dict) or not isinstance(physics, dict):
        return data
    old_loss = {k: loss[k] for k in LEGACY_LOSS_KEYS if k in loss}
    old_physics = {k: physics[k] for k in LEGACY_KEYS if k in physics}
    if not old_loss and not old_physics:
        return data
    legacy = legacy_parts(old_loss, old_physics)
    new_loss = {k: v for k, v in loss.items() if k not in LEGACY_LOSS_KEYS}
    if legacy.terms:
        new_loss["terms"] = _merge_terms(new_loss.get("terms"), legacy, later)
    if legacy.convention:
        old = {**old_loss, **old_physics}
        new_loss["convention"] = _merge_convention(new_loss.get("convention"), legacy, later, old)
    message = legacy_message({"loss": old_loss, "physics": old_physics})
    if message not in _TOLD:
        _TOLD.add(message)
        log.info("old config keys %s", message)
    out = dict(data)
    out["loss"] = new_loss
    out["physics"] = {k: v for k, v in physics.items() if k not in LEGACY_KEYS}
    return out
