"""The typed config: YAML loading, dotted overrides, and the errors for bad keys and values."""

from __future__ import annotations

import pytest
import yaml

from piwsl.config import (
    Config,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
)
from piwsl.errors import ConfigError


def write(tmp_path, data: dict, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


MINIMAL = {"data": {"train": "frames.xyz"}}


def test_builtin_default_config_is_the_ethanol_job():
    cfg = load_config()  # default: builtin:ethanol
    assert cfg.data.train == ["builtin:ethanol_train"]
    assert cfg.data.test == ["builtin:ethanol_test"]
    assert (cfg.data.n_train, cfg.data.n_val) == (950, 50)
    assert cfg.model.cutoff > 0
    assert cfg == load_config("builtin:ethanol")


def test_overrides_of_any_depth_and_type(tmp_path):
    path = write(tmp_path, MINIMAL)
    cfg = load_config(
        path,
        [
            "training.max_epochs=5",
            "model.hparams.features=32",
            "physics.taylor_weight=1.2",
            "training.dtype=float64",
            "data.e0s={H: -13.6, C: -1000.0, O: -2000}",
            "data.validation=[a.xyz, b.xyz]",
            "training.max_steps=null",
        ],
    )
    assert cfg.training.max_epochs == 5 and isinstance(cfg.training.max_epochs, int)
    assert cfg.model.hparams == {"features": 32}
    assert cfg.loss.weight("taylor") == pytest.approx(1.2)
    assert cfg.loss.displaces
    assert cfg.training.dtype == "float64"
    assert cfg.data.e0s == {"H": -13.6, "C": -1000.0, "O": -2000.0}
    assert cfg.data.validation == ["a.xyz", "b.xyz"]
    assert cfg.data.train == ["frames.xyz"]  # a single path becomes a list


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["training.lr=3e-4", "model.hparams.features=8"])
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.training.lr == pytest.approx(3e-4)


@pytest.mark.parametrize(
    ("override", "bad", "good"),
    [
        ("training.max_epoch=5", "training.max_epoch", "training.max_epochs"),
        ("trainig.lr=0.1", "trainig", "training"),
        ("physics.taylr_weight=1.0", "physics.taylr_weight", "physics.taylor_weight"),
        ("data.enrgy_key=E", "data.enrgy_key", "data.energy_key"),
    ],
)
def test_unknown_key_names_dotted_key_and_suggests(tmp_path, override, bad, good):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    message = str(info.value)
    assert repr(bad) in message
    assert f"did you mean {good!r}" in message


def test_unknown_key_in_the_yaml_file(tmp_path):
    path = write(tmp_path, {**MINIMAL, "loss": {"force_wieght": 10.0}})
    with pytest.raises(ConfigError, match=r"did you mean 'loss.force_weight'"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("training.max_epochs=abc", "training.max_epochs", "integer"),
        ("training.lr=fast", "training.lr", "number"),
        ("training.optimizer=sgd", "training.optimizer", "'adamw'"),
        ("output.overwrite=[1, 2]", "output.overwrite", "true/false"),
    ],
)
def test_wrong_type_names_key_and_expected_type(tmp_path, override, key, expected):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    message = str(info.value)
    assert message.startswith(key)
    assert expected in message


@pytest.mark.parametrize("cutoff", [0, -1.5])
def test_nonpositive_cutoff_is_rejected(tmp_path, cutoff):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"model\.cutoff: .*greater than 0"):
        load_config(path, [f"model.cutoff={cutoff}"])


def test_cutoff_and_elements_do_not_belong_in_hparams(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"model\.hparams\.cutoff .*model\.cutoff"):
        load_config(path, ["model.hparams.cutoff=3.0"])
    with pytest.raises(ConfigError, match=r"model\.hparams\.elements"):
        load_config(path, ["model.hparams.elements=[1, 6]"])


def test_value_errors_name_their_key(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"data\.energy_unit: unknown unit 'kcal'"):
        load_config(path, ["data.energy_unit=kcal"])
    with pytest.raises(ConfigError, match=r"never stops"):
        load_config(path, ["training.max_epochs=null"])
    with pytest.raises(ConfigError, match=r"cosine needs max_epochs"):
        load_config(
            path,
            [
                "training.max_epochs=null",
                "training.max_time_minutes=1",
                "training.scheduler=cosine",
            ],
        )


def test_missing_required_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"data: required key is missing"):
        config_from_dict({})
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"did you mean 'ethanol'"):
        load_config("builtin:ethanl")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_config(bad)


def test_override_syntax():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a.b=") == (["a", "b"], None)
    assert parse_override("a=x=y") == (["a"], "x=y")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("training.lr")
    with pytest.raises(ConfigError, match="dotted key"):
        parse_override("training..lr=1")
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"training": {"lr": 0.1}}, ["training.lr.x=1"])


def test_sections_forbid_extra_keys_everywhere():
    for name, field in Config.model_fields.items():
        cls = field.annotation
        if name == "plugins":  # a list of import paths, not a section
            continue
        assert cls.model_config.get("extra") == "forbid", name


@pytest.mark.parametrize(
    ("override", "good"),
    [
        ("training.learning_rate=1e-3", "training.lr"),
        ("training.epochs=5", "training.max_epochs"),
        ("training.num_epochs=5", "training.max_epochs"),
        ("training.batch=8", "training.batch_size"),
        ("training.patience=5", "training.early_stopping_patience"),
        ("training.cutoff=4.0", "model.cutoff"),  # a key of another section
        ("data.batch_size=8", "training.batch_size"),
        ("model.learning_rate=1e-3", "training.lr"),
        ("model.r_cut=4.0", "model.cutoff"),
        ("physics.lambda_pitc=1.2", "physics.taylor_weight"),
    ],
)
def test_unknown_key_suggests_the_key_people_mean(tmp_path, override, good):
    """Synonyms before spelling: learning_rate is lr, not early_stopping_patience."""
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert str(info.value).endswith(f"did you mean {good!r}?")
