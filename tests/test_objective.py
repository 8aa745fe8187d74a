"""The objective: supervised terms (masks, units), the loss section (presets, convention, old
keys, errors), the plan of copies, and terms from outside the package (plugins)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from piwsl.data import Frame, frames_to_batch
from piwsl.errors import ConfigError
from piwsl.objective import EnergyTerm, ForcesTerm
from piwsl.units import KCAL_MOL


def _batch():
    frames = [
        Frame(numbers=[1, 1], positions=[[0, 0, 0], [0.8, 0, 0]], energy=-1.0, forces=None),
        Frame(numbers=[8, 1, 1], positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
        Frame(
            numbers=[6, 8],
            positions=[[0, 0, 0], [1.13, 0, 0]],
            energy=-2.0,
            forces=[[0.1, 0, 0], [-0.1, 0, 0]],
        ),
    ]
    return frames_to_batch(frames, cutoff=3.0, dtype=torch.float64)


def _output(batch):
    # predictions off by +0.3 eV and +0.2 eV in energy, forces off by 0.05 eV/Å in x
    energy = torch.tensor([-0.7, 123.0, -1.8], dtype=torch.float64)
    forces = torch.zeros_like(batch.positions)
    forces[5:7] = torch.tensor([[0.15, 0, 0], [-0.05, 0, 0]], dtype=torch.float64)
    return {"energy": energy, "forces": forces}


def test_default_units_are_per_atom_ev_and_masked():
    batch = _batch()
    out = _output(batch)
    energy, forces = EnergyTerm(), ForcesTerm()
    # structure 1 has no energy: its (absurd) prediction must not enter
    expected = ((0.3 / 2) ** 2 + (0.2 / 2) ** 2) / 2
    assert math.isclose(float(energy.loss(out, batch)), expected, rel_tol=1e-12)
    # only the last structure carries forces: 6 components, two of them off by 0.05 eV/Å
    assert math.isclose(float(forces.loss(out, batch)), 2 * 0.05**2 / 6, rel_tol=1e-9)
    # validation averages over these counts
    assert int(energy.count(batch)) == 2 and int(forces.count(batch)) == 6


def test_kcal_mol_total_energy_convention():
    batch = _batch()
    out = _output(batch)
    energy = EnergyTerm(unit="kcal/mol", per_atom=False)
    expected = ((0.3 / KCAL_MOL) ** 2 + (0.2 / KCAL_MOL) ** 2) / 2
    assert math.isclose(float(energy.loss(out, batch)), expected, rel_tol=1e-12)
    expected_f = 2 * (0.05 / KCAL_MOL) ** 2 / 6
    assert math.isclose(
        float(ForcesTerm(unit="kcal/mol").loss(out, batch)), expected_f, rel_tol=1e-9
    )


# --------------------------------------------------------------------------- the loss section
def _loss(**section):
    from piwsl.objective import LossConfig

    return LossConfig(**section)


def test_presets_resolve_to_explicit_terms_and_conventions():
    from piwsl.objective import CONVENTIONS

    default = _loss()
    assert default.convention == "default" and default.units == CONVENTIONS["default"]
    assert {n: s.weight for n, s in default.terms.items()} == {"energy": 1.0, "forces": 10.0}
    assert not default.displaces
    paper = _loss(preset="paper", terms={"forces": 0, "taylor": {"second_order": True}})
    assert paper.units.energy_unit == "kcal/mol" and not paper.units.per_atom_energy
    assert list(paper.terms) == ["energy", "forces", "taylor", "spatial"]
    assert paper.terms["taylor"].weight == 1.2 and paper.terms["taylor"].options == {
        "second_order": True,
        "anchor_to_labels": False,
    }
    assert paper.terms["spatial"].options == {"second_order": False}
    assert paper.displaces
    # terms are ordered canonically however they are written; the resolved form round-trips
    scrambled = _loss(terms={"spatial": 0.01, "taylor": 1.2, "energy": 2.0})
    assert list(scrambled.terms) == ["energy", "forces", "taylor", "spatial"]
    assert _loss(**scrambled.model_dump(mode="json")) == scrambled
    # a partial convention is merged over the preset's; a named one is recognised
    assert _loss(convention={"energy_unit": "kcal/mol", "per_atom_energy": False}).convention == (
        "paper"
    )
    custom = _loss(convention={"energy_unit": "meV"})
    assert custom.units.energy_unit == "meV" and custom.units.physics_unit == "kcal/mol"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"terms": {"taylr": 1.0}},
            r"loss\.terms\.taylr: unknown loss term 'taylr'; did you mean 'taylor'",
        ),
        (
            {"terms": {"taylor": {"weight": 1, "second_ordr": True}}},
            r"loss\.terms\.taylor\.second_ordr: unknown option .*did you mean 'second_order'",
        ),
        ({"terms": {"taylor": {"weight": 1, "second_order": "yes"}}}, "expected true or false"),
        ({"terms": {"forces": {"weight": 1, "unit": "meV"}}}, "takes only a weight"),
        ({"preset": "papr"}, r"unknown preset 'papr'; did you mean 'paper'"),
        ({"convention": "paperr"}, r"unknown convention 'paperr'; did you mean 'paper'"),
        ({"convention": {"physics_unit": "kcal"}}, "unknown energy unit 'kcal'"),
        ({"terms": {"taylor": -1.0}}, "greater than or equal to 0"),
    ],
)
def test_bad_loss_sections_name_the_key(section, message):
    from piwsl.config import load_config

    overrides = [f"loss.{k}={v}" for k, v in section.items()]
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_old_keys_mean_the_new_form():
    from piwsl.config import config_from_dict

    data = {"data": {"train": "x.xyz"}}
    old = config_from_dict(
        {
            **data,
            "loss": {"force_weight": 0.0, "energy_unit": "kcal/mol", "per_atom_energy": False},
            "physics": {
                "taylor_weight": 1.2,
                "spatial_weight": 0.01,
                "second_order": True,
                "two_point": True,
                "two_point_weight": 0.3,
                "anchor_to_labels": True,
                "weight_energy_unit": "kcal/mol",
                "perturbation_scale": 0.03,
            },
        }
    )
    new = config_from_dict(
        {
            **data,
            "loss": {
                "convention": "paper",
                "terms": {
                    "forces": 0,
                    "taylor": {"weight": 1.2, "second_order": True, "anchor_to_labels": True},
                    "spatial": {"weight": 0.01, "second_order": True},
                    "taylor_two_point": {
                        "weight": 0.3,
                        "second_order": True,
                        "anchor_to_labels": True,
                    },
                },
            },
            "physics": {"perturbation_scale": 0.03},
        }
    )
    assert old == new
    assert old.physics.perturbation_scale == 0.03
    # an old key that contradicts the new form is refused, naming both
    with pytest.raises(ConfigError, match=r"loss\.terms\.taylor\.weight is 2\.0.*old key"):
        config_from_dict(
            {**data, "loss": {"terms": {"taylor": 2.0}}, "physics": {"taylor_weight": 1.2}}
        )
    with pytest.raises(ConfigError, match="give the convention once"):
        config_from_dict({**data, "loss": {"convention": "paper", "energy_unit": "eV"}})
    # used directly, the old keys say where they went
    from piwsl.objective import LossConfig

    with pytest.raises(ValueError, match=r"loss: \{terms: \{forces: \{weight: 3\.0\}\}\}"):
        LossConfig(force_weight=3.0)


def test_plan_takes_the_union_of_the_needs():
    from piwsl.objective import Needs, Objective, SpatialTerm, TaylorTerm, TwoPointTerm

    batch = _batch()
    first = Objective([EnergyTerm(1.0), ForcesTerm(10.0), TaylorTerm(1.2), SpatialTerm(0.01)])
    active, needs = first.plan(batch)
    assert [t.name for t in active] == ["energy", "forces", "taylor", "spatial"]
    assert needs == Needs({"A", "B", "C"}, {"A", "B"})
    second = Objective([EnergyTerm(1.0), TaylorTerm(1.2, second_order=True)])
    assert second.plan(batch)[1] == Needs({"A", "C"}, {"A", "C"})
    two_point = Objective([TwoPointTerm(1.0)])
    assert two_point.plan(batch)[1] == Needs({"A", "C"}, {"C"})
    # weight 0 and a batch without forces: nothing needs forces, nothing is displaced
    plain = Objective([EnergyTerm(1.0), ForcesTerm(10.0), TaylorTerm(0.0)])
    unlabelled = frames_to_batch(
        [Frame(numbers=[1, 1], positions=[[0, 0, 0], [0.8, 0, 0]], energy=-1.0)], cutoff=3.0
    )
    active, needs = plain.plan(unlabelled)
    assert [t.name for t in active] == ["energy"] and needs == Needs()
    assert not needs.displaced and not plain.displaces
    with pytest.raises(ValueError, match="unknown copies"):
        Needs({"D"})


# ------------------------------------------------------------------------------------ plugins
def test_a_term_from_a_test_module_is_registered_and_trained_with(tmp_path):
    from test_training import read_epoch_rows, tiny_config, write_tiny_extxyz

    from piwsl.config import config_from_dict
    from piwsl.training import train

    data = write_tiny_extxyz(tmp_path / "d.xyz", n=12)
    plugin = Path(__file__).parent / "plugin_terms.py"
    cfg = tiny_config(data, tmp_path / "run", training={"max_epochs": 1})
    cfg["plugins"] = [str(plugin)]
    cfg["loss"] = {"terms": {"energy_l1": {"weight": 2.0, "scale": 0.5}, "energy": 0.0}}
    with pytest.raises(
        ConfigError, match=r"loss\.terms\.energy_l2: unknown loss term .*'energy_l1'"
    ):
        config_from_dict({**cfg, "loss": {"terms": {"energy_l2": 1.0}}})
    config = config_from_dict(cfg)
    assert list(config.loss.terms) == ["energy", "forces", "energy_l1"]
    train(config, evaluate=False)
    rows = read_epoch_rows(tmp_path / "run")
    raw = [float(r["train_energy_l1_raw"]) for r in rows if r.get("train_energy_l1_raw")]
    weighted = [
        float(r["train_energy_l1_weighted"]) for r in rows if r.get("train_energy_l1_weighted")
    ]
    assert raw and raw[0] > 0 and weighted[0] == pytest.approx(2.0 * raw[0])
    assert not any(r.get("train_energy_raw") for r in rows)  # weight 0: not evaluated


def test_a_term_from_an_entry_point(monkeypatch):
    import importlib.metadata

    import piwsl.plugins as plugins
    from piwsl.objective import TERMS, term_class

    ep = importlib.metadata.EntryPoint(
        name="forces_l1", value="plugin_terms:ForcesL1", group="piwsl.terms"
    )
    broken = importlib.metadata.EntryPoint(
        name="broken", value="no_such_module_here:Term", group="piwsl.terms"
    )
    monkeypatch.setattr(
        plugins, "entry_points", lambda group: [ep, broken] if group == "piwsl.terms" else []
    )
    monkeypatch.setattr(TERMS, "_entries", dict(TERMS._entries))
    plugins.load_plugins(force=True)
    cls = term_class("forces_l1")
    assert cls.__name__ == "ForcesL1" and cls.name == "forces_l1"
    batch = _batch()
    out = _output(batch)
    from piwsl.physics import CopyOutputs

    value = cls(1.0)(CopyOutputs.of_a(out), batch)
    assert math.isclose(float(value), 2 * 0.05 / 6, rel_tol=1e-9)
    with pytest.raises(ConfigError, match="unknown loss term 'broken'"):
        term_class("broken")  # a plugin that fails to load is skipped (with a warning)


def test_old_keys_on_the_command_line_override_the_files_new_form():
    """The benchmark commands of the time (old keys) on top of the new built-in config."""
    from piwsl.config import load_config

    paper_units = [
        "loss.energy_unit=kcal/mol",
        "loss.per_atom_energy=false",
        "physics.weight_energy_unit=kcal/mol",
    ]
    old = load_config(
        None,
        [
            *paper_units,
            "physics.taylor_weight=1.2",
            "physics.spatial_weight=0.01",
            "physics.second_order=true",
            "loss.force_weight=0",
        ],
    )
    new = load_config(
        None,
        [
            "loss.preset=paper",
            "loss.terms.forces=0",
            "loss.terms.taylor.second_order=true",
            "loss.terms.spatial.second_order=true",
        ],
    )
    assert old.loss.units == new.loss.units and old.loss.convention == "paper"
    assert {n: (s.weight, s.options) for n, s in old.loss.terms.items()} == {
        n: (s.weight, s.options) for n, s in new.loss.terms.items()
    }
    # and the other way round: a new-form override after an old key in the same command
    both = load_config(None, ["physics.taylor_weight=1.2", "loss.terms.taylor.weight=0.5"])
    assert both.loss.weight("taylor") == 0.5


def test_a_model_backend_and_a_prior_from_a_plugin_module(tmp_path):
    from test_training import tiny_config, write_tiny_extxyz

    from piwsl.config import config_from_dict
    from piwsl.models import load_model
    from piwsl.training import train

    data = write_tiny_extxyz(tmp_path / "d.xyz", n=10)
    cfg = tiny_config(data, tmp_path / "run", training={"max_epochs": 1})
    cfg["plugins"] = [str(Path(__file__).parent / "plugin_terms.py")]
    cfg["model"] = {"name": "schnet_small", "cutoff": 4.0}
    cfg["prior"] = {"name": "per_atom_constant", "settings": {"c": -50.0}}
    result = train(config_from_dict(cfg), evaluate=False)
    model = load_model(result.final_model)
    assert model.hparams["name"] == "schnet_small"  # rebuilt through the plugin's builder
    assert model.prior_spec["name"] == "per_atom_constant" and model.prior_spec["settings"] == {
        "c": -50.0
    }
