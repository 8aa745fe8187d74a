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
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from piwsl.errors import ConfigError, PiwslError
from piwsl.registry import Registry
from piwsl.units import HARTREE, LENGTH_UNITS

#: 1 Bohr in Å.
BOHR: float = LENGTH_UNITS["Bohr"]
#: Hartree/Bohr in eV/Å.
HARTREE_PER_BOHR: float = HARTREE / BOHR


class BackendError(PiwslError, RuntimeError):
    """A reference calculation failed for one structure (SCF not converged, program error)."""


def hartree_to_ev(energy: float) -> float:
    """Energy in Hartree → eV."""
    return float(energy) * HARTREE


def gradient_to_forces(gradient: np.ndarray) -> np.ndarray:
    """Energy gradient in Hartree/Bohr → forces (minus the gradient) in eV/Å."""
    return -np.asarray(gradient, dtype=np.float64) * HARTREE_PER_BOHR


def package_version(name: str) -> str:
    """Installed version of a distribution, or ``"unknown"``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Backend:
    """Base class of reference backends (subclasses set ``name`` and implement ``compute``)."""

    name: str = "backend"
    #: whether ``compute`` returns forces
    gives_forces: bool = True

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)

    def compute(self, atoms) -> dict[str, Any]:
        raise NotImplementedError

    # A frame's label may be made of independent calculations (finite differences: 6N + 1
    # energies); the runner submits each as its own task and combines the results.

    def subtasks(self, atoms) -> list:
        """The structures whose calculations make up the label of ``atoms`` (one task each)."""
        return [atoms]

    def n_subtasks(self, atoms) -> int:
        return 1

    def compute_subtask(self, atoms) -> dict[str, Any]:
        """The calculation of one of :meth:`subtasks` (on a worker)."""
        return self.compute(atoms)

    def combine(self, atoms, outs: list[dict[str, Any]]) -> dict[str, Any]:
        """The label of ``atoms`` from the outputs of its :meth:`subtasks`, in order."""
        return outs[0]

    def base_provenance(self) -> dict[str, Any]:
        """Method, basis and program of this backend (also recorded for failed frames)."""
        program = str(getattr(self, "program", "unknown"))
        version = getattr(self, "version", None) or package_version(program)
        return {
            "method": str(getattr(self, "method", self.name)),
            "basis": str(getattr(self, "basis", None) or "n/a"),
            "program": program,
            "program_version": str(version),
        }

    def describe(self) -> dict[str, Any]:
        """Backend name and options, stored in the journal header (must be JSON-serialisable)."""
        return {"backend": self.name, "options": _jsonable(self.options)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def require(module: str, backend: str) -> None:
    """Fail early (ConfigError) when the program behind a backend is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"backend {backend!r} needs the Python package {module!r}, which is not installed "
            "(pip install 'piwsl[label]')"
        )


def check_basis(basis: str, backend: str) -> None:
    """ConfigError for a basis-set name PySCF does not know (checked on H, C and O)."""
    import warnings

    from pyscf import gto

    for symbol in ("H", "C", "O"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PySCF's hint to install basis-set-exchange
                gto.basis.load(basis, symbol)
            return
        except RuntimeError as err:
            if "Unknown basis format or basis name" in str(err):
                break
    else:
        return  # known name without H, C and O: the molecule build will tell
    raise ConfigError(
        f"backend {backend!r}: unknown basis set {basis!r} (PySCF names, e.g. cc-pvdz, "
        "aug-cc-pvtz, def2-svp, 6-31g*)"
    )


def _pop(options: dict[str, Any], key: str, default: Any, kind: Callable[[Any], Any]) -> Any:
    value = options.pop(key, default)
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"option {key}={value!r} is not a valid {kind.__name__}") from err


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


_as_bool.__name__ = "bool"


def _reject_unknown(name: str, options: dict[str, Any], known: list[str]) -> None:
    if options:
        from piwsl.registry import suggest

        key = sorted(options)[0]
        raise ConfigError(f"unknown option {key!r} for backend {name!r}{suggest(key, known)}")


#: backend name → builder ``(**options) -> Backend``
BACKENDS: Registry[Callable[..., Backend]] = Registry("reference backend")


# ----------------------------------------------------------------------------------------------
# tblite (GFN-xTB)
# ----------------------------------------------------------------------------------------------


