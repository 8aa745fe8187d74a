"""Readers: any ASE-readable file (extxyz first), ASE databases and rMD17 ``.npz``.

Every reader returns a list of :class:`~piwsl.data.frames.Frame` in eV and Å, with labels that are
present per frame and ``None`` where absent. A label key that is missing from *every* frame of a
file is an error when it was asked for explicitly; missing from *some* frames is allowed (masked)
and summarised once by :func:`label_coverage`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from piwsl.data.frames import Frame
from piwsl.errors import DataError
from piwsl.units import KCAL_MOL, energy_factor, length_factor, stress_factor

log = logging.getLogger(__name__)

BUILTIN = {
    "ethanol_train": "rmd17_ethanol_train_01.npz",
    "ethanol_test": "rmd17_ethanol_test_01.npz",
    # MP2/CBS(cc-pVDZ,cc-pVTZ) labels of rMD17 ethanol positions (benchmarks/mp2cbs_workflow.py)
    "ethanol_mp2cbs_train": "ethanol_mp2cbs_train.extxyz",  # 350 frames, energies only
    "ethanol_mp2cbs_test": "ethanol_mp2cbs_test.extxyz",  # 100 frames, energies + forces
    # GFN1-xTB crystal snapshots with energies, forces and stress (benchmarks/materials_data.py)
    "materials_gfn1_train": "materials_gfn1_train.extxyz",
    "materials_gfn1_test": "materials_gfn1_test.extxyz",
    "materials_gfn1_relaxed": "materials_gfn1_relaxed.extxyz",  # the relaxed reference cells
}

#: Keys tried, in order, when no energy/forces key is given (MACE's ``REF_`` convention first).
DEFAULT_ENERGY_KEYS = ("REF_energy", "energy")
DEFAULT_FORCES_KEYS = ("REF_forces", "forces")
DEFAULT_STRESS_KEYS = ("REF_stress", "stress")


def resolve_path(path: str | Path) -> Path:
    """Resolve ``builtin:NAME`` to the packaged data file; check that the file exists."""
    from piwsl.registry import builtin_file

    text = str(path)
    packaged = builtin_file(text, BUILTIN, "piwsl.datasets", DataError, "data set")
    if packaged is not None:
        return packaged
    p = Path(text).expanduser()
    if not p.exists():
        raise DataError("file does not exist", file=text, hint="check the path in your config")
    if p.is_dir():
        raise DataError("is a directory, not a data file", file=text)
    return p


@dataclass
class LabelKeys:
    """Where labels live in a file, and in which units they are stored."""

    energy_key: str | None = None  # None: try DEFAULT_ENERGY_KEYS
    forces_key: str | None = None  # None: try DEFAULT_FORCES_KEYS
    energy_unit: str = "eV"
    length_unit: str = "Å"
    stress_key: str | None = None  # None: try DEFAULT_STRESS_KEYS
    #: None: the energy unit per length unit cubed (eV/Å³ by default)
    stress_unit: str | None = None


def read_frames(
    path: str | Path,
    keys: LabelKeys | None = None,
    index: str | int | slice = ":",
    fmt: str | None = None,
) -> list[Frame]:
    """Read all frames of ``path`` (extxyz, any ASE format, ``.db``, rMD17 ``.npz``)."""
    keys = keys or LabelKeys()
    p = resolve_path(path)
    name = str(path)
    if p.suffix == ".npz" and fmt is None:
        frames = read_rmd17_npz(p, source=name)
    elif p.suffix == ".db" and fmt is None:
        frames = _read_ase_db(p, keys, name)
    else:
        frames = _read_ase_file(p, keys, name, index, fmt)
    if not frames:
        raise DataError("file contains no frames", file=name)
    return frames


def _load_npz_arrays(path: str | Path, source: str) -> dict[str, np.ndarray]:
    """The rMD17 arrays of an ``.npz`` (file closed afterwards); real-number dtypes only."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the with-block below)
    except OSError as err:
        raise DataError(f"cannot open file: {err}", file=source) from err
    with handle:
        try:
            data = np.load(handle, allow_pickle=False)
            keys = set(data.files)
        except Exception as err:  # numpy raises many types for corrupt archives
            raise DataError(f"cannot read npz archive: {err}", file=source) from err
        with data:
            for required in ("nuclear_charges", "coords"):
                if required not in keys:
                    raise DataError(
                        "required key missing from the npz archive",
                        file=source,
                        key=required,
                        hint="rMD17 files hold nuclear_charges, coords, energies, forces",
                    )
            arrays: dict[str, np.ndarray] = {}
            for key in ("nuclear_charges", "coords", "energies", "forces"):
                if key not in keys:
                    continue
                try:
                    arrays[key] = data[key]
                except Exception as err:  # a member that is not a readable .npy array
                    raise DataError(
                        f"cannot decode npz array: {err}", file=source, key=key
                    ) from err
                if arrays[key].dtype.kind not in "iuf":  # complex, bool, text, objects
                    raise DataError(
                        f"array has dtype {arrays[key].dtype}, expected real numbers",
                        file=source,
                        key=key,
                    )
    return arrays


