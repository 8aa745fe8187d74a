"""Shared set-up of the MD tests (``test_md.py``, ``test_md_batched.py``): the relaxed Cu13 start
structure (the ``cu13`` fixture of ``conftest.py``), quick run settings and the tiny piwsl model."""

from __future__ import annotations

from typing import Any

from ase import Atoms
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from ase.optimize import BFGS

from piwsl.md import FailureCriteria, MDConfig

#: no progress bar, plots or trajectory files
FAST = {"progress": False, "plots": False, "write_trajectories": False}


def relaxed_cu13() -> Atoms:
    """A 13-atom Cu icosahedron relaxed with EMT (a minimum, so MD starts near equilibrium)."""
    atoms = Icosahedron("Cu", 2)
    atoms.calc = EMT()
    BFGS(atoms, logfile=None).run(fmax=0.005)
    atoms.calc = None
    return atoms


def unchecked() -> FailureCriteria:
    """Failure criteria with the bond and temperature checks off (an untrained model may fall
    apart; the run must still cover all steps)."""
    return FailureCriteria(check_bonds=False, check_temperature=False)


def tiny_md_config(**settings: Any) -> MDConfig:
    """Short NVE runs of a tiny piwsl model: 0.5 fs steps, every step logged, no failure checks,
    nothing written; ``settings`` override."""
    base = {
        "ensemble": "nve",
        "timestep_fs": 0.5,
        "log_interval": 1,
        "failure": unchecked(),
        **FAST,
    }
    return MDConfig(**{**base, **settings})


def tiny_md_model(name: str = "schnet", double: bool = True, **hparams: Any):
    """An untrained SchNet (or PaiNN, ``name``) for H, C, O: cutoff 4 Å, 8 features, 1
    interaction, 8 radial functions, seeded; float64 unless ``double`` is false."""
    import torch

    from piwsl.models import build_model

    torch.manual_seed(0)
    model = build_model(
        name, elements=[1, 6, 8], cutoff=4.0, features=8, interactions=1, n_rbf=8, **hparams
    )
    return model.double() if double else model
