"""Tests of piwsl.labelling: backends vs direct program calls, CBS formulas and forces, the
resumable runner (SIGKILL + resume), per-frame failures, unit conversions, sampling and the CLI."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from piwsl.errors import ConfigError, DataError
from piwsl.labelling import (
    Backend,
    BackendError,
    cardinal_number,
    corr_weights,
    extrapolate,
    gradient_to_forces,
    hartree_to_ev,
    hf_weights,
    label_structures,
    make_backend,
)
from piwsl.labelling.runner import iter_records, journal_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def water() -> Atoms:
    atoms = molecule("H2O")
    atoms.positions += np.array([[0.0, 0.0, 0.0], [0.0, 0.03, -0.02], [0.01, -0.02, 0.0]])
    return atoms


def pyscf_mol(atoms: Atoms, basis: str, spin: int = 0):
    from pyscf import gto

    return gto.M(
        atom=[(int(z), tuple(p)) for z, p in zip(atoms.numbers, atoms.positions, strict=True)],
        unit="Angstrom",
        basis=basis,
        spin=spin,
        verbose=0,
    )


# ----------------------------------------------------------------------------------------------
# units
# ----------------------------------------------------------------------------------------------


def test_unit_conversions_match_codata():
    # CODATA 2014 (ASE's default): 1 Ha = 27.21138602 eV, 1 Bohr = 0.52917721067 Å
    assert hartree_to_ev(1.0) == pytest.approx(27.21138602, rel=1e-8)
    assert hartree_to_ev(-2.5) == pytest.approx(-2.5 * 27.21138602, rel=1e-8)
    forces = gradient_to_forces(np.array([[1.0, -2.0, 0.0]]))
    per = 27.21138602 / 0.52917721067  # eV/Å per Ha/Bohr ≈ 51.4220671
    np.testing.assert_allclose(forces, [[-per, 2 * per, 0.0]], rtol=1e-8)
    assert per == pytest.approx(51.42207, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# tblite
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "method"), [("gfn2-xtb", "GFN2-xTB"), ("gfn1-xtb", "GFN1-xTB")])
def test_xtb_backend_matches_tblite(name, method):
    pytest.importorskip("tblite")
    from tblite.ase import TBLite

    atoms = water()
    out = make_backend(name).compute(atoms)
    ref = atoms.copy()
    ref.calc = TBLite(method=method, verbosity=0)  # tblite's own unit conversion
    assert out["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-7)
    np.testing.assert_allclose(out["forces"], ref.get_forces(), atol=1e-6)
    assert out["provenance"]["program"] == "tblite"
    # forces are minus the energy gradient (central finite difference on one coordinate)
    backend = make_backend(name)
    h = 1e-4
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[1, 2] += h
    minus.positions[1, 2] -= h
    fd = -(backend.compute(plus)["energy"] - backend.compute(minus)["energy"]) / (2 * h)
    assert out["forces"][1, 2] == pytest.approx(fd, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# PySCF
# ----------------------------------------------------------------------------------------------


def test_hf_backend_matches_pyscf_and_finite_difference():
    pytest.importorskip("pyscf")
    from pyscf import scf

    atoms = water()
    backend = make_backend("hf", basis="6-31g")
    out = backend.compute(atoms)
    mf = scf.RHF(pyscf_mol(atoms, "6-31g"))
    mf.conv_tol = 1e-10
    e = mf.kernel()
    g = mf.nuc_grad_method().kernel()
    assert out["energy"] == pytest.approx(e * 27.211386024367243, abs=1e-6)
    np.testing.assert_allclose(
        out["forces"], -g * 27.211386024367243 / 0.5291772105638411, atol=1e-5
    )
    h = 1e-3
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[0, 2] += h
    minus.positions[0, 2] -= h
    fd = -(backend.compute(plus)["energy"] - backend.compute(minus)["energy"]) / (2 * h)
    assert out["forces"][0, 2] == pytest.approx(fd, abs=2e-4)
    assert out["provenance"]["basis"] == "6-31g"
    with pytest.raises(ConfigError, match=r"unknown option 'bassis'.*'basis'"):
        make_backend("hf", bassis="sto-3g")
    # open shell (OH radical, spin = 2S = 1) runs unrestricted
    oh = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    radical = make_backend("hf", basis="6-31g", spin=1).compute(oh)
    uhf = scf.UHF(pyscf_mol(oh, "6-31g", spin=1))
    uhf.conv_tol = 1e-10
    assert radical["energy"] == pytest.approx(hartree_to_ev(uhf.kernel()), abs=1e-6)


def test_dft_backend_matches_pyscf():
    pytest.importorskip("pyscf")
    from pyscf import dft

    atoms = water()
    out = make_backend("dft", xc="pbe", basis="sto-3g").compute(atoms)
    mf = dft.RKS(pyscf_mol(atoms, "sto-3g"), xc="pbe").density_fit()
    mf.conv_tol = 1e-10
    e = mf.kernel()
    g = mf.nuc_grad_method().kernel()
    assert out["energy"] == pytest.approx(hartree_to_ev(e), abs=1e-5)
    np.testing.assert_allclose(out["forces"], gradient_to_forces(g), atol=1e-4)
    assert out["provenance"]["xc"] == "pbe"
    # the functional option is used: B3LYP differs from PBE by far more than the tolerance
    b3 = make_backend("dft", xc="b3lyp", basis="sto-3g", forces=False).compute(atoms)
    assert abs(b3["energy"] - out["energy"]) > 0.01


def test_mp2_backend_matches_pyscf():
    pytest.importorskip("pyscf")
    from pyscf import mp, scf

    atoms = water()
    mol = pyscf_mol(atoms, "cc-pvdz")
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-10
    mf.kernel()
    df = mp.dfmp2.DFMP2(mf, frozen=1).run()  # O 1s frozen
    conv = mp.MP2(mf, frozen=1).run()
    grad = conv.nuc_grad_method().kernel()
    energy_only = make_backend("mp2", basis="cc-pvdz").compute(atoms)
    assert energy_only["forces"] is None
    assert energy_only["energy"] == pytest.approx(hartree_to_ev(mf.e_tot + df.e_corr), abs=1e-6)
    with_forces = make_backend("mp2", basis="cc-pvdz", forces=True).compute(atoms)
    assert with_forces["energy"] == pytest.approx(hartree_to_ev(mf.e_tot + conv.e_corr), abs=1e-6)
    np.testing.assert_allclose(with_forces["forces"], gradient_to_forces(grad), atol=1e-5)
    # DF error of the correlation energy is small but not zero
    assert abs(energy_only["energy"] - with_forces["energy"]) < 2e-3


def test_ccsd_t_backend_matches_pyscf():
    pytest.importorskip("pyscf")
    from pyscf import cc, scf

    atoms = water()
    mf = scf.RHF(pyscf_mol(atoms, "6-31g"))
    mf.conv_tol = 1e-10
    mf.kernel()
    solver = cc.CCSD(mf, frozen=1).run()
    e_ref = mf.e_tot + solver.e_corr + solver.ccsd_t()
    out = make_backend("ccsd(t)", basis="6-31g").compute(atoms)
    assert out["forces"] is None
    assert out["energy"] == pytest.approx(hartree_to_ev(e_ref), abs=1e-5)
    with pytest.raises(ConfigError, match="energies only"):
        make_backend("ccsd(t)", forces=True)
    with pytest.raises(ConfigError, match="unknown basis set 'cc-pvdzz'"):
        make_backend("mp2", basis="cc-pvdzz")
    with pytest.raises(ConfigError, match="unknown basis set 'cc-pvtzz'"):
        make_backend("cbs", bases="cc-pvdz,cc-pvtzz")


# ----------------------------------------------------------------------------------------------
# CBS
# ----------------------------------------------------------------------------------------------


def test_cbs_formulas_against_hand_numbers():
    # correlation, X⁻³: (X³E_X − Y³E_Y)/(X³ − Y³) with X=2, Y=3, E_2=−0.20, E_3=−0.25 Ha
    # = (8·(−0.20) − 27·(−0.25)) / (8 − 27) = (−1.6 + 6.75)/(−19) = −0.271052631578947…
    assert float(extrapolate(-0.20, -0.25, corr_weights(2, 3))) == pytest.approx(
        -0.2710526315789474, abs=1e-13
    )
    # Halkier exp(−1.63 X): E_CBS = E_3 − (E_2 − E_3)/(e^1.63 − 1), e^1.63 = 5.1038…
    # with E_2=−76.00, E_3=−76.05 → −76.05 − 0.05/4.10387… = −76.062183607792…
    assert float(extrapolate(-76.00, -76.05, hf_weights(2, 3, "halkier"))) == pytest.approx(
        -76.06218360779245, abs=1e-10
    )
    # Karton–Martin f(X)=(X+1)e^{−9√X}: f(2)=3e^{−12.7279}, f(3)=4e^{−15.5885}
    # E_CBS = (f(3)E_2 − f(2)E_3)/(f(3) − f(2)) = −76.05413115381…
    assert float(extrapolate(-76.00, -76.05, hf_weights(2, 3, "karton-martin"))) == pytest.approx(
        -76.05413115381434, abs=1e-10
    )
    # weights sum to one: a basis-independent energy is unchanged
    for weights in (hf_weights(3, 4, "exp-sqrt"), corr_weights(3, 4), hf_weights(2, 3)):
        assert sum(weights) == pytest.approx(1.0)
        assert float(extrapolate(1.234, 1.234, weights)) == pytest.approx(1.234)
    assert cardinal_number("cc-pVDZ") == 2
    assert cardinal_number("aug-cc-pVTZ") == 3
    assert cardinal_number("cc-pwCVQZ") == 4
    assert cardinal_number("def2-TZVP") == 3
    with pytest.raises(ConfigError, match="cardinal"):
        cardinal_number("6-31g")
    with pytest.raises(ConfigError, match="did you mean 'halkier'"):
        make_backend("cbs", hf_scheme="halkie")


def test_cbs_backend_energy_and_forces_are_the_same_combination():
    pytest.importorskip("pyscf")
    from pyscf import mp, scf

    atoms = Atoms("FH", positions=[[0.0, 0.0, 0.0], [0.05, 0.0, 0.93]])  # F 1s frozen
    parts = {}
    for basis in ("cc-pvdz", "cc-pvtz"):
        mf = scf.RHF(pyscf_mol(atoms, basis))
        mf.conv_tol = 1e-10
        mf.kernel()
        pt = mp.MP2(mf, frozen=1).run()
        g_hf = mf.nuc_grad_method().kernel()
        g_mp2 = pt.nuc_grad_method().kernel()
        parts[basis] = (mf.e_tot, pt.e_corr, g_hf, g_mp2 - g_hf)
    (h2, c2, gh2, gc2), (h3, c3, gh3, gc3) = parts["cc-pvdz"], parts["cc-pvtz"]
    a = 1.63  # Halkier: w_2 = −1/(e^a − 1), w_3 = e^a/(e^a − 1)
    w_hf = (-1 / (math.exp(a) - 1), math.exp(a) / (math.exp(a) - 1))
    w_c = (8 / (8 - 27), -27 / (8 - 27))
    e_cbs = w_hf[0] * h2 + w_hf[1] * h3 + w_c[0] * c2 + w_c[1] * c3
    g_cbs = w_hf[0] * gh2 + w_hf[1] * gh3 + w_c[0] * gc2 + w_c[1] * gc3

    backend = make_backend("cbs", bases="cc-pvdz,cc-pvtz", forces=True, density_fit=False)
    out = backend.compute(atoms)
    assert out["energy"] == pytest.approx(hartree_to_ev(e_cbs), abs=1e-6)
    np.testing.assert_allclose(out["forces"], gradient_to_forces(g_cbs), atol=1e-5)
    prov = out["provenance"]
    assert prov["cbs_hf_scheme"] == "halkier"
    assert prov["e_corr_Y_eV"] == pytest.approx(hartree_to_ev(c3), abs=1e-6)
    # CBS forces are the derivative of the CBS energy (finite difference, one coordinate)
    energy_only = make_backend("cbs", bases="cc-pvdz,cc-pvtz", density_fit=False)
    h = 2e-3
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[1, 2] += h
    minus.positions[1, 2] -= h
    fd = -(energy_only.compute(plus)["energy"] - energy_only.compute(minus)["energy"]) / (2 * h)
    assert out["forces"][1, 2] == pytest.approx(fd, abs=5e-4)
    assert abs(fd) > 0.1  # a real force (eV/Å), not a trivially zero one
    # CBS lies below the larger basis for both components here (more negative)
    assert e_cbs < h3 + c3


def test_finite_difference_forces_match_analytic_ones_and_are_recorded(tmp_path):
    pytest.importorskip("tblite")
    atoms = water()
    analytic = make_backend("gfn2-xtb").compute(atoms)
    backend = make_backend("gfn2-xtb", finite_difference_forces=True, finite_difference_step=0.004)
    assert backend.gives_forces
    out = backend.compute(atoms)
    assert out["energy"] == analytic["energy"]  # the undisplaced energy, not an average
    assert np.abs(analytic["forces"]).max() > 0.1  # a real force field to compare against
    np.testing.assert_allclose(out["forces"], analytic["forces"], atol=2e-3)
    assert out["provenance"]["forces_method"] == "central finite differences of the energy"
    assert out["provenance"]["energy_evaluations"] == 6 * len(atoms) + 1
    # an energy-only method gains forces, through the runner into REF_forces
    pytest.importorskip("pyscf")
    src = tmp_path / "in.extxyz"
    ase.io.write(src, [water()])
    options = {"basis": "sto-3g", "density_fit": False, "finite_difference_forces": True}
    label_structures(str(src), str(tmp_path / "out.extxyz"), "mp2", options, progress=False)
    (labelled,) = ase.io.read(tmp_path / "out.extxyz", ":")
    reference = make_backend("mp2", basis="sto-3g", density_fit=False, forces=True).compute(water())
    np.testing.assert_allclose(labelled.arrays["REF_forces"], reference["forces"], atol=2e-3)
    # contradictory or nonsensical options are errors that say what to do
    with pytest.raises(ConfigError, match="drop forces=true"):
        make_backend("mp2", forces=True, finite_difference_forces=True)
    with pytest.raises(ConfigError, match="finite_difference_forces is not"):
        make_backend("gfn2-xtb", finite_difference_step=0.01)
    with pytest.raises(ConfigError, match="small positive step"):
        make_backend("gfn2-xtb", finite_difference_forces=True, finite_difference_step=-1)


def test_cbs_delta_ccsd_t_and_density_fitted_hf():
    pytest.importorskip("pyscf")
    from pyscf import cc, mp, scf

    atoms = Atoms("FH", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.92]])
    plain = make_backend("cbs", bases="cc-pvdz,cc-pvtz").compute(atoms)
    delta = make_backend("cbs", bases="cc-pvdz,cc-pvtz", delta="ccsd(t)").compute(atoms)
    mf = scf.RHF(pyscf_mol(atoms, "cc-pvdz"))
    mf.conv_tol = 1e-10
    mf.kernel()
    solver = cc.CCSD(mf, frozen=1).run()
    expected = solver.e_corr + solver.ccsd_t() - mp.MP2(mf, frozen=1).run().e_corr
    assert delta["energy"] - plain["energy"] == pytest.approx(hartree_to_ev(expected), abs=1e-5)
    assert delta["provenance"]["method"] == "MP2/CBS(cc-pvdz,cc-pvtz)+dCCSD(T)/cc-pvdz"
    with pytest.raises(ConfigError, match="energies only"):
        make_backend("cbs", delta="ccsd(t)", forces=True)
    # density-fitted HF reference: a small, nonzero change of the energy
    df_hf = make_backend("mp2", basis="cc-pvdz", density_fit_hf=True).compute(atoms)
    conv_hf = make_backend("mp2", basis="cc-pvdz").compute(atoms)
    assert 0 < abs(df_hf["energy"] - conv_hf["energy"]) < 5e-3  # eV
    assert df_hf["provenance"]["density_fit_hf"] is True


# ----------------------------------------------------------------------------------------------
# ASE backend and the registry
# ----------------------------------------------------------------------------------------------


def test_ase_backend_and_registry_errors():
    from ase.calculators.emt import EMT

    atoms = water()
    out = make_backend("ase:ase.calculators.emt.EMT").compute(atoms)
    ref = atoms.copy()
    ref.calc = EMT()
    assert out["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(out["forces"], ref.get_forces(), atol=1e-12)
    with pytest.raises(ConfigError, match="did you mean 'mp2'"):
        make_backend("mp3")
    with pytest.raises(ConfigError, match="did you mean 'EMT'"):
        make_backend("ase:ase.calculators.emt.EMTT")
    with pytest.raises(ConfigError, match="cannot import"):
        make_backend("ase:no_such_module_xyz.Calc")


# ----------------------------------------------------------------------------------------------
# runner: failures, output, journal checks
# ----------------------------------------------------------------------------------------------


class FlakyBackend(Backend):
    """Harmonic-bond toy energy that raises on odd frame indices."""

    name = "flaky"
    program = "test"

    def compute(self, atoms):
        if atoms.info["label_index"] % 2 == 1:
            raise BackendError("SCF did not converge (on purpose)")
        d = atoms.get_all_distances()
        return {
            "energy": float(np.sum(d)),
            "forces": np.zeros((len(atoms), 3)),
            "provenance": {"basis": "toy"},
        }


def frames_of_water(n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = water()
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        out.append(a)
    return out


def test_failed_frames_are_kept_marked_and_summarised(tmp_path):
    from piwsl.data import read_frames

    images = frames_of_water(5)
    output = tmp_path / "labelled.xyz"
    summary = label_structures(images, output, backend=FlakyBackend(), progress=False)
    assert (summary.n_ok, summary.n_failed) == (3, 2)
    assert [f["index"] for f in summary.failed] == [1, 3]
    assert "on purpose" in summary.failed[0]["error"]
    back = ase.io.read(output, ":")
    assert len(back) == 5
    for i, atoms in enumerate(back):
        assert atoms.info["REF_frame"] == i
        np.testing.assert_allclose(atoms.positions, images[i].positions, atol=1e-7)
        if i % 2:
            assert atoms.info["REF_status"] == "failed"
            assert "REF_energy" not in atoms.info and "REF_forces" not in atoms.arrays
            assert "SCF did not converge" in atoms.info["REF_error"]
        else:
            assert atoms.info["REF_status"] == "ok"
            assert atoms.info["REF_energy"] == pytest.approx(np.sum(images[i].get_all_distances()))
            assert atoms.info["REF_program"] == "test"
    frames = read_frames(output)  # piwsl reads failed frames as unlabelled, not as zeros
    assert [f.energy is None for f in frames] == [False, True, False, True, False]
    saved = json.loads(output.with_name(output.name + ".summary.json").read_text())
    assert saved["n_failed"] == 2
    # a second run recomputes nothing; retry_failed recomputes exactly the failed frames
    again = label_structures(images, output, backend=FlakyBackend(), progress=False)
    assert again.n_computed_now == 0
    retry = label_structures(
        images, output, backend=FlakyBackend(), progress=False, retry_failed=True
    )
    assert retry.n_computed_now == 2


def test_real_scf_failure_is_recorded(tmp_path):
    pytest.importorskip("pyscf")
    output = tmp_path / "hf.xyz"
    summary = label_structures(
        [water()], output, backend="hf", options={"basis": "sto-3g", "max_cycle": 1}, progress=False
    )
    assert summary.n_failed == 1
    assert "did not converge" in summary.failed[0]["error"]
    atoms = ase.io.read(output)
    assert atoms.info["REF_status"] == "failed"
    assert atoms.info["REF_method"] == "HF" and atoms.info["REF_basis"] == "sto-3g"


def test_journal_refuses_changed_input_or_backend(tmp_path):
    images = frames_of_water(3)
    output = tmp_path / "out.xyz"
    label_structures(
        images, output, backend="ase:ase.calculators.emt.EMT", progress=False, max_frames=2
    )
    assert not output.exists()  # not all frames done yet
    moved = [a.copy() for a in images]
    moved[1].positions[0, 0] += 0.1
    with pytest.raises(DataError, match="frame 1"):
        label_structures(moved, output, backend="ase:ase.calculators.emt.EMT", progress=False)
    with pytest.raises(ConfigError, match="backend"):
        label_structures(images, output, backend=FlakyBackend(), progress=False)
    done = label_structures(images, output, backend="ase:ase.calculators.emt.EMT", progress=False)
    assert (done.n_from_journal, done.n_computed_now, done.n_ok) == (2, 1, 3)


def test_torn_journal_line_is_dropped_and_that_frame_recomputed(tmp_path):
    images = frames_of_water(4)
    output = tmp_path / "out.xyz"
    emt = "ase:ase.calculators.emt.EMT"
    label_structures(images, output, backend=emt, progress=False, max_frames=3)
    journal = journal_path(output)
    text = journal.read_text()
    journal.write_text(text[: len(text) - 25])  # a kill in the middle of writing frame 2
    summary = label_structures(images, output, backend=emt, progress=False)
    assert (summary.n_from_journal, summary.n_computed_now) == (2, 2)
    assert [r["index"] for r in iter_records(journal)] == [0, 1, 2, 3]
    assert [a.info["REF_frame"] for a in ase.io.read(output, ":")] == [0, 1, 2, 3]


def test_second_concurrent_run_on_one_journal_is_refused(tmp_path):
    from piwsl.labelling.runner import Journal

    header = {"backend": "x", "options": {}, "n_frames": 1, "version": 1}
    first = Journal(tmp_path / "j.jsonl", header)
    try:
        with pytest.raises(ConfigError, match="in use by another"):
            Journal(tmp_path / "j.jsonl", header)
    finally:
        first.close()
    Journal(tmp_path / "j.jsonl", header).close()  # free again once the first run ended


# ----------------------------------------------------------------------------------------------
# runner: SIGKILL and resume
# ----------------------------------------------------------------------------------------------

SLOW_CALC = textwrap.dedent(
    """
    import os, time
    import numpy as np
    from ase.calculators.calculator import Calculator, all_changes

    def toy_energy(positions):
        d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
        return float(np.sum(np.triu(d, 1) ** 2))

    class SlowToy(Calculator):
        implemented_properties = ["energy", "forces"]

        def __init__(self, delay=0.2, log="calls.txt", **kwargs):
            super().__init__(**kwargs)
            self.delay, self.log = delay, log

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            with open(self.log, "a") as handle:  # count every call, before the work
                handle.write(f"{os.environ['PHASE']} {self.atoms.info['label_index']}\\n")
                handle.flush()
            time.sleep(self.delay)
            p = self.atoms.positions
            n = len(p)
            self.results = {"energy": toy_energy(p),
                            "forces": -2 * (n * p - p.sum(axis=0))}
    """
)

RUN = (
    "import sys, ase.io; from piwsl.labelling import label_structures; "
    "label_structures(ase.io.read(sys.argv[1], ':'), sys.argv[2], 'ase:slowcalc.SlowToy', "
    "options={'delay': 0.1, 'log': sys.argv[3]}, n_workers=2, progress=False, "
    "executor=sys.argv[4])"
)


def _journaled(path: Path) -> list[int]:
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[1:-1]  # header, complete lines only
    return [json.loads(line)["index"] for line in lines]


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_killed_run_resumes_without_recomputing_or_losing_frames(tmp_path, executor):
    if executor == "dask":
        pytest.importorskip("distributed")
    n = 10
    images = frames_of_water(n, seed=3)
    source = tmp_path / "in.xyz"
    ase.io.write(source, images)
    (tmp_path / "slowcalc.py").write_text(SLOW_CALC)
    output, log = tmp_path / "out.xyz", tmp_path / "calls.txt"
    journal = journal_path(output)
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    args = [sys.executable, "-c", RUN, str(source), str(output), str(log), executor]

    first = subprocess.Popen(
        args,
        env={**env, "PHASE": "1"},
        cwd=tmp_path,
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 40
    while len(_journaled(journal)) < 3:
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < deadline, "no frames journaled in 40 s"
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # the run and its workers, mid-flight
    first.wait(timeout=10)
    assert not output.exists()
    before = set(_journaled(journal))
    assert 3 <= len(before) < n

    second = subprocess.run(
        args, env={**env, "PHASE": "2"}, cwd=tmp_path, capture_output=True, timeout=60
    )
    assert second.returncode == 0, second.stderr.decode()

    calls = [line.split() for line in log.read_text().splitlines()]
    resumed = [int(i) for phase, i in calls if phase == "2"]
    assert len(resumed) == len(set(resumed)), "a frame was computed twice after resuming"
    assert not set(resumed) & before, "a journaled frame was recomputed"
    assert set(resumed) | before == set(range(n)), "a frame was lost"
    records = list(iter_records(journal))
    assert sorted(r["index"] for r in records) == list(range(n))

    spec = __import__("importlib").util.spec_from_file_location(
        "slowcalc", tmp_path / "slowcalc.py"
    )
    slow = __import__("importlib").util.module_from_spec(spec)
    spec.loader.exec_module(slow)
    back = ase.io.read(output, ":")
    assert len(back) == n
    for i, atoms in enumerate(back):  # complete and in input order, labels of the right frame
        assert atoms.info["REF_frame"] == i and atoms.info["REF_status"] == "ok"
        np.testing.assert_allclose(atoms.positions, images[i].positions, atol=1e-7)
        assert atoms.info["REF_energy"] == pytest.approx(slow.toy_energy(images[i].positions))
        assert atoms.arrays["REF_forces"].shape == (3, 3)


# ----------------------------------------------------------------------------------------------
# sampling and CLI
# ----------------------------------------------------------------------------------------------


def test_sampling_is_seeded_and_moves_atoms():
    pytest.importorskip("tblite")
    from piwsl.labelling import SamplingConfig, sample_md

    cfg = SamplingConfig(temperature_K=400, n_frames=3, every=5, equilibration_steps=10, seed=7)
    a = sample_md(water(), "gfn2-xtb", cfg)
    b = sample_md(water(), "gfn2-xtb", cfg)
    c = sample_md(water(), "gfn2-xtb", SamplingConfig(**{**cfg.__dict__, "seed": 8}))
    assert len(a) == 3
    assert a[-1].info["sample_step"] == 10 + 3 * 5
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.positions, y.positions)
    assert not np.allclose(a[-1].positions, c[-1].positions)
    assert not np.allclose(a[0].positions, water().positions)
    d = a[-1].get_distance(0, 1)
    assert 0.8 < d < 1.3  # O–H bond intact (Å)


def test_sampling_with_a_piwsl_model_file(tmp_path):
    torch = pytest.importorskip("torch")
    from piwsl.calculator import PiwslCalculator
    from piwsl.labelling import SamplingConfig, sample_md
    from piwsl.labelling.sampling import make_sampling_calculator
    from piwsl.models import build_model, save_model

    torch.manual_seed(0)
    model = build_model("schnet", elements=[1, 8], cutoff=3.0, features=8, interactions=1, n_rbf=8)
    path = tmp_path / "tiny.pt"
    save_model(model, path)
    calc = make_sampling_calculator(str(path))
    assert isinstance(calc, PiwslCalculator)
    cfg = SamplingConfig(temperature_K=300, n_frames=2, every=2, equilibration_steps=2, seed=1)
    frames = sample_md(water(), calc, cfg)
    assert len(frames) == 2
    assert all(np.all(np.isfinite(f.positions)) for f in frames)
    assert not np.allclose(frames[-1].positions, water().positions)


def test_cli_label_and_sample(tmp_path, capsys):
    from piwsl.labelling.cli import add_label_parser, add_sample_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_label_parser(sub)
    add_sample_parser(sub)
    source = tmp_path / "in.xyz"
    ase.io.write(source, frames_of_water(2))
    out = tmp_path / "out.xyz"
    args = parser.parse_args(
        ["label", str(source), str(out), "--method", "ase:ase.calculators.emt.EMT", "--no-progress"]
    )
    assert args.func(args) == 0
    assert len(ase.io.read(out, ":")) == 2
    assert "2 ok, 0 failed" in capsys.readouterr().out
    sampled = tmp_path / "md.xyz"
    args = parser.parse_args(
        [
            "sample",
            str(source),
            str(sampled),
            "--calculator",
            "ase:ase.calculators.emt.EMT",
            "--frames",
            "2",
            "--every",
            "2",
            "--equilibration",
            "2",
        ]
    )
    assert args.func(args) == 0
    assert len(ase.io.read(sampled, ":")) == 2


def test_sampling_keeps_the_xtb_labels_with_provenance(tmp_path):
    """The GFN2-xTB energies and forces computed during sampling are labels, identical to a
    fresh calculation at the kept positions, with the provenance `piwsl label` writes;
    `piwsl train` reads them as they are."""
    pytest.importorskip("tblite")
    from piwsl.data import read_frames
    from piwsl.labelling import SamplingConfig, sample_md, write_samples
    from piwsl.labelling.sampling import make_sampling_calculator

    cfg = SamplingConfig(temperature_K=400, n_frames=3, every=5, equilibration_steps=10, seed=7)
    frames = sample_md(water(), "gfn2-xtb", cfg)
    fresh = make_sampling_calculator("gfn2-xtb")
    for snap in frames:
        atoms = snap.copy()
        atoms.calc = fresh
        assert snap.info["REF_energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(snap.arrays["REF_forces"], atoms.get_forces(), atol=1e-9)
        assert snap.info["REF_method"] == "GFN2-xTB" and snap.info["REF_program"] == "tblite"
        assert snap.info["REF_status"] == "ok" and snap.info["REF_program_version"]
    path = write_samples(frames, tmp_path / "sampled.extxyz")
    read = read_frames(path)
    assert all(f.has_energy and f.has_forces for f in read)
    assert read[1].energy == pytest.approx(frames[1].info["REF_energy"])


def test_sampling_with_a_model_labels_nothing(tmp_path):
    torch = pytest.importorskip("torch")
    from piwsl.labelling import SamplingConfig, sample_md
    from piwsl.models import build_model, save_model

    torch.manual_seed(0)
    model = build_model("schnet", elements=[1, 8], cutoff=3.0, features=8, interactions=1, n_rbf=8)
    save_model(model, tmp_path / "tiny.pt")
    cfg = SamplingConfig(temperature_K=300, n_frames=2, every=2, equilibration_steps=2, seed=1)
    frames = sample_md(water(), str(tmp_path / "tiny.pt"), cfg)
    assert not any("REF_energy" in f.info or "REF_forces" in f.arrays for f in frames)


def test_sample_help_shows_defaults_and_runs_with_a_progress_line(tmp_path, capsys):
    from piwsl.cli import main
    from piwsl.labelling.sampling import SamplingConfig

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    d = SamplingConfig()
    for default in (d.temperature_K, d.n_frames, d.every, d.equilibration_steps, d.timestep_fs):
        assert f"(default: {default})" in text
    assert "(default: gfn2-xtb)" in text and "label` extra" in text
    source = tmp_path / "in.xyz"
    ase.io.write(source, frames_of_water(1))
    out = tmp_path / "md.xyz"
    emt = ["--calculator", "ase:ase.calculators.emt.EMT"]
    args = ["sample", str(source), str(out), *emt, "--frames", "2", "--every", "3"]
    assert main([*args, "--equilibration", "4"]) == 0
    captured = capsys.readouterr()
    assert "sampling MD: 10/10 step (100 %)" in captured.err and "\r" not in captured.err
    assert "labels: the EMT energies (REF_energy, eV)" in captured.out
    assert all("REF_energy" in a.info for a in ase.io.read(out, ":"))