def read_rmd17_npz(path: str | Path, source: str | None = None) -> list[Frame]:
    """Read an rMD17 ``.npz`` (kcal/mol and kcal/mol/Å on disk → eV and eV/Å)."""
    source = source or str(path)
    arrays = _load_npz_arrays(path, source)
    charges = np.asarray(arrays["nuclear_charges"])
    if charges.dtype.kind == "f" and not np.all(
        np.isfinite(charges) & (charges == np.round(charges))
    ):
        raise DataError("nuclear charges are not whole numbers", file=source, key="nuclear_charges")
    try:
        numbers = charges.astype(np.int64).reshape(-1)
        coords = np.asarray(arrays["coords"], dtype=np.float64)
        energies = (
            np.asarray(arrays["energies"], dtype=np.float64).reshape(-1)
            if "energies" in arrays
            else None
        )
        forces = np.asarray(arrays["forces"], dtype=np.float64) if "forces" in arrays else None
    except Exception as err:
        raise DataError(f"cannot decode npz arrays: {err}", file=source) from err
    if coords.ndim != 3 or coords.shape[1:] != (numbers.shape[0], 3):
        raise DataError(
            f"coords have shape {coords.shape}, expected (n_frames, {numbers.shape[0]}, 3)",
            file=source,
            key="coords",
        )
    n_frames = coords.shape[0]
    if energies is not None and energies.shape[0] != n_frames:
        raise DataError(
            f"{energies.shape[0]} energies for {n_frames} frames", file=source, key="energies"
        )
    if forces is not None and forces.shape != coords.shape:
        raise DataError(
            f"forces have shape {forces.shape}, expected {coords.shape}", file=source, key="forces"
        )
    frames = []
    for k in range(n_frames):
        frames.append(
            Frame(
                numbers=numbers,
                positions=coords[k],
                energy=None if energies is None else energies[k] * KCAL_MOL,
                forces=None if forces is None else forces[k] * KCAL_MOL,
                source=source,
                index=k,
            )
        )
    return frames


def _read_ase_file(p: Path, keys: LabelKeys, name: str, index, fmt: str | None) -> list[Frame]:
    import ase.io

    try:
        images = ase.io.read(str(p), index=index, format=fmt)
    except Exception as err:  # ASE raises many types for unparsable files
        raise DataError(
            f"cannot parse file ({type(err).__name__}: {err})",
            file=name,
            frame=_first_unreadable_frame(p, fmt),
            hint="is it complete and in a format ASE can read (extxyz first)?",
        ) from err
    if not isinstance(images, list):
        images = [images]
    _warn_if_truncated(p, name, len(images))
    return atoms_to_frames(images, keys, source=name)


def _first_unreadable_frame(p: Path, fmt: str | None) -> int | None:
    """Index of the first frame ASE fails on (frames before it parse), or None if unknown."""
    import ase.io

    count = 0
    try:
        for _ in ase.io.iread(str(p), index=":", format=fmt):
            count += 1
    except Exception:  # the same failure as the full read; we only want its position
        return count
    return None


