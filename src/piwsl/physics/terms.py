"""PITC (Taylor) and PISC (spatial) consistency losses and their variants.

Structures A (training positions), B = A + d2, C = A + d1. With ``dot_s(d, F) = Σ_{i∈s} d_i·F_i``
(a scatter over the structure index, never a batch-wide sum):

- taylor (PITC):   r_s = E(C) − [E(A) − dot_s(d1, F̄_A)],       F̄_A = F(A)  or ½(F(A) + F(C))
- spatial (PISC):  r_s = E(C) − [E(B) − dot_s(d1 − d2, F̄_B)],  F̄_B = F(B)  or ½(F(B) + F(C))
- two-point:       r_s = E_A − [E(C) + dot_s(d1, F̄_C)],         F̄_C = F(C)  or ½(F(C) + F(A))

and each loss is ``mean_s (r_s / u)²`` with ``u`` the energy unit of the weights. Every quantity
is a model prediction with its graph (no stop-gradient), except with ``anchor_to_labels``, where the
Taylor target of a structure carrying both labels is ``E_ref(A) − dot_s(d1, F̄_ref)`` (Cooper et
al. 2020) and the two-point target ``E_A`` is ``E_ref(A)`` where an energy label exists.

The copies are evaluated by :func:`evaluate_copies`, fused (one forward pass over
the concatenated copies, sharing A's neighbour list) or as separate passes.

Distributed training: wrap the ForceField in ``DistributedDataParallel`` and pass the wrapper as
the model. Each rank computes the terms on its own structures; conservative forces are taken with
``torch.autograd.grad`` w.r.t. positions inside ``forward`` (no parameter gradients, so no reducer
hook fires early) and the single ``loss.backward()`` (double backward) reduces once. DDP averages
the rank means, which equals the mean over the union when the ranks hold equally many structures
(tested: 2 processes on gloo match one process on the union to 1e-9). ``find_unused_parameters``
is not needed when every parameter enters the loss (SchNet, PaiNN with physics terms on); a
direct-force model trained without force labels and without physics terms leaves its force head
unused and needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from piwsl.data.batch import Batch, concat, scatter_sum
from piwsl.physics.subset import restrict


@dataclass
class CopyOutputs:
    """Model outputs at A, B, C: energies float64 [S] (eV), forces [N, 3] (eV/Å) or None."""

    energy: dict[str, torch.Tensor]
    forces: dict[str, torch.Tensor | None]
    d1: torch.Tensor | None = None  # C − A actually applied, Å (None: A alone was evaluated)
    d2: torch.Tensor | None = None  # B − A actually applied, Å
    #: the model's whole output at A (may hold more than energy and forces, e.g. stress); with
    #: ``physics.fraction`` < 1 the dicts above hold the displaced structures only and this the
    #: whole batch
    output: dict[str, torch.Tensor] | None = None

    @classmethod
    def of_a(cls, output: dict[str, torch.Tensor]) -> CopyOutputs:
        """The outputs of a plain pass at A (no displaced copies)."""
        return cls({"A": output["energy"]}, {"A": output.get("forces")}, output=output)

    def output_a(self) -> dict[str, torch.Tensor]:
        """The model output at A (energy and, where computed, forces)."""
        if self.output is not None:
            return self.output
        out = {"energy": self.energy["A"]}
        if self.forces.get("A") is not None:
            out["forces"] = self.forces["A"]
        return out


def per_structure_dot(d: torch.Tensor, forces: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Σ_{i∈s} d_i·F_i for every structure s, float64 [S] (eV for Å × eV/Å)."""
    return scatter_sum((d * forces).sum(-1).to(torch.float64), batch.batch, batch.n_structures)


def _pass_groups(
    mode: str, direct: bool, names: list[str], forces_at: tuple[str, ...]
) -> list[list[str]]:
    """The copies evaluated together in each model pass (see :func:`evaluate_copies`)."""
    if mode == "fused" or (mode == "split" and direct):
        return [names]
    elif mode == "split":
        # copies that need forces in one pass, energy-only copies in another (for a conservative
        # model an energy-only copy then costs no force graph and no double backward)
        with_f = [c for c in names if c in forces_at]
        without = [c for c in names if c not in forces_at]
        return [g for g in (with_f, without) if g]
    elif mode == "three_pass":
        return [[c] for c in names]
    else:
        raise ValueError(f"unknown evaluation mode {mode!r}; use 'fused', 'split' or 'three_pass'")


#: The explicit evaluation modes, in the order ``auto`` tries them.
MODES = ("split", "fused", "three_pass")


def candidate_modes(direct: bool, names: list[str], forces_at: tuple[str, ...]) -> list[str]:
    """The modes whose passes differ for these copies (the first of each same set of passes)."""
    seen: dict[str, list[list[str]]] = {}
    for mode in MODES:
        groups = _pass_groups(mode, direct, names, forces_at)
        if groups not in seen.values():
            seen[mode] = groups
    return list(seen)


