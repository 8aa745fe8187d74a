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
