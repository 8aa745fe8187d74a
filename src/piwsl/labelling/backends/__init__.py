"""Reference backends: electronic-structure programs that label one structure at a time.

Every backend is a small class with a ``name`` and ``compute(atoms) -> dict`` returning

- ``energy``: total energy in eV,
- ``forces``: ``[n_atoms, 3]`` array in eV/Å, or ``None`` when the method gives energies only,
- ``stress`` (optional): 3×3 in eV/Å³, ASE's sign (σ = (1/V) ∂E/∂ε), for cells periodic in all
  three directions where the method gives it (tblite; ASE calculators that implement it),
- ``provenance``: a flat dict (method, basis, program, program_version, plus method details).

Backends are built by name from :data:`BACKENDS` (a :class:`~piwsl.registry.Registry`, so a typo
gets a "did you mean" error) through :func:`make_backend`:

============  ===============================================================================
name          what
============  ===============================================================================
gfn2-xtb      GFN2-xTB through tblite (energy + analytic forces; stress of periodic cells)
gfn1-xtb      GFN1-xTB through tblite (energy + analytic forces; stress of periodic cells)
hf            Hartree–Fock through PySCF (energy + analytic forces)
dft           Kohn–Sham DFT through PySCF, option ``xc`` (energy + analytic forces)
mp2           MP2 through PySCF (energy; analytic forces with ``forces=True``)
ccsd(t)       CCSD(T) through PySCF (energy only)
cbs           two-point complete-basis-set extrapolation, see :mod:`piwsl.labelling.cbs`
ase:MOD.CLS   any ASE calculator, imported by dotted path, keyword arguments from the options
============  ===============================================================================

Any backend gets forces by central finite differences of its energy with the options
``finite_difference_forces=true`` (and ``finite_difference_step``, Å, default 0.005): 6N + 1
energies per frame, see :class:`FiniteDifferenceBackend`.

Conventions shared by all PySCF backends: ``charge`` in e, ``spin`` = number of unpaired
electrons (2S, PySCF's convention; 0 → restricted, otherwise unrestricted references), ``basis``
any PySCF basis name, ``density_fit`` (hf: density-fitted SCF, default off; dft: RI-J/K, default
on; mp2: DF-MP2 correlation with the matching ``-ri`` auxiliary basis on a conventional HF
reference, default on — ``density_fit_hf=true`` fits the reference too; ccsd(t): always
conventional), ``auxbasis`` (the fitting basis of that density fit), ``frozen_core`` for
correlated methods (default on: cc-pVXZ sets are valence basis sets). A non-converged SCF or CC
iteration raises :class:`BackendError`, which the runner records per frame as
``status="failed"``.

One module per job: :mod:`~piwsl.labelling.backends.base` (the :class:`Backend` base class,
:class:`BackendError`, :data:`BACKENDS`, unit conversions, option parsing),
:mod:`~piwsl.labelling.backends.tblite`, :mod:`~piwsl.labelling.backends.pyscf`,
:mod:`~piwsl.labelling.backends.ase_calculator` (ASE calculators as backends and backends as ASE
calculators), :mod:`~piwsl.labelling.backends.finite_difference` and
:mod:`~piwsl.labelling.backends.factory` (registration of the builtin backends,
:func:`make_backend`). Importing this package registers the builtin backends.
"""

from piwsl.labelling.backends.ase_calculator import ASEBackend, BackendCalculator
from piwsl.labelling.backends.base import (
    BACKENDS,
    BOHR,
    HARTREE_PER_BOHR,
    Backend,
    BackendError,
    gradient_to_forces,
    hartree_to_ev,
    package_version,
    require,
)
from piwsl.labelling.backends.factory import backend_names, make_backend
from piwsl.labelling.backends.finite_difference import FD_STEP, FiniteDifferenceBackend
from piwsl.labelling.backends.pyscf import (
    CCSDTBackend,
    DFTBackend,
    HFBackend,
    MP2Backend,
    PySCFBackend,
    check_basis,
)
from piwsl.labelling.backends.tblite import (
    SESSION_ACCURACY,
    TBLiteBackend,
    TBLiteSession,
    virial_to_stress,
)

__all__ = [
    "BACKENDS",
    "BOHR",
    "FD_STEP",
    "HARTREE_PER_BOHR",
    "SESSION_ACCURACY",
    "ASEBackend",
    "Backend",
    "BackendCalculator",
    "BackendError",
    "CCSDTBackend",
    "DFTBackend",
    "FiniteDifferenceBackend",
    "HFBackend",
    "MP2Backend",
    "PySCFBackend",
    "TBLiteBackend",
    "TBLiteSession",
    "backend_names",
    "check_basis",
    "gradient_to_forces",
    "hartree_to_ev",
    "make_backend",
    "package_version",
    "require",
    "virial_to_stress",
]