class TBLiteBackend(Backend):
    """GFN1-/GFN2-xTB through tblite's Python interface (Hartree/Bohr internally)."""

    OPTIONS = ("charge", "spin", "accuracy", "electronic_temperature", "max_iterations")
    program = "tblite"
    basis = "minimal STO-nG (xTB)"

    def __init__(self, method: str, **options: Any) -> None:
        super().__init__(**options)
        opts = dict(options)
        self.method = method  # "GFN2-xTB" / "GFN1-xTB"
        self.name = method.lower()
        require("tblite", self.name)
        self.charge = _pop(opts, "charge", 0.0, float)
        self.spin = _pop(opts, "spin", 0, int)
        self.accuracy = _pop(opts, "accuracy", 1.0, float)
        self.electronic_temperature = _pop(opts, "electronic_temperature", 300.0, float)
        self.max_iterations = _pop(opts, "max_iterations", 250, int)
        _reject_unknown(self.name, opts, list(self.OPTIONS))

    def calculator(self, atoms, accuracy: float | None = None):
        """A configured ``tblite.interface.Calculator`` for ``atoms`` (its cell, charge, spin),
        its SCF converged to ``accuracy`` (default: the backend's)."""
        from ase import units
        from tblite.interface import Calculator

        kwargs: dict[str, Any] = {"charge": self.charge, "uhf": self.spin}
        if atoms.pbc.any():
            kwargs["lattice"] = np.asarray(atoms.cell.array) / BOHR
            kwargs["periodic"] = np.asarray(atoms.pbc, dtype=bool)
        calc = Calculator(self.method, atoms.numbers, atoms.positions / BOHR, **kwargs)
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy if accuracy is None else accuracy)
        calc.set("temperature", self.electronic_temperature * units.kB / units.Hartree)
        calc.set("max-iter", self.max_iterations)
        return calc

    def session(self) -> TBLiteSession:
        """Single points along a trajectory: each SCF starts from the previous density."""
        return TBLiteSession(self)

    def compute(self, atoms) -> dict[str, Any]:
        try:
            result = self.calculator(atoms).singlepoint()
        except RuntimeError as err:  # tblite reports SCF failures as RuntimeError
            raise BackendError(f"tblite {self.method}: {err}") from err
        out = {
            "energy": hartree_to_ev(result.get("energy")),
            "forces": gradient_to_forces(result.get("gradient")),
            "provenance": {
                "method": self.method,
                "basis": "minimal STO-nG (xTB)",
                "program": "tblite",
                "program_version": package_version("tblite"),
                "charge": self.charge,
                "spin": self.spin,
            },
        }
        if atoms.pbc.all():
            out["stress"] = virial_to_stress(result.get("virial"), atoms.get_volume())
        return out


def virial_to_stress(virial: np.ndarray, volume: float) -> np.ndarray:
    """tblite's ``virial`` (Hartree; it is +∂E/∂ε, checked against finite differences of the
    energy under strain) → the stress (1/V) ∂E/∂ε in eV/Å³ (ASE's sign, as tblite.ase does)."""
    return np.asarray(virial, dtype=np.float64).reshape(3, 3) * HARTREE / float(volume)


BACKENDS.add("gfn2-xtb", lambda **o: TBLiteBackend("GFN2-xTB", **o))
BACKENDS.add("gfn1-xtb", lambda **o: TBLiteBackend("GFN1-xTB", **o))


#: tblite's ``accuracy`` in a session (lower: tighter SCF). A restarted SCF stops closer to the
#: previous step's density than a fresh one would, so at the default (1.0) the forces depend on
#: the direction the trajectory came from (0.2–0.7 meV/Å between a path walked forwards and
#: backwards, ethanol and aspirin) and NVE drifts: −0.12 meV/atom/ps for a Δ model on aspirin and
#: on ethanol, against ±0.01 with fresh SCFs or this setting (hysteresis 2–4 µeV/Å), which costs
#: ~1.3× the default's time per step, still below a fresh SCF's.
SESSION_ACCURACY = 0.01


