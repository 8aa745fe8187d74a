"""Molecular quantum chemistry through PySCF: HF, Kohn–Sham DFT, MP2 and CCSD(T) backends on the
shared set-up of :class:`PySCFBackend`. PySCF itself is imported only when a backend is built."""

from __future__ import annotations

from typing import Any

import numpy as np

from piwsl.errors import ConfigError
from piwsl.labelling.backends.base import (
    Backend,
    BackendError,
    as_bool,
    gradient_to_forces,
    hartree_to_ev,
    package_version,
    pop_option,
    reject_unknown,
    require,
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
        self.basis = pop_option(opts, "basis", self.default_basis, str)
        self.charge = pop_option(opts, "charge", 0, int)
        self.spin = pop_option(opts, "spin", 0, int)
        self.density_fit = pop_option(opts, "density_fit", self.default_density_fit, as_bool)
        self.auxbasis = pop_option(opts, "auxbasis", None, str)
        self.conv_tol = pop_option(opts, "conv_tol", 1e-10, float)
        self.max_cycle = pop_option(opts, "max_cycle", 100, int)
        self.max_memory_mb = pop_option(opts, "max_memory_mb", 4000, int)
        self.want_forces = pop_option(opts, "forces", self.default_forces, as_bool)
        self._parse_extra(opts)
        reject_unknown(self.name, opts, [*self.OPTIONS, *self.extra_options()])
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


class HFBackend(PySCFBackend):
    """Hartree–Fock (RHF for closed shells, UHF otherwise); analytic forces."""

    name = "hf"
    method = "HF"

    def compute(self, atoms) -> dict[str, Any]:
        mol = self.molecule(atoms)
        mf = self.scf(mol)
        grad = mf.nuc_grad_method().kernel() if self.want_forces else None
        return self.result(mf.e_tot, grad, self.provenance(mol))


class DFTBackend(PySCFBackend):
    """Kohn–Sham DFT (option ``xc``, default PBE; density fitting on by default); forces."""

    name = "dft"
    default_density_fit = True
    default_basis = "def2-svp"

    def extra_options(self) -> tuple[str, ...]:
        return ("xc", "grid_level")

    def _parse_extra(self, opts: dict[str, Any]) -> None:
        self.xc = pop_option(opts, "xc", "pbe", str)
        self.grid_level = pop_option(opts, "grid_level", 3, int)
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
        self.frozen_core = pop_option(opts, "frozen_core", True, as_bool)
        self.density_fit_hf = pop_option(opts, "density_fit_hf", False, as_bool)

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


class CCSDTBackend(PySCFBackend):
    """CCSD(T) on a conventional HF reference (energy only)."""

    name = "ccsd(t)"
    method = "CCSD(T)"
    default_forces = False

    def extra_options(self) -> tuple[str, ...]:
        return ("frozen_core",)

    def _parse_extra(self, opts: dict[str, Any]) -> None:
        self.frozen_core = pop_option(opts, "frozen_core", True, as_bool)
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
