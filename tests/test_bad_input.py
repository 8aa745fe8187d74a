"""Bad input: every error has piwsl's type and names the file, the frame and the key."""

from __future__ import annotations

from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule

from piwsl.calculator import PiwslCalculator
from piwsl.data import Frame, LabelKeys, neighbor_list, read_frames
from piwsl.data.neighbors import frame_neighbor_list
from piwsl.errors import CheckpointError, ConfigError, DataError, PiwslError, UnknownElementError
from piwsl.evaluation import evaluate_model, predict
from piwsl.models import build_model, load_model, save_model

torch.set_num_threads(1)


def tiny_model():
    torch.manual_seed(0)
    return build_model(
        "schnet", elements=[1, 6, 8], cutoff=3.0, features=8, interactions=1, n_rbf=8
    ).eval()


def write_xyz(path, n: int = 3) -> str:
    images = []
    for k in range(n):
        atoms = molecule("H2O")
        atoms.rattle(0.01, seed=k)
        atoms.info["REF_energy"] = -10.0 - k
        atoms.arrays["REF_forces"] = np.full((3, 3), 0.1 * k)
        images.append(atoms)
    ase.io.write(path, images, format="extxyz")
    return str(path)


def edit_frame(text: str, frame: int, old: str, new: str) -> str:
    """Replace the first ``old`` inside frame ``frame`` (5 lines per 3-atom frame)."""
    lines = text.splitlines(keepends=True)
    block = "".join(lines[5 * frame : 5 * frame + 5])
    assert old in block, (old, block)
    lines[5 * frame : 5 * frame + 5] = [block.replace(old, new, 1)]
    return "".join(lines)


def assert_names(err: DataError, file, frame=None, key=None) -> None:
    text = str(err)
    assert str(file) in text and err.file == str(file)
    if frame is not None:
        assert f"frame {frame}" in text and err.frame == frame
    if key is not None:
        assert repr(key) in text and err.key == key


# --- files ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.xyz"
    with pytest.raises(DataError, match="does not exist") as info:
        read_frames(path)
    assert_names(info.value, path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="directory"):
        read_frames(tmp_path)


def test_unknown_builtin():
    with pytest.raises(DataError, match="did you mean 'ethanol_train'"):
        read_frames("builtin:ethanol_trian")


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.xyz"
    path.write_text("this is not\nan xyz file at all\n")
    with pytest.raises(DataError, match="cannot parse") as info:
        read_frames(path)
    assert_names(info.value, path, frame=0)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.xyz"
    path.write_text("")
    with pytest.raises(DataError) as info:
        read_frames(path)
    assert_names(info.value, path)


@pytest.mark.parametrize(
    "cut", [-30, -60, -200, -350], ids=["last-column", "mid-number", "mid-frame", "comment-line"]
)
def test_truncated_extxyz_names_the_broken_frame(tmp_path, cut):
    text = Path(write_xyz(tmp_path / "full.xyz")).read_text()
    broken = tmp_path / "truncated.xyz"
    broken.write_text(text[:cut])
    with pytest.raises(DataError, match="cannot parse") as info:
        read_frames(broken)
    assert_names(info.value, broken, frame=2)
    assert "complete" in str(info.value)


@pytest.mark.parametrize("keep", ["frames", "digits"])
def test_silent_truncation_is_warned_about(tmp_path, caplog, keep):
    """ASE reads a file cut after a whole frame (or inside the very last number) without error;
    piwsl warns because the file does not end with a newline, as every file ASE writes does."""
    text = Path(write_xyz(tmp_path / "full.xyz")).read_text()
    broken = tmp_path / "cut.xyz"
    if keep == "frames":
        broken.write_text("".join(text.splitlines(keepends=True)[:10]).rstrip("\n"))
    else:
        broken.write_text(text[:-3])
    with caplog.at_level("WARNING", logger="piwsl.data.readers"):
        frames = read_frames(broken)
    assert len(frames) == (2 if keep == "frames" else 3)
    assert "truncated" in caplog.text and "cut.xyz" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="piwsl.data.readers"):
        read_frames(tmp_path / "full.xyz")
    assert "truncated" not in caplog.text


# --- labels --------------------------------------------------------------------------------------