class TBLiteSession:
    """Energy (eV) and forces (eV/Å) of one system at successive positions (an MD trajectory):
    one tblite calculator whose SCF restarts from the previous step's result, converged to
    ``SESSION_ACCURACY`` (or the backend's, if tighter) so that the forces do not depend on the
    trajectory's history — energy-conserving NVE, and the same numbers as fresh single points to
    well within their SCF threshold."""

    def __init__(self, backend: TBLiteBackend) -> None:
        self.backend = backend
        self._calc = None
        self._result = None
        self._numbers: np.ndarray | None = None

    def __call__(self, atoms) -> tuple[float, np.ndarray]:
        try:
            if self._calc is None or not np.array_equal(self._numbers, atoms.numbers):
                accuracy = min(self.backend.accuracy, SESSION_ACCURACY)
                self._calc, self._result = self.backend.calculator(atoms, accuracy), None
                self._numbers = np.array(atoms.numbers)
            elif atoms.pbc.any():
                lattice = np.asarray(atoms.cell.array) / BOHR
                self._calc.update(positions=atoms.positions / BOHR, lattice=lattice)
            else:
                self._calc.update(positions=atoms.positions / BOHR)
            self._result = self._calc.singlepoint(self._result)
        except RuntimeError as err:
            self._calc = self._result = None  # start the next call afresh
            raise BackendError(f"tblite {self.backend.method}: {err}") from err
        energy = hartree_to_ev(self._result.get("energy"))
        return energy, gradient_to_forces(self._result.get("gradient"))


# ----------------------------------------------------------------------------------------------
# PySCF
# ----------------------------------------------------------------------------------------------


class PySCFBackend(Backend):
    """Shared set-up of the PySCF backends (molecule, SCF reference, provenance)."""

    OPTIONS = (
        "basis",
        "charge",
        "spin",
        "density_fit",
        "auxbasis",
        "conv_tol",
        "max_cycle",
        "max_memory_mb",
        "forces",
    )
    default_basis = "cc-pvdz"
    program = "pyscf"
    default_density_fit = False
    default_forces = True
    method = "HF"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        require("pyscf", self.name)
        opts = dict(options)
        self.basis = _pop(opts, "basis", self.default_basis, str)
        self.charge = _pop(opts, "charge", 0, int)
        self.spin = _pop(opts, "spin", 0, int)
        self.density_fit = _pop(opts, "density_fit", self.default_density_fit, _as_bool)
        self.auxbasis = _pop(opts, "auxbasis", None, str)
        self.conv_tol = _pop(opts, "conv_tol", 1e-10, float)
        self.max_cycle = _pop(opts, "max_cycle", 100, int)
        self.max_memory_mb = _pop(opts, "max_memory_mb", 4000, int)
        self.want_forces = _pop(opts, "forces", self.default_forces, _as_bool)
        self._parse_extra(opts)
        _reject_unknown(self.name, opts, [*self.OPTIONS, *self.extra_options()])
        self.gives_forces = bool(self.want_forces)
        check_basis(self.basis, self.name)

    def extra_options(self) -> tuple[str, ...]:
        return ()

    def _parse_extra(self, opts: dict[str, Any]) -> None:
        pass

    # -- building blocks --------------------------------------------------------------------

    def molecule(self, atoms, basis: str | None = None):
        from pyscf import gto

        if atoms.pbc.any():
            raise BackendError(
                f"{self.name}: periodic structures are not supported by the molecular PySCF "
                "backends (use gfn2-xtb or an ase: calculator)"
            )
        try:
            return gto.M(
                atom=[
                    (int(z), tuple(map(float, p)))
                    for z, p in zip(atoms.numbers, atoms.positions, strict=True)
                ],
                unit="Angstrom",
                basis=basis or self.basis,
                charge=self.charge,
                spin=self.spin,
                verbose=0,
                max_memory=self.max_memory_mb,
            )
        except (RuntimeError, KeyError, ValueError) as err:
            raise BackendError(f"{self.name}: cannot build the molecule: {err}") from err

    def scf(
        self,
        mol,
        xc: str | None = None,
        density_fit: bool | None = None,
        auxbasis: str | bool | None = True,
    ):
        """A converged SCF object (RHF/UHF, or RKS/UKS with ``xc``); ``auxbasis=True`` means
        the ``auxbasis`` option, ``None`` PySCF's default JK-fit basis."""
        from pyscf import dft, scf

        restricted = mol.spin == 0
        if xc is None:
            mf = scf.RHF(mol) if restricted else scf.UHF(mol)
        else:
            mf = dft.RKS(mol, xc=xc) if restricted else dft.UKS(mol, xc=xc)
        if self.density_fit if density_fit is None else density_fit:
            mf = mf.density_fit(auxbasis=self.auxbasis if auxbasis is True else auxbasis)
        mf.conv_tol = self.conv_tol
        mf.max_cycle = self.max_cycle
        mf.kernel()
        if not mf.converged:
            raise BackendError(
                f"{self.name}: SCF did not converge in {self.max_cycle} cycles "
                f"(last energy {mf.e_tot:.8f} Ha)"
            )
        return mf

    def frozen(self, mol) -> int | None:
        from pyscf.data.elements import chemcore

        return int(chemcore(mol)) if getattr(self, "frozen_core", False) else None

    def provenance(self, mol, **extra: Any) -> dict[str, Any]:
        return {
            "method": self.method,
            "basis": self.basis,
            "program": "pyscf",
            "program_version": package_version("pyscf"),
            "charge": self.charge,
            "spin": self.spin,
            "density_fit": bool(self.density_fit),
            "n_basis": int(mol.nao_nr()),
            **extra,
        }

    @staticmethod
    def result(energy_ha: float, gradient_ha_bohr: np.ndarray | None, provenance: dict):
        return {
            "energy": hartree_to_ev(energy_ha),
            "forces": None if gradient_ha_bohr is None else gradient_to_forces(gradient_ha_bohr),
            "provenance": provenance,
        }


