"""The model contract.

A piwsl potential is an :class:`EnergyModel` (any network that maps a batch to per-atom energies,
and optionally direct forces) wrapped by :class:`~piwsl.models.forces.ForceField`, which returns::

    {"energy": Tensor[n_structures] (float64, eV), "forces": Tensor[n_atoms, 3] (eV/Å)}

An energy model declares ``cutoff`` (Å), ``elements`` (atomic numbers it knows) and
``direct_forces`` (True if it predicts forces with its own head). The per-element reference
energies (E0s) and the normalisation (``energy_shift`` per atom, ``energy_scale``) live here, so
that every backend treats them alike:

    E = Σ_i ( E0[Z_i] + shift + scale · e_i ),   F_direct = scale · f_i

where ``e_i`` / ``f_i`` are what the network computes in :meth:`EnergyModel.atomic_outputs`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from ase.data import chemical_symbols
from torch import nn

from piwsl.data.batch import Batch, scatter_sum
from piwsl.errors import UnknownElementError

MAX_Z = 119

_CHECK_SPECIES: ContextVar[bool] = ContextVar("piwsl_check_species", default=True)


@contextmanager
def trusted_species() -> Iterator[None]:
    """Skip the unknown-element check of :meth:`EnergyModel.species` inside this block.

    The check reads a flag back from the device (a synchronisation on a GPU) and cannot be traced
    for compilation; training uses this block because its data's elements were checked when the
    data was prepared (a new model knows exactly the training elements; a fine-tuned one is
    checked against them).
    """
    token = _CHECK_SPECIES.set(False)
    try:
        yield
    finally:
        _CHECK_SPECIES.reset(token)


class EnergyModel(nn.Module):
    """Base class of every backend: per-atom outputs → total energy (+ direct forces).

    Subclasses implement :meth:`atomic_outputs` and call ``super().__init__(elements, cutoff)``.
    ``hparams`` must hold everything the registry needs to rebuild the model.
    """

    direct_forces: bool = False

    def __init__(self, elements: list[int], cutoff: float) -> None:
        super().__init__()
        if not cutoff > 0:
            from piwsl.errors import ConfigError

            raise ConfigError(f"cutoff must be positive, got {cutoff} Å")
        if not elements:
            from piwsl.errors import ConfigError

            raise ConfigError("a model needs at least one element")
        self.cutoff = float(cutoff)
        self.elements = sorted(int(z) for z in elements)
        species = torch.full((MAX_Z,), -1, dtype=torch.long)
        species[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("species_index", species, persistent=False)
        self.register_buffer("e0", torch.zeros(MAX_Z, dtype=torch.float64))
        self.register_buffer("energy_shift", torch.zeros((), dtype=torch.float64))
        self.register_buffer("energy_scale", torch.ones((), dtype=torch.float64))
        self.hparams: dict[str, Any] = {}

    _FLOAT64_BUFFERS = ("e0", "energy_shift", "energy_scale")

    def _apply(self, fn, recurse: bool = True):
        # ``model.float()`` / ``.to(float32)`` must not round the reference energies: E0s of
        # ~1e4 eV lose ~1e-3 eV in float32. Keep them float64 (only their device follows).
        kept = {name: self._buffers[name] for name in self._FLOAT64_BUFFERS}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != torch.float64:
                self._buffers[name] = old.to(device=new.device)
        return self

    @property
    def n_species(self) -> int:
        return len(self.elements)

    def species(self, numbers: torch.Tensor) -> torch.Tensor:
        """Index of each atom's element in ``elements``; raises for elements the model lacks."""
        index = self.species_index[numbers]
        if _CHECK_SPECIES.get() and bool((index < 0).any()):
            unknown = sorted({int(z) for z in numbers[index < 0].tolist()})
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            known = ", ".join(chemical_symbols[z] for z in self.elements)
            raise UnknownElementError(
                f"the model was not trained on {names}; it knows {known}. Retrain with these "
                "elements in the training data."
            )
        return index

    def set_reference(self, e0s: dict[int, float], shift: float = 0.0, scale: float = 1.0) -> None:
        """Set per-element E0s (eV), the per-atom shift (eV) and the energy scale (eV)."""
        with torch.no_grad():
            self.e0.zero_()
            for z, value in e0s.items():
                self.e0[int(z)] = float(value)
            self.energy_shift.fill_(float(shift))
            self.energy_scale.fill_(float(scale))

    def atomic_outputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-atom energies ``e_i`` [N] and, for direct-force models, forces ``f_i`` [N, 3]."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.species(batch.numbers)  # fail loudly on unknown elements
        e_atom, f_atom = self.atomic_outputs(batch)
        per_atom = (
            self.e0[batch.numbers]
            + self.energy_shift
            + self.energy_scale * e_atom.to(torch.float64)
        )
        out = {"energy": scatter_sum(per_atom, batch.batch, batch.n_structures)}
        if self.direct_forces:
            if f_atom is None:
                raise RuntimeError(f"{type(self).__name__} declares direct forces but gave none")
            out["forces"] = self.energy_scale.to(f_atom.dtype) * f_atom
        return out


def validate_output(output: dict[str, torch.Tensor], batch: Batch, forces: bool = True) -> None:
    """Check a model output against the contract (shapes, dtypes, finiteness)."""
    if "energy" not in output:
        raise AssertionError("model output has no 'energy'")
    energy = output["energy"]
    if energy.shape != (batch.n_structures,):
        raise AssertionError(
            f"energy has shape {tuple(energy.shape)}, expected ({batch.n_structures},)"
        )
    if forces:
        if "forces" not in output:
            raise AssertionError("model output has no 'forces'")
        f = output["forces"]
        if f.shape != batch.positions.shape:
            raise AssertionError(
                f"forces have shape {tuple(f.shape)}, expected {tuple(batch.positions.shape)}"
            )
    for key, value in output.items():
        if not bool(torch.isfinite(value).all()):
            raise AssertionError(f"model output {key!r} is not finite")
