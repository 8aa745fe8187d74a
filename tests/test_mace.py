"""The MACE backend (mace-torch): model contract, export to / import from mace-torch, freezing.

Skips cleanly when mace-torch is not installed (install: scripts/install_mace.sh), except for the
test of the error message a missing mace-torch gives.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from ase import Atoms

from piwsl.data import frames_to_batch, read_frames
from piwsl.errors import CheckpointError, ConfigError
from piwsl.models import build_model, load_model, save_model
from piwsl.testing import CONTRACT_CHECKS, random_crystal

torch.set_num_threads(1)
ELEMENTS = [1, 6, 8]
TINY = {
    "num_channels": 8,
    "max_L": 1,
    "max_ell": 2,
    "correlation": 2,
    "num_interactions": 2,
    "num_bessel": 6,
    "radial_MLP": [16, 16],
    "MLP_irreps": "8x0e",
    "avg_num_neighbors": 4.0,
}
E0S = {1: -13.587, 6: -1029.41, 8: -2041.84}  # eV, realistic magnitudes
REASON = "mace-torch is not installed (scripts/install_mace.sh)"


@pytest.fixture(scope="module")
def mace():
    return pytest.importorskip("mace", reason=REASON)


def make_model(elements, cutoff, dtype, **hparams):
    return build_model("mace", elements=elements, cutoff=cutoff, **{**TINY, **hparams}).to(dtype)


def ethanol_atoms(n: int) -> list[Atoms]:
    frames = read_frames("builtin:ethanol_train")[:n]
    return [Atoms(numbers=f.numbers, positions=f.positions) for f in frames]


def trained_looking_model(seed: int = 0, cutoff: float = 4.0):
    """A float64 MACE with E0s, a shift and a scale, as after training."""
    torch.manual_seed(seed)
    model = make_model(ELEMENTS, cutoff, torch.float64).eval()
    model.energy_model.set_reference(E0S, shift=0.37, scale=1.9)
    return model


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("check", list(CONTRACT_CHECKS))
def test_mace_contract(mace, check):
    CONTRACT_CHECKS[check](make_model)


def test_mace_higher_order_is_equivariant_and_conservative(mace):
    """MACE's default correlation 3 / max_ell 3 with l=2 features (a different code path)."""

    def make(elements, cutoff, dtype):
        return make_model(elements, cutoff, dtype, max_L=2, max_ell=3, correlation=3)

    for check in ("rotation", "forces"):
        CONTRACT_CHECKS[check](make)


# ----------------------------------------------------------------------------- export / import


def test_export_agrees_with_mace_calculator(mace, tmp_path):
    from mace.calculators import MACECalculator

    from piwsl.calculator import PiwslCalculator
    from piwsl.models.mace import export_to_mace

    model = trained_looking_model()
    path = export_to_mace(model, tmp_path / "exported.model")
    theirs = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    ours = PiwslCalculator(model)
    for atoms in ethanol_atoms(3):
        atoms.calc = ours
        e_ours, f_ours = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = theirs
        e_theirs, f_theirs = atoms.get_potential_energy(), atoms.get_forces()
        assert e_ours < -2000  # E0s are included (ethanol: 2 C, 6 H, 1 O)
        assert abs(e_ours - e_theirs) < 1e-8
        assert np.abs(f_ours).max() > 1e-3
        np.testing.assert_allclose(f_ours, f_theirs, atol=1e-9, rtol=0)


def test_export_periodic_agrees_with_mace_calculator(mace, tmp_path):
    from mace.calculators import MACECalculator

    from piwsl.calculator import PiwslCalculator
    from piwsl.models.mace import export_to_mace

    model = trained_looking_model(seed=1, cutoff=3.0)
    path = export_to_mace(model, tmp_path / "exported.model")
    theirs = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    frame = random_crystal(np.random.default_rng(0), 3, ELEMENTS)
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True)
    atoms.calc = PiwslCalculator(model)
    e_ours, f_ours = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = theirs
    assert abs(e_ours - atoms.get_potential_energy()) < 1e-8
    np.testing.assert_allclose(f_ours, atoms.get_forces(), atol=1e-9, rtol=0)


def _mace_torch_model(modules, o3, seed: int = 3, heads=None):
    """A ScaleShiftMACE built the mace-torch way (float64), with its own E0s, scale and shift."""
    from mace.tools.torch_tools import default_dtype

    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        return _build_scale_shift_mace(modules, o3, heads)


