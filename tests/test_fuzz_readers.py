"""Fuzzing the readers: mutated extxyz text and random npz archives either load as consistent,
finite frames or raise a :class:`~piwsl.errors.PiwslError` naming the file — never a raw library
exception, never a hang (a SIGALRM guard fails an example that takes over 10 s)."""

from __future__ import annotations

import contextlib
import io
import signal
import tempfile
import zipfile
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from piwsl.data import Frame, read_frames
from piwsl.errors import PiwslError
from piwsl.units import KCAL_MOL

FUZZ = settings(
    max_examples=80,
    deadline=None,  # a slow example is caught by the alarm below, not by timing noise
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)


@contextlib.contextmanager
def alarm(seconds: int = 10):
    def hang(signum, frame):
        raise TimeoutError(f"reader did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def record(what: str) -> None:
    """A hypothesis event (shown by --hypothesis-show-statistics) when inside a fuzz example."""
    if currently_in_test_context():
        event(what)


def check_outcome(path: Path) -> list[Frame] | None:
    """Read ``path``: frames that are consistent and finite, or a PiwslError naming the file."""
    try:
        with alarm():
            frames = read_frames(path)
    except PiwslError as err:
        assert str(path) in str(err) or path.name in str(err), err
        record(type(err).__name__)
        return None
    assert frames
    record("loaded")
    for f in frames:
        n = f.n_atoms
        assert n > 0 and f.positions.shape == (n, 3) and np.isfinite(f.positions).all()
        assert f.numbers.shape == (n,) and ((f.numbers >= 1) & (f.numbers <= 118)).all()
        assert f.energy is None or np.isfinite(f.energy)
        assert f.forces is None or (f.forces.shape == (n, 3) and np.isfinite(f.forces).all())
        assert f.cell.shape == (3, 3) and np.isfinite(f.cell).all()
    return frames


def valid_extxyz() -> str:
    images = []
    for k, name in enumerate(["H2O", "CH4", "NH3"]):
        atoms = molecule(name)
        atoms.info["REF_energy"] = -10.0 * (k + 1)
        atoms.arrays["REF_forces"] = np.full((len(atoms), 3), 0.1 * k)
        images.append(atoms)
    buffer = io.StringIO()
    ase.io.write(buffer, images, format="extxyz")
    return buffer.getvalue()


VALID = valid_extxyz()
TOKENS = ["nan", "NaN", "inf", "-inf", "1e999", "x", "", "0", "-1", "1" * 30, '"', "=", "{", "]"]


@st.composite
def mutated_extxyz(draw) -> bytes:
    text = VALID
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        kind = draw(
            st.sampled_from(
                [*("truncate", "garbage", "token", "number"), "count", "drop_line", "dup_line"]
            )
        )
        lines = text.splitlines(keepends=True)
        if kind == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif kind == "garbage":
            at = draw(st.integers(0, len(text)))
            junk = draw(st.binary(min_size=1, max_size=20)).decode("latin-1")
            text = text[:at] + junk + text[at:]
        elif kind == "token" and lines:
            k = draw(st.integers(0, len(lines) - 1))
            words = lines[k].split(" ")
            w = draw(st.integers(0, len(words) - 1))
            words[w] = draw(st.sampled_from(TOKENS))
            lines[k] = " ".join(words)
            if not lines[k].endswith("\n"):
                lines[k] += "\n"
            text = "".join(lines)
        elif kind == "number" and lines:  # a valid number in place of another: must load
            k = draw(st.integers(0, len(lines) - 1))
            words = lines[k].split(" ")
            numeric = [
                i
                for i, w in enumerate(words)
                if w.strip().lstrip("-").replace(".", "", 1).isdigit()
            ]
            if numeric:
                w = draw(st.sampled_from(numeric))
                value = draw(st.floats(-1e6, 1e6, allow_nan=False))
                words[w] = repr(value) + ("\n" if words[w].endswith("\n") else "")
                lines[k] = " ".join(words)
                text = "".join(lines)
        elif kind == "count" and lines:
            count_lines = [i for i, line in enumerate(lines) if line.strip().isdigit()]
            if count_lines:
                k = draw(st.sampled_from(count_lines))
                n = draw(st.sampled_from([-5, -1, 0, 1, 2, 4, 6, 10**6, 10**12]))
                lines[k] = f"{n}\n"
                text = "".join(lines)
        elif kind in ("drop_line", "dup_line") and lines:
            k = draw(st.integers(0, len(lines) - 1))
            lines[k : k + 1] = [] if kind == "drop_line" else [lines[k], lines[k]]
            text = "".join(lines)
        elif kind == "columns" and len(lines) > 2:
            k = draw(st.integers(2, len(lines) - 1))
            extra = draw(st.sampled_from([" 1.0", " 1.0 2.0", "", " H"]))
            cut = draw(st.booleans())
            words = lines[k].split()
            lines[k] = " ".join(words[:-1] if cut and words else words) + extra + "\n"
            text = "".join(lines)
    return text.encode("latin-1", errors="replace")


def test_the_unmutated_file_loads():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ok.xyz"
        path.write_text(VALID)
        frames = check_outcome(path)
    assert frames is not None and [f.n_atoms for f in frames] == [3, 5, 4]
    assert [f.energy for f in frames] == [-10.0, -20.0, -30.0]


@FUZZ
@given(data=mutated_extxyz())
def test_mutated_extxyz(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.xyz"
        path.write_bytes(data)
        check_outcome(path)


# --------------------------------------------------------------------------------------- npz
KEYS = ["nuclear_charges", "coords", "energies", "forces", "R", "z"]
DTYPES = st.sampled_from(
    [np.float64, np.float32, np.int64, np.int8, np.bool_, np.complex128, np.dtype("U3")]
)


@st.composite
def npz_archive(draw) -> bytes:
    n_frames, n_atoms = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    natural = {
        "nuclear_charges": (n_atoms,),
        "coords": (n_frames, n_atoms, 3),
        "energies": (n_frames,),
        "forces": (n_frames, n_atoms, 3),
    }
    arrays = {}
    chosen = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=6))
    if draw(st.integers(0, 9)) < 7:  # mostly with the required keys, so that some archives load
        chosen = ["nuclear_charges", "coords", *(k for k in chosen if k not in KEYS[:2])]
    for key in chosen:
        shape = natural.get(key, (n_atoms,))
        if draw(st.integers(0, 6)) == 0:  # sometimes a wrong shape
            shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, max_side=4))
        dtype = np.dtype(np.float64) if draw(st.integers(0, 3)) else np.dtype(draw(DTYPES))
        if key == "nuclear_charges" and draw(st.integers(0, 3)):
            elements = st.integers(-3, 130) if draw(st.integers(0, 3)) == 0 else st.integers(1, 9)
            arrays[key] = draw(hnp.arrays(np.int64, shape, elements=elements))
            continue
        if dtype.kind == "f":
            finite = st.floats(-1e3, 1e3, width=32)
            special = st.sampled_from([np.nan, np.inf, -np.inf])
            elements = finite if draw(st.integers(0, 2)) else st.one_of(finite, special)
        else:
            elements = None
        arrays[key] = draw(hnp.arrays(dtype, shape, elements=elements))
    if draw(st.integers(0, 9)) == 0:
        arrays["coords"] = np.array([object()], dtype=object)  # needs pickle: must be refused
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    if draw(st.integers(0, 5)) == 0:  # a damaged archive
        data = data[: draw(st.integers(0, len(data)))]
    return data


