"""Cheaper physics steps: ``physics.fraction`` (copies for some structures) and ``every_n_steps``;
Batch.select / concat, which they build on."""

from __future__ import annotations

import pytest
import torch

from piwsl.data import read_frames
from piwsl.data.batch import Batch, Graph, collate, concat
from piwsl.data.frames import Frame
from piwsl.errors import ConfigError
from piwsl.models import build_model
from piwsl.objective import EnergyTerm, ForcesTerm, Objective, SpatialTerm, TaylorTerm
from piwsl.physics import PhysicsConfig
from piwsl.physics.subset import choose_structures, subset_size

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

CUTOFF = 3.0
SKIN = 0.25
ELEMENTS = [1, 6, 8]


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    out = []
    for k, f in enumerate(read_frames("builtin:ethanol_train")[:8]):
        n = 9 - (k % 3)  # 9, 8 and 7 atoms
        out.append(
            Frame(f.numbers[:n], f.positions[:n], energy=f.energy, forces=f.forces[:n], index=k)
        )
    return out


def make_batch(frames: list[Frame], ids: list[int]) -> Batch:
    graphs = [Graph.from_frame(frames[k], CUTOFF, SKIN, torch.float64, frame_id=k) for k in ids]
    return collate(graphs)


def tiny_schnet():
    torch.manual_seed(0)
    model = build_model(
        "schnet", elements=ELEMENTS, cutoff=CUTOFF, features=8, interactions=1, n_rbf=6
    )
    model.energy_model.set_reference({}, shift=-467.7, scale=1.0)
    return model.double()


def objective(second_order: bool = True, **displacements) -> Objective:
    """Energy 1, forces 10, PITC 1.2 and PISC 0.01 (kcal/mol), the copies as ``displacements``."""
    terms = [
        EnergyTerm(1.0),
        ForcesTerm(10.0),
        TaylorTerm(1.2, second_order=second_order),
        SpatialTerm(0.01, second_order=second_order),
    ]
    return Objective(terms, PhysicsConfig(**displacements))


def test_select_and_concat_keep_structures_and_neighbour_lists(frames):
    batch = make_batch(frames, list(range(6)))
    model = tiny_schnet()
    full = model(batch, create_graph=False)
    chosen = torch.tensor([4, 1])
    sub = batch.select(chosen)
    assert sub.frame_id.tolist() == [1, 4]  # batch order kept
    assert sub.n_atoms.tolist() == batch.n_atoms[[1, 4]].tolist()
    part = model(sub, create_graph=False)
    assert torch.allclose(part["energy"], full["energy"][[1, 4]])
    assert torch.allclose(part["forces"], full["forces"][batch.atoms_of(chosen)])
    # concat: the structures of both, each with its own neighbour list and labels
    both = concat([sub, batch])
    out = model(both, create_graph=False)
    assert torch.allclose(out["energy"], torch.cat([part["energy"], full["energy"]]))
    assert torch.equal(both.energy, torch.cat([sub.energy, batch.energy]))
    assert both.has_forces and both.any_forces is None  # select() leaves the flags unknown
    assert concat([batch, batch]).any_forces is True  # collate's flags carry over


def test_subset_size_and_choice_are_per_frame_and_step(frames):
    assert [subset_size(16, f) for f in (0.1, 0.25, 0.5, 1.0)] == [2, 4, 8, 16]
    assert subset_size(3, 0.01) == 1
    batch = make_batch(frames, list(range(8)))
    shuffled = make_batch(frames, [5, 2, 7, 0, 3, 6, 1, 4])
    a = batch.frame_id[choose_structures(batch, 0.25, seed=3, step=7)]
    b = shuffled.frame_id[choose_structures(shuffled, 0.25, seed=3, step=7)]
    assert sorted(a.tolist()) == sorted(b.tolist()) and len(a) == 2
    picks = {
        tuple(sorted(batch.frame_id[choose_structures(batch, 0.25, 0, s)].tolist()))
        for s in range(20)
    }
    assert len(picks) > 5  # a different subset from step to step
    assert choose_structures(batch, 1.0, 0, 0) is None


def test_fraction_terms_are_the_full_terms_of_the_chosen_structures(frames):
    """Same displacement fields per frame: the residuals of the chosen structures equal those of
    the full evaluation, and the supervised output is the whole batch's."""
    batch = make_batch(frames, list(range(8)))
    model = tiny_schnet()
    full = objective()(model, batch, step=5)
    part = objective(fraction=0.25)(model, batch, step=5)
    chosen = choose_structures(batch, 0.25, seed=0, step=5)
    for name in ("taylor", "spatial"):
        assert part.residuals[name].shape == (2,)
        assert torch.allclose(part.residuals[name], full.residuals[name][chosen], atol=1e-9)
    assert torch.allclose(part.output["energy"], full.output["energy"])
    assert torch.allclose(part.output["forces"], full.output["forces"])
    # the loss and its gradient reach the parameters through the chosen structures
    part.weighted["taylor"].backward()
    assert model.energy_model.interactions[0].filter_net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["fused", "split", "three_pass"])
def test_fraction_with_every_evaluation_mode(frames, mode):
    batch = make_batch(frames, list(range(8)))
    model = tiny_schnet()
    ref = objective(second_order=False, fraction=0.5, evaluation="fused")
    out = objective(second_order=False, fraction=0.5, evaluation=mode)
    a, b = ref(model, batch, step=2), out(model, batch, step=2)
    for name in a.residuals:
        assert torch.allclose(a.residuals[name], b.residuals[name], atol=1e-10)


def test_every_n_steps_evaluates_the_terms_on_every_nth_step(frames):
    batch = make_batch(frames, list(range(4)))
    model = tiny_schnet().train()
    goal = objective(every_n_steps=3)
    terms = [sorted(goal(model, batch).raw) for _ in range(7)]
    with_physics = [k for k, t in enumerate(terms) if "taylor" in t]
    assert with_physics == [0, 3, 6]
    assert terms[1] == ["energy", "forces"]


def test_fraction_and_every_are_validated():
    with pytest.raises(ValueError, match="fraction"):
        PhysicsConfig(fraction=0.0)
    with pytest.raises(ValueError, match="every_n_steps"):
        PhysicsConfig(every_n_steps=0)
    from piwsl.config import config_from_dict

    with pytest.raises(ConfigError, match=r"physics\.fraction"):
        config_from_dict({"data": {"train": ["x.xyz"]}, "physics": {"fraction": 1.5}})
