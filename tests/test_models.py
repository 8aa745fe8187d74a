"""Built-in models against the model contract; PaiNN heads; registry errors; model files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from piwsl.data import Frame, frames_to_batch
from piwsl.errors import CheckpointError, ConfigError
from piwsl.models import EnergyModel, build_model, load_model, save_model
from piwsl.models.painn import PaiNN
from piwsl.testing import (
    CONTRACT_CHECKS,
    ContractSettings,
    ModelContractTests,
    random_crystal,
    random_molecule,
    run_contract_suite,
)

torch.set_num_threads(1)
ELEMENTS = [1, 6, 8]
TINY = {"features": 8, "interactions": 2, "n_rbf": 8}

MODELS = {
    "schnet": ("schnet", {}),
    "painn_conservative": ("painn", {"forces": "conservative"}),
    "painn_direct": ("painn", {"forces": "direct"}),
}


def factory(name: str, **hparams):
    def make_model(elements, cutoff, dtype):
        return build_model(name, elements=elements, cutoff=cutoff, **TINY, **hparams).to(dtype)

    return make_model


@pytest.mark.parametrize("check", list(CONTRACT_CHECKS))
@pytest.mark.parametrize("model", list(MODELS))
def test_model_contract(model, check):
    name, hparams = MODELS[model]
    CONTRACT_CHECKS[check](factory(name, **hparams))


class TestPaiNNAliasContract(ModelContractTests):
    """The pytest mixin, on the registered alias, with other elements, cutoff and seed."""

    settings = ContractSettings(elements=(1, 8), cutoff=2.5, seed=1)

    def make_model(self, elements, cutoff, dtype):
        return factory("painn_direct")(elements, cutoff, dtype)


class _AbsolutePosition(EnergyModel):
    """A broken model: e_i = w · x_i depends on absolute positions (not translation-invariant)."""

    def __init__(self, elements, cutoff):
        super().__init__(elements, cutoff)
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def atomic_outputs(self, batch):
        return self.w * batch.positions[:, 0] ** 2, None


def test_contract_suite_rejects_a_broken_model():
    from piwsl.models import ForceField

    def make_model(elements, cutoff, dtype):
        return ForceField(_AbsolutePosition(elements, cutoff)).to(dtype)

    with pytest.raises(AssertionError) as info:
        run_contract_suite(make_model, checks=["forces", "translation", "rotation", "skin"])
    text = str(info.value)
    assert "translation" in text and "rotation" in text
    assert "forces:" not in text  # its forces are still exactly −dE/dR


def test_run_contract_suite_reports_timings():
    timings = run_contract_suite(factory("schnet"), checks=["output_contract", "skin"])
    assert set(timings) == {"output_contract", "skin"} and all(t >= 0 for t in timings.values())
    with pytest.raises(ValueError, match="unknown contract checks"):
        run_contract_suite(factory("schnet"), checks=["nope"])


# ----------------------------------------------------------------------------- PaiNN heads


def test_painn_heads_and_aliases():
    direct = build_model("painn", elements=ELEMENTS, cutoff=3.0, forces="direct", **TINY)
    conservative = build_model("painn", elements=ELEMENTS, cutoff=3.0, **TINY)
    assert direct.direct_forces and not conservative.direct_forces
    assert PaiNN.direct_forces is False  # the flag is per instance, not on the class
    assert build_model("painn_direct", elements=ELEMENTS, cutoff=3.0, **TINY).direct_forces
    assert not build_model(
        "painn_conservative", elements=ELEMENTS, cutoff=3.0, **TINY
    ).direct_forces
    with pytest.raises(ConfigError, match="did you mean 'direct'"):
        build_model("painn", elements=ELEMENTS, cutoff=3.0, forces="dirct")
    with pytest.raises(ConfigError, match="forces="):
        build_model("painn_direct", elements=ELEMENTS, cutoff=3.0, forces="conservative")


def test_painn_direct_forces_come_from_the_head():
    """Direct forces are not −dE/dR of the same model (the heads are independent)."""
    torch.manual_seed(0)
    model = build_model("painn", elements=ELEMENTS, cutoff=3.0, forces="direct", **TINY).double()
    frame = random_molecule(np.random.default_rng(0), 6, ELEMENTS)
    batch = frames_to_batch([frame], cutoff=3.0, dtype=torch.float64)
    positions = batch.positions.clone().requires_grad_(True)
    out = model(batch.with_positions(positions))
    (grad,) = torch.autograd.grad(out["energy"].sum(), positions)
    assert out["forces"].shape == (6, 3)
    assert float((out["forces"].detach() + grad).abs().max()) > 1e-6


def test_painn_skin_edges_have_no_effect_on_parameter_gradients():
    """Edges beyond the cutoff add exact zeros, also to the training gradients (float32)."""
    torch.manual_seed(1)
    model = build_model("painn", elements=ELEMENTS, cutoff=3.0, **TINY)
    frames = [random_crystal(np.random.default_rng(1), 3, ELEMENTS)]
    grads = []
    for skin in (0.0, 1.5):
        batch = frames_to_batch(frames, cutoff=3.0, skin=skin)
        model.zero_grad()
        out = model(batch, create_graph=True)
        (out["energy"].sum() + out["forces"].pow(2).sum()).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- registry, files


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'schnet'"):
        build_model("shnet", elements=ELEMENTS, cutoff=3.0)
    with pytest.raises(ConfigError, match="did you mean 'painn'"):
        build_model("pain", elements=ELEMENTS, cutoff=3.0)


@pytest.mark.parametrize("model", list(MODELS))
def test_save_load_round_trip(model, tmp_path):
    name, hparams = MODELS[model]
    torch.manual_seed(2)
    original = build_model(name, elements=ELEMENTS, cutoff=3.0, **TINY, **hparams)
    original.energy_model.set_reference({1: -13.6, 6: -1029.5, 8: -2041.25}, shift=0.1, scale=2.0)
    original.eval()
    path = tmp_path / "model.pt"
    save_model(original, path, metadata={"note": "test"})
    loaded = load_model(path)
    assert loaded.hparams == original.hparams and loaded.direct_forces == original.direct_forces
    assert not loaded.training
    rng = np.random.default_rng(3)
    batch = frames_to_batch(
        [random_molecule(rng, 5, ELEMENTS), random_crystal(rng, 2, ELEMENTS)], cutoff=3.0
    )
    a, b = original(batch), loaded(batch)
    assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"])
    assert a["energy"].dtype == torch.float64 and float(a["energy"].detach().abs().min()) > 10


def test_load_model_rejects_foreign_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}, "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match="not a piwsl model file"):
        load_model(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_load_model_rejects_mismatched_weights(tmp_path):
    model = build_model("schnet", elements=ELEMENTS, cutoff=3.0, **TINY)
    path = tmp_path / "m.pt"
    save_model(model, path)
    state = torch.load(path, weights_only=False)
    state["hparams"]["features"] = 16
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(path)


def test_model_float_keeps_reference_energies_float64():
    model = build_model("painn", elements=ELEMENTS, cutoff=3.0, **TINY).eval()
    model.energy_model.set_reference({6: -1029.123456789})
    model.double().float()
    e0 = model.energy_model.e0
    assert e0.dtype == torch.float64 and float(e0[6]) == -1029.123456789
    assert model.energy_model.embedding.weight.dtype == torch.float32
    batch = frames_to_batch([Frame(numbers=[6], positions=np.zeros((1, 3)))], cutoff=3.0)
    with_e0 = model(batch, compute_forces=False)["energy"].detach()
    model.energy_model.set_reference({})
    without = model(batch, compute_forces=False)["energy"].detach()
    assert abs(float(with_e0[0] - without[0]) + 1029.123456789) < 1e-9
