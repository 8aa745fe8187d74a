"""Fine-tuning in ``piwsl train``: model.init_from, model.freeze, model.e0s_on_init.

A tiny SchNet is trained once (module fixture) and then fine-tuned from its ``best_model.pt`` or
its Lightning checkpoint; a tiny mace-torch model file is fine-tuned when mace-torch is installed.
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
import yaml
from test_training import read_epoch_rows, tiny_config, write_tiny_extxyz

from piwsl.config import config_from_dict
from piwsl.data import Frame, frames_to_batch, read_frames
from piwsl.errors import CheckpointError, ConfigError, UnknownElementError
from piwsl.models import load_model
from piwsl.models.io import model_from_state, model_state

torch.set_num_threads(1)

#: A per-element offset between two "levels of theory", eV.
OFFSETS = {1: 0.37, 6: -2.9, 8: 5.3}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_extxyz(tmp_path_factory.mktemp("data") / "tiny.xyz")


@pytest.fixture(scope="module")
def pretrained(tiny_data, tmp_path_factory):
    """A run directory holding a tiny SchNet trained for one epoch."""
    from piwsl.training import train

    run = tmp_path_factory.mktemp("pretrained") / "run"
    cfg = tiny_config(tiny_data, run, training={"max_epochs": 1})
    train(config_from_dict(cfg), evaluate=False)
    assert (run / "best_model.pt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    return run


def finetune_config(data_path, run_dir, init_from, model=None, **sections) -> dict:
    cfg = tiny_config(data_path, run_dir, **sections)
    cfg["model"] = {"init_from": str(init_from), **(model or {})}
    return cfg


def built(cfg_dict):
    """(config, prepared data, model) as ``piwsl train`` builds them, without training."""
    from piwsl.training import prepare_data
    from piwsl.training.builders import build_force_field
    from piwsl.training.finetune import resolve_init_from

    cfg, pre = resolve_init_from(config_from_dict(cfg_dict))
    data = prepare_data(cfg.data, report=False)
    return cfg, data, build_force_field(cfg, data, pre)


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_energy_only_finetune_starts_from_pretrained_and_trains_only_unfrozen(
    tiny_data, pretrained, tmp_path
):
    from piwsl.training import train

    source = pretrained / "best_model.pt"
    before = load_model(source)
    run = tmp_path / "ft"
    cfg = finetune_config(
        tiny_data,
        run,
        source,
        model={"freeze": ["*", "!readout.*"]},
        data={"train_labels": "energy"},
        loss={"force_weight": 0.0},
        training={"lr": 1e-3, "max_epochs": 2},
    )
    resolved, _, model = built(cfg)
    # the architecture is the file's; the config that is saved says so
    assert (resolved.model.name, resolved.model.cutoff) == ("schnet", 4.0)
    # the initial weights are the pre-trained ones, bit for bit
    start = params(model)
    assert start.keys() == params(before).keys()
    for name, value in params(before).items():
        assert torch.equal(start[name], value), name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in start if n.startswith("energy_model.readout.")}

    result = train(config_from_dict(cfg))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name"] == "schnet" and saved["model"]["init_from"] == str(source)
    assert "train_forces_raw" not in read_epoch_rows(run)[0]  # energy-only fine-tuning
    for path in (run / "final_model.pt", result.best_model, run / "checkpoints" / "best.ckpt"):
        after = load_model(path)  # the run's outputs rebuild from their saved hparams
        assert after.hparams == before.hparams
        changed = {n for n, p in params(after).items() if not torch.equal(p, start[n])}
        assert changed, f"{path}: nothing was trained"
        assert changed <= trainable, f"{path}: frozen parameters moved: {changed - trainable}"
    assert changed == trainable  # every readout tensor was updated


def test_freeze_errors_and_fresh_models(tiny_data, pretrained, tmp_path):
    source = pretrained / "best_model.pt"
    with pytest.raises(
        ConfigError, match=r"(?s)model\.freeze.*'readouts\.\*'.*energy_model\.readout\.0\.weight"
    ):
        built(finetune_config(tiny_data, tmp_path, source, model={"freeze": ["readouts.*"]}))
    with pytest.raises(ConfigError, match="nothing would be trained"):
        built(finetune_config(tiny_data, tmp_path, source, model={"freeze": ["*"]}))
    with pytest.raises(ConfigError, match="empty parameter pattern"):
        config_from_dict(finetune_config(tiny_data, tmp_path, source, model={"freeze": ["!"]}))
    # freezing works for a new model too, and for full names
    cfg = tiny_config(tiny_data, tmp_path, model={"freeze": ["energy_model.embedding.weight"]})
    _, _, model = built(cfg)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["energy_model.embedding.weight"]


def test_model_section_must_agree_with_the_pretrained_file(tiny_data, pretrained, tmp_path):
    source = pretrained / "best_model.pt"
    hp = {"features": 16, "interactions": 2, "n_rbf": 8}
    ok = {"name": "schnet", "cutoff": 4.0, "hparams": hp}
    assert built(finetune_config(tiny_data, tmp_path, source, model=ok))[0].model.hparams == hp
    for wrong, message in (
        ({"name": "painn"}, "model.name: config 'painn', file 'schnet'"),
        ({"cutoff": 5.0}, "model.cutoff: config 5.0 Å, file 4.0 Å"),
        ({"hparams": {"features": 32}}, "model.hparams.features: config 32, file 16"),
    ):
        with pytest.raises(ConfigError, match=message):
            built(finetune_config(tiny_data, tmp_path, source, model=wrong))


def _other_level_of_theory(pretrained_model, path, n: int = 14):
    """Frames of several compositions labelled ``E_pretrained + Σ_atoms OFFSETS[Z]`` (eV)."""
    frames = read_frames("builtin:ethanol_train")[:n]
    images = []
    for k, f in enumerate(frames):
        atoms = f.to_atoms()
        atoms.calc = None
        drop = [None, 0, 2, 8][k % 4]  # ethanol, and without a C, an O or an H
        if drop is not None:
            del atoms[drop]
        images.append(atoms)
    batch = frames_to_batch([Frame.from_atoms(a) for a in images], pretrained_model.cutoff)
    with torch.no_grad():
        energy = pretrained_model.eval()(batch, compute_forces=False)["energy"].tolist()
    for atoms, e in zip(images, energy, strict=True):
        atoms.info["REF_energy"] = e + sum(OFFSETS[int(z)] for z in atoms.numbers)
    ase.io.write(path, images, format="extxyz")
    return path, images


def test_e0s_refit_absorbs_a_per_element_offset_and_keep_keeps_them(pretrained, tmp_path):
    source = pretrained / "best_model.pt"
    before = load_model(source)
    em0 = before.energy_model
    data_path, images = _other_level_of_theory(before, tmp_path / "other.xyz")
    labels = torch.tensor([a.info["REF_energy"] for a in images], dtype=torch.float64)
    batch = frames_to_batch([Frame.from_atoms(a) for a in images], before.cutoff)
    reference = before.eval()(batch)

    common = {"data": {"n_val": 2, "e0s": "fit"}}
    _, _, keep = built(
        finetune_config(data_path, tmp_path, source, model={"e0s_on_init": "keep"}, **common)
    )
    for name in ("e0", "energy_shift", "energy_scale"):
        assert torch.equal(getattr(keep.energy_model, name), getattr(em0, name)), name
    kept = keep.eval()(batch)
    torch.testing.assert_close(kept["energy"], reference["energy"], rtol=0, atol=1e-9)

    cfg, _, refit = built(finetune_config(data_path, tmp_path, source, **common))
    assert cfg.model.e0s_on_init == "refit"  # the default
    em = refit.energy_model
    # the energy scale (which sets the forces) is kept: forces are the pre-trained ones
    assert float(em.energy_scale) == float(em0.energy_scale)
    new = refit.eval()(batch)
    torch.testing.assert_close(new["forces"], reference["forces"], rtol=0, atol=1e-6)
    # E0[Z] + shift moved by exactly the per-element offset of the new level of theory
    for z, delta in OFFSETS.items():
        moved = float(em.e0[z] + em.energy_shift) - float(em0.e0[z] + em0.energy_shift)
        assert moved == pytest.approx(delta, abs=1e-4), z
    # so the re-fitted model reproduces the new energies, the kept one is off by Σ offsets
    assert float((new["energy"] - labels).abs().max()) < 1e-3
    assert float((kept["energy"] - labels).abs().min()) > 1.0


def test_init_from_lightning_checkpoint_and_unknown_elements(tiny_data, pretrained, tmp_path):
    ckpt = pretrained / "checkpoints" / "best.ckpt"
    _, _, model = built(finetune_config(tiny_data, tmp_path, ckpt, model={"e0s_on_init": "keep"}))
    expected = load_model(ckpt)
    for name, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name

    # a nitrogen atom in the fine-tuning data: the SchNet was trained on H, C, O only
    images = ase.io.read(tiny_data, index=":")
    images[3].numbers[0] = 7
    path = tmp_path / "with_n.xyz"
    ase.io.write(path, images, format="extxyz")
    with pytest.raises(UnknownElementError, match=r"N \(Z=7, e\.g\. file .*with_n\.xyz"):
        built(finetune_config(path, tmp_path, ckpt))


def test_bad_init_from_is_a_checkpoint_error(tiny_data, pretrained, tmp_path):
    from piwsl.training import train

    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    cases = (
        (tmp_path / "missing.pt", "does not exist"),
        (text, "cannot read pre-trained model"),
        (foreign, "not a piwsl model file"),
        (pretrained, "is a directory.*did you mean .*best_model.pt"),
    )
    for source, message in cases:
        run = tmp_path / f"run_{source.name}"
        with pytest.raises(CheckpointError, match=message):
            train(config_from_dict(finetune_config(tiny_data, run, source)))
        assert not run.exists()  # failed before writing anything


# ----------------------------------------------------------------------------- mace-torch


def _mace_torch_file(path):
    """A tiny float64 ScaleShiftMACE built and saved the mace-torch way, with E0s/scale/shift."""
    from e3nn import o3
    from mace import modules
    from mace.tools.torch_tools import default_dtype

    torch.manual_seed(5)
    with default_dtype(torch.float64):
        module = modules.ScaleShiftMACE(
            r_max=4.0,
            num_bessel=6,
            num_polynomial_cutoff=5,
            max_ell=2,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes[
                "RealAgnosticResidualInteractionBlock"
            ],
            num_interactions=2,
            num_elements=3,
            hidden_irreps=o3.Irreps("8x0e + 8x1o"),
            MLP_irreps=o3.Irreps("8x0e"),
            atomic_energies=np.array([-13.6, -1029.4, -2041.8]),
            avg_num_neighbors=6.0,
            atomic_numbers=[1, 6, 8],
            correlation=2,
            gate=torch.nn.functional.silu,
            radial_MLP=[16, 16],
            atomic_inter_scale=1.3,
            atomic_inter_shift=-0.2,
        )
    torch.save(module, path)
    return path


def test_finetune_a_mace_torch_model_file(tiny_data, tmp_path):
    pytest.importorskip("mace", reason="mace-torch is not installed (scripts/install_mace.sh)")
    from piwsl.models.mace import from_mace_model
    from piwsl.training import train

    source = _mace_torch_file(tmp_path / "foundation.model")
    start = params(from_mace_model(source).float())
    run = tmp_path / "ft"
    cfg = finetune_config(
        tiny_data,
        run,
        source,
        model={"freeze": ["*", "!readouts.*"]},
        data={"train_labels": "energy"},
        loss={"force_weight": 0.0},
        training={"lr": 1e-3, "max_epochs": 1, "ema_decay": None},
    )
    train(config_from_dict(cfg), evaluate=False)
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["name"] == "mace"
    after = load_model(run / "checkpoints" / "best.ckpt")
    changed = {n for n, p in params(after).items() if not torch.equal(p, start[n])}
    assert changed and all(".readouts." in n for n in changed)
    # the saved hyper-parameters rebuild the imported MACE: model_state round-trips exactly
    again = model_from_state(model_state(after)).eval()
    batch = frames_to_batch(read_frames(str(tiny_data))[:3], after.cutoff)
    a, b = after.eval()(batch), again(batch)
    torch.testing.assert_close(a["energy"], b["energy"], rtol=0, atol=0)
    torch.testing.assert_close(a["forces"], b["forces"], rtol=0, atol=0)
