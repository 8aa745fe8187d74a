"""Batched MD: the integrators against ASE's, batch equals single, conservation, the batched runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.calculators.emt import EMT
from ase.md.nose_hoover_chain import NoseHooverChainNVT
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from md_setup import tiny_md_config, tiny_md_model

from piwsl.data import read_frames
from piwsl.errors import ConfigError
from piwsl.md import FailureCriteria, MDConfig, run_md
from piwsl.md.integrators import NoseHooverChain, Replicas, verlet_step
from piwsl.md.potential import BatchedPotential

torch.set_num_threads(1)
DT = 2.0 * units.fs


# the Cu13 start structure is the ``cu13`` fixture of conftest.py


def thermalised(atoms, temperature_K: float, seed: int):
    atoms = atoms.copy()
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    return atoms


def emt_forces(templates, ptr):
    """Raw EMT forces of concatenated replicas (the integrators' ``compute``)."""
    calc = EMT()

    def compute(positions: np.ndarray) -> np.ndarray:
        out = np.zeros_like(positions)
        for k, t in enumerate(templates):
            a = t.copy()
            a.positions = positions[ptr[k] : ptr[k + 1]]
            a.calc = calc
            out[ptr[k] : ptr[k + 1]] = a.get_forces()
        return out

    return compute


def replicas_of(atoms_list, fix_com: bool) -> Replicas:
    sizes = [len(a) for a in atoms_list]
    return Replicas(
        positions=np.concatenate([a.positions for a in atoms_list]),
        momenta=np.concatenate([a.get_momenta() for a in atoms_list]),
        masses=np.concatenate([a.get_masses() for a in atoms_list]),
        ptr=np.concatenate([[0], np.cumsum(sizes)]),
        active=np.ones(len(atoms_list), dtype=bool),
        fix_com=fix_com,
    )


def run(state: Replicas, compute, steps: int, nhc=None) -> np.ndarray:
    forces = state.constrain(compute(state.positions))
    for _ in range(steps):
        forces = verlet_step(state, forces, DT, compute, nhc)
    return forces


def test_nose_hoover_chain_reproduces_ases_integrator_step_for_step(cu13):
    atoms = thermalised(cu13, 600.0, seed=1)
    ref = atoms.copy()
    ref.calc = EMT()
    dyn = NoseHooverChainNVT(ref, DT, temperature_K=300.0, tdamp=50 * units.fs)
    state = replicas_of([atoms], fix_com=False)
    nhc = NoseHooverChain(state.n_dof, 300.0, 50 * units.fs)
    assert state.n_dof[0] == 3 * len(atoms)  # ASE's count without a constraint
    compute = emt_forces([atoms], state.ptr)
    forces = state.constrain(compute(state.positions))
    for _ in range(40):
        dyn.run(1)
        forces = verlet_step(state, forces, DT, compute, nhc)
    np.testing.assert_allclose(state.positions, ref.positions, atol=1e-10)
    np.testing.assert_allclose(state.momenta, ref.get_momenta(), atol=1e-10)
    conserved = ref.get_potential_energy() + ref.get_kinetic_energy() + nhc.energy()[0]
    assert conserved == pytest.approx(dyn.get_conserved_energy(), abs=1e-10)


def test_velocity_verlet_reproduces_ase(cu13):
    atoms = thermalised(cu13, 300.0, seed=2)
    ref = atoms.copy()
    ref.calc = EMT()
    dyn = VelocityVerlet(ref, DT)
    state = replicas_of([atoms], fix_com=False)
    run(state, emt_forces([atoms], state.ptr), 40)
    dyn.run(40)
    np.testing.assert_allclose(state.positions, ref.positions, atol=1e-10)


def test_a_batch_of_replicas_equals_each_replica_alone(cu13):
    """Replicas do not see each other: their own thermostats, forces and centre of mass."""
    starts = [thermalised(cu13, t, seed=s) for t, s in ((300.0, 3), (500.0, 4), (200.0, 5))]
    starts[1].positions[0] += 0.05  # different structures, not only different velocities
    together = replicas_of(starts, fix_com=True)
    nhc = NoseHooverChain(together.n_dof, 400.0, 20 * units.fs)
    run(together, emt_forces(starts, together.ptr), 30, nhc)
    for k, atoms in enumerate(starts):
        alone = replicas_of([atoms], fix_com=True)
        run(
            alone,
            emt_forces([atoms], alone.ptr),
            30,
            NoseHooverChain(alone.n_dof, 400.0, 20 * units.fs),
        )
        lo, hi = together.ptr[k], together.ptr[k + 1]
        np.testing.assert_allclose(together.positions[lo:hi], alone.positions, atol=1e-12)


def test_conserved_quantities_and_the_fixed_centre_of_mass(cu13):
    """NVE total energy and the Nosé–Hoover extended energy stay constant; with forces that carry
    a net push the centre of mass still does not move; the thermostat holds the temperature."""
    atoms = thermalised(cu13, 300.0, seed=6)
    state = replicas_of([atoms, thermalised(cu13, 300.0, seed=7)], fix_com=True)
    for com in (state.momenta[:13], state.momenta[13:]):
        com -= com.sum(0) / 13  # start without centre-of-mass motion
    raw = emt_forces([atoms, atoms], state.ptr)

    def pushed(positions):
        return raw(positions) + np.array([0.3, -0.2, 0.1])  # a net force on every replica

    def total():
        e = np.array([np.nan, np.nan])
        for k in range(2):
            a = atoms.copy()
            a.positions = state.positions[state.ptr[k] : state.ptr[k + 1]]
            a.calc = EMT()
            e[k] = a.get_potential_energy()
        return e + state.kinetic_energy()

    com0 = [(state.masses[:13] @ state.positions[:13]), (state.masses[13:] @ state.positions[13:])]
    e0 = total()
    run(state, raw, 300)
    assert np.abs(total() - e0).max() < 2e-3  # eV, 13 atoms, 0.6 ps at 2 fs
    nvt = replicas_of([thermalised(cu13, 300.0, seed=8)], fix_com=True)
    nhc = NoseHooverChain(nvt.n_dof, 300.0, 20 * units.fs)
    compute = emt_forces([atoms], nvt.ptr)

    def extended():
        a = atoms.copy()
        a.positions = nvt.positions
        a.calc = EMT()
        return a.get_potential_energy() + nvt.kinetic_energy()[0] + nhc.energy()[0]

    h0, temps = extended(), []
    forces = nvt.constrain(compute(nvt.positions))
    for _ in range(1500):
        forces = verlet_step(nvt, forces, DT, compute, nhc)
        temps.append(nvt.temperature()[0])
    assert abs(extended() - h0) < 2e-3
    assert np.mean(temps[500:]) == pytest.approx(300.0, rel=0.15)
    run(state, pushed, 100)
    com1 = [(state.masses[:13] @ state.positions[:13]), (state.masses[13:] @ state.positions[13:])]
    np.testing.assert_allclose(com1, com0, atol=1e-8)


def test_a_frozen_replica_stays_put_while_the_others_move(cu13):
    state = replicas_of([thermalised(cu13, 300.0, seed=9), thermalised(cu13, 300.0, seed=10)], True)
    nhc = NoseHooverChain(state.n_dof, 300.0, 20 * units.fs)
    compute = emt_forces([cu13, cu13], state.ptr)
    run(state, compute, 5, nhc)
    state.active[0] = False
    state.momenta[:13] = 0.0
    before = state.positions.copy()
    run(state, compute, 20, nhc)
    np.testing.assert_array_equal(state.positions[:13], before[:13])
    assert np.abs(state.positions[13:] - before[13:]).max() > 1e-3
    assert np.isfinite(nhc.p_eta).all()


# --- the batched runner with a piwsl model -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_md_model()


def md_config(**kw) -> MDConfig:
    """Three 10 fs NVE trajectories of the tiny model (``kw`` override)."""
    return tiny_md_config(**{"length_ps": 0.01, "n_trajectories": 3, "traj_interval": 5, **kw})


def test_batched_run_equals_the_serial_runner_in_nve(tiny_model):
    """Same start (velocities from each trajectory's seed), same velocity Verlet: the batched
    replicas follow the one-at-a-time ASE trajectories."""
    from piwsl.calculator import PiwslCalculator

    frames = [f.to_atoms() for f in read_frames("builtin:ethanol_test")[:5]]
    cfg = md_config()
    serial = run_md(PiwslCalculator(tiny_model), frames, cfg)
    batched = run_md(BatchedPotential(tiny_model, skin=0.5), frames, cfg)
    for a, b in zip(serial.trajectories, batched.trajectories, strict=True):
        assert (a.start_frame, a.n_steps) == (b.start_frame, b.n_steps) == (a.start_frame, 20)
        for run in (a, b):  # the first force call is start-up, the rest loop time
            assert run.startup_s > 0 and 0 < run.calculator_s <= run.wall_s
        np.testing.assert_allclose(b.frames[-1], a.frames[-1], atol=1e-7)
        np.testing.assert_allclose(b.thermo["total_eV"], a.thermo["total_eV"], atol=1e-7)


def test_compiled_batched_md_follows_the_eager_run(tiny_model):
    """``--compile``: the batched potential's model as one compiled graph gives the eager run's
    trajectories to float32 rounding; without --batched it is a clear error."""
    from piwsl.md.cli import make_calculator

    frames = [f.to_atoms() for f in read_frames("builtin:ethanol_test")[:4]]
    cfg = md_config(ensemble="nose-hoover")
    eager = run_md(BatchedPotential(tiny_model, skin=0.5), frames, cfg)
    fast = BatchedPotential(tiny_model, skin=0.5, compile="aot_eager")
    compiled = run_md(fast, frames, cfg)
    assert fast.model.stats.compiled_calls > 0 and fast.model.stats.eager_calls == 0
    for a, b in zip(eager.trajectories, compiled.trajectories, strict=True):
        assert a.n_steps == b.n_steps == 20
        np.testing.assert_allclose(b.frames[-1], a.frames[-1], atol=1e-4)
        # the compilation in the first call is start-up: not loop time, not the model's share
        assert b.startup_s > 0 and b.calculator_s <= b.wall_s
        assert b.summary(cfg.timestep_fs)["calculator_share"] <= 1.0
    assert compiled.summary["calculator_share"] <= 1.0
    with pytest.raises(ConfigError, match="add --batched"):
        make_calculator("model.pt", compile=True)


def test_batched_nose_hoover_runs_with_failures_per_replica(tiny_model, tmp_path):
    """One replica is pushed apart (a bond breaks): it fails at its own step, the others go on."""
    frames = [f.to_atoms() for f in read_frames("builtin:ethanol_test")[:4]]
    cfg = md_config(ensemble="nose-hoover", frame_selection="sequential", write_trajectories=True)
    cfg.failure = FailureCriteria(check_temperature=False)
    potential = BatchedPotential(tiny_model, skin=0.5)
    inner = potential.model.forward

    def pushing(batch, **kw):
        out = inner(batch, **kw)
        forces = out["forces"].clone()
        lo = int(batch.ptr[1]) if batch.n_structures == 3 else None
        if lo is not None:  # structure 1 of the three: its first atom is pulled away
            forces[lo] += torch.tensor([20.0, 0.0, 0.0], dtype=forces.dtype)
        return {**out, "forces": forces}

    potential.model.forward = pushing
    report = run_md(potential, frames, cfg, out_dir=tmp_path)
    trajs = report.trajectories
    assert [t.stable for t in trajs] == [True, False, True]
    assert trajs[1].failure.reason == "bond" and 0 < trajs[1].n_steps < 20
    assert trajs[0].n_steps == trajs[2].n_steps == 20
    assert (tmp_path / "traj_001.extxyz").is_file() and report.summary["steps_per_s"] > 0
    assert np.isfinite(trajs[0].thermo["conserved_eV"]).all()


def test_batched_langevin_is_a_clear_error(tiny_model):
    frames = [f.to_atoms() for f in read_frames("builtin:ethanol_test")[:2]]
    with pytest.raises(ConfigError, match="one trajectory at a time"):
        run_md(BatchedPotential(tiny_model), frames, md_config(ensemble="langevin"))


def test_piwsl_md_batched_from_the_command_line(tiny_model, tmp_path, capsys):
    import argparse
    import json

    import ase.io

    from piwsl.md.cli import add_md_parser
    from piwsl.models import save_model

    save_model(tiny_model, tmp_path / "m.pt")
    start = tmp_path / "start.extxyz"
    ase.io.write(start, [f.to_atoms() for f in read_frames("builtin:ethanol_test")[:3]])
    parser = argparse.ArgumentParser(prog="piwsl")
    add_md_parser(parser.add_subparsers(dest="command"))
    argv = "--batched --ensemble nhc --length 0.005 --trajectories 3 --no-progress --no-plots"
    argv += " --no-bond-check --no-temperature-check"
    args = parser.parse_args(
        ["md", str(tmp_path / "m.pt"), str(start), *argv.split(), "-o", str(tmp_path / "out")]
    )
    assert args.func(args) == 0
    report = json.loads((tmp_path / "out" / "md_report.json").read_text())
    assert [t["n_steps"] for t in report["trajectories"]] == [10, 10, 10]
    assert "steps/s" in capsys.readouterr().out
    bad = parser.parse_args(["md", "ase:emt", str(start), "--batched", "--no-progress"])
    with pytest.raises(ConfigError, match="--batched runs piwsl models"):
        bad.func(bad)


def test_a_killed_batched_run_resumes_from_its_saved_state(tiny_model, tmp_path):
    import ase.io

    frames = [f.to_atoms() for f in read_frames("builtin:ethanol_test")[:3]]
    cfg = md_config(
        ensemble="nose-hoover", length_ps=0.02, state_interval=5, write_trajectories=True
    )
    whole = run_md(BatchedPotential(tiny_model, skin=0.5), frames, cfg, out_dir=tmp_path / "a")

    class Dying(BatchedPotential):
        def __call__(self, positions, ptr, active):
            if self.n_calls == 13:  # in step 13, after the state of step 10 was saved
                raise KeyboardInterrupt
            return super().__call__(positions, ptr, active)

    killed = Dying(tiny_model, skin=0.5)
    with pytest.raises(KeyboardInterrupt):
        run_md(killed, frames, cfg, out_dir=tmp_path / "b")
    assert (tmp_path / "b" / "batched_state.pt").is_file()
    resumed = run_md(BatchedPotential(tiny_model, skin=0.5), frames, cfg, out_dir=tmp_path / "b")
    assert not (tmp_path / "b" / "batched_state.pt").exists()
    for a, b in zip(whole.trajectories, resumed.trajectories, strict=True):
        assert a.n_steps == b.n_steps == 40
        np.testing.assert_allclose(b.frames[-1], a.frames[-1], atol=1e-8)
        np.testing.assert_allclose(b.thermo["conserved_eV"], a.thermo["conserved_eV"], atol=1e-8)
        written = ase.io.read(tmp_path / "b" / f"traj_{a.index:03d}.extxyz", ":")
        assert [x.info["step"] for x in written] == [0, 5, 10, 15, 20, 25, 30, 35, 40]


def test_the_xtb_prior_session_restarts_and_agrees_with_fresh_single_points():
    pytest.importorskip("tblite")
    from piwsl.priors import make_prior

    prior = make_prior("gfn2-xtb")
    frames = read_frames("builtin:ethanol_test")[:4]
    session = prior.session()
    for frame in frames:  # successive geometries, like MD steps (larger jumps, even)
        e, f = session(frame)
        e_ref, f_ref = prior.checked(frame)
        assert e == pytest.approx(e_ref, abs=1e-6)  # eV: SCF convergence level
        np.testing.assert_allclose(f, f_ref, atol=5e-4)  # eV/Å: 0.5 meV/Å


def test_the_xtb_session_forces_do_not_depend_on_the_trajectorys_history():
    """Restarted SCFs converge tightly enough that walking a path forwards and then backwards
    gives the same forces at each point (at tblite's default accuracy they differ by ~0.2 meV/Å,
    which makes NVE of a Δ model drift)."""
    pytest.importorskip("tblite")
    from piwsl.labelling.backends import BACKENDS

    atoms = read_frames("builtin:ethanol_test")[0].to_atoms()
    step = np.random.default_rng(0).normal(size=atoms.positions.shape)
    step *= 0.002 / np.abs(step).max()  # Å: an MD step's displacement
    session = BACKENDS.get("gfn2-xtb")().session()

    def at(k: int) -> tuple[float, np.ndarray]:
        moved = atoms.copy()
        moved.positions = atoms.positions + k * step
        return session(moved)

    forwards = [at(k) for k in range(16)]
    backwards = [at(k) for k in reversed(range(16))][::-1]
    for (e_f, f_f), (e_b, f_b) in zip(forwards, backwards, strict=True):
        assert e_f == pytest.approx(e_b, abs=1e-9)  # eV
        np.testing.assert_allclose(f_f, f_b, atol=2e-5)  # eV/Å (default accuracy: 2.3e-4)