def test_requested_key_absent_from_every_frame(tmp_path):
    path = write_xyz(tmp_path / "a.xyz")
    with pytest.raises(DataError, match="absent from every frame") as info:
        read_frames(path, LabelKeys(energy_key="DFT_energy"))
    assert_names(info.value, path, key="DFT_energy")
    with pytest.raises(DataError, match="absent from every frame") as info:
        read_frames(path, LabelKeys(forces_key="DFT_forces"))
    assert_names(info.value, path, key="DFT_forces")


def test_requested_key_absent_from_some_frames_is_masked(tmp_path):
    images = ase.io.read(write_xyz(tmp_path / "a.xyz"), ":")
    del images[1].info["REF_energy"]
    ase.io.write(tmp_path / "b.xyz", images)
    frames = read_frames(tmp_path / "b.xyz", LabelKeys(energy_key="REF_energy"))
    assert [f.has_energy for f in frames] == [True, False, True]


@pytest.mark.parametrize(
    ("old", "new", "key", "frame"),
    [
        ("REF_energy=-11.0", "REF_energy=nan", "REF_energy", 1),
        ("REF_energy=-12.0", "REF_energy=-inf", "REF_energy", 2),
        ("REF_energy=-11.0", "REF_energy=abc", "REF_energy", 1),
        ("0.10000000", "nan", "REF_forces", 1),
        ("0.20000000", "inf", "REF_forces", 2),
    ],
)
def test_non_finite_labels(tmp_path, old, new, key, frame):
    text = Path(write_xyz(tmp_path / "a.xyz")).read_text()
    path = tmp_path / "bad.xyz"
    path.write_text(edit_frame(text, frame, old, new))
    with pytest.raises(DataError) as info:
        read_frames(path)
    assert_names(info.value, path, frame=frame, key=key)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_positions(tmp_path, bad):
    text = Path(write_xyz(tmp_path / "a.xyz")).read_text()
    lines = text.splitlines(keepends=True)
    fields = lines[5 + 3].split()  # frame 1, atom 1
    fields[2] = bad
    lines[5 + 3] = "  ".join(fields) + "\n"
    path = tmp_path / "bad.xyz"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match="non-finite position of atom 1") as info:
        read_frames(path)
    assert_names(info.value, path, frame=1, key="positions")


def test_zero_atom_frame(tmp_path):
    text = Path(write_xyz(tmp_path / "a.xyz")).read_text()
    path = tmp_path / "zero.xyz"
    path.write_text(text + '0\nProperties=species:S:1:pos:R:3 REF_energy=1.0 pbc="F F F"\n')
    with pytest.raises(DataError, match="zero atoms") as info:
        read_frames(path)
    assert_names(info.value, path, frame=3)


def test_forces_shape_mismatch():
    with pytest.raises(DataError, match="shape") as info:
        Frame(
            numbers=[1, 8, 1],
            positions=np.zeros((3, 3)),
            forces=np.zeros((2, 3)),
            source="mem.xyz",
            index=4,
        )
    assert_names(info.value, "mem.xyz", frame=4, key="forces")


def test_forces_shape_mismatch_in_ase_db(tmp_path):
    path = tmp_path / "bad.db"
    with ase.db.connect(path) as db:
        db.write(
            molecule("H2O"),
            key_value_pairs={"REF_energy": -1.0},
            data={"REF_forces": np.zeros((3, 3))},
        )
        db.write(
            molecule("H2O"),
            key_value_pairs={"REF_energy": -1.0},
            data={"REF_forces": np.zeros((2, 3))},
        )
    with pytest.raises(DataError, match=r"shape \(2, 3\)") as info:
        read_frames(path)
    assert_names(info.value, path, frame=1, key="REF_forces")


def test_positions_shape_mismatch():
    with pytest.raises(DataError, match="positions") as info:
        Frame(numbers=[1, 1], positions=np.zeros((3, 3)), source="mem", index=0)
    assert_names(info.value, "mem", frame=0, key="positions")


def test_bad_atomic_number():
    with pytest.raises(DataError, match=r"1\.\.118") as info:
        Frame(numbers=[0, 1], positions=np.zeros((2, 3)), source="mem", index=2)
    assert_names(info.value, "mem", frame=2, key="numbers")


# --- cells ---------------------------------------------------------------------------------------


