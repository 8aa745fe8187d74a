"""Tests of piwsl.md: integration, failure criteria, metrics, reports, CLI, a tiny piwsl model."""

from __future__ import annotations

import argparse
import json
import logging

import ase.io
import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from md_setup import FAST, tiny_md_config, tiny_md_model, unchecked

from piwsl.errors import ConfigError
from piwsl.md import (
    FailureCriteria,
    MDConfig,
    distance_histogram,
    energy_drift,
    find_bonds,
    hr_error,
    run_md,
    run_trajectory,
    survival_curve,
)
from piwsl.md.cli import add_md_parser, format_summary, run_md_cli
from piwsl.md.metrics import hr_bins, time_to_failure_stats

# the Cu13 start structure is the ``cu13`` fixture of conftest.py


class ModifiedEMT(Calculator):
    """EMT whose (energy, forces) pass through ``modify(call, atoms, e, f)`` — broken potentials."""

    implemented_properties = ["energy", "forces"]  # noqa: RUF012 (ASE API)

    def __init__(self, modify) -> None:
        super().__init__()
        self.emt = EMT()
        self.modify = modify
        self.calls = 0

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        energy = self.emt.get_potential_energy(self.atoms)
        forces = self.emt.get_forces(self.atoms).copy()
        energy, forces = self.modify(self.calls, self.atoms, energy, forces)
        self.results = {"energy": energy, "forces": forces}


def curl_force(strength: float):
    """A non-conservative force field (EMT + c ẑ×(r − r_com)): like a direct-force model's error."""

    def modify(call, atoms, energy, forces):
        rel = atoms.positions - atoms.get_center_of_mass()
        extra = strength * np.stack([-rel[:, 1], rel[:, 0], np.zeros(len(atoms))], axis=1)
        return energy, forces + extra

    return modify


# --- integration and energy conservation ---------------------------------------------------------


def test_nve_conserves_energy_with_verlet_error_scaling_as_dt_squared(cu13):
    fluct = {}
    for dt in (1.0, 2.0):
        report = run_md(
            EMT(),
            [cu13],
            ensemble="nve",
            timestep_fs=dt,
            length_ps=0.2,
            n_trajectories=1,
            log_interval=1,
            **FAST,
        )
        traj = report.trajectories[0]
        assert traj.stable, traj.failure
        assert traj.n_steps == round(200 / dt)
        assert abs(traj.energy["energy_drift_meV_per_atom_per_ps"]) < 0.05
        fluct[dt] = traj.energy["energy_fluctuation_meV_per_atom"]
        # the system really moves: kinetic energy is exchanged with potential energy
        epot = traj.thermo["potential_eV"] / len(cu13) * 1000
        assert np.ptp(epot) > 100 * fluct[dt]
    # velocity Verlet: energy error ∝ Δt²
    assert 2.5 < fluct[2.0] / fluct[1.0] < 6.0


def test_non_conservative_forces_drift_in_nve(cu13):
    common = dict(ensemble="nve", timestep_fs=2.0, length_ps=0.2, n_trajectories=1, **FAST)
    good = run_md(EMT(), [cu13], **common).summary
    bad = run_md(ModifiedEMT(curl_force(0.02)), [cu13], **common).summary
    assert bad["n_stable"] == 1  # stable, but it does not conserve energy
    drift_good = abs(good["energy_drift_meV_per_atom_per_ps_mean"])
    drift_bad = abs(bad["energy_drift_meV_per_atom_per_ps_mean"])
    assert drift_bad > 1.0 > 20 * drift_good
    assert drift_bad > 100 * drift_good