def _warn_if_truncated(p: Path, name: str, n_frames: int) -> None:
    """Text files cut off at a frame boundary parse as fewer frames: warn when the last byte is
    not a newline (files written by ASE always end with one)."""
    if p.suffix.lower() not in {".xyz", ".extxyz"}:
        return
    with open(p, "rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return
        handle.seek(-1, 2)
        last = handle.read(1)
    if last != b"\n":
        log.warning(
            "file %r does not end with a newline: it may be truncated (read %d complete frames)",
            name,
            n_frames,
        )


def _read_ase_db(p: Path, keys: LabelKeys, name: str) -> list[Frame]:
    import ase.db

    try:
        with ase.db.connect(str(p)) as db:
            images = []
            for row in db.select():
                atoms = row.toatoms(add_additional_information=True)
                info = atoms.info.pop("key_value_pairs", {})
                atoms.info.update(info)
                for key, value in (atoms.info.pop("data", {}) or {}).items():
                    # per-atom arrays (e.g. REF_forces) stored in the row's data go to arrays
                    array = np.asarray(value) if isinstance(value, (list, np.ndarray)) else None
                    per_atom = (
                        array is not None
                        and array.ndim >= 1
                        and (
                            array.shape[0] == len(atoms)
                            or (array.ndim == 2 and array.shape[1] == 3)
                        )
                    )  # (N, 3)-like arrays go to arrays even when mis-sized, to be reported
                    if per_atom:
                        atoms.arrays[key] = array
                    else:
                        atoms.info[key] = value
                images.append(atoms)
    except Exception as err:
        raise DataError(f"cannot read ASE database ({err})", file=name) from err
    return atoms_to_frames(images, keys, source=name)


def _lookup(atoms, key: str, per_atom: bool):
    """A label from info/arrays (``REF_*``) or from the attached single-point calculator."""
    store = atoms.arrays if per_atom else atoms.info
    if key in store:
        return store[key]
    if not per_atom and key in atoms.info:
        return atoms.info[key]
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


def _first(atoms, keys: tuple[str, ...], per_atom: bool) -> tuple[str | None, object]:
    """(key, value) of the first of ``keys`` the atoms carry, else (None, None)."""
    return next(
        ((key, v) for key in keys if (v := _lookup(atoms, key, per_atom)) is not None),
        (None, None),
    )


def energy_label(value, factor: float, source: str, frame: int, key: str | None) -> float:
    """An energy label in eV (``factor``: the file's energy unit in eV)."""
    try:
        energy = float(np.asarray(value, dtype=np.float64).reshape(())) * factor
    except (TypeError, ValueError) as err:
        raise DataError(
            f"energy is not a number: {value!r}", file=source, frame=frame, key=key
        ) from err
    if not np.isfinite(energy):
        raise DataError(f"energy is {energy}", file=source, frame=frame, key=key)
    return energy


def forces_label(
    value, n_atoms: int, factor: float, source: str, frame: int, key: str | None
) -> np.ndarray:
    """A force label [n_atoms, 3] in eV/Å (``factor``: the file's force unit in eV/Å)."""
    try:
        forces = np.asarray(value, dtype=np.float64) * factor
    except (TypeError, ValueError) as err:
        raise DataError("forces are not numeric", file=source, frame=frame, key=key) from err
    if forces.shape != (n_atoms, 3):
        raise DataError(
            f"forces have shape {forces.shape} but the frame has {n_atoms} atoms",
            file=source,
            frame=frame,
            key=key,
        )
    if not np.all(np.isfinite(forces)):
        bad = int(np.argwhere(~np.isfinite(forces))[0, 0])
        raise DataError(f"non-finite force on atom {bad}", file=source, frame=frame, key=key)
    return forces


def _fixed_atoms(atoms) -> np.ndarray | None:
    fixed = None
    for constraint in atoms.constraints:
        if type(constraint).__name__ == "FixAtoms":
            fixed = np.zeros(len(atoms), dtype=bool)
            fixed[constraint.index] = True
    return fixed


def atoms_to_frames(images, keys: LabelKeys, source: str = "<memory>") -> list[Frame]:
    """Convert ASE ``Atoms`` to frames, reading the configured label keys (energy, forces and
    stress, each converted from the file's units)."""
    e_factor = energy_factor(keys.energy_unit)
    l_factor = length_factor(keys.length_unit)
    s_factor = stress_factor(keys.stress_unit, keys.energy_unit, keys.length_unit)
    energy_keys = (keys.energy_key,) if keys.energy_key else DEFAULT_ENERGY_KEYS
    forces_keys = (keys.forces_key,) if keys.forces_key else DEFAULT_FORCES_KEYS
    stress_keys = (keys.stress_key,) if keys.stress_key else DEFAULT_STRESS_KEYS
    frames: list[Frame] = []
    for k, atoms in enumerate(images):
        (e_key, energy), (f_key, forces) = (
            _first(atoms, energy_keys, False),
            _first(atoms, forces_keys, True),
        )
        s_key, stress = _first(atoms, stress_keys, False)
        if energy is not None:
            energy = energy_label(energy, e_factor, source, k, e_key)
        if forces is not None:
            forces = forces_label(forces, len(atoms), e_factor / l_factor, source, k, f_key)
        if stress is not None:
            stress = stress_tensor(stress, s_factor, source, k, s_key)
        frames.append(
            Frame(
                numbers=atoms.numbers,
                positions=atoms.positions * l_factor,
                cell=np.asarray(atoms.cell.array) * l_factor,
                pbc=atoms.pbc,
                energy=energy,
                forces=forces,
                stress=stress,
                fixed=_fixed_atoms(atoms),
                source=source,
                index=k,
            )
        )
    labels = ((keys.energy_key, "energy"), (keys.forces_key, "forces"), (keys.stress_key, "stress"))
    for key, attr in labels:
        if key and frames and all(getattr(f, attr) is None for f in frames):
            raise DataError(
                f"label key absent from every frame ({attr})",
                file=source,
                key=key,
                hint="check the key name (e.g. REF_energy vs energy) or drop it from the config",
            )
    return frames


def stress_tensor(value, factor: float, source: str, frame: int, key: str | None) -> np.ndarray:
    """A stress label as a 3×3 tensor in eV/Å³: Voigt (6 numbers, ASE's order xx yy zz yz xz
    xy), 9 numbers (row by row) or 3×3, times ``factor`` (the file's stress unit in eV/Å³)."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError("stress is not numeric", file=source, frame=frame, key=key) from err
    if array.size == 6:
        xx, yy, zz, yz, xz, xy = array.reshape(6)
        array = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    elif array.size == 9:
        array = array.reshape(3, 3)
    else:
        raise DataError(
            f"stress has {array.size} numbers (shape {array.shape}); expected Voigt 6 "
            "(xx yy zz yz xz xy), 9 or 3×3",
            file=source,
            frame=frame,
            key=key,
        )
    if not np.all(np.isfinite(array)):
        raise DataError("non-finite stress", file=source, frame=frame, key=key)
    return array * factor


@dataclass
class LabelCoverage:
    """How many frames carry which labels."""

    n_frames: int
    n_energy: int
    n_forces: int
    n_both: int
    n_none: int
    n_stress: int = 0

    def summary(self, name: str = "data") -> str:
        stress = f", stress {self.n_stress}" if self.n_stress else ""
        return (
            f"{name}: {self.n_frames} frames — energy {self.n_energy}, forces {self.n_forces}, "
            f"both {self.n_both}{stress}, unlabelled {self.n_none}"
        )


def label_coverage(frames: list[Frame]) -> LabelCoverage:
    e = np.array([f.has_energy for f in frames], dtype=bool)
    fo = np.array([f.has_forces for f in frames], dtype=bool)
    return LabelCoverage(
        n_frames=len(frames),
        n_energy=int(e.sum()),
        n_forces=int(fo.sum()),
        n_both=int((e & fo).sum()),
        n_none=int((~e & ~fo).sum()),
        n_stress=sum(f.has_stress for f in frames),
    )
