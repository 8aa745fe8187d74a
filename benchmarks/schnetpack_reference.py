"""schnetpack 2.1.1 as a speed reference: piwsl's SchNet / conservative PaiNN, weights copied.

Only benchmarks import this, and only when schnetpack is installed; it is not a dependency of
piwsl. schnetpack 2.1.1 installs with ``pip install --no-deps schnetpack==2.1.1`` (plus matscipy,
dirsync, fasteners, omegaconf and torch-ema) and, on torch 2.13, needs
``torch.utils.data.dataloader.T_co`` set before it is imported (:func:`import_schnetpack`).

:func:`schnetpack_model` builds schnetpack's ``NeuralNetworkPotential`` (pairwise distances →
representation → ``Atomwise`` energy → ``Forces``) with piwsl's hyper-parameters and copies piwsl's
weights into it, permuting PaiNN's filter and mixing channels where the two codes order them
differently; :func:`schnetpack_inputs` turns a piwsl batch into schnetpack's input dictionary
(same neighbour list). The piwsl model must have zero E0s and shift and unit scale (schnetpack's
``Atomwise`` sums the network output only).
"""

from __future__ import annotations

import torch

from piwsl.data.batch import Batch
from piwsl.models import ForceField
from piwsl.models.painn import PaiNN
from piwsl.models.schnet import SchNet


def import_schnetpack():
    """schnetpack, or ImportError; patches the torch 2.13 ``T_co`` it expects."""
    import torch.utils.data.dataloader as dataloader

    if not hasattr(dataloader, "T_co"):
        dataloader.T_co = dataloader._T_co
    import schnetpack

    return schnetpack


def _copy(dst: torch.nn.Linear, src: torch.nn.Linear, rows: torch.Tensor | None = None) -> None:
    with torch.no_grad():
        index = slice(None) if rows is None else rows
        dst.weight.copy_(src.weight[index])
        if src.bias is not None:
            dst.bias.copy_(src.bias[index])


def _embedding(dst: torch.nn.Embedding, em) -> None:
    with torch.no_grad():
        for z in em.elements:
            dst.weight[z] = em.embedding.weight[int(em.species_index[z])]


def _schnet(spk, em: SchNet):
    first = em.interactions[0]
    rep = spk.representation.SchNet(
        n_atom_basis=em.embedding.embedding_dim,
        n_interactions=len(em.interactions),
        radial_basis=spk.nn.GaussianRBF(em.rbf.centres.numel(), em.cutoff),
        cutoff_fn=spk.nn.CosineCutoff(em.cutoff),
        n_filters=first.in2f.out_features,
    )
    _embedding(rep.embedding, em)
    for a, b in zip(em.interactions, rep.interactions, strict=True):
        _copy(b.in2f, a.in2f)
        _copy(b.filter_network[0], a.filter_net[0])
        _copy(b.filter_network[1], a.filter_net[2])
        _copy(b.f2out[0], a.f2out[0])
        _copy(b.f2out[1], a.f2out[2])
    return rep, spk.nn.shifted_softplus, em.readout


def _painn(spk, em: PaiNN):
    F = em.features
    n = len(em.messages)
    rep = spk.representation.PaiNN(
        n_atom_basis=F,
        n_interactions=n,
        radial_basis=spk.nn.BesselRBF(em.rbf.freqs.numel(), em.cutoff),
        cutoff_fn=spk.nn.CosineCutoff(em.cutoff),
    )
    _embedding(rep.embedding, em)
    # messages: piwsl splits (Δs, v_j term, r̂ term); schnetpack (Δq, r̂ term, μ_j term)
    message = torch.cat([torch.arange(0, F), torch.arange(2 * F, 3 * F), torch.arange(F, 2 * F)])
    # updates: piwsl splits (a_vv, a_sv, a_ss); schnetpack (Δq, Δμ, Δqμ) = (a_ss, a_vv, a_sv)
    update = torch.cat([torch.arange(2 * F, 3 * F), torch.arange(0, F), torch.arange(F, 2 * F)])
    with torch.no_grad():
        for k, m in enumerate(em.messages):
            block = slice(3 * F * k, 3 * F * (k + 1))
            rep.filter_net.weight[block] = m.filter.weight[message]
            rep.filter_net.bias[block] = m.filter.bias[message]
    for m, u, b, c in zip(em.messages, em.updates, rep.interactions, rep.mixing, strict=True):
        _copy(b.interatomic_context_net[0], m.phi[0])
        _copy(b.interatomic_context_net[1], m.phi[2], message)
        with torch.no_grad():
            c.mu_channel_mix.weight.copy_(torch.cat([u.V.weight, u.U.weight]))
        _copy(c.intraatomic_context_net[0], u.mlp[0])
        _copy(c.intraatomic_context_net[1], u.mlp[2], update)
    return rep, torch.nn.functional.silu, em.energy_head


def schnetpack_model(model: ForceField) -> torch.nn.Module:
    """schnetpack's model of ``model`` (SchNet or conservative PaiNN), same weights, train mode."""
    spk = import_schnetpack()
    em = model.energy_model
    if isinstance(em, SchNet):
        rep, activation, head = _schnet(spk, em)
    elif isinstance(em, PaiNN) and not em.direct_forces:
        rep, activation, head = _painn(spk, em)
    else:
        raise TypeError(f"no schnetpack counterpart of {type(em).__name__} ({em.hparams})")
    atomwise = spk.atomistic.Atomwise(
        n_in=head[0].in_features, n_out=1, activation=activation, output_key="energy"
    )
    _copy(atomwise.outnet[0], head[0])
    _copy(atomwise.outnet[1], head[2])
    out = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[atomwise, spk.atomistic.Forces(energy_key="energy", force_key="forces")],
    )
    return out.to(next(model.parameters()).dtype).train()


def schnetpack_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """schnetpack's input dictionary for a piwsl batch (the same neighbour list)."""
    props = import_schnetpack().properties
    i, j = batch.edge_index
    offsets = torch.einsum("ek,ekl->el", batch.edge_shift, batch.cell[batch.batch[i]])
    return {
        props.Z: batch.numbers,
        props.R: batch.positions.clone(),
        props.idx_i: i,
        props.idx_j: j,
        props.offsets: offsets,
        props.idx_m: batch.batch,
        props.n_atoms: batch.n_atoms,
        props.cell: batch.cell,
        props.pbc: batch.pbc,
    }