@BACKENDS.register("hf")
class HFBackend(PySCFBackend):
    """Hartree–Fock (RHF for closed shells, UHF otherwise); analytic forces."""

    name = "hf"
    method = "HF"

    def compute(self, atoms) -> dict[str, Any]:
        mol = self.molecule(atoms)
        mf = self.scf(mol)
        grad = mf.nuc_grad_method().kernel() if self.want_forces else None
        return self.result(mf.e_tot, grad, self.provenance(mol))


@BACKENDS.register("dft")
class DFTBackend(PySCFBackend):
    """Kohn–Sham DFT (option ``xc``, default PBE; density fitting on by default); forces."""

    name = "dft"
    default_density_fit = True
    default_basis = "def2-svp"

    def extra_options(self) -> tuple[str, ...]:
        return ("xc", "grid_level")

    def _parse_extra(self, opts: dict[str, Any]) -> None:
        self.xc = _pop(opts, "xc", "pbe", str)
        self.grid_level = _pop(opts, "grid_level", 3, int)
        self.method = f"DFT/{self.xc.upper()}"

    def compute(self, atoms) -> dict[str, Any]:
        from pyscf import dft

        mol = self.molecule(atoms)
        restricted = mol.spin == 0
        mf = dft.RKS(mol, xc=self.xc) if restricted else dft.UKS(mol, xc=self.xc)
        mf.grids.level = self.grid_level
        if self.density_fit:
            mf = mf.density_fit(auxbasis=self.auxbasis)
        mf.conv_tol = self.conv_tol
        mf.max_cycle = self.max_cycle
        try:
            mf.kernel()
        except (KeyError, ValueError) as err:  # unknown functional
            raise BackendError(f"dft: {err}") from err
        if not mf.converged:
            raise BackendError(f"dft: SCF did not converge in {self.max_cycle} cycles")
        grad = mf.nuc_grad_method().kernel() if self.want_forces else None
        return self.result(mf.e_tot, grad, self.provenance(mol, xc=self.xc))