def test_singular_cell_with_pbc(tmp_path):
    text = Path(write_xyz(tmp_path / "a.xyz")).read_text()
    path = tmp_path / "cell.xyz"
    path.write_text(edit_frame(text, 1, 'pbc="F F F"', 'Lattice="5 0 0 0 5 0 10 0 0" pbc="T T T"'))
    with pytest.raises(DataError, match="singular") as info:
        read_frames(path)
    assert_names(info.value, path, frame=1, key="cell")
    # a zero cell is fine without pbc, and a zero cell vector is fine along a non-periodic axis
    Frame(numbers=[1], positions=np.zeros((1, 3)))
    Frame(
        numbers=[1],
        positions=np.zeros((1, 3)),
        cell=np.diag([5.0, 5.0, 0.0]),
        pbc=[True, True, False],
    )
    with pytest.raises(DataError, match="singular"):
        Frame(numbers=[1], positions=np.zeros((1, 3)), cell=np.diag([5.0, 5.0, 0.0]), pbc=True)


# --- rMD17 npz -----------------------------------------------------------------------------------


def test_corrupt_npz(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(DataError, match="cannot read npz") as info:
        read_frames(path)
    assert_names(info.value, path)


def test_npz_missing_coords(tmp_path):
    path = tmp_path / "md17.npz"
    np.savez(path, nuclear_charges=np.array([8, 1, 1]), R=np.zeros((2, 3, 3)), energies=np.zeros(2))
    with pytest.raises(DataError, match="required key missing") as info:
        read_frames(path)
    assert_names(info.value, path, key="coords")


def test_npz_inconsistent_shapes(tmp_path):
    path = tmp_path / "shapes.npz"
    np.savez(
        path, nuclear_charges=np.array([8, 1, 1]), coords=np.zeros((2, 3, 3)), energies=np.zeros(3)
    )
    with pytest.raises(DataError, match="3 energies for 2 frames") as info:
        read_frames(path)
    assert_names(info.value, path, key="energies")
    np.savez(
        path,
        nuclear_charges=np.array([8, 1, 1]),
        coords=np.zeros((2, 3, 3)),
        forces=np.zeros((2, 2, 3)),
    )
    with pytest.raises(DataError) as info:
        read_frames(path)
    assert_names(info.value, path, key="forces")


def test_npz_with_nan_energy_names_frame(tmp_path):
    path = tmp_path / "nan.npz"
    coords = np.array([[[0, 0, 0], [0, 0.76, 0.59], [0, -0.76, 0.59]]] * 3, dtype=float)
    energies = np.array([-1.0, np.nan, -2.0])
    np.savez(path, nuclear_charges=np.array([8, 1, 1]), coords=coords, energies=energies)
    with pytest.raises(DataError, match="nan") as info:
        read_frames(path)
    assert_names(info.value, path, frame=1, key="energy")


# --- model-side ----------------------------------------------------------------------------------


def test_unknown_element_via_calculator_and_evaluate(tmp_path):
    model = tiny_model()
    atoms = molecule("HCN")
    atoms.calc = PiwslCalculator(model)
    with pytest.raises(UnknownElementError, match=r"N \(Z=7\).*knows H, C, O"):
        atoms.get_forces()
    frame = Frame(
        numbers=atoms.numbers, positions=atoms.positions, energy=-1.0, source="hcn.xyz", index=3
    )
    with pytest.raises(UnknownElementError, match=r"hcn\.xyz.*frame 3"):
        evaluate_model(model, [frame], tmp_path)
    with pytest.raises(UnknownElementError):
        predict(model, [frame])
    assert isinstance(UnknownElementError("x"), PiwslError)


@pytest.mark.parametrize("cutoff", [0.0, -1.0])
def test_non_positive_cutoff(cutoff):
    with pytest.raises(ConfigError, match="cutoff"):
        build_model("schnet", elements=[1], cutoff=cutoff, features=8, interactions=1)
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(np.zeros((2, 3)), np.zeros((3, 3)), np.zeros(3, bool), cutoff)
    frame = Frame(numbers=[1, 1], positions=[[0, 0, 0], [0, 0, 0.7]], source="h2.xyz", index=7)
    with pytest.raises(DataError, match="cutoff") as info:
        frame_neighbor_list(frame, cutoff)
    assert_names(info.value, "h2.xyz", frame=7, key="positions")


def test_checkpoint_that_is_not_a_piwsl_model(tmp_path):
    not_model = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, not_model)
    with pytest.raises(CheckpointError, match="not a piwsl model") as info:
        load_model(not_model)
    assert str(not_model) in str(info.value)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError):
        PiwslCalculator(not_model)
    with pytest.raises(CheckpointError):
        evaluate_model(not_model, "builtin:ethanol_test", tmp_path)


