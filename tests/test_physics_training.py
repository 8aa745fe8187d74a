"""`piwsl train` with the physics terms on: every built-in model × every label regime.

SchNet, PaiNN-conservative and PaiNN-direct, each with energy+force labels, energy-only labels
and energy-only labels plus an extra unlabelled set; one short epoch each. The physics terms must
be logged (finite, positive), the supervised force term must be absent without force labels, the
unlabelled frames must be trained on (more steps), and the saved model must be sound.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_training import column, read_epoch_rows, tiny_config, write_tiny_extxyz

from piwsl.config import config_from_dict
from piwsl.models import load_model

torch.set_num_threads(1)

MODELS = {
    "schnet": ("schnet", {"features": 8, "interactions": 1, "n_rbf": 6}),
    "painn_conservative": (
        "painn",
        {"features": 8, "interactions": 1, "n_rbf": 6, "forces": "conservative"},
    ),
    "painn_direct": ("painn", {"features": 8, "interactions": 1, "n_rbf": 6, "forces": "direct"}),
}
REGIMES = {
    "energy+forces": {"data": {}, "loss": {}},
    "energy-only": {"data": {"train_labels": "energy"}, "loss": {"force_weight": 0.0}},
    "energy-only+unlabelled": {"data": {"train_labels": "energy"}, "loss": {"force_weight": 0.0}},
}


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("physics_training")
    labelled = write_tiny_extxyz(folder / "labelled.xyz", n=12, unlabelled_every=1000)
    unlabelled = write_tiny_extxyz(folder / "unlabelled.xyz", n=6, unlabelled_every=1)
    return labelled, unlabelled


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("model_key", list(MODELS))
def test_train_with_physics_terms(model_key, regime, data_files, tmp_path):
    from piwsl.training import train

    labelled, unlabelled = data_files
    name, hparams = MODELS[model_key]
    settings = REGIMES[regime]
    data = {"n_val": 3, **settings["data"]}
    if regime.endswith("unlabelled"):
        data["unlabelled"] = [str(unlabelled)]
    cfg = tiny_config(
        labelled,
        tmp_path / "run",
        data=data,
        model={"name": name, "cutoff": 4.0, "hparams": hparams},
        loss=settings["loss"],
        physics={"taylor_weight": 1.2, "spatial_weight": 0.01, "second_order": True},
        training={"max_epochs": 1, "batch_size": 4, "scheduler": "none", "ema_decay": None},
    )
    result = train(config_from_dict(cfg), evaluate=False)

    rows = read_epoch_rows(tmp_path / "run")
    for term in ("taylor", "spatial"):
        raw = column(rows, f"train_{term}_raw")
        assert raw and math.isfinite(raw[0]) and raw[0] > 0, term
    has_force_term = bool(column(rows, "train_forces_raw"))
    assert has_force_term == (regime == "energy+forces")
    n_train = 12 - 3 + (6 if regime.endswith("unlabelled") else 0)
    assert result.steps == math.ceil(n_train / 4)

    trained = load_model(result.final_model)
    assert trained.direct_forces == (model_key == "painn_direct")
    assert all(torch.isfinite(p).all() for p in trained.parameters())


def test_default_skin_is_just_enough_for_the_physics_terms(data_files, tmp_path):
    from piwsl.training.builders import training_skin

    labelled, _ = data_files
    plain = config_from_dict(tiny_config(labelled, tmp_path / "a", data={"skin": None}))
    assert training_skin(plain) == 0.0
    physics = {"taylor_weight": 1.2, "perturbation_scale": 0.1}
    on = config_from_dict(
        tiny_config(labelled, tmp_path / "b", data={"skin": None}, physics=physics)
    )
    assert training_skin(on) == pytest.approx(1.05 * 2 * math.sqrt(3) * 0.1)
    given = config_from_dict(tiny_config(labelled, tmp_path / "c", data={"skin": 0.7}))
    assert training_skin(given) == 0.7
