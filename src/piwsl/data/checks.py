"""Plausibility checks on data that may be right but usually is not (warnings, never errors).

- :func:`find_duplicates`: frames of the validation/test sets equal to training frames;
- :func:`find_close_atoms`: atoms closer than :data:`MIN_DISTANCE` Å (a broken structure);
- :func:`guess_length_unit`: bond lengths of a whole file about 1.89× (Bohr read as Å) or
  0.53× (Å read as Bohr) the covalent ones;
- :func:`guess_energy_unit`: energies of a whole file that look like all-electron totals in
  another unit than the declared one.

The unit checks run per file (:func:`check_file_units`): files of one run may store different
units (``data.units``), and pooling them would let a file in the wrong unit hide among correct
ones. :func:`check_plausibility` runs all of them and returns one message per finding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from piwsl.data.frames import Frame
from piwsl.units import ENERGY_UNITS, HARTREE, LENGTH_UNITS

#: Atoms closer than this (Å) are physically absurd: the shortest bond, H–H in H₂, is 0.74 Å and
#: even strongly compressed or high-energy MD structures stay above ~0.6 Å.
MIN_DISTANCE = 0.5
#: Positions are rounded to this many decimals (Å) when looking for duplicate frames.
DUPLICATE_DECIMALS = 5
#: Relative tolerance of the all-electron energy estimate used by :func:`guess_energy_unit`.
UNIT_TOLERANCE = 0.12
#: Candidate storage units, each with the name users write in ``data.energy_unit``.
_UNIT_CANDIDATES = {
    "eV": 1.0,
    "Hartree": HARTREE,
    "kcal/mol": ENERGY_UNITS["kcal/mol"],
    "kJ/mol": ENERGY_UNITS["kJ/mol"],
    "meV": 1e-3,
}
#: Bond-length ratio (nearest-neighbour distance / sum of covalent radii, median over a file)
#: outside [SHORT, LONG] means a length-unit mix-up. Correct structures sit at 0.95–1.1 (rMD17
#: ethanol 1.02; 500 K MD ≤ 1.15); Bohr read as Å gives 1.89×, Å read as Bohr 0.53×.
BOND_RATIO_LONG = 1.4
BOND_RATIO_SHORT = 0.75
#: Frames per file the bond-length check looks at (evenly spaced), to stay fast on big files.
BOND_SAMPLE = 50
#: Noble gases have no covalent bonds: their nearest neighbours are van der Waals distances.
_NOBLE = (2, 10, 18, 36, 54, 86)
_MAX_LISTED = 8


def duplicate_key(frame: Frame) -> bytes:
    """A hash key of atomic numbers and positions rounded to 1e-5 Å (labels ignored)."""
    pos = np.round(frame.positions, DUPLICATE_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    digest = hashlib.blake2b(frame.numbers.astype(np.int64).tobytes(), digest_size=16)
    digest.update(pos.astype(np.float64).tobytes())
    return digest.digest()


def where(f: Frame) -> str:
    return f"{f.source!r} frame {f.index}"


def listed(items: list[str]) -> str:
    more = f" … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return "; ".join(items[:_MAX_LISTED]) + more


def find_duplicates(train: list[Frame], others: dict[str, list[Frame]]) -> list[str]:
    """``"<split> 'file' frame k = train 'file' frame m"`` for every frame of ``others`` whose
    numbers and positions (rounded to 1e-5 Å) equal those of a training frame."""
    seen: dict[bytes, Frame] = {}
    for f in train:
        seen.setdefault(duplicate_key(f), f)
    found = []
    for name, frames in others.items():
        for f in frames:
            twin = seen.get(duplicate_key(f))
            if twin is not None:
                found.append(f"{name} {where(f)} = train {where(twin)}")
    return found


def _pairs(frame: Frame, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre i, neighbour j, distance Å) of every pair closer than ``cutoff``, periodic images
    included."""
    from piwsl.data.neighbors import neighbor_list

    edge_index, shifts = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff)
    i, j = edge_index
    vec = frame.positions[j] - frame.positions[i] + shifts @ frame.cell
    return i, j, np.linalg.norm(vec, axis=1)


def min_distance(frame: Frame, below: float = MIN_DISTANCE) -> float | None:
    """The shortest interatomic distance (Å, periodic images included) if it is < ``below``."""
    if frame.n_atoms < 2 and not frame.pbc.any():
        return None
    _, _, dist = _pairs(frame, below)
    return float(dist.min()) if dist.size else None


def find_close_atoms(frames: list[Frame], threshold: float = MIN_DISTANCE) -> list[str]:
    """``"'file' frame k: 0.31 Å"`` for every frame with two atoms closer than ``threshold``."""
    found = []
    for f in frames:
        d = min_distance(f, threshold)
        if d is not None:
            found.append(f"{where(f)}: {d:.3f} Å")
    return found