def test_checkpoint_with_mismatched_weights(tmp_path):
    path = tmp_path / "m.pt"
    save_model(tiny_model(), path)
    state = torch.load(path, weights_only=False)
    state["hparams"]["features"] = 16  # weights no longer fit the architecture
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)


# --- units, file by file (issue #18) -------------------------------------------------------------

BOHR = 0.52917721090380  # Å


def write_ethanol(path, n: int = 12, energy_unit: float = 1.0, length_unit: float = 1.0):
    """rMD17 ethanol frames stored in another unit: 1 stored energy unit = ``energy_unit`` eV,
    1 stored length unit = ``length_unit`` Å."""
    images = []
    for f in read_frames("builtin:ethanol_train")[:n]:
        atoms = f.to_atoms()
        atoms.calc = None
        atoms.positions = f.positions / length_unit
        atoms.info["REF_energy"] = f.energy / energy_unit
        atoms.arrays["REF_forces"] = f.forces * length_unit / energy_unit
        images.append(atoms)
    ase.io.write(path, images, format="extxyz")
    return str(path)


def data_config(train, run_dir, **data):
    from piwsl.config import config_from_dict

    return config_from_dict(
        {
            "data": {"train": train, "n_val": 2, "n_test": 0, **data},
            "model": {"name": "schnet", "cutoff": 3.0, "hparams": {"features": 8}},
            "output": {"run_dir": str(run_dir), "progress_bar": False},
        }
    )


def data_warnings(cfg, caplog) -> list[str]:
    from piwsl.training import prepare_data

    caplog.clear()
    with caplog.at_level("WARNING", logger="piwsl.training.data"):
        data = prepare_data(cfg.data)
    return data, [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize(
    ("stored", "declared", "ratio", "advice"),
    [(BOHR, "Å", "1.9", "length: Bohr"), (1.0, "Bohr", "0.5", "length: Å")],
    ids=["bohr-read-as-angstrom", "angstrom-read-as-bohr"],
)
def test_wrong_length_unit_is_named_per_file(tmp_path, caplog, stored, declared, ratio, advice):
    """Bohr read as Å used to train silently (bonds too long, nothing fired); Å declared as Bohr
    shrinks every bond to 0.53× (mostly above the 0.5 Å close-atom bound)."""
    path = write_ethanol(tmp_path / "lengths.xyz", length_unit=stored)
    _, messages = data_warnings(data_config(path, tmp_path, length_unit=declared), caplog)
    (message,) = [m for m in messages if "bond lengths" in m]
    assert f"file {path!r}: bond lengths are {ratio}" in message
    assert advice in message


def test_energy_unit_check_runs_per_file_not_pooled(tmp_path, caplog):
    """A Hartree training file next to an eV test file: pooled, neither unit reaches the 90 %
    majority and nothing fired; per file, the training file is named."""
    from piwsl.units import HARTREE

    train = write_ethanol(tmp_path / "train_ha.xyz", n=12, energy_unit=HARTREE)
    test = write_ethanol(tmp_path / "test_ev.xyz", n=12)
    _, messages = data_warnings(data_config(train, tmp_path, test=test), caplog)
    (message,) = [m for m in messages if "energies look like" in m]
    assert f"file {train!r}: energies look like Hartree, but they were read as 'eV'" in message
    assert test not in message
    assert f"data.units: {{{train!r}: {{energy: Hartree}}}}" in message


def test_units_declared_per_split_and_per_file(tmp_path, caplog):
    """Train in Hartree + Bohr, one test file in kcal/mol, one in eV: read right, no warning."""
    from piwsl.units import HARTREE, KCAL_MOL

    train = write_ethanol(tmp_path / "train.xyz", energy_unit=HARTREE, length_unit=BOHR)
    kcal = write_ethanol(tmp_path / "kcal.xyz", n=4, energy_unit=KCAL_MOL)
    ev = write_ethanol(tmp_path / "ev.xyz", n=4)
    units = {"train": {"energy": "Hartree", "length": "Bohr"}, kcal: {"energy": "kcal/mol"}}
    cfg = data_config(train, tmp_path, test=[kcal, ev], units=units)
    data, messages = data_warnings(cfg, caplog)
    assert not [m for m in messages if "look like" in m or "bond lengths" in m]
    truth = read_frames("builtin:ethanol_train")
    for f in data.train + data.val + data.test:
        assert f.energy == pytest.approx(truth[f.index].energy, abs=1e-6)
        np.testing.assert_allclose(f.positions, truth[f.index].positions, atol=1e-6)
        np.testing.assert_allclose(f.forces, truth[f.index].forces, atol=1e-6)


@pytest.mark.parametrize(
    ("units", "extra", "match"),
    [
        ({"tset": {"energy": "eV"}}, {}, r"neither a split .* did you mean 'test'"),
        ({"validation": {"energy": "eV"}}, {}, r"no validation files .* drawn from data.train"),
        ({"train": {"energy": "Hartre"}}, {}, r"data.units.train: unknown unit 'Hartre'"),
        ({"train": {"enrgy": "eV"}}, {}, r"'data.units.train.enrgy'; did you mean .*energy'"),
        (
            {"train": {"energy": "Hartree"}, "test": {"energy": "eV"}},
            {"test": "SAME"},
            r"listed in several splits whose units differ",
        ),
    ],
    ids=["unknown-key", "split-without-files", "unknown-unit", "unknown-field", "conflict"],
)
def test_bad_units_sections_are_config_errors(tmp_path, units, extra, match):
    from piwsl.config import config_from_dict

    path = write_ethanol(tmp_path / "a.xyz", n=4)
    data = {"train": path, "units": units, **{k: path for k in extra}}
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"data": data})


