"""Evaluation: predictions in order, masked metrics in meV, per-element errors, reports on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import molecule

from piwsl.data import Frame, GraphDataset, frames_to_batch
from piwsl.errors import UnknownElementError
from piwsl.evaluation import Predictions, compute_metrics, evaluate_model, predict
from piwsl.models import EnergyModel, ForceField, build_model, save_model

torch.set_num_threads(1)

ELEMENTS = [1, 6, 8]


def tiny_model(dtype: torch.dtype = torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(
        "schnet", elements=ELEMENTS, cutoff=3.0, features=8, interactions=1, n_rbf=8
    )
    model.energy_model.set_reference({1: -13.6, 6: -1029.5, 8: -2041.3}, scale=5.0)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def mixed_frames(n: int = 7, seed: int = 0) -> list[Frame]:
    """Molecules of different sizes and compositions with made-up labels."""
    rng = np.random.default_rng(seed)
    names = ["H2O", "CH4", "CH3CH2OH", "CO2", "CH3OH"]
    frames = []
    for k in range(n):
        atoms = molecule(names[k % len(names)])
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        m = len(atoms)
        frames.append(
            Frame(
                numbers=atoms.numbers,
                positions=atoms.positions,
                energy=float(rng.normal(-100.0 * m, 1.0)),
                forces=rng.normal(size=(m, 3)),
                source="mixed.xyz",
                index=k,
            )
        )
    return frames


def model_outputs(model, frames):
    batch = frames_to_batch(frames, model.cutoff, dtype=torch.float64)
    out = model(batch)
    return out["energy"].detach().numpy(), out["forces"].detach().numpy()


def test_predict_matches_model_and_keeps_order_for_any_batch_size():
    model = tiny_model()
    frames = mixed_frames()
    energy, forces = model_outputs(model, frames)
    for batch_size in (1, 3, 100):
        pred = predict(model, frames, batch_size=batch_size)
        np.testing.assert_allclose(pred.energy, energy, rtol=0, atol=1e-9)
        np.testing.assert_allclose(pred.forces, forces, rtol=0, atol=1e-10)
        assert pred.ptr[-1] == sum(f.n_atoms for f in frames)
        for s, frame in enumerate(frames):
            assert pred.forces_of(s).shape == (frame.n_atoms, 3)
            np.testing.assert_array_equal(
                pred.numbers[pred.ptr[s] : pred.ptr[s + 1]], frame.numbers
            )
    assert not model.training


def test_predict_restores_training_mode_and_accepts_dataset():
    model = tiny_model()
    model.train()
    frames = mixed_frames(4)
    dataset = GraphDataset(frames, cutoff=model.cutoff, skin=0.5, dtype=torch.float32)
    pred = predict(model, dataset, batch_size=2)
    assert model.training
    model.eval()
    energy, forces = model_outputs(model, frames)
    # a float32 data set is cast to the model's float64; the skin adds only zero-weight pairs
    np.testing.assert_allclose(pred.energy, energy, atol=1e-4)
    np.testing.assert_allclose(pred.forces, forces, atol=1e-6)


def test_predict_rejects_dataset_with_short_cutoff():
    model = tiny_model()
    dataset = GraphDataset(mixed_frames(2), cutoff=2.0)
    with pytest.raises(ValueError, match="cutoff"):
        predict(model, dataset)


def make_predictions(frames, energy_err, force_err) -> Predictions:
    n = np.array([f.n_atoms for f in frames])
    ptr = np.concatenate([[0], np.cumsum(n)])
    energy = np.array([(f.energy if f.has_energy else 0.0) for f in frames]) + energy_err
    forces = (
        np.concatenate([f.forces if f.has_forces else np.zeros((f.n_atoms, 3)) for f in frames])
        + force_err
    )
    return Predictions(
        energy=energy, forces=forces, numbers=np.concatenate([f.numbers for f in frames]), ptr=ptr
    )


def test_metrics_in_meV_with_known_errors():
    frames = mixed_frames(3)  # H2O (3 atoms), CH4 (5), ethanol (9)
    n = np.array([f.n_atoms for f in frames], dtype=float)
    e_err = np.array([0.002, -0.004, 0.010])  # eV
    n_atoms = int(n.sum())
    f_err = np.zeros((n_atoms, 3))
    f_err[:, 0] = 0.05  # every x component off by 50 meV/Å, y and z exact
    m = compute_metrics(frames, make_predictions(frames, e_err, f_err))
    assert m["n_frames"] == m["n_frames_with_energy"] == m["n_frames_with_forces"] == 3
    assert m["energy_mae_meV"] == pytest.approx(np.mean(np.abs(e_err)) * 1000)
    assert m["energy_rmse_meV"] == pytest.approx(np.sqrt(np.mean(e_err**2)) * 1000)
    assert m["energy_max_abs_error_meV"] == pytest.approx(10.0)
    assert m["energy_mae_meV_per_atom"] == pytest.approx(np.mean(np.abs(e_err) / n) * 1000)
    assert m["energy_rmse_meV_per_atom"] == pytest.approx(np.sqrt(np.mean((e_err / n) ** 2)) * 1000)
    # component-wise: one third of the components are off by 50 meV/Å
    assert m["forces_mae_meV_per_A"] == pytest.approx(50.0 / 3)
    assert m["forces_rmse_meV_per_A"] == pytest.approx(np.sqrt(50.0**2 / 3))
    assert m["n_force_atoms"] == n_atoms


def test_metrics_per_element():
    frames = mixed_frames(3)
    numbers = np.concatenate([f.numbers for f in frames])
    f_err = np.zeros((numbers.size, 3))
    f_err[numbers == 1] = 0.010  # H: 10 meV/Å on every component
    f_err[numbers == 6] = -0.030  # C: 30 meV/Å
    m = compute_metrics(frames, make_predictions(frames, np.zeros(3), f_err))
    per = m["forces_per_element"]
    assert set(per) == {"H", "C", "O"}
    assert per["H"]["mae_meV_per_A"] == pytest.approx(10.0)
    assert per["C"]["rmse_meV_per_A"] == pytest.approx(30.0)
    assert per["O"]["mae_meV_per_A"] == pytest.approx(0.0)
    assert per["H"]["n_atoms"] == int((numbers == 1).sum())
    assert sum(v["n_atoms"] for v in per.values()) == numbers.size
    overall = (10.0 * (numbers == 1).sum() + 30.0 * (numbers == 6).sum()) / numbers.size
    assert m["forces_mae_meV_per_A"] == pytest.approx(overall)
    assert m["energy_mae_meV"] == pytest.approx(0.0)


def test_metrics_skip_unlabelled_frames_instead_of_zero_filling():
    frames = mixed_frames(4)
    frames[1].energy = None  # no energy: its (huge) prediction error must not count
    frames[2].forces = None  # no forces
    e_err = np.array([0.001, 1e6, 0.003, 0.002])
    n_atoms = sum(f.n_atoms for f in frames)
    f_err = np.zeros((n_atoms, 3))
    lo, hi = (
        frames[0].n_atoms + frames[1].n_atoms,
        frames[0].n_atoms + frames[1].n_atoms + frames[2].n_atoms,
    )
    f_err[lo:hi] = 1e6  # frame 2 carries no forces: its error must not count
    f_err[:lo] = 0.02
    f_err[hi:] = 0.02
    pred = make_predictions(frames, e_err, f_err)
    pred.energy[1] = 1e6
    m = compute_metrics(frames, pred)
    assert m["n_frames_with_energy"] == 3
    assert m["n_frames_with_forces"] == 3
    assert m["energy_mae_meV"] == pytest.approx(2.0)
    assert m["forces_mae_meV_per_A"] == pytest.approx(20.0)
    assert m["n_force_atoms"] == n_atoms - frames[2].n_atoms


def test_metrics_without_any_label_are_none():
    frames = mixed_frames(2)
    for f in frames:
        f.energy = None
    m = compute_metrics(frames, make_predictions(frames, np.zeros(2), 0.0))
    assert m["energy_mae_meV"] is None and m["energy_mae_meV_per_atom"] is None
    assert m["n_frames_with_energy"] == 0
    assert m["forces_mae_meV_per_A"] == pytest.approx(0.0)


def test_evaluate_model_writes_metrics_and_plot(tmp_path):
    model = tiny_model()
    frames = mixed_frames(5)
    frames[0].energy = None
    metrics = evaluate_model(model, frames, tmp_path, batch_size=2, name="val")
    on_disk = json.loads((tmp_path / "val_metrics.json").read_text())
    assert on_disk["energy_mae_meV"] == pytest.approx(metrics["energy_mae_meV"])
    assert on_disk["forces_per_element"].keys() == {"H", "C", "O"}
    assert on_disk["n_frames_with_energy"] == 4
    png = (tmp_path / "val_parity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the numbers agree with an independent computation from the raw model output
    energy, forces = model_outputs(model, frames)
    ref_e = np.array([f.energy for f in frames[1:]])
    assert metrics["energy_mae_meV"] == pytest.approx(1000 * np.mean(np.abs(energy[1:] - ref_e)))
    ref_f = np.concatenate([f.forces for f in frames])
    assert metrics["forces_mae_meV_per_A"] == pytest.approx(1000 * np.mean(np.abs(forces - ref_f)))


def test_perfect_model_scores_zero(tmp_path):
    model = tiny_model()
    frames = mixed_frames(3)
    energy, forces = model_outputs(model, frames)
    start = 0
    for frame, e in zip(frames, energy, strict=True):
        frame.energy = float(e)
        frame.forces = forces[start : start + frame.n_atoms]
        start += frame.n_atoms
    m = evaluate_model(model, frames, tmp_path)
    assert m["energy_mae_meV"] < 1e-6 and m["forces_mae_meV_per_A"] < 1e-6


def test_evaluate_model_from_files(tmp_path):
    model = tiny_model(dtype=torch.float32)
    save_model(model, tmp_path / "model.pt")
    m = evaluate_model(tmp_path / "model.pt", "builtin:ethanol_test", tmp_path, name="rmd17")
    assert m["n_frames"] == 1000
    assert m["forces_per_element"].keys() == {"H", "C", "O"}
    assert (tmp_path / "rmd17_parity.png").exists()


def test_evaluate_unknown_element_names_frame(tmp_path):
    frames = mixed_frames(2)
    atoms = molecule("NH3")
    frames.append(
        Frame(
            numbers=atoms.numbers,
            positions=atoms.positions,
            energy=-1.0,
            source="with_nitrogen.xyz",
            index=5,
        )
    )
    with pytest.raises(UnknownElementError, match=r"with_nitrogen\.xyz.*frame 5.*N \(Z=7\)"):
        evaluate_model(tiny_model(), frames, tmp_path)


class SwirlModel(EnergyModel):
    """A direct-force toy model whose force field has a curl: F = (−y, x, 0)·w."""

    direct_forces = True

    def __init__(self, elements, cutoff):
        super().__init__(elements, cutoff)
        self.w = torch.nn.Parameter(torch.tensor(0.1, dtype=torch.float64))

    def atomic_outputs(self, batch):
        p = batch.positions
        swirl = torch.stack([-p[:, 1], p[:, 0], torch.zeros_like(p[:, 0])], dim=1)
        return (self.w * (p**2).sum(1)).to(p.dtype), self.w.to(p.dtype) * swirl


def test_direct_force_model_uses_force_head(tmp_path):
    energy_model = SwirlModel(ELEMENTS, 3.0)
    energy_model.hparams = {"name": "swirl"}
    model = ForceField(energy_model)
    frames = mixed_frames(3)
    m = evaluate_model(model, frames, tmp_path)
    assert m["direct_forces"] is True
    pos = np.concatenate([f.positions for f in frames])
    expected = 0.1 * np.stack([-pos[:, 1], pos[:, 0], np.zeros(len(pos))], axis=1)
    ref = np.concatenate([f.forces for f in frames])
    assert m["forces_mae_meV_per_A"] == pytest.approx(
        1000 * np.mean(np.abs(expected - ref)), rel=1e-5
    )
    json.loads((tmp_path / "test_metrics.json").read_text())  # still valid JSON


def test_nonconservativeness_of_direct_forces(tmp_path):
    """The swirl F = w(−y, x, 0) has J − Jᵀ = ±2w per atom: curl > 0, ≤ 2w, both estimates agree."""
    pytest.importorskip("piwsl.physics.metrics")
    energy_model = SwirlModel(ELEMENTS, 3.0)
    energy_model.hparams = {"name": "swirl"}
    frames = mixed_frames(4)
    m = evaluate_model(ForceField(energy_model), frames, tmp_path)
    curl = m["nonconservative_force_curl_eV_per_A2"]
    loop = m["nonconservative_circulation_curl_eV_per_A2"]
    assert 1e-3 < curl <= 2 * 0.1 + 1e-12
    assert loop == pytest.approx(curl, rel=1e-6)  # F is linear: the loop integral is exact
    radius = m["nonconservative_circulation_radius_A"]
    assert m["nonconservative_circulation_meV"] == pytest.approx(
        1e3 * loop * np.pi * radius**2, rel=1e-9
    )
    assert m["nonconservative_n_frames"] == 4
    on_disk = json.loads((tmp_path / "test_metrics.json").read_text())
    assert on_disk["nonconservative_force_curl_eV_per_A2"] == pytest.approx(curl)


def test_nonconservativeness_vanishes_for_conservative_model(tmp_path):
    pytest.importorskip("piwsl.physics.metrics")
    model = tiny_model()
    m = evaluate_model(model, mixed_frames(3), tmp_path)
    assert "nonconservative_force_curl_eV_per_A2" not in m  # only for direct forces by default
    m = evaluate_model(model, mixed_frames(3), tmp_path, nonconservative=True, plot=False)
    assert abs(m["nonconservative_force_curl_eV_per_A2"]) < 1e-10
    assert abs(m["nonconservative_circulation_meV"]) < 1e-8


# ------------------------------------------------------------------- the one accumulator
def _streamed(frames, pred, chunks):
    """ErrorMetrics fed chunk by chunk (the ``chunks`` lists of frame indices)."""
    from piwsl.evaluation import ErrorMetrics, Labels

    metrics = ErrorMetrics(full=True)
    for idx in chunks:
        part = [frames[k] for k in idx]
        forces = np.concatenate([pred.forces_of(k) for k in idx])
        metrics.update(
            torch.as_tensor(pred.energy[idx]), torch.as_tensor(forces), Labels.from_frames(part)
        )
    return metrics


def test_streaming_and_ranks_give_the_one_pass_metrics():
    frames = mixed_frames(7)
    frames[2].energy = None
    frames[4].forces = None
    rng = np.random.default_rng(1)
    n_atoms = sum(f.n_atoms for f in frames)
    pred = make_predictions(frames, rng.normal(0, 0.01, 7), rng.normal(0, 0.05, (n_atoms, 3)))
    once = compute_metrics(frames, pred)
    streamed = _streamed(frames, pred, [[0, 1, 2], [3], [4, 5, 6]]).metrics()
    # two "ranks" with their own shares, combined with sum/max as torch.distributed would
    ranks = [_streamed(frames, pred, [[0, 2, 4, 6]]), _streamed(frames, pred, [[1, 3, 5]])]

    other = ranks[1]
    others = iter([*other.sums.values(), *other.maxima.values(), *other.elements.values()])

    def reducer(value, op):  # what all_reduce does with the other rank's tensor
        theirs = next(others)
        return torch.maximum(value, theirs) if op == "max" else value + theirs

    combined = ranks[0]
    combined.reduce(reducer)
    for got in (streamed, combined.metrics()):
        # compute_metrics adds the offset analysis, which needs the per-frame errors
        assert set(got) == {k for k in once if "offset" not in k and "mean_error" not in k}
        for key, value in got.items():
            value = once[key]
            if isinstance(value, dict):
                for z, row in value.items():
                    assert got[key][z] == pytest.approx(row, rel=1e-12), (key, z)
            else:
                assert got[key] == pytest.approx(value, rel=1e-12), key
    # independent numpy check of two numbers
    e_idx = [k for k, f in enumerate(frames) if f.has_energy]
    e_err = np.array([pred.energy[k] - frames[k].energy for k in e_idx])
    assert once["energy_rmse_meV"] == pytest.approx(1e3 * np.sqrt(np.mean(e_err**2)), rel=1e-12)
    assert once["energy_max_abs_error_meV"] == pytest.approx(1e3 * np.abs(e_err).max(), rel=1e-12)


def test_predictions_from_frames_score_another_method():
    frames = mixed_frames(4)
    other = [
        Frame(numbers=f.numbers, positions=f.positions, energy=f.energy + 0.002, forces=f.forces)
        for f in frames
    ]
    m = compute_metrics(frames, Predictions.from_frames(other))
    assert m["energy_mae_meV"] == pytest.approx(2.0) and m["forces_mae_meV_per_A"] == 0.0
    other[1].energy = None
    with pytest.raises(ValueError, match="frame 0 has no energy"):
        Predictions.from_frames(other)


def test_validation_metrics_are_the_evaluation_metrics_of_the_same_model(tmp_path):
    """The logged val_* errors of the last epoch equal compute_metrics of final_model.pt on the
    validation frames (same accumulator; validation takes force differences in float32)."""
    from test_training import read_epoch_rows, tiny_config, write_tiny_extxyz

    from piwsl.config import config_from_dict
    from piwsl.models import load_model
    from piwsl.training import prepare_data, train

    data = write_tiny_extxyz(tmp_path / "d.xyz", n=14, unlabelled_every=0)
    cfg = config_from_dict(tiny_config(data, tmp_path / "run", training={"max_epochs": 1}))
    train(cfg, evaluate=False)
    row = [r for r in read_epoch_rows(tmp_path / "run") if r.get("val_energy_mae_meV")][-1]
    val = prepare_data(cfg.data, report=False).val
    model = load_model(tmp_path / "run" / "final_model.pt")
    metrics = compute_metrics(val, predict(model, val))
    for key in ("energy_mae_meV", "energy_rmse_meV_per_atom", "forces_mae_meV_per_A"):
        assert float(row[f"val_{key}"]) == pytest.approx(metrics[key], rel=1e-5), key


# --- predictions to a file, offsets (issue #18) -----------------------------------------------


def test_predict_command_writes_energies_forces_and_the_priors_share(tmp_path, monkeypatch, capsys):
    """A Δ model on an external prior (ASE's EMT, through the prior cache): PRED_ = prior +
    learned part, PRIOR_ the prior alone, REF_ the frame's labels; the numbers are those of
    predict(). (An analytic prior such as ZBL is part of the model: PRED_ alone.)"""
    import ase.io

    from piwsl.cli import main
    from piwsl.data import read_frames
    from piwsl.priors import PriorUse, make_prior

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tiny_model()
    prior = make_prior("ase:ase.calculators.emt.EMT")
    model.prior_spec = prior.spec()
    save_model(model, tmp_path / "delta.pt")
    frames = mixed_frames(5)
    images = []
    for f in frames:
        atoms = f.to_atoms()
        atoms.positions *= 0.9  # pairs inside the ZBL switch: the prior contributes
        images.append(atoms)
    ase.io.write(tmp_path / "in.xyz", images)
    args = [
        "predict",
        str(tmp_path / "delta.pt"),
        str(tmp_path / "in.xyz"),
        str(tmp_path / "p.xyz"),
    ]
    args += ["--prior-cache-dir", str(tmp_path / "prior_cache")]
    assert main(args) == 0
    assert "5 frames" in capsys.readouterr().out
    written = ase.io.read(tmp_path / "p.xyz", ":")
    inputs = read_frames(tmp_path / "in.xyz")  # positions as stored (8 decimals)
    learned = predict(model, inputs, prior=PriorUse(enabled=False))
    for s, atoms in enumerate(written):
        e_prior, f_prior = prior.compute_one(inputs[s])
        assert atoms.info["PRIOR_energy"] == pytest.approx(e_prior, abs=1e-9)
        assert atoms.info["PRED_energy"] == pytest.approx(learned.energy[s] + e_prior, abs=1e-8)
        np.testing.assert_allclose(atoms.arrays["PRIOR_forces"], f_prior, atol=1e-7)
        np.testing.assert_allclose(
            atoms.arrays["PRED_forces"], learned.forces_of(s) + f_prior, atol=1e-7
        )
        assert atoms.info["REF_energy"] == pytest.approx(frames[s].energy)
        assert atoms.info["PRED_prior"] == prior.name and atoms.info["source_frame"] == s
    assert any(abs(a.info["PRIOR_energy"]) > 1e-3 for a in written)


def offset_frames(model, offset_ev: float, noise_ev: float, n: int = 20, per_element=None):
    """Frames labelled with the model's own prediction − an offset (+ noise): the errors of
    ``model`` on them are a pure offset plus noise."""
    frames = mixed_frames(n)
    energy, _ = model_outputs(model, frames)
    rng = np.random.default_rng(3)
    for f, e in zip(frames, energy, strict=True):
        shift = offset_ev
        if per_element:
            shift = sum(per_element[int(z)] for z in f.numbers)
        f.energy = float(e) - shift + rng.normal(0.0, noise_ev)
    return frames


def test_an_energy_offset_is_recognised_and_reported():
    from piwsl.evaluation import offset_note

    model = tiny_model()
    # a constant per structure (mixed compositions: fitted per element, still exact)
    frames = offset_frames(model, offset_ev=2.0, noise_ev=0.01)
    metrics = compute_metrics(frames, predict(model, frames))
    assert metrics["energy_offset_dominated"]
    assert metrics["energy_mean_error_meV"] == pytest.approx(2000.0, abs=10)
    assert metrics["energy_offset_meV"] == pytest.approx(2000.0, abs=10)
    assert metrics["energy_mae_after_offset_meV"] < 15.0 < metrics["energy_mae_meV"]
    note = offset_note(metrics)
    assert "dominated by a constant offset" in note
    assert f"{metrics['energy_offset_meV']:+.1f} meV on average" in note
    # per-element offsets (another level of theory): recovered element by element
    per_element = {1: 0.05, 6: -0.3, 8: 0.7}
    frames = offset_frames(model, 0.0, noise_ev=0.001, per_element=per_element)
    metrics = compute_metrics(frames, predict(model, frames))
    assert metrics["energy_offset_dominated"]
    fitted = metrics["energy_offset_per_element_meV"]
    for z, symbol in ((1, "H"), (6, "C"), (8, "O")):
        assert fitted[symbol] == pytest.approx(1000 * per_element[z], abs=5)
    assert metrics["energy_offset_constant_meV"] == pytest.approx(0.0, abs=10)
    # noise alone, no offset: not dominated, no note
    frames = offset_frames(model, 0.0, noise_ev=0.05)
    metrics = compute_metrics(frames, predict(model, frames))
    assert not metrics["energy_offset_dominated"]
    assert offset_note(metrics) is None
    # too few frames to tell: never claimed
    frames = offset_frames(model, 2.0, noise_ev=0.01, n=4)
    assert not compute_metrics(frames, predict(model, frames))["energy_offset_dominated"]


def test_evaluate_cli_reports_the_offset(tmp_path, capsys):
    import ase.io

    from piwsl.cli import main

    model = tiny_model()
    save_model(model, tmp_path / "m.pt")
    frames = offset_frames(model, offset_ev=-1.5, noise_ev=0.01)
    ase.io.write(tmp_path / "other_level.xyz", [f.to_atoms() for f in frames])
    args = ["evaluate", str(tmp_path / "m.pt"), str(tmp_path / "other_level.xyz")]
    assert main([*args, "--out", str(tmp_path / "ev"), "--write-predictions"]) == 0
    out = capsys.readouterr().out
    assert "dominated by a constant offset" in out
    # labels = prediction + 1.5 eV: prediction − reference = −1.5 eV
    assert "prediction − reference is -1500" in out or "prediction − reference is -149" in out
    assert (tmp_path / "ev" / "other_level_predictions.extxyz").is_file()