def evaluate_copies(
    model,
    batch: Batch,
    d1: torch.Tensor,
    d2: torch.Tensor,
    *,
    copies: tuple[str, ...] = ("A", "B", "C"),
    forces_at: tuple[str, ...] = ("A", "B", "C"),
    mode: str = "fused",
    create_graph: bool | None = None,
    stress: bool = False,
    chosen: torch.Tensor | None = None,
    sub: Batch | None = None,
) -> CopyOutputs:
    """Evaluate ``model`` (a ForceField) at A, B = A + d2, C = A + d1.

    ``copies``: which structures to evaluate (A always). ``forces_at``: where forces are needed;
    a fused pass of a conservative model returns forces at every copy (one backward), a direct
    model always gives them. ``mode``: ``"fused"`` (one pass over ``batch.repeat``), ``"split"``
    (one fused pass over the copies that need forces, one over those that need only energies;
    the same as fused for direct models) or ``"three_pass"`` (one pass per copy).
    ``create_graph`` defaults to ``torch.is_grad_enabled()`` so that the losses can be
    differentiated even in eval mode. ``stress``: also the stress and virial at A (the pass that
    holds A computes them for its copies, a by-product of its backward). ``chosen``: indices of
    the structures that get displaced copies (``physics.fraction``); A is evaluated for the whole
    batch, B and C for these only, ``d1``/``d2`` hold their atoms, and the returned outputs are
    theirs (the whole batch's A, with its stress, in ``output``); ``sub`` is
    ``batch.select(chosen)`` where the caller has built it already.
    """
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    if sub is None:
        sub = batch if chosen is None else batch.select(chosen)
    pos = sub.positions.detach()
    bases = {"A": batch, "B": sub, "C": sub}
    positions = {"A": batch.positions.detach(), "B": pos + d2, "C": pos + d1}
    names = [c for c in ("A", "B", "C") if c == "A" or c in copies]
    energy: dict[str, torch.Tensor] = {}
    forces: dict[str, torch.Tensor | None] = {}
    groups = _pass_groups(mode, getattr(model, "direct_forces", False), names, forces_at)
    at_a: dict[str, torch.Tensor] = {}
    for group in groups:
        need = any(c in forces_at for c in group)
        pieces = [bases[c].with_positions(positions[c]) for c in group]
        big = pieces[0] if len(pieces) == 1 else concat(pieces)
        kwargs = {"compute_stress": True} if stress and "A" in group else {}
        out = model(big, compute_forces=need, create_graph=create_graph, **kwargs)
        f = out.get("forces")
        s0 = n0 = 0
        for c, piece in zip(group, pieces, strict=True):
            S, N = piece.n_structures, piece.positions.shape[0]
            energy[c] = out["energy"][s0 : s0 + S]
            forces[c] = f[n0 : n0 + N] if f is not None else None
            if c == "A":
                at_a = {key: out[key][s0 : s0 + S] for key in ("stress", "virial") if key in out}
            s0, n0 = s0 + S, n0 + N
    full_a = None
    if chosen is not None:
        full_a = {"energy": energy["A"], "forces": forces["A"]}
        if forces["A"] is None:
            del full_a["forces"]
        part = restrict(full_a, batch, chosen)
        energy["A"], forces["A"] = part["energy"], part.get("forces")
    result = CopyOutputs(
        energy=energy,
        forces=forces,
        d1=positions["C"] - pos,
        d2=positions["B"] - pos,
        output=full_a,
    )
    if at_a:
        result.output = {**result.output_a(), **at_a}
    return result


def _labelled_forces(batch: Batch) -> torch.Tensor:
    """Reference forces with missing labels replaced by zeros (selection is by the masks)."""
    return torch.where(batch.atom_forces_mask.unsqueeze(1), batch.forces, 0.0)


def taylor_residual(
    out: CopyOutputs, batch: Batch, second_order: bool = False, anchor_to_labels: bool = False
) -> torch.Tensor:
    """PITC residual E(C) − Ê_C|A per structure, eV, float64 [S]."""
    f_a = out.forces["A"]
    f_c = out.forces.get("C")
    if second_order:
        f_a = 0.5 * (f_a + f_c)
    target = out.energy["A"] - per_structure_dot(out.d1, f_a, batch)
    if anchor_to_labels:  # selected by torch.where: no host read of the masks
        both = batch.energy_mask & batch.forces_mask
        f_ref = _labelled_forces(batch).to(out.d1.dtype)
        if second_order:
            f_ref = 0.5 * (f_ref + f_c)
        e_ref = torch.where(both, batch.energy, 0.0)
        anchored = e_ref - per_structure_dot(out.d1, f_ref, batch)
        target = torch.where(both, anchored, target)
    return out.energy["C"] - target


def spatial_residual(out: CopyOutputs, batch: Batch, second_order: bool = False) -> torch.Tensor:
    """PISC residual E(C) − Ê_C|B per structure, eV, float64 [S]."""
    f_b = out.forces["B"]
    if second_order:
        f_b = 0.5 * (f_b + out.forces["C"])
    target = out.energy["B"] - per_structure_dot(out.d1 - out.d2, f_b, batch)
    return out.energy["C"] - target


def two_point_residual(
    out: CopyOutputs, batch: Batch, second_order: bool = False, anchor_to_labels: bool = False
) -> torch.Tensor:
    """E_A − Ê_A|C with Ê_A|C = E(C) + Σ d1·F̄_C (extrapolation from C back to A), eV [S]."""
    f_c = out.forces["C"]
    e_a = out.energy["A"]
    f_a = out.forces.get("A")
    if anchor_to_labels:
        e_a = torch.where(batch.energy_mask, batch.energy.nan_to_num(0.0), e_a)
        if second_order:
            f_a = torch.where(
                batch.atom_forces_mask.unsqueeze(1), _labelled_forces(batch).to(f_c.dtype), f_a
            )
    if second_order:
        f_c = 0.5 * (f_c + f_a)
    return e_a - (out.energy["C"] + per_structure_dot(out.d1, f_c, batch))
