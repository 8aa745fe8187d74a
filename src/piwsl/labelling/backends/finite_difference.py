"""Forces of any energy backend by central finite differences of its energy
(``finite_difference_forces=true``): the frame's 6N + 1 energies are independent subtasks."""

from __future__ import annotations

from typing import Any

import numpy as np

from piwsl.errors import ConfigError
from piwsl.labelling.backends.base import Backend

#: default displacement of the finite-difference forces, Å
FD_STEP: float = 0.005


class FiniteDifferenceBackend(Backend):
    """Forces of any energy backend by central finite differences of its energy.

    ``F_ia = −(E(x + h e_ia) − E(x − h e_ia)) / 2h`` for every atom ``i`` and Cartesian ``a``:
    6N + 1 energy evaluations per frame (N atoms), so this is for small molecules and for
    methods without analytic gradients (DF-MP2, CBS extrapolations, CCSD(T)). The truncation
    error is O(h²) (≈ 1 meV/Å for bond stretches at the default h = 0.005 Å); the SCF
    convergence threshold bounds the noise (``conv_tol`` 1e-10 Ha gives ≪ 1 meV/Å at this h).
    The energy of the frame is the inner backend's, at the undisplaced positions. Made by
    :func:`make_backend` with the options ``finite_difference_forces=true`` and
    ``finite_difference_step`` (Å).
    """

    def __init__(self, inner: Backend, step: float = FD_STEP) -> None:
        super().__init__(**inner.options)
        if not step > 0.0 or step > 0.1:
            raise ConfigError(
                f"finite_difference_step={step} Å: use a small positive step (0.001–0.01 Å)"
            )
        self.inner = inner
        self.step = float(step)
        self.name = inner.name
        self.gives_forces = True

    def base_provenance(self) -> dict[str, Any]:
        return self.inner.base_provenance()

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "finite_difference_step_A": self.step}

    def subtasks(self, atoms) -> list:
        """The frame, then for every atom ``i`` and axis ``a`` the copies displaced by +h, −h."""
        out = [atoms]
        base = atoms.get_positions()
        for i in range(len(atoms)):
            for a in range(3):
                for sign in (1.0, -1.0):
                    work = atoms.copy()
                    work.calc = None
                    positions = base.copy()
                    positions[i, a] += sign * self.step
                    work.set_positions(positions)
                    out.append(work)
        return out

    def n_subtasks(self, atoms) -> int:
        return 6 * len(atoms) + 1

    def compute_subtask(self, atoms) -> dict[str, Any]:
        return self.inner.compute(atoms)

    def combine(self, atoms, outs: list[dict[str, Any]]) -> dict[str, Any]:
        n_atoms = len(atoms)
        energies = np.array([out["energy"] for out in outs[1:]], dtype=np.float64)
        pairs = energies.reshape(n_atoms, 3, 2)
        forces = -(pairs[..., 0] - pairs[..., 1]) / (2.0 * self.step)
        provenance = dict(outs[0]["provenance"])
        provenance["forces_method"] = "central finite differences of the energy"
        provenance["finite_difference_step_A"] = self.step
        provenance["energy_evaluations"] = 6 * n_atoms + 1
        return {"energy": outs[0]["energy"], "forces": forces, "provenance": provenance}

    def compute(self, atoms) -> dict[str, Any]:
        return self.combine(atoms, [self.inner.compute(a) for a in self.subtasks(atoms)])
