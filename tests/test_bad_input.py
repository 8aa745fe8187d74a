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