def test_units_declared_for_an_npz_file_are_an_error(tmp_path):
    from piwsl.training import prepare_data

    xyz = write_ethanol(tmp_path / "a.xyz", n=8)
    cfg = data_config(xyz, tmp_path, test="builtin:ethanol_test", energy_unit="Hartree")
    with pytest.raises(ConfigError, match=r"'builtin:ethanol_test' \(data.test\) is an rMD17"):
        prepare_data(cfg.data)


def test_evaluate_checks_the_units_of_its_file(tmp_path, caplog):
    from piwsl.evaluation import evaluate_checkpoint

    model = tmp_path / "m.pt"
    save_model(tiny_model(), model)
    path = write_ethanol(tmp_path / "bohr.xyz", n=6, length_unit=BOHR)
    with caplog.at_level("WARNING", logger="piwsl.training.run"):
        evaluate_checkpoint(model, path, tmp_path / "eval")
    (message,) = [r.getMessage() for r in caplog.records if "bond lengths" in r.getMessage()]
    assert "--length-unit Bohr" in message


# --- resume, inference geometry, MD start structures ---------------------------------------------


def test_resume_with_another_models_checkpoint_names_the_differences(tmp_path):
    """Another run's last.ckpt copied into a run directory, config unchanged: no 58 "size
    mismatch" lines, but the keys in which the runs differ."""
    import shutil

    from piwsl.training import train

    data = write_ethanol(tmp_path / "d.xyz", n=10)

    def cfg(run, features):
        from piwsl.config import config_from_dict

        return config_from_dict(
            {
                "data": {"train": data, "n_val": 2, "n_test": 0},
                "model": {"cutoff": 3.0, "hparams": {"features": features, "interactions": 1}},
                "training": {"max_epochs": 1, "batch_size": 4, "num_threads": 1},
                "output": {"run_dir": str(tmp_path / run), "progress_bar": False},
            }
        )

    train(cfg("b", 16), evaluate=False)
    # run "a" (its config.yaml as training writes it) holding run "b"'s last checkpoint
    (tmp_path / "a/checkpoints").mkdir(parents=True)
    (tmp_path / "a/config.yaml").write_text(cfg("a", 8).to_yaml())
    shutil.copy(tmp_path / "b/checkpoints/last.ckpt", tmp_path / "a/checkpoints/last.ckpt")
    with pytest.raises(ConfigError) as info:
        train(cfg("a", 8), resume=True, evaluate=False)
    text = str(info.value)
    assert "last.ckpt' belongs to another run" in text
    assert "model.hparams.features: 16 there, 8 now" in text
    assert "size mismatch" not in text