def _build_scale_shift_mace(modules, o3, heads=None):
    n = len(heads or ["Default"])
    e0 = np.array([E0S[1], E0S[6], E0S[8]])
    return modules.ScaleShiftMACE(
        r_max=4.0,
        num_bessel=6,
        num_polynomial_cutoff=5,
        max_ell=2,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2,
        num_elements=3,
        hidden_irreps=o3.Irreps("8x0e + 8x1o"),
        MLP_irreps=o3.Irreps("8x0e"),
        atomic_energies=e0 if n == 1 else np.stack([e0 + 0.5 * k for k in range(n)]),
        avg_num_neighbors=6.0,
        atomic_numbers=ELEMENTS,
        correlation=2,
        gate=torch.nn.functional.silu,
        radial_MLP=[16, 16],
        atomic_inter_scale=1.3 if n == 1 else [1.3 + 0.1 * k for k in range(n)],
        atomic_inter_shift=-0.21 if n == 1 else [-0.21 + 0.05 * k for k in range(n)],
        heads=heads,
    )


def test_from_mace_model_reproduces_mace_torch(mace, tmp_path):
    """A model file written by mace-torch loads into piwsl and gives mace-torch's numbers."""
    from e3nn import o3
    from mace import modules
    from mace.calculators import MACECalculator

    from piwsl.calculator import PiwslCalculator
    from piwsl.models.mace import from_mace_model

    path = tmp_path / "mace_torch.model"
    torch.save(_mace_torch_model(modules, o3), path)
    model = from_mace_model(path)
    em = model.energy_model
    assert float(em.e0[8]) == E0S[8] and abs(float(em.energy_scale) - 1.3) < 1e-12
    assert float(em.mace.scale_shift.scale) == 1.0  # applied once, by piwsl
    theirs = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    ours = PiwslCalculator(model)
    for atoms in ethanol_atoms(2):
        atoms.calc = ours
        e_ours, f_ours = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = theirs
        assert abs(e_ours - atoms.get_potential_energy()) < 1e-8
        np.testing.assert_allclose(f_ours, atoms.get_forces(), atol=1e-9, rtol=0)

    # the imported model saves and loads as a piwsl model (load_model gives float32 weights)
    save_model(model, tmp_path / "piwsl.pt")
    again = load_model(tmp_path / "piwsl.pt").double()
    assert again.hparams["mace_config"]["hidden_irreps"] == "8x0e+8x1o"
    batch = frames_to_batch(read_frames("builtin:ethanol_train")[:2], 4.0, dtype=torch.float64)
    e_again, e_model = again(batch)["energy"], model(batch)["energy"]
    torch.testing.assert_close(e_again, e_model, rtol=0, atol=1e-4)


def test_from_mace_model_multi_head(mace, tmp_path):
    """A two-head model (as mace-torch's multi-head fine-tuning writes): per-head E0s, scale."""
    from e3nn import o3
    from mace import modules
    from mace.calculators import MACECalculator

    from piwsl.calculator import PiwslCalculator
    from piwsl.models.mace import from_mace_model

    path = tmp_path / "two_heads.model"
    torch.save(_mace_torch_model(modules, o3, heads=["pt_head", "Default"]), path)
    assert from_mace_model(path).energy_model.head == "Default"
    with pytest.raises(ConfigError, match="not found"):
        from_mace_model(path, head="nope")
    atoms = ethanol_atoms(1)[0]
    energies = {}
    for head in ("pt_head", "Default"):
        atoms.calc = PiwslCalculator(from_mace_model(path, head=head))
        e_ours, f_ours = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = MACECalculator(
            model_paths=str(path), device="cpu", default_dtype="float64", head=head
        )
        assert abs(e_ours - atoms.get_potential_energy()) < 1e-8
        np.testing.assert_allclose(f_ours, atoms.get_forces(), atol=1e-9, rtol=0)
        energies[head] = e_ours
    assert abs(energies["Default"] - energies["pt_head"]) > 1.0  # the heads really differ


def test_average_num_neighbors(mace):
    from piwsl.models.mace import average_num_neighbors

    frames = read_frames("builtin:ethanol_train")[:3]
    batch = frames_to_batch(frames, 5.0, skin=1.0)  # skin edges are not counted
    assert average_num_neighbors(batch, 5.0) == pytest.approx(8.0)  # 9 atoms, all within 5 Å
    short = average_num_neighbors(batch, 1.2)  # C-H and O-H bonds only
    assert 1.0 < short < 2.0