@BACKENDS.register("mp2")
class MP2Backend(PySCFBackend):
    """MP2 on a HF reference: DF-MP2 energies (default), conventional MP2 for analytic forces.

    Energies use DF-MP2 (``density_fit=true``; the HF reference stays conventional unless
    ``density_fit_hf=true``, which also density-fits the SCF with the JK-fit basis) unless
    ``density_fit=false``. With ``forces=true`` the calculation is conventional HF + MP2 (PySCF
    has no DF-MP2 gradient), which costs about ten times more.
    """

    name = "mp2"
    method = "MP2"
    default_density_fit = True
    default_forces = False

    def extra_options(self) -> tuple[str, ...]:
        return ("frozen_core", "density_fit_hf")

    def _parse_extra(self, opts: dict[str, Any]) -> None:
        self.frozen_core = _pop(opts, "frozen_core", True, _as_bool)
        self.density_fit_hf = _pop(opts, "density_fit_hf", False, _as_bool)

    def parts(
        self, atoms, basis: str | None = None, forces: bool | None = None, split: bool = True
    ) -> dict:
        """HF and correlation energies (Ha) and gradients (Ha/Bohr, or None) in one basis.

        With ``split=False`` only the total MP2 gradient is computed (returned as ``g_total``;
        ``g_hf``/``g_corr`` are None), which saves the separate HF gradient.
        """
        from pyscf import mp

        forces = self.want_forces if forces is None else forces
        mol = self.molecule(atoms, basis)
        df_hf = bool(self.density_fit and self.density_fit_hf and not forces)
        mf = self.scf(mol, density_fit=df_hf, auxbasis=None)  # `auxbasis` is for DF-MP2
        frozen = self.frozen(mol)
        use_df = self.density_fit and not forces
        if use_df:
            if mol.spin == 0:
                pt = mp.dfmp2.DFMP2(mf, frozen=frozen)
            else:
                pt = mp.dfump2.DFUMP2(mf, frozen=frozen)
            if self.auxbasis:
                pt.with_df.auxbasis = self.auxbasis
        else:
            pt = mp.MP2(mf, frozen=frozen)
        pt.kernel()
        g_hf = g_corr = g_total = None
        if forces:
            g_total = pt.nuc_grad_method().kernel()
            if split:
                g_hf = mf.nuc_grad_method().kernel()
                g_corr = g_total - g_hf
        return {
            "e_hf": float(mf.e_tot),
            "e_corr": float(pt.e_corr),
            "g_hf": g_hf,
            "g_corr": g_corr,
            "g_total": g_total,
            "n_basis": int(mol.nao_nr()),
            "density_fit": bool(use_df),
            "density_fit_hf": df_hf,
            "frozen": frozen or 0,
        }

    def compute(self, atoms) -> dict[str, Any]:
        p = self.parts(atoms, split=False)
        grad = p["g_total"]
        prov = {
            "method": "DF-MP2" if p["density_fit"] else "MP2",
            "basis": self.basis,
            "program": "pyscf",
            "program_version": package_version("pyscf"),
            "charge": self.charge,
            "spin": self.spin,
            "density_fit": p["density_fit"],
            "density_fit_hf": p["density_fit_hf"],
            "n_basis": p["n_basis"],
            "frozen_core_orbitals": p["frozen"],
            "e_hf_eV": hartree_to_ev(p["e_hf"]),
            "e_corr_eV": hartree_to_ev(p["e_corr"]),
        }
        return self.result(p["e_hf"] + p["e_corr"], grad, prov)


@BACKENDS.register("ccsd(t)")
class CCSDTBackend(PySCFBackend):
    """CCSD(T) on a conventional HF reference (energy only)."""

    name = "ccsd(t)"
    method = "CCSD(T)"
    default_forces = False

    def extra_options(self) -> tuple[str, ...]:
        return ("frozen_core",)

    def _parse_extra(self, opts: dict[str, Any]) -> None:
        self.frozen_core = _pop(opts, "frozen_core", True, _as_bool)
        if self.want_forces:
            raise ConfigError("ccsd(t) gives energies only: drop forces=true")

    def parts(self, atoms, basis: str | None = None) -> dict:
        from pyscf import cc

        mol = self.molecule(atoms, basis)
        mf = self.scf(mol, density_fit=False)
        frozen = self.frozen(mol)
        solver = cc.CCSD(mf, frozen=frozen)
        solver.max_cycle = self.max_cycle
        solver.kernel()
        if not solver.converged:
            raise BackendError(
                f"ccsd(t): CCSD amplitudes did not converge in {self.max_cycle} cycles"
            )
        e_t = float(solver.ccsd_t())
        return {
            "e_hf": float(mf.e_tot),
            "e_ccsd_corr": float(solver.e_corr),
            "e_t": e_t,
            "e_mp2_corr": float(solver.emp2),  # conventional MP2 from the same reference
            "n_basis": int(mol.nao_nr()),
            "frozen": frozen or 0,
        }

    def compute(self, atoms) -> dict[str, Any]:
        p = self.parts(atoms)
        prov = self.provenance(
            self.molecule(atoms),
            density_fit=False,
            frozen_core_orbitals=p["frozen"],
            e_hf_eV=hartree_to_ev(p["e_hf"]),
            e_ccsd_corr_eV=hartree_to_ev(p["e_ccsd_corr"]),
            e_t_eV=hartree_to_ev(p["e_t"]),
        )
        return self.result(p["e_hf"] + p["e_ccsd_corr"] + p["e_t"], None, prov)


# ----------------------------------------------------------------------------------------------
# any ASE calculator
# ----------------------------------------------------------------------------------------------


