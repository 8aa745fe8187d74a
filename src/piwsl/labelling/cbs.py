"""Two-point complete-basis-set (CBS) extrapolation of HF and MP2 correlation energies (and forces).

Both components are extrapolated separately from two basis sets with cardinal numbers X < Y
(cc-pVDZ/cc-pVTZ: X=2, Y=3). Each form is ``E(n) = E_CBS + A f(n)`` with a fixed ``f``, so two
points give ``E_CBS = (f(Y) E_X − f(X) E_Y) / (f(Y) − f(X))`` — a fixed linear combination
``w_X E_X + w_Y E_Y`` with ``w_X + w_Y = 1``.

HF (``hf_scheme``):

- ``"halkier"`` (default): ``f(n) = exp(−α n)``, α = 1.63 (Halkier, Helgaker, Jørgensen, Klopper,
  Olsen, Chem. Phys. Lett. 302, 437 (1999)); for Y = X + 1,
  ``E_CBS = E_Y − (E_X − E_Y) / (e^α − 1)``.
- ``"karton-martin"``: ``f(n) = (n + 1) exp(−9 √n)`` (Karton & Martin, Theor. Chem. Acc. 115,
  330 (2006)).
- ``"exp-sqrt"``: ``f(n) = exp(−α √n)`` with α = 4.42 for (2,3), 5.46 for (3,4) (Neese & Valeev,
  J. Chem. Theory Comput. 7, 33 (2011)); give ``hf_alpha`` for other pairs.

Correlation: ``f(n) = n^−β``, β = ``corr_exponent`` = 3 (Helgaker, Klopper, Koch, Noga, J. Chem.
Phys. 106, 9639 (1997)): ``E_corr,CBS = (X³ E_X − Y³ E_Y) / (X³ − Y³)``.

Forces: because the weights do not depend on the geometry, the CBS gradient is the same linear
combination of the HF gradients and of the correlation gradients (MP2 analytic gradient minus HF
gradient) in the two basis sets.

Optional higher-level correction (energy only): ``delta="ccsd(t)"`` adds
``E_CCSD(T) − E_MP2`` computed in ``delta_basis`` (default: the smaller basis), the usual
"CCSD(T)/CBS ≈ MP2/CBS + ΔCCSD(T)" composite.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from piwsl.errors import ConfigError
from piwsl.labelling.backends.base import (
    Backend,
    as_bool,
    gradient_to_forces,
    hartree_to_ev,
    package_version,
    pop_option,
    reject_unknown,
    require,
)
from piwsl.labelling.backends.pyscf import CCSDTBackend, MP2Backend, check_basis

HF_SCHEMES = ("halkier", "karton-martin", "exp-sqrt")
#: default exponent α of the exp-sqrt (Neese–Valeev) HF form per cardinal pair
EXP_SQRT_ALPHA = {(2, 3): 4.42, (3, 4): 5.46}
HALKIER_ALPHA = 1.63
#: options passed on to the MP2 (and CCSD(T)) calculations in each basis
SHARED_OPTIONS = (
    "charge",
    "spin",
    "auxbasis",
    "conv_tol",
    "max_cycle",
    "max_memory_mb",
    "frozen_core",
    "density_fit_hf",
)

_CARDINAL_LETTERS = {"d": 2, "t": 3, "q": 4, "5": 5, "6": 6, "7": 7}


def cardinal_number(basis: str) -> int:
    """Cardinal number of a correlation-consistent (or def2) basis: cc-pVDZ → 2, aug-cc-pVTZ → 3."""
    text = basis.strip().lower().replace("_", "-")
    match = re.search(r"p(?:w?c)?v\(?([dtq567])(?:\+d)?\)?z", text)
    if match:
        return _CARDINAL_LETTERS[match.group(1)]
    def2 = {"def2-svp": 2, "def2-svpd": 2, "def2-tzvp": 3, "def2-tzvpp": 3, "def2-tzvpd": 3}
    def2 |= {"def2-tzvppd": 3, "def2-qzvp": 4, "def2-qzvpp": 4, "def2-qzvppd": 4}
    if text in def2:
        return def2[text]
    raise ConfigError(
        f"cannot tell the cardinal number of basis {basis!r}",
    )


def _hf_f(n: int, scheme: str, alpha: float) -> float:
    if scheme == "halkier":
        return math.exp(-alpha * n)
    if scheme == "karton-martin":
        return (n + 1) * math.exp(-9.0 * math.sqrt(n))
    if scheme == "exp-sqrt":
        return math.exp(-alpha * math.sqrt(n))
    from piwsl.registry import suggest

    raise ConfigError(f"unknown hf_scheme {scheme!r}{suggest(scheme, HF_SCHEMES)}")


def two_point_weights(f_x: float, f_y: float) -> tuple[float, float]:
    """Weights (w_X, w_Y) of ``E_CBS = w_X E_X + w_Y E_Y`` for ``E(n) = E_CBS + A f(n)``."""
    if f_x == f_y:
        raise ConfigError("the two basis sets must differ (equal extrapolation factors)")
    return f_y / (f_y - f_x), -f_x / (f_y - f_x)


def default_hf_alpha(scheme: str, x: int, y: int) -> float | None:
    if scheme == "halkier":
        return HALKIER_ALPHA
    if scheme == "exp-sqrt":
        if (x, y) not in EXP_SQRT_ALPHA:
            raise ConfigError(f"exp-sqrt HF extrapolation needs hf_alpha for cardinals ({x}, {y})")
        return EXP_SQRT_ALPHA[(x, y)]
    return None


def hf_weights(x: int, y: int, scheme: str = "halkier", alpha: float | None = None):
    """Weights of the two-point HF extrapolation (see the module docstring for the forms)."""
    if alpha is None:
        alpha = default_hf_alpha(scheme, x, y)
    return two_point_weights(_hf_f(x, scheme, alpha or 0.0), _hf_f(y, scheme, alpha or 0.0))


def corr_weights(x: int, y: int, exponent: float = 3.0) -> tuple[float, float]:
    """Weights of the X^−β correlation extrapolation: β=3 gives (X³, −Y³)/(X³ − Y³)."""
    return two_point_weights(float(x) ** -exponent, float(y) ** -exponent)


def extrapolate(value_x, value_y, weights: tuple[float, float]):
    """``w_X value_X + w_Y value_Y`` for energies (floats) or gradients (arrays)."""
    w_x, w_y = weights
    return w_x * np.asarray(value_x, dtype=np.float64) + w_y * np.asarray(value_y, dtype=np.float64)


class CBSBackend(Backend):
    """MP2/CBS(X,Y) energies, optionally with CBS forces (MP2 gradients) or a ΔCCSD(T) term."""

    name = "cbs"
    program = "pyscf"
    OPTIONS = (
        "bases",
        "cardinals",
        "hf_scheme",
        "hf_alpha",
        "corr_exponent",
        "forces",
        "delta",
        "delta_basis",
        "charge",
        "spin",
        "density_fit",
        "auxbasis",
        "frozen_core",
        "density_fit_hf",
        "conv_tol",
        "max_cycle",
        "max_memory_mb",
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = dict(options)
        bases = pop_option(opts, "bases", "cc-pvdz,cc-pvtz", str)
        self.bases = [b.strip() for b in re.split(r"[,/]", bases) if b.strip()]
        if len(self.bases) != 2:
            raise ConfigError(f"cbs needs exactly two basis sets, got bases={bases!r}")
        cardinals = pop_option(opts, "cardinals", None, str)
        if cardinals:
            self.cardinals = tuple(int(c) for c in re.split(r"[,/]", cardinals))
        else:
            self.cardinals = tuple(cardinal_number(b) for b in self.bases)
        if len(self.cardinals) != 2 or not self.cardinals[0] < self.cardinals[1]:
            raise ConfigError(
                f"cbs needs cardinal numbers X < Y, got {self.cardinals} for {self.bases} "
                "(give the smaller basis first)"
            )
        self.basis = f"{self.bases[0]}/{self.bases[1]}"
        self.hf_scheme = pop_option(opts, "hf_scheme", "halkier", str).lower()
        if self.hf_scheme not in HF_SCHEMES:
            from piwsl.registry import suggest

            raise ConfigError(
                f"unknown hf_scheme {self.hf_scheme!r}{suggest(self.hf_scheme, HF_SCHEMES)}"
            )
        x, y = self.cardinals
        self.hf_alpha = pop_option(opts, "hf_alpha", None, float)
        if self.hf_alpha is None:
            self.hf_alpha = default_hf_alpha(self.hf_scheme, x, y)
        self.corr_exponent = pop_option(opts, "corr_exponent", 3.0, float)
        self.want_forces = pop_option(opts, "forces", False, as_bool)
        self.delta = pop_option(opts, "delta", None, str)
        self.delta_basis = pop_option(opts, "delta_basis", self.bases[0], str)
        if self.delta is not None and self.delta.lower() not in {"ccsd(t)", "none"}:
            raise ConfigError(f"cbs delta={self.delta!r}: only 'ccsd(t)' is supported")
        if self.delta is not None and self.delta.lower() == "none":
            self.delta = None
        if self.delta and self.want_forces:
            raise ConfigError("cbs with delta=ccsd(t) gives energies only: drop forces=true")
        common = {k: opts.pop(k) for k in list(opts) if k in SHARED_OPTIONS}
        density_fit = opts.pop("density_fit", True)
        reject_unknown(self.name, opts, list(self.OPTIONS))
        for basis in self.bases[1:]:  # the first is checked by the MP2 backend below
            require("pyscf", self.name)
            check_basis(basis, self.name)
        self.mp2 = MP2Backend(
            basis=self.bases[0], density_fit=density_fit, forces=self.want_forces, **common
        )
        cc_common = {k: v for k, v in common.items() if k != "density_fit_hf"}
        self.ccsdt = CCSDTBackend(basis=self.delta_basis, **cc_common) if self.delta else None
        self.w_hf = hf_weights(x, y, self.hf_scheme, self.hf_alpha)
        self.w_corr = corr_weights(x, y, self.corr_exponent)
        self.gives_forces = self.want_forces

    @property
    def method(self) -> str:
        text = f"MP2/CBS({self.bases[0]},{self.bases[1]})"
        if self.delta:
            text += f"+dCCSD(T)/{self.delta_basis}"
        return text

    def compute(self, atoms) -> dict[str, Any]:
        px = self.mp2.parts(atoms, self.bases[0])
        py = self.mp2.parts(atoms, self.bases[1])
        e_hf = float(extrapolate(px["e_hf"], py["e_hf"], self.w_hf))
        e_corr = float(extrapolate(px["e_corr"], py["e_corr"], self.w_corr))
        energy = e_hf + e_corr
        prov: dict[str, Any] = {
            "method": self.method,
            "basis": f"{self.bases[0]}/{self.bases[1]}",
            "program": "pyscf",
            "program_version": package_version("pyscf"),
            "cbs_cardinals": f"{self.cardinals[0]},{self.cardinals[1]}",
            "cbs_hf_scheme": self.hf_scheme,
            "cbs_corr_exponent": self.corr_exponent,
            **({"cbs_hf_alpha": float(self.hf_alpha)} if self.hf_alpha is not None else {}),
            "density_fit": bool(px["density_fit"]),
            "density_fit_hf": bool(px["density_fit_hf"]),
            "frozen_core_orbitals": px["frozen"],
            "e_hf_X_eV": hartree_to_ev(px["e_hf"]),
            "e_hf_Y_eV": hartree_to_ev(py["e_hf"]),
            "e_corr_X_eV": hartree_to_ev(px["e_corr"]),
            "e_corr_Y_eV": hartree_to_ev(py["e_corr"]),
            "e_hf_cbs_eV": hartree_to_ev(e_hf),
            "e_corr_cbs_eV": hartree_to_ev(e_corr),
        }
        if self.ccsdt is not None:
            pc = self.ccsdt.parts(atoms)
            delta = (pc["e_ccsd_corr"] + pc["e_t"]) - pc["e_mp2_corr"]
            energy += delta
            prov["delta_ccsd_t_eV"] = hartree_to_ev(delta)
        forces = None
        if self.want_forces:
            g_hf = extrapolate(px["g_hf"], py["g_hf"], self.w_hf)
            g_corr = extrapolate(px["g_corr"], py["g_corr"], self.w_corr)
            forces = gradient_to_forces(g_hf + g_corr)
        return {"energy": hartree_to_ev(energy), "forces": forces, "provenance": prov}