def bond_length_ratio(frame: Frame) -> float | None:
    """Median over atoms of min_j d_ij / (r_i + r_j), r the covalent radii (ASE's, Å).

    About 1 for any bonded structure in Å: every atom of a molecule or solid has a nearest
    neighbour at roughly its covalent bond length. None where it says nothing (a single atom,
    only noble gases). Neighbours are looked for up to ``BOND_RATIO_LONG`` × the largest radius
    sum; an atom with none that close counts as "too far" (``inf``).
    """
    from ase.data import covalent_radii

    bonded = ~np.isin(frame.numbers, _NOBLE)
    if bonded.sum() < 2 and not (frame.pbc.any() and bonded.any()):
        return None
    radii = covalent_radii[frame.numbers]
    reach = 1.05 * BOND_RATIO_LONG * 2.0 * float(radii.max())
    i, j, dist = _pairs(frame, reach)
    ratio = dist / (radii[i] + radii[j])
    best = np.full(frame.n_atoms, np.inf)
    np.minimum.at(best, i, ratio)
    return float(np.median(best[bonded]))


def guess_length_unit(frames: list[Frame], declared: str) -> tuple[str, float] | None:
    """(likely unit, median bond-length ratio) when a file's lengths look like another unit.

    The median of :func:`bond_length_ratio` over up to :data:`BOND_SAMPLE` frames: above
    :data:`BOND_RATIO_LONG` the positions look like Bohr read as Å (ratio ≈ 1.89), below
    :data:`BOND_RATIO_SHORT` like Å read as Bohr (≈ 0.53). ``declared`` is the unit the file was
    read in. None when the bonds look right or nothing can be said.
    """
    if not frames:
        return None
    step = max(1, len(frames) // BOND_SAMPLE)
    ratios = [r for f in frames[::step] if (r := bond_length_ratio(f)) is not None]
    if not ratios:
        return None
    median = float(np.median(ratios))
    bohr = LENGTH_UNITS["Bohr"]
    declared_factor = LENGTH_UNITS.get(declared, 1.0)
    if median > BOND_RATIO_LONG and declared_factor == 1.0:
        return "Bohr", median
    if median < BOND_RATIO_SHORT and declared_factor == bohr:
        return "Å", median
    if median > BOND_RATIO_LONG or median < BOND_RATIO_SHORT:
        return "?", median
    return None


def all_electron_energy(numbers: np.ndarray) -> float:
    """Estimate (eV) of the non-relativistic all-electron energy of the free atoms.

    Thomas–Fermi with the Scott and Schwinger corrections, per atom
    ``E(Z) ≈ −0.7687 Z^{7/3} + 0.5 Z² − 0.2699 Z^{5/3}`` Hartree: within ~2 % of Hartree–Fock
    atomic energies from C to Cu (C −37.6 vs −37.7, O −75.0 vs −74.8, Cu −1641 vs −1639 Ha).
    Chemical binding changes a molecule's total by well under 1 %.
    """
    z = np.asarray(numbers, dtype=np.float64)
    per_atom = -0.7687 * z ** (7 / 3) + 0.5 * z**2 - 0.2699 * z ** (5 / 3)
    return float(per_atom.sum()) * HARTREE


def guess_energy_unit(frames: list[Frame], declared: str) -> tuple[str, float] | None:
    """(unit, median ratio) when the energies look like all-electron totals in another unit.

    The heuristic: ``r = E / E_ae`` with ``E`` the energy as read (declared unit → eV) and
    ``E_ae`` :func:`all_electron_energy`. All-electron total energies (Gaussian, ORCA, PySCF,
    rMD17) have ``r ≈ 1`` in eV. Read in the wrong unit, ``r`` is off by the unit ratio: ≈ 1/27.2
    for Hartree values declared as eV, ≈ 23.1 for kcal/mol, ≈ 96.5 for kJ/mol. rMD17 ethanol:
    E = −4210 eV (−468 eV/atom), E_ae = −4178 eV, r = 1.008; the same numbers stored in Hartree
    (−154.7) give r = 0.037, in kcal/mol (−97 080) r = 23.2. A unit is suggested only when at
    least 90 % of the energy-labelled frames lie within ±12 % of the same hypothesis ``r = 1/k``
    (k converting the candidate unit to eV, relative to the declared one), and it differs from the
    declared unit. Energies with a reference subtracted (E0s, atomisation energies) or from
    pseudopotential codes (VASP, QE) have ``|r| ≪ 1`` (VASP ethanol ≈ 0.011) and match nothing,
    except by coincidence the Hartree window (r ≈ 0.037): hence a warning, not an error.
    """
    ratios = np.array([f.energy / all_electron_energy(f.numbers) for f in frames if f.has_energy])
    if ratios.size == 0:
        return None
    declared_factor = ENERGY_UNITS.get(declared, 1.0)
    for unit, factor in _UNIT_CANDIDATES.items():
        # stored in `unit`, read as `declared`: r = factor(declared) / factor(unit)
        expected = declared_factor / factor
        close = np.abs(ratios / expected - 1.0) < UNIT_TOLERANCE
        if close.mean() >= 0.9:
            same = factor == declared_factor
            return None if same else (unit, float(np.median(ratios)))
    return None


def by_file(frames: list[Frame]) -> dict[str, list[Frame]]:
    """Frames grouped by their source file, in order of first appearance (each frame once)."""
    groups: dict[str, dict[int, Frame]] = {}
    for f in frames:
        groups.setdefault(f.source, {}).setdefault(f.index, f)
    return {source: list(group.values()) for source, group in groups.items()}


#: (energy unit, length unit) a file was read in, by its source name.
UnitsOf = Callable[[str], tuple[str, str]]
#: How to declare a unit for a file: (source, "energy" or "length", unit) → what to set.
UnitFix = Callable[[str, str, str], str]


def check_file_units(frames: list[Frame], units_of: UnitsOf, fix: UnitFix) -> list[str]:
    """One message per file whose lengths or energies look like another unit than declared.

    ``units_of(source)`` gives the (energy, length) unit names the file was read in; ``fix``
    says how to declare another unit for it (a config key, a command-line option).
    """
    messages = []
    for source, group in by_file(frames).items():
        energy_unit, length_unit = units_of(source)
        length = guess_length_unit(group, length_unit)
        if length is not None:
            unit, ratio = length
            todo = (
                f"declare it: {fix(source, 'length', unit)}"
                if unit != "?"
                else "check the structures and their length unit"
            )
            messages.append(
                f"file {source!r}: bond lengths are {ratio:.2f}× the covalent ones (median over "
                f"its frames; correct structures: 0.95–1.1×) with positions read in "
                f"{length_unit}: the file probably stores another length unit; {todo}"
            )
        labelled = [f for f in group if f.has_energy]
        guess = guess_energy_unit(labelled, energy_unit)
        if guess is not None:
            unit, ratio = guess
            example = labelled[0]
            messages.append(
                f"file {source!r}: energies look like {unit}, but they were read as "
                f"{energy_unit!r}: e.g. {where(example)} reads as {example.energy:.6g} eV for "
                f"{example.n_atoms} atoms, while all-electron energies of these atoms are about "
                f"{all_electron_energy(example.numbers):.6g} eV (median ratio {ratio:.4g}). "
                f"If the file stores {unit}, declare it: {fix(source, 'energy', unit)}"
            )
    return messages


def check_plausibility(
    train: list[Frame], others: dict[str, list[Frame]], units_of: UnitsOf, fix: UnitFix
) -> list[str]:
    """One message per kind of implausible data (see the module docstring), unit checks per
    file; the caller logs them."""
    messages: list[str] = []
    dups = find_duplicates(train, others)
    if dups:
        messages.append(
            f"{len(dups)} validation/test frames duplicate training frames (same numbers and "
            f"positions to 1e-5 Å): {listed(dups)}. Their errors measure memorisation, not "
            "generalisation: remove them from one of the sets"
        )
    everything = train + [f for frames in others.values() for f in frames]
    close = find_close_atoms(everything)
    if close:
        messages.append(
            f"{len(close)} frames have atoms closer than {MIN_DISTANCE} Å (physically absurd; "
            f"wrong length unit, e.g. Bohr read as Å, or broken structures?): {listed(close)}"
        )
    messages.extend(check_file_units(everything, units_of, fix))
    return messages


def check_read_file(frames: list[Frame], path: str, keys: object = None) -> list[str]:
    """:func:`check_file_units` for a file read on its own (``piwsl evaluate`` / ``predict``)
    with ``keys`` (a :class:`~piwsl.data.LabelKeys`); rMD17 ``.npz`` files are always converted
    from kcal/mol and Å."""
    from piwsl.data.readers import resolve_path

    units = (getattr(keys, "energy_unit", "eV"), getattr(keys, "length_unit", "Å"))
    if resolve_path(path).suffix == ".npz":
        units = ("eV", "Å")

    def fix(source: str, kind: str, unit: str) -> str:
        return f"read it with {kind}_unit={unit} (command line: --{kind}-unit {unit})"

    return check_file_units(frames, lambda _: units, fix)
