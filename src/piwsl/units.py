"""Units. piwsl works in eV and Å internally (ASE's convention) and converts at the edges."""

from __future__ import annotations

from ase import units as _ase_units

#: 1 kcal/mol in eV (ASE's CODATA value, 0.0433641 eV).
KCAL_MOL: float = float(_ase_units.kcal / _ase_units.mol)
#: 1 kJ/mol in eV.
KJ_MOL: float = float(_ase_units.kJ / _ase_units.mol)
#: 1 Hartree in eV.
HARTREE: float = float(_ase_units.Hartree)

ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": KCAL_MOL,
    "kJ/mol": KJ_MOL,
    "Hartree": HARTREE,
    "Ha": HARTREE,
}
LENGTH_UNITS: dict[str, float] = {
    "Å": 1.0,
    "Angstrom": 1.0,
    "A": 1.0,
    "Bohr": float(_ase_units.Bohr),
}

#: Stress units (→ eV/Å³). ``None`` in a config means the file's energy unit per length unit
#: cubed (:func:`stress_factor`).
STRESS_UNITS: dict[str, float] = {
    "eV/Å^3": 1.0,
    "eV/Å³": 1.0,
    "eV/A^3": 1.0,
    "meV/Å^3": 1e-3,
    "meV/Å³": 1e-3,
    "GPa": float(_ase_units.GPa),
    "kbar": 0.1 * float(_ase_units.GPa),
    "bar": float(_ase_units.bar),
    "Hartree/Bohr^3": HARTREE / float(_ase_units.Bohr) ** 3,
    "Ha/Bohr^3": HARTREE / float(_ase_units.Bohr) ** 3,
}


def energy_factor(unit: str) -> float:
    """Factor that converts an energy in ``unit`` to eV."""
    from piwsl.registry import suggest

    if unit not in ENERGY_UNITS:
        raise ValueError(f"unknown energy unit {unit!r}{suggest(unit, ENERGY_UNITS)}")
    return ENERGY_UNITS[unit]


def length_factor(unit: str) -> float:
    """Factor that converts a length in ``unit`` to Å."""
    from piwsl.registry import suggest

    if unit not in LENGTH_UNITS:
        raise ValueError(f"unknown length unit {unit!r}{suggest(unit, LENGTH_UNITS)}")
    return LENGTH_UNITS[unit]


def stress_factor(unit: str | None, energy: str = "eV", length: str = "Å") -> float:
    """Factor that converts a stress in ``unit`` to eV/Å³; ``unit=None``: ``energy`` per
    ``length`` cubed (the units the file declares for energies and lengths)."""
    from piwsl.registry import suggest

    if unit is None:
        return energy_factor(energy) / length_factor(length) ** 3
    if unit not in STRESS_UNITS:
        raise ValueError(f"unknown stress unit {unit!r}{suggest(unit, STRESS_UNITS)}")
    return STRESS_UNITS[unit]