class ASEBackend(Backend):
    """Any ASE calculator named ``ase:package.module.Class``; options are its keyword arguments."""

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(**options)
        self.path = path
        self.name = f"ase:{path}"
        module_name, _, class_name = path.rpartition(".")
        if not module_name:
            raise ConfigError(
                f"ase backend {path!r} must be a dotted path, e.g. ase:ase.calculators.emt.EMT"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(
                f"cannot import module {module_name!r} for {self.name}: {err}"
            ) from err
        if not hasattr(module, class_name):
            from piwsl.registry import suggest

            names = [n for n in dir(module) if not n.startswith("_")]
            raise ConfigError(
                f"module {module_name!r} has no {class_name!r}{suggest(class_name, names)}"
            )
        self.cls = getattr(module, class_name)
        top = module_name.split(".")[0]
        self.program = top
        self.method = self.path.rsplit(".", 1)[-1]
        self.version = str(getattr(importlib.import_module(top), "__version__", None) or "unknown")
        self.calc = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a worker) without the calculator: each process builds its own."""
        return {**self.__dict__, "calc": None}

    def compute(self, atoms) -> dict[str, Any]:
        from ase.calculators.calculator import PropertyNotImplementedError

        if self.calc is None:  # built lazily, once per process
            self.calc = self.cls(**self.options)
        work = atoms.copy()
        work.calc = self.calc
        energy = float(work.get_potential_energy())
        try:
            forces = np.asarray(work.get_forces(), dtype=np.float64)
        except PropertyNotImplementedError:
            forces = None
        out = {
            "energy": energy,
            "forces": forces,
            "provenance": {
                "method": self.path.rsplit(".", 1)[-1],
                "basis": "n/a",
                "program": self.program,
                "program_version": self.version,
            },
        }
        if work.pbc.all():
            with contextlib.suppress(PropertyNotImplementedError):
                out["stress"] = np.asarray(work.get_stress(voigt=False), dtype=np.float64)
        return out


# ----------------------------------------------------------------------------------------------
# forces by finite differences of any energy backend
# ----------------------------------------------------------------------------------------------

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


def _register_cbs() -> None:
    from piwsl.labelling.cbs import CBSBackend

    BACKENDS.add("cbs", CBSBackend)


def make_backend(spec: str, **options: Any) -> Backend:
    """Build a backend from its name (``"gfn2-xtb"``, ``"mp2"``, ``"ase:pkg.mod.Class"``, …)."""
    if "cbs" not in BACKENDS:
        _register_cbs()
    options = dict(options)
    finite_difference = _pop(options, "finite_difference_forces", False, _as_bool)
    step = _pop(options, "finite_difference_step", None, float)
    if step is not None and not finite_difference:
        raise ConfigError("finite_difference_step is set but finite_difference_forces is not")
    text = spec.strip()
    if text.lower().startswith("ase:"):
        backend: Backend = ASEBackend(text[4:], **options)
    else:
        backend = BACKENDS.get(text.lower())(**options)
    if not finite_difference:
        return backend
    if getattr(backend, "want_forces", False):
        raise ConfigError(
            f"backend {text!r}: finite_difference_forces=true replaces the analytic forces; "
            "drop forces=true"
        )
    return FiniteDifferenceBackend(backend, FD_STEP if step is None else step)


def backend_names() -> list[str]:
    if "cbs" not in BACKENDS:
        _register_cbs()
    return [*BACKENDS.names(), "ase:<module>.<Class>"]


class BackendCalculator(Calculator):
    """A backend as an ASE calculator (energy and forces), e.g. to drive MD sampling."""

    implemented_properties = ["energy", "free_energy", "forces"]  # noqa: RUF012 (ASE API)

    def __init__(self, backend: Backend, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not backend.gives_forces:
            raise ConfigError(f"backend {backend.name!r} gives energies only, not forces")
        self.backend = backend
        self.wall_time_s = 0.0
        #: provenance of the last result (method, basis, program, version, method details)
        self.provenance: dict[str, Any] = backend.base_provenance()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        t0 = time.perf_counter()
        out = self.backend.compute(self.atoms)
        self.wall_time_s = time.perf_counter() - t0
        if out["forces"] is None:
            raise BackendError(f"backend {self.backend.name!r} returned no forces")
        self.provenance = {**self.backend.base_provenance(), **dict(out.get("provenance", {}))}
        self.results = {
            "energy": out["energy"],
            "free_energy": out["energy"],
            "forces": out["forces"],
        }