def test_calculator_warns_about_atoms_on_top_of_each_other():
    """Two atoms at one position used to give E = −3,768 eV without a word."""
    from ase import Atoms

    from piwsl.calculator import GeometryWarning

    atoms = Atoms("OH2", positions=[[0, 0, 0], [0, 0, 0], [0.76, 0.59, 0]])
    atoms.calc = PiwslCalculator(tiny_model())
    with pytest.warns(GeometryWarning, match=r"atoms 0 and 1 are 0\.000 Å apart"):
        atoms.get_forces()
    atoms.positions[1] = [0.0, 0.3, 0.0]
    atoms.get_forces()  # counted, not warned again
    assert atoms.calc.n_close_calls == 2
    atoms.positions[1] = [0.0, 0.96, 0.0]
    atoms.get_forces()
    assert atoms.calc.n_close_calls == 2


@pytest.mark.parametrize(
    ("symbols", "positions", "match"),
    [
        ("H", [[0, 0, 0]], "single H atom: MD of one atom"),
        ("OH2", [[0, 0, 0], [0, 0, 0.3], [0.76, 0.59, 0]], r"0\.300 Å apart"),
    ],
    ids=["single-atom", "close-atoms"],
)
def test_md_refuses_start_structures_it_cannot_run(tmp_path, capsys, symbols, positions, match):
    from ase import Atoms

    from piwsl.cli import main

    save_model(tiny_model(), tmp_path / "m.pt")
    ase.io.write(tmp_path / "start.xyz", Atoms(symbols, positions=positions))
    rc = main(["md", str(tmp_path / "m.pt"), str(tmp_path / "start.xyz"), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert match.replace("\\", "") in err or __import__("re").search(match, err)
    assert "start.xyz" in err and "frame 0" in err
    assert not (tmp_path / "md_report.json").exists()


# --- evaluation of frames without labels -----------------------------------------------------------


def test_evaluate_on_unlabelled_frames_writes_predictions(tmp_path, caplog):
    from piwsl.evaluation import evaluate_checkpoint

    model = tmp_path / "m.pt"
    save_model(tiny_model(), model)
    images = [a for a in ase.io.read(write_xyz(tmp_path / "l.xyz"), ":")]
    for atoms in images:
        atoms.info.pop("REF_energy")
        del atoms.arrays["REF_forces"]
    ase.io.write(tmp_path / "bare.xyz", images)
    with caplog.at_level("WARNING", logger="piwsl.evaluation"):
        metrics, _, plot = evaluate_checkpoint(model, tmp_path / "bare.xyz", tmp_path / "ev")
    assert "nothing to score" in caplog.text
    assert plot is None and metrics["energy_mae_meV"] is None
    written = ase.io.read(metrics["predictions"], ":")
    assert len(written) == 3
    frames = read_frames(tmp_path / "bare.xyz")
    expected = predict(tiny_model(), frames)
    np.testing.assert_allclose([a.info["PRED_energy"] for a in written], expected.energy)
    # extxyz stores per-atom values with 8 decimals (1e-8 eV/Å)
    np.testing.assert_allclose(written[2].arrays["PRED_forces"], expected.forces_of(2), atol=1e-7)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "training.learning_rate=1e-3"], "did you mean 'training.lr'?"),
        (["train", "training.epochs=3"], "did you mean 'training.max_epochs'?"),
        (["predict", "MODEL", "FRAMES", "out.xyz", "--length-unit", "bohr"], "'Bohr'"),
        (["predict", "MODEL", "missing.xyz", "out.xyz"], "missing.xyz': file does not exist"),
    ],
    ids=["learning_rate", "epochs", "predict-unit", "predict-missing-file"],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    from piwsl.cli import main

    save_model(tiny_model(), tmp_path / "m.pt")
    frames = write_xyz(tmp_path / "f.xyz")
    argv = [{"MODEL": str(tmp_path / "m.pt"), "FRAMES": frames}.get(a, a) for a in argv]
    argv = [str(tmp_path / a) if a.endswith(".xyz") and "/" not in a else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
