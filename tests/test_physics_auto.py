"""``physics.evaluation = "auto"``: the tuner's schedule and choice (on a fake clock: no timed
assertions), the candidate modes, losses equal to the explicit modes, and the choice recorded in
(and resumed from) a training run."""

from __future__ import annotations

import json

import pytest
import torch
from test_physics import ethanol, make_batch, make_model, mixed, physics  # noqa: F401
from test_training import tiny_config, write_tiny_extxyz

from piwsl.config import config_from_dict
from piwsl.physics.terms import candidate_modes
from piwsl.physics.tuning import DEFAULT_MODE, TRIALS, WARMUP, EvaluationTuner, describe_choice

torch.set_num_threads(1)


class FakeClock:
    """Seconds that advance only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_tuner(tuner: EvaluationTuner, candidates: list[str], cost: dict[str, float]) -> list[str]:
    """Pick until a choice exists; each step of mode m takes cost[m] seconds on the fake clock."""
    picked = []
    while tuner.chosen is None:
        mode = tuner.pick(candidates, timed=True, device=None)
        picked.append(mode)
        tuner.clock.now += cost[mode]
        tuner.stop()
    return picked


def test_tuner_warms_up_alternates_and_keeps_the_fastest():
    candidates = ["split", "fused", "three_pass"]
    tuner = EvaluationTuner(warmup=1, trials=3, clock=FakeClock())
    picked = run_tuner(tuner, candidates, {"split": 2.0, "fused": 3.0, "three_pass": 1.0})
    # one untimed round, then three timed rounds, every other one reversed
    assert picked == candidates + candidates[::-1] + candidates + candidates[::-1]
    assert tuner.chosen == "three_pass"
    summary = tuner.summary()
    assert summary["median_step_ms"] == {"split": 2000.0, "fused": 3000.0, "three_pass": 1000.0}
    assert summary["timed_steps"] == {"split": 3, "fused": 3, "three_pass": 3}
    assert (
        "chose 'three_pass'" in describe_choice(summary) and "fused 3000.0 ms" in tuner.describe()
    )
    # from now on the choice, timed or not, and no more timing
    assert tuner.pick(candidates, timed=True, device=None) == "three_pass"
    tuner.stop()
    assert tuner.summary()["timed_steps"]["three_pass"] == 3


def test_tuner_median_resists_one_slow_step_and_untimed_calls_use_the_default():
    tuner = EvaluationTuner(warmup=0, trials=3, clock=FakeClock())
    assert tuner.pick(["split", "three_pass"], timed=False, device=None) == DEFAULT_MODE
    costs = iter([1.0, 2.0, 50.0, 2.0, 1.0, 2.0])  # split's second step hit by a validation run
    while tuner.chosen is None:
        tuner.pick(["split", "three_pass"], timed=True, device=None)
        tuner.clock.now += next(costs)
        tuner.stop()
    assert tuner.chosen == "split"  # medians 1.0 vs 2.0 s


def test_tuner_without_stop_times_from_pick_to_pick():
    tuner = EvaluationTuner(warmup=0, trials=1, clock=FakeClock())
    for cost in (5.0, 1.0):
        tuner.pick(["split", "three_pass"], timed=True, device=None)
        tuner.clock.now += cost
    assert tuner.chosen is None  # the last step closes with the next pick
    assert tuner.pick(["split", "three_pass"], timed=True, device=None) == "three_pass"


def test_tuner_single_candidate_state_roundtrip_and_bad_arguments():
    tuner = EvaluationTuner()
    assert tuner.pick(["split"], timed=True, device=None) == "split"
    assert tuner.chosen == "split" and "only distinct" in tuner.describe()
    assert EvaluationTuner().state_dict() == {}  # nothing chosen: a resumed run tries again
    tuned = EvaluationTuner(warmup=0, trials=1, clock=FakeClock())
    run_tuner(tuned, ["split", "fused"], {"split": 2.0, "fused": 1.0})
    restored = EvaluationTuner()
    restored.load_state_dict(tuned.state_dict())
    assert restored.summary() == tuned.summary()
    assert restored.pick(["split", "fused"], timed=True, device=None) == "fused"
    with pytest.raises(ValueError, match="trials"):
        EvaluationTuner(trials=0)


def test_candidate_modes_are_the_distinct_pass_layouts():
    abc = ["A", "B", "C"]
    # first order, conservative: C needs no forces, so split, fused and three passes all differ
    assert candidate_modes(False, abc, ("A", "B")) == ["split", "fused", "three_pass"]
    # second order (forces everywhere) or a direct-force model: split is the fused pass
    assert candidate_modes(False, abc, ("A", "B", "C")) == ["split", "three_pass"]
    assert candidate_modes(True, abc, ("A", "B")) == ["split", "three_pass"]
    assert candidate_modes(True, ["A"], ("A",)) == ["split"]


@pytest.mark.parametrize("kind", ["schnet", "painn_direct"])
def test_auto_losses_and_gradients_equal_the_explicit_modes(mixed, kind):  # noqa: F811
    """Every step of auto (trial steps in each mode, then the choice) gives the loss and the
    gradient of the same step evaluated split and three_pass."""
    batch = make_batch(mixed)
    models = {m: make_model(kind).train() for m in ("auto", "split", "three_pass")}
    objectives = {m: physics(evaluation=m, supervised=(1.0, 10.0)) for m in models}
    tuner = objectives["auto"].displacements.tuner
    n_modes = 2 if kind == "painn_direct" else 3
    for _ in range((WARMUP + TRIALS) * n_modes + 2):
        results, grads = {}, {}
        for m, objective in objectives.items():
            models[m].zero_grad()
            results[m] = objective(models[m], batch)
            results[m].total.backward()
            grads[m] = torch.cat([p.grad.reshape(-1) for p in models[m].parameters()])
            objective.step_done()
        for m in ("split", "three_pass"):
            assert float(results["auto"].total.detach()) == pytest.approx(
                float(results[m].total.detach()), rel=1e-10, abs=1e-14
            )
            assert torch.allclose(grads["auto"], grads[m], rtol=1e-8, atol=1e-12)
    direct = kind == "painn_direct"
    assert tuner.candidates == (
        ["split", "three_pass"] if direct else ["split", "fused", "three_pass"]
    )
    assert tuner.chosen in tuner.candidates
    summary = objectives["auto"].evaluation_summary()
    assert all(summary["median_step_ms"][m] > 0 for m in tuner.candidates)
    assert objectives["split"].evaluation_summary() == {"mode": "split"}


def test_training_run_records_and_resumes_the_choice(tmp_path):
    from piwsl.training import train

    data = write_tiny_extxyz(tmp_path / "data.xyz", n=12, unlabelled_every=1000)
    cfg = tiny_config(
        data,
        tmp_path / "run",
        data={"n_val": 3},
        model={"name": "painn", "cutoff": 4.0, "hparams": {"features": 8, "interactions": 1}},
        physics={"taylor_weight": 1.2, "spatial_weight": 0.01, "second_order": True},
        training={"max_epochs": 2, "batch_size": 1, "scheduler": "none", "ema_decay": None},
    )
    first = train(config_from_dict(cfg), evaluate=False)  # 18 steps: the trial takes 12
    choice = first.physics_evaluation
    assert choice["mode"] == "auto" and choice["chosen"] in choice["candidates"]
    assert choice["candidates"] == ["split", "three_pass"]  # second order: forces at every copy
    assert all(n == TRIALS for n in choice["timed_steps"].values())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["physics_evaluation"] == choice
    cfg["training"]["max_epochs"] = 3
    resumed = train(config_from_dict(cfg), resume=True, evaluate=False)
    assert resumed.steps == 3 * first.steps // 2
    assert resumed.physics_evaluation == choice  # kept from the checkpoint, not re-timed


def test_resume_keeps_the_recorded_mode_unless_the_config_sets_one(tmp_path):
    from piwsl.training.rundir import keep_run_evaluation

    data = write_tiny_extxyz(tmp_path / "data.xyz", n=6, unlabelled_every=1000)
    recorded = config_from_dict(tiny_config(data, tmp_path, physics={"evaluation": "three_pass"}))
    (tmp_path / "config.yaml").write_text(recorded.to_yaml())
    unset = config_from_dict(tiny_config(data, tmp_path))
    assert unset.physics.evaluation == "auto"  # the default
    assert keep_run_evaluation(unset, tmp_path).physics.evaluation == "three_pass"
    given = config_from_dict(tiny_config(data, tmp_path, physics={"evaluation": "fused"}))
    assert keep_run_evaluation(given, tmp_path).physics.evaluation == "fused"
    assert keep_run_evaluation(unset, tmp_path / "elsewhere").physics.evaluation == "auto"