@FUZZ
@given(data=npz_archive())
def test_random_npz(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.npz"
        path.write_bytes(data)
        frames = check_outcome(path)
        if frames is None:
            return
        # what loaded is what the archive holds (kcal/mol → eV), nothing silently cast or cut
        with np.load(path, allow_pickle=False) as archive:
            coords = archive["coords"]
            numbers = archive["nuclear_charges"]
            energies = archive["energies"].reshape(-1) if "energies" in archive else None
        assert len(frames) == coords.shape[0]
        for k, f in enumerate(frames):
            np.testing.assert_array_equal(f.positions, coords[k].astype(np.float64))
            np.testing.assert_array_equal(f.numbers, numbers.reshape(-1))
            if energies is not None:
                assert f.energy == pytest.approx(float(energies[k]) * KCAL_MOL, rel=1e-12)


@pytest.mark.parametrize("payload", [b"", b"PK\x03\x04garbage", b"\x00" * 64])
def test_npz_that_is_not_an_archive(tmp_path, payload):
    path = tmp_path / "bad.npz"
    path.write_bytes(payload)
    assert check_outcome(path) is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("coords", np.zeros((1, 2, 3), dtype=np.complex128), "dtype complex128"),
        ("energies", np.array([True]), "dtype bool"),
        ("nuclear_charges", np.array([1.0, 6.5]), "not whole numbers"),
    ],
)
def test_npz_values_are_never_silently_cast(tmp_path, key, value, message):
    arrays = {
        "nuclear_charges": np.array([1, 6]),
        "coords": np.zeros((1, 2, 3)) + np.array([0.0, 0.0, 1.1]) * np.arange(2)[:, None],
        "energies": np.array([-1.0]),
    }
    arrays[key] = value
    path = tmp_path / "cast.npz"
    np.savez(path, **arrays)
    with pytest.raises(PiwslError, match=message) as info:
        read_frames(path)
    assert info.value.key == key and str(path) in str(info.value)


def test_npz_with_a_member_that_is_not_an_array(tmp_path):
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("coords.npy", b"not a numpy file")
        archive.writestr("nuclear_charges.npy", b"\x93NUMPY garbage")
    assert check_outcome(path) is None