def test_from_mace_model_rejects_bad_files(mace, tmp_path):
    from piwsl.models.mace import from_mace_model

    with pytest.raises(CheckpointError, match="does not exist"):
        from_mace_model(tmp_path / "missing.model")
    (tmp_path / "garbage.model").write_text("not a model")
    with pytest.raises(CheckpointError, match="cannot read"):
        from_mace_model(tmp_path / "garbage.model")
    torch.save({"state_dict": {}}, tmp_path / "dict.model")
    with pytest.raises(CheckpointError, match="not a mace-torch model"):
        from_mace_model(tmp_path / "dict.model")


# ----------------------------------------------------------------------------- freezing


def test_freeze_keeps_frozen_weights_during_a_training_step(mace):
    from piwsl.models.mace import freeze, unfreeze

    model = trained_looking_model().train()
    frozen = freeze(model, ["interactions.0.*", "node_embedding.*"])
    assert frozen and all(".interactions.0." in n or ".node_embedding." in n for n in frozen)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not set(trainable) & set(frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frames = read_frames("builtin:ethanol_train")[:2]
    batch = frames_to_batch(frames, 4.0, dtype=torch.float64)
    out = model(batch)
    loss = ((out["energy"] - batch.energy) ** 2).mean() + (
        (out["forces"] - batch.forces) ** 2
    ).mean()
    loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[n], after[n]) for n in trainable)
    with pytest.raises(ConfigError, match=r"(?s)matches no parameter.*readouts"):
        freeze(model, ["interaction.*"])  # typo: no such module
    assert set(unfreeze(model)) == set(before)
    assert all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- errors


def test_unknown_hyperparameter_suggests(mace):
    with pytest.raises(ConfigError, match="did you mean 'num_channels'"):
        build_model("mace", elements=ELEMENTS, cutoff=4.0, num_channel=8)


def test_missing_mace_torch_gives_install_hint(monkeypatch):
    from piwsl.errors import PiwslError

    monkeypatch.setitem(sys.modules, "mace", None)  # import mace -> ImportError
    with pytest.raises(ImportError, match=r"piwsl\[mace\]") as info:
        build_model("mace", elements=ELEMENTS, cutoff=4.0)
    assert isinstance(info.value, PiwslError)


def test_ema_of_a_deep_copied_mace_tracks_the_model(mace):
    """EMA pairs parameters and buffers by name (a deep copy of MACE lists its buffers otherwise)."""
    import copy

    from piwsl.training.ema import ExponentialMovingAverage

    # the benchmark's CPU-sized MACE: its deep copy lists 58 buffers where the original lists 57
    hparams = {"num_channels": 16, "max_L": 1, "correlation": 2, "num_interactions": 2}
    model = build_model("mace", elements=ELEMENTS, cutoff=4.0, **hparams)
    ema_model = copy.deepcopy(model)
    model(frames_to_batch(read_frames("builtin:ethanol_train")[:2], 4.0))
    before = {k: v.clone() for k, v in ema_model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ExponentialMovingAverage(0.99).update(ema_model, model, n_updates=0)  # d = 0.1
    for name, p in ema_model.named_parameters():
        torch.testing.assert_close(p, before[name] + 0.9, rtol=1e-5, atol=1e-5)
    buffers = dict(model.named_buffers())
    for name, b in ema_model.named_buffers():
        if name in buffers:
            torch.testing.assert_close(b, buffers[name])


def test_ema_copy_has_the_weights_layout_of_a_fresh_model(mace, tmp_path):
    """The EMA model (what training saves) must load into a freshly built MACE."""
    from piwsl.training.ema import rebuilt_copy

    hparams = {"num_channels": 16, "max_L": 1, "correlation": 2, "num_interactions": 2}
    model = build_model("mace", elements=ELEMENTS, cutoff=4.0, **hparams)
    ema_model = rebuilt_copy(model)
    assert ema_model.state_dict().keys() == model.state_dict().keys()
    save_model(ema_model, tmp_path / "ema.pt")
    batch = frames_to_batch(read_frames("builtin:ethanol_train")[:2], 4.0)
    loaded = load_model(tmp_path / "ema.pt")
    torch.testing.assert_close(loaded(batch)["energy"], model(batch)["energy"])