@pytest.mark.filterwarnings("error::DeprecationWarning", "error::FutureWarning")
@pytest.mark.parametrize("ensemble", ["langevin", "bussi", "nose-hoover"])
def test_thermostats_run_and_keep_the_centre_of_mass(cu13, ensemble):
    cfg = MDConfig(
        ensemble=ensemble,
        temperature_K=300,
        timestep_fs=2.0,
        length_ps=0.1,
        n_trajectories=1,
        log_interval=1,
        traj_interval=5,
        **FAST,
    )
    result = run_trajectory(EMT(), cu13, cfg)
    assert result.stable
    com = [cu13.copy() for _ in result.frames]
    for atoms, pos in zip(com, result.frames, strict=True):
        atoms.positions = pos
    centres = np.array([a.get_center_of_mass() for a in com])
    assert np.abs(centres - cu13.get_center_of_mass()).max() < 1e-8
    if ensemble != "langevin":  # Bussi and Nosé–Hoover define a conserved quantity
        assert abs(result.conserved["energy_drift_meV_per_atom_per_ps"]) < 0.5


@pytest.mark.parametrize("ensemble", ["langevin", "bussi", "nose-hoover"])
def test_thermostats_hold_the_target_temperature(cu13, ensemble):
    # started at a minimum, NVE would equilibrate near T/2 (equipartition); a thermostat reheats
    cfg = MDConfig(
        ensemble=ensemble,
        temperature_K=400.0,
        failure=FailureCriteria(check_bonds=False),  # a hot Cu13 cluster rearranges
        timestep_fs=2.0,
        length_ps=0.4,
        friction_per_ps=50.0,
        thermostat_time_fs=20.0,
        log_interval=1,
        **FAST,
    )
    result = run_trajectory(EMT(), cu13, cfg)
    late = result.thermo["temperature_K"][len(result.thermo["temperature_K"]) // 2 :]
    assert 280.0 < late.mean() < 540.0
    nve = run_trajectory(EMT(), cu13, MDConfig(**{**cfg.__dict__, "ensemble": "nve"}))
    assert nve.thermo["temperature_K"][len(late) :].mean() < 0.75 * late.mean()


def test_trajectories_are_reproducible_per_seed(cu13):
    cfg = MDConfig(ensemble="langevin", timestep_fs=2.0, length_ps=0.02, traj_interval=10, **FAST)
    a = run_trajectory(EMT(), cu13, cfg, index=1)
    b = run_trajectory(EMT(), cu13, cfg, index=1)
    c = run_trajectory(EMT(), cu13, cfg, index=2)
    assert np.array_equal(a.frames[-1], b.frames[-1])
    assert not np.allclose(a.frames[-1], c.frames[-1])


# --- failure criteria -----------------------------------------------------------------------------


def test_bond_detector_fires_on_a_potential_that_pulls_a_bond_apart(cu13):
    def push(call, atoms, energy, forces):
        u = atoms.positions[1] - atoms.positions[0]
        u /= np.linalg.norm(u)
        forces[0] -= 3.0 * u
        forces[1] += 3.0 * u
        return energy, forces

    cfg = MDConfig(
        ensemble="nve", timestep_fs=2.0, length_ps=1.0, log_interval=1, traj_interval=1, **FAST
    )
    result = run_trajectory(ModifiedEMT(push), cu13, cfg)
    assert result.failure is not None and result.failure.reason == "bond"
    assert 0 < result.failure.time_ps < cfg.length_ps
    assert result.n_steps == result.failure.step < cfg.n_steps  # stopped cleanly at the failure
    assert result.failure.time_ps == pytest.approx(result.n_steps * 0.002)
    # it fired at the first step where some bond deviates > 0.5 Å, not later
    bonds = find_bonds(cu13)
    cell = np.zeros((3, 3))
    worst = [np.abs(bonds.lengths(p, cell) - bonds.r0).max() for p in result.frames]
    assert worst[-1] > 0.5 >= max(worst[:-1])
    # the same run with the good potential stays stable
    assert run_trajectory(EMT(), cu13, MDConfig(**{**cfg.__dict__, "length_ps": 0.2})).stable


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf − inf in FixCom
def test_the_failing_frame_is_written_to_the_trajectory(cu13, tmp_path):
    def nan_after(call, atoms, energy, forces):
        if call >= 8:
            forces[0, 0] = np.inf
        return energy, forces

    cfg = MDConfig(
        ensemble="nve",
        timestep_fs=1.0,
        length_ps=0.1,
        traj_interval=100,
        n_trajectories=1,
        progress=False,
        plots=False,
    )
    report = run_md(ModifiedEMT(nan_after), [cu13], cfg, out_dir=tmp_path)
    frames = ase.io.read(tmp_path / "traj_000.extxyz", ":")
    assert [f.info["step"] for f in frames] == [0, 7]
    assert frames[-1].info["failure"] == "non_finite"
    assert report.summary["failure_reasons"] == {"non_finite": 1}
    assert report.summary["stable_fraction"] == 0.0
    assert report.summary["mean_time_to_failure_ps_censored"] == pytest.approx(0.007)


def test_bond_deviation_is_measured_from_the_start_lengths(cu13):
    from piwsl.md.failure import FailureDetector

    detector = FailureDetector(FailureCriteria(), cu13, 300.0)
    pos = cu13.positions.copy()
    cell = np.zeros((3, 3))
    forces = np.zeros_like(pos)
    assert detector.check(pos, cell, 0.0, forces, 300.0) is None
    b = detector.bonds
    direction = pos[b.j[0]] - pos[b.i[0]]
    direction /= np.linalg.norm(direction)
    stretched = pos.copy()
    stretched[b.j[0]] += 0.45 * direction  # below the 0.5 Å threshold (other bonds change less)
    assert detector.check(stretched, cell, 0.0, forces, 300.0) is None
    stretched[b.j[0]] += 0.1 * direction
    found = detector.check(stretched, cell, 0.0, forces, 300.0)
    assert found is not None and found[0] == "bond"
    off = FailureDetector(FailureCriteria(check_bonds=False), cu13, 300.0)
    assert off.check(stretched, cell, 0.0, forces, 300.0) is None


def test_nan_forces_stop_the_trajectory_at_the_right_step(cu13):
    def nan_after(call, atoms, energy, forces):
        if call >= 11:  # call 1 is step 0, so step 10 is the first with NaN forces
            forces[3, 1] = np.nan
        return energy, forces

    cfg = MDConfig(ensemble="nve", timestep_fs=1.0, length_ps=0.1, **FAST)
    result = run_trajectory(ModifiedEMT(nan_after), cu13, cfg)
    assert result.failure.reason == "non_finite"
    assert result.failure.step == 10
    assert result.failure.time_ps == pytest.approx(0.010)
    assert "atom 3" in result.failure.message


def test_calculator_errors_mid_run_are_failures_but_setup_errors_raise(cu13):
    def raise_after(call, atoms, energy, forces):
        if call >= 6:
            raise RuntimeError("model blew up")
        return energy, forces

    cfg = MDConfig(ensemble="nve", timestep_fs=1.0, length_ps=0.05, **FAST)
    result = run_trajectory(ModifiedEMT(raise_after), cu13, cfg)
    assert result.failure.reason == "error"
    assert "model blew up" in result.failure.message
    assert result.failure.step == 4  # step 5 needed call 6

    def raise_at_once(call, atoms, energy, forces):
        raise RuntimeError("unknown element")

    with pytest.raises(RuntimeError, match="unknown element"):
        run_trajectory(ModifiedEMT(raise_at_once), cu13, cfg)


def test_temperature_bound_fires_when_the_temperature_crosses_it(cu13):
    criteria = FailureCriteria(check_bonds=False, max_temperature_K=300.0)
    cfg = MDConfig(
        ensemble="nve",
        temperature_K=50.0,
        timestep_fs=2.0,
        length_ps=2.0,
        log_interval=7,  # checks run every step; the failing step is logged in any case
        failure=criteria,
        **FAST,
    )
    result = run_trajectory(ModifiedEMT(curl_force(0.05)), cu13, cfg)
    assert result.failure.reason == "temperature"
    temps = result.thermo["temperature_K"]
    assert temps[-1] > 300.0 and np.all(temps[:-1] <= 300.0)
    assert result.failure.time_ps == pytest.approx(result.thermo["time_ps"][-1])
    # the default bound (5 × 50 K = 250 K) fires earlier; disabled, nothing fires
    default = run_trajectory(
        ModifiedEMT(curl_force(0.05)),
        cu13,
        MDConfig(**{**cfg.__dict__, "failure": FailureCriteria(check_bonds=False)}),
    )
    assert default.temperature_bound_K == 250.0
    assert default.failure.time_ps < result.failure.time_ps
    off = unchecked()
    short = MDConfig(**{**cfg.__dict__, "failure": off, "length_ps": 0.2})
    assert run_trajectory(ModifiedEMT(curl_force(0.05)), cu13, short).stable


# --- metrics --------------------------------------------------------------------------------------


def test_hr_error_zero_for_identical_sets_positive_for_different_ones(cu13):
    rng = np.random.default_rng(0)
    frames = [cu13.positions + 0.05 * rng.standard_normal(cu13.positions.shape) for _ in range(5)]
    edges = hr_bins(8.0, 0.05)
    h1 = distance_histogram(frames, edges)
    h2 = distance_histogram([f.copy() for f in frames], edges)
    assert hr_error(h1, h2) == 0.0
    # normalised: ∫ h dr = 1 when every distance lies below r_max
    assert np.sum(h1.density * np.diff(edges)) == pytest.approx(1.0)
    expanded = distance_histogram([1.1 * f for f in frames], edges)
    err = hr_error(h1, expanded)
    assert 0.0 < err <= 2.0 + 1e-12
    assert err == pytest.approx(hr_error(expanded, h1))
    far = distance_histogram([3.0 * f for f in frames], hr_bins(30.0, 0.05))
    near = distance_histogram([0.1 * f for f in frames], hr_bins(30.0, 0.05))
    assert hr_error(far, near) == pytest.approx(2.0)  # disjoint distance ranges
    with pytest.raises(ValueError):
        hr_error(h1, far)


def test_hr_of_a_periodic_crystal_matches_its_shells():
    from ase.build import bulk

    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    h = distance_histogram([cu], hr_bins(3.0, 0.01))
    nn = 3.6 / np.sqrt(2)
    assert abs(h.centres[np.argmax(h.density)] - nn) < 0.01  # only the 12 nearest neighbours
    assert np.sum(h.density * np.diff(h.edges)) == pytest.approx(1.0)


def test_energy_drift_recovers_a_known_slope():
    t = np.linspace(0.0, 2.0, 201)
    n = 4
    e = n * (1.5e-3 * t + 2e-4 * np.sin(40 * t))  # 1.5 meV/atom/ps plus an oscillation
    out = energy_drift(t, e, n)
    assert out["energy_drift_meV_per_atom_per_ps"] == pytest.approx(1.5, abs=0.02)
    assert out["energy_fluctuation_meV_per_atom"] == pytest.approx(0.2 / np.sqrt(2), rel=0.05)
    assert energy_drift(t[:2], e[:2], n)["energy_drift_meV_per_atom_per_ps"] is None


def test_survival_and_censored_time_to_failure():
    times = [1.0, None, 3.0, None]
    stats = time_to_failure_stats(times, length_ps=10.0)
    assert stats["stable_fraction"] == 0.5
    assert stats["mean_time_to_failure_ps_censored"] == pytest.approx((1 + 10 + 3 + 10) / 4)
    assert stats["median_time_to_failure_ps_censored"] == pytest.approx(6.5)
    assert stats["mean_time_to_failure_ps_failed_only"] == pytest.approx(2.0)
    t, alive = survival_curve(times, 10.0)
    assert t.tolist() == [0.0, 1.0, 3.0, 10.0]
    assert alive.tolist() == [1.0, 0.75, 0.5, 0.5]


# --- reports, outputs, CLI ------------------------------------------------------------------------


def test_report_plots_and_trajectories_are_written(cu13, tmp_path):
    cfg = MDConfig(
        ensemble="nve",
        timestep_fs=2.0,
        length_ps=0.1,
        n_trajectories=2,
        log_interval=2,
        traj_interval=10,
        progress=False,
    )
    report = run_md(EMT(), [cu13], cfg, out_dir=tmp_path, reference=[cu13])
    data = json.loads((tmp_path / "md_report.json").read_text())
    assert data["summary"]["n_trajectories"] == 2
    assert data["summary"]["stable_fraction"] == 1.0
    assert 0.0 < data["summary"]["calculator_share"] < 1.0
    assert data["summary"]["steps_per_s"] > 0
    assert data["summary"]["hr_error_pooled_stable"] > 0  # thermal motion vs one minimum
    assert data["config"]["failure"]["bond_deviation_A"] == 0.5
    for name in ("energy.png", "temperature.png", "survival.png", "hr.png"):
        assert (tmp_path / name).stat().st_size > 1000
    frames = ase.io.read(tmp_path / "traj_001.extxyz", ":")
    assert len(frames) == 50 // 10 + 1
    assert frames[-1].info["step"] == 50
    assert np.isfinite(frames[-1].get_potential_energy())
    thermo = np.loadtxt(tmp_path / "thermo_000.csv", delimiter=",", skiprows=1)
    assert thermo.shape == (50 // 2 + 1, 7)
    assert "stable: 2/2" in format_summary(report)


def test_cli_parser_and_run(cu13, tmp_path, capsys):
    start = tmp_path / "start.extxyz"
    ase.io.write(start, [cu13, cu13])
    parser = argparse.ArgumentParser(prog="piwsl")
    add_md_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "md",
            "ase:emt",
            str(start),
            "--ensemble",
            "nhc",
            "--temperature",
            "200",
            "--timestep",
            "2",
            "--length",
            "0.02",
            "--trajectories",
            "2",
            "--output-dir",
            str(out),
            "--no-progress",
            "--no-plots",
            "--format",
            "traj",
            "--max-temperature",
            "5000",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "nose-hoover at 200 K" in printed and "steps/s" in printed
    data = json.loads((out / "md_report.json").read_text())
    assert data["config"]["ensemble"] == "nose-hoover"
    assert data["trajectories"][0]["temperature_bound_K"] == 5000.0
    assert len(ase.io.read(out / "traj_000.traj", ":")) == 1 + 10 // 100
    assert run_md_cli is args.func


def test_config_errors_are_explained():
    with pytest.raises(ConfigError, match="did you mean 'langevin'"):
        MDConfig(ensemble="langevn")
    with pytest.raises(ConfigError, match="timestep_fs"):
        MDConfig(timestep_fs=0)
    with pytest.raises(ConfigError, match="bond_deviation_A"):
        FailureCriteria(bond_deviation_A=-1)


def test_start_frames_are_drawn_per_seed():
    from piwsl.md.runner import pick_start_frames

    a = pick_start_frames(1000, MDConfig(n_trajectories=5, seed=3))
    assert a == pick_start_frames(1000, MDConfig(n_trajectories=5, seed=3))
    assert a != pick_start_frames(1000, MDConfig(n_trajectories=5, seed=4))
    assert a[:3] == pick_start_frames(1000, MDConfig(n_trajectories=3, seed=3))
    assert pick_start_frames(2, MDConfig(n_trajectories=3, frame_selection="sequential")) == [
        0,
        1,
        0,
    ]


# --- a tiny piwsl model through the piwsl calculator ----------------------------------------------


@pytest.mark.parametrize("ensemble", ["nve", "nose-hoover", "langevin", "bussi"])
def test_tiny_schnet_runs_md_through_the_piwsl_calculator(tmp_path, ensemble):
    torch = pytest.importorskip("torch")
    calculator_module = pytest.importorskip("piwsl.calculator")
    from piwsl.data import read_frames

    torch.set_num_threads(1)
    model = tiny_md_model(double=False)
    calc = calculator_module.PiwslCalculator(model, skin=1.0)
    n_model_calls = 0
    forward = calc.model.forward

    def counted_forward(*args, **kwargs):
        nonlocal n_model_calls
        n_model_calls += 1
        return forward(*args, **kwargs)

    calc.model.forward = counted_forward
    frames = read_frames("builtin:ethanol_test")[:3]
    # an untrained model may fall apart: no failure checks, so that the run covers all steps
    cfg = tiny_md_config(
        ensemble=ensemble,
        length_ps=0.005,
        n_trajectories=1,
        traj_interval=5,
        plots=True,
        write_trajectories=True,
    )
    report = run_md(
        calc,
        [f.to_atoms() for f in frames],
        cfg,
        out_dir=tmp_path,
        reference=[f.to_atoms() for f in frames],
    )
    traj = report.trajectories[0]
    assert traj.n_steps == 10 and traj.stable
    assert np.all(np.isfinite(traj.thermo["total_eV"]))
    # one model call per step (plus the start): Nosé–Hoover re-sets the positions through FixCom
    # three times a step, changing them at the rounding level only, which must not re-evaluate
    assert traj.n_calculator_calls == 11
    assert n_model_calls == 11
    assert report.summary["hr_error_pooled_stable"] is not None


def test_state_changes_match_ase_and_ignore_rounding_level_moves():
    pytest.importorskip("torch")
    from ase.calculators.calculator import compare_atoms

    from piwsl.calculator import state_changes

    atoms = Icosahedron("Cu", 2)
    atoms.center(vacuum=3.0)
    same = atoms.copy()
    same.positions += 1e-16 * np.sign(same.positions)  # below ASE's 1e-15 tolerance
    assert state_changes(atoms, same) == [] == compare_atoms(atoms, same)
    moved = atoms.copy()
    moved.positions[3, 1] += 1e-9
    assert state_changes(atoms, moved) == ["positions"]
    other = atoms.copy()
    other.numbers[0] = 28
    other.cell[0, 0] += 0.1
    other.pbc = [True, False, False]
    assert state_changes(atoms, other) == ["numbers", "cell", "pbc"]
    assert set(state_changes(None, atoms)) == set(all_changes)
    assert set(state_changes(atoms, atoms[:5])) == set(all_changes)


def test_direct_force_model_drifts_in_nve_and_a_conservative_one_does_not():
    torch = pytest.importorskip("torch")
    calculator_module = pytest.importorskip("piwsl.calculator")
    from piwsl.data import read_frames

    torch.set_num_threads(1)
    frames = [f.to_atoms() for f in read_frames("builtin:ethanol_test")[:2]]
    cfg = tiny_md_config(length_ps=0.02, n_trajectories=1)
    drift = {}
    for name, extra in (("schnet", {}), ("painn", {"forces": "direct"})):
        model = tiny_md_model(name, **extra)
        assert model.direct_forces == (name == "painn")
        report = run_md(calculator_module.PiwslCalculator(model), frames, cfg)
        drift[name] = abs(report.summary["energy_drift_meV_per_atom_per_ps_mean"])
    assert drift["schnet"] < 0.05  # float64 conservative model: Verlet error only
    assert drift["painn"] > 100 * drift["schnet"]


def test_nve_with_a_direct_force_model_is_warned_about(caplog):
    pytest.importorskip("torch")
    calculator_module = pytest.importorskip("piwsl.calculator")
    from piwsl.md.runner import warn_if_not_conservative

    direct = calculator_module.PiwslCalculator(tiny_md_model("painn", forces="direct"))
    conservative = calculator_module.PiwslCalculator(tiny_md_model("schnet"))
    nve, nvt = tiny_md_config(), tiny_md_config(ensemble="nose-hoover", temperature_K=300.0)
    with caplog.at_level(logging.WARNING, logger="piwsl.md.runner"):
        assert warn_if_not_conservative(direct, nve)
    assert "predicts forces directly" in caplog.text and "--ensemble" in caplog.text
    assert not warn_if_not_conservative(direct, nvt)  # a thermostat holds it
    assert not warn_if_not_conservative(conservative, nve)
    assert not warn_if_not_conservative(EMT(), nve)  # any ASE calculator: nothing to say


def test_periodic_crystal_runs_with_bonds_across_the_cell():
    from ase.build import bulk

    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)  # 32 atoms
    bonds = find_bonds(cu)
    assert len(bonds) == 32 * 12 // 2  # every nearest-neighbour pair once, images included
    assert np.allclose(bonds.r0, 3.6 / np.sqrt(2))
    assert np.any(bonds.shifts != 0)
    cfg = MDConfig(
        ensemble="langevin",
        timestep_fs=2.0,
        length_ps=0.04,
        n_trajectories=1,
        traj_interval=5,
        **FAST,
    )
    result = run_trajectory(EMT(), cu, cfg)
    assert result.stable and result.n_bonds == 192
    # a broken periodic bond is seen through the cell shift
    from piwsl.md.failure import FailureDetector

    detector = FailureDetector(FailureCriteria(), cu, 300.0)
    k = int(np.argmax(np.any(bonds.shifts != 0, axis=1)))
    moved = cu.positions.copy()
    moved[bonds.j[k]] += (
        0.6
        * (moved[bonds.j[k]] - moved[bonds.i[k]] + bonds.shifts[k] @ cu.cell.array)
        / bonds.r0[k]
    )
    found = detector.check(moved, cu.cell.array, 0.0, np.zeros_like(moved), 300.0)
    assert found is not None and found[0] == "bond"


@pytest.mark.parametrize("ensemble", ["langevin", "bussi", "nve"])
def test_summary_reports_temperature_and_only_meaningful_drifts(cu13, tmp_path, ensemble):
    """Thermostatted runs: mean ± std of the temperature (here against the raw thermo log), no
    total-energy drift (not conserved under a thermostat); Bussi keeps its conserved-quantity
    drift, Langevin says it has none; NVE keeps its drift. The energy plot says what it draws."""
    from piwsl.md.report import energy_caption

    cfg = MDConfig(
        ensemble=ensemble,
        temperature_K=300,
        timestep_fs=2.0,
        length_ps=0.1,
        n_trajectories=2,
        log_interval=2,
        traj_interval=25,
        progress=False,
        write_trajectories=False,
    )
    report = run_md(EMT(), [cu13], cfg, out_dir=tmp_path)
    s = report.summary
    temps = np.concatenate([t.thermo["temperature_K"][1:] for t in report.trajectories])
    assert s["temperature_mean_K"] == pytest.approx(temps.mean())
    assert s["temperature_std_K"] == pytest.approx(temps.std())
    assert s["temperature_samples"] == temps.size == 2 * 25
    text = format_summary(report)
    drift_keys = [k for k in s if "energy_drift" in k and not k.startswith("conserved")]
    if ensemble == "nve":
        assert drift_keys and "NVE energy drift" in text
    else:
        assert drift_keys == [] and "total_energy_drift" not in json.dumps(report.to_dict())
        assert f"temperature {temps.mean():.1f} ± {temps.std():.1f} K" in text
    if ensemble == "langevin":
        assert "no energy drift: langevin conserves no energy-like quantity" in text
        assert "conserved" not in json.dumps(s)
    if ensemble == "bussi":
        assert "conserved-quantity drift" in text
    assert (tmp_path / "energy.png").stat().st_size > 1000
    dashed = ensemble == "bussi"
    caption = energy_caption(ensemble, dashed)
    assert ("dashed" in caption) == dashed
    assert ("not conserved" in caption) == (ensemble != "nve")


def test_bootstrap_intervals_cover_the_statistic_and_detect_a_shift():
    from piwsl.md.metrics import bootstrap_difference, bootstrap_interval, censored_times

    rng = np.random.default_rng(0)
    a = rng.exponential(5.0, 40)
    low, high = bootstrap_interval(a, "mean")
    assert low < a.mean() < high and high - low < a.mean()
    lo_m, hi_m = bootstrap_interval(a, "median")
    assert lo_m <= np.median(a) <= hi_m
    same = bootstrap_difference(a, a + 0.0, "mean")
    assert same["difference"] == 0 and same["low"] < 0 < same["high"]
    shifted = bootstrap_difference(a, a + 20.0, "median")
    assert shifted["difference"] == pytest.approx(20.0) and shifted["low"] > 0
    assert shifted["p_positive"] == 1.0
    np.testing.assert_array_equal(censored_times([1.0, None, 2.5], 50.0), [1.0, 50.0, 2.5])
