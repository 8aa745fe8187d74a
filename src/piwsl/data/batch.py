"""Graphs and batches: concatenated atoms, a structure index, and precomputed neighbour lists.

A :class:`Graph` is one structure as tensors (neighbour list included). :func:`collate` concatenates
graphs of any sizes into a :class:`Batch`; every per-structure sum in piwsl scatters over
``Batch.batch`` (the structure index of each atom), never over the whole batch and never through an
equal-size reshape.

Missing labels are NaN *and* masked: ``energy_mask[s]`` says whether structure ``s`` has an energy,
``forces_mask[s]`` whether it has forces, ``stress_mask[s]`` whether it has a stress. Code must select with the masks; the NaN fill makes any
accidental use of a missing label visible instead of silently zero.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from piwsl.data.frames import Frame
from piwsl.data.neighbors import frame_neighbor_list


@dataclass
class Graph:
    """One structure as tensors. Energies are float64; positions/forces in the working dtype."""

    positions: torch.Tensor  # [n, 3]
    numbers: torch.Tensor  # long [n]
    cell: torch.Tensor  # [3, 3]
    pbc: torch.Tensor  # bool [3]
    edge_index: torch.Tensor  # long [2, e]
    edge_shift: torch.Tensor  # [e, 3] integer cell shifts (stored as floats)
    energy: torch.Tensor  # float64 scalar (NaN if missing)
    forces: torch.Tensor  # [n, 3] (NaN if missing)
    has_energy: bool
    has_forces: bool
    fixed: torch.Tensor  # bool [n]
    frame_id: int
    stress: torch.Tensor | None = None  # [3, 3] eV/Å³ (NaN if missing; None: NaN)
    has_stress: bool = False

    @classmethod
    def from_frame(
        cls,
        frame: Frame,
        cutoff: float,
        skin: float = 0.0,
        dtype: torch.dtype = torch.float32,
        frame_id: int | None = None,
    ) -> Graph:
        edge_index, shifts = frame_neighbor_list(frame, cutoff, skin)
        n = frame.n_atoms
        forces = frame.forces if frame.forces is not None else np.full((n, 3), np.nan)
        fixed = frame.fixed if frame.fixed is not None else np.zeros(n, dtype=bool)
        stress = frame.stress if frame.stress is not None else np.full((3, 3), np.nan)
        return cls(
            positions=torch.as_tensor(frame.positions, dtype=dtype),
            numbers=torch.as_tensor(frame.numbers, dtype=torch.long),
            cell=torch.as_tensor(frame.cell, dtype=dtype),
            pbc=torch.as_tensor(frame.pbc, dtype=torch.bool),
            edge_index=torch.as_tensor(edge_index, dtype=torch.long),
            edge_shift=torch.as_tensor(shifts, dtype=dtype),
            energy=torch.tensor(
                frame.energy if frame.energy is not None else float("nan"), dtype=torch.float64
            ),
            forces=torch.as_tensor(forces, dtype=dtype),
            has_energy=frame.energy is not None,
            has_forces=frame.forces is not None,
            fixed=torch.as_tensor(fixed, dtype=torch.bool),
            frame_id=frame.index if frame_id is None else frame_id,
            stress=torch.as_tensor(stress, dtype=dtype),
            has_stress=frame.stress is not None,
        )


@dataclass
class Batch:
    """Several structures of any sizes, concatenated.

    Shapes: N atoms, S structures, E edges. The edge vector of edge e is
    ``positions[edge_index[1, e]] - positions[edge_index[0, e]] + edge_shift[e] @ cell[s]`` with
    ``s = batch[edge_index[0, e]]`` (see :func:`edge_vectors`).
    """

    positions: torch.Tensor  # [N, 3] Å
    numbers: torch.Tensor  # long [N]
    batch: torch.Tensor  # long [N] structure index of each atom
    ptr: torch.Tensor  # long [S + 1] offsets of each structure's atoms
    cell: torch.Tensor  # [S, 3, 3] Å
    pbc: torch.Tensor  # bool [S, 3]
    edge_index: torch.Tensor  # long [2, E]
    edge_shift: torch.Tensor  # [E, 3]
    energy: torch.Tensor  # float64 [S] eV (NaN where missing)
    forces: torch.Tensor  # [N, 3] eV/Å (NaN where missing)
    energy_mask: torch.Tensor  # bool [S]
    forces_mask: torch.Tensor  # bool [S]
    fixed: torch.Tensor  # bool [N]
    frame_id: torch.Tensor  # long [S]
    stress: torch.Tensor | None = None  # [S, 3, 3] eV/Å³ (NaN where missing; None: no stress)
    stress_mask: torch.Tensor | None = None  # bool [S] (None: no structure has a stress)
    #: host-side summaries of the masks, set by :func:`collate` (None: unknown), so that training
    #: can decide what to compute without reading the masks back from the device
    any_energy: bool | None = None
    any_forces: bool | None = None
    any_stress: bool | None = None
    #: long [M]: the atoms whose structure carries force labels, built on the host by
    #: :func:`collate` (None: derived from ``forces_mask`` when needed, a device read)
    force_atoms: torch.Tensor | None = None

    @property
    def n_structures(self) -> int:
        # no int(): while a model is traced (compiled training) this stays symbolic
        return self.ptr.shape[0] - 1

    @property
    def has_energies(self) -> bool:
        """Whether any structure carries an energy label."""
        return bool(self.energy_mask.any()) if self.any_energy is None else self.any_energy

    @property
    def has_forces(self) -> bool:
        """Whether any structure carries force labels."""
        return bool(self.forces_mask.any()) if self.any_forces is None else self.any_forces

    @property
    def n_atoms(self) -> torch.Tensor:
        """Atoms per structure, long [S]."""
        return self.ptr[1:] - self.ptr[:-1]

    @property
    def labelled_force_atoms(self) -> torch.Tensor:
        """long [M]: indices of the atoms whose structure carries force labels."""
        if self.force_atoms is not None:
            return self.force_atoms
        return self.atom_forces_mask.nonzero().squeeze(1)

    @property
    def atom_forces_mask(self) -> torch.Tensor:
        """bool [N]: atoms whose structure carries force labels."""
        return self.forces_mask[self.batch]

    @property
    def has_stress(self) -> bool:
        """Whether any structure carries a stress label."""
        if self.stress_mask is None:
            return False
        return bool(self.stress_mask.any()) if self.any_stress is None else self.any_stress

    @property
    def volume(self) -> torch.Tensor:
        """Cell volumes [S] in Å³ (0 where a structure is not periodic in all directions)."""
        det = torch.linalg.det(self.cell.to(torch.float64)).abs()
        return torch.where(self.pbc.all(dim=1), det, torch.zeros_like(det))

    def to(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        non_blocking: bool = False,
    ):
        """Move to ``device``; cast floating tensors (except float64 energies) to ``dtype``."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                if dtype is not None and value.is_floating_point() and f.name != "energy":
                    value = value.to(dtype=dtype)
                if device is not None:
                    value = value.to(device=device, non_blocking=non_blocking)
            out[f.name] = value
        return Batch(**out)

    def with_positions(self, positions: torch.Tensor) -> Batch:
        """The same batch (same neighbour list) at other positions."""
        return replace(self, positions=positions)

    def repeat(self, positions: list[torch.Tensor]) -> Batch:
        """A batch of ``len(positions)`` copies of this one, copy k at ``positions[k]``.

        Copy k holds structures ``k*S .. (k+1)*S - 1``; the neighbour lists are reused (build
        them with a skin so that the displaced copies stay covered). Labels are copied too.
        """
        return concat([self.with_positions(p) for p in positions])

    def _structure_mask(self, structures: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros(self.n_structures, dtype=torch.bool, device=self.batch.device)
        keep[structures.to(self.batch.device)] = True
        return keep

    def atoms_of(self, structures: torch.Tensor) -> torch.Tensor:
        """Indices of the atoms of these structures, in batch order (long [n])."""
        return self._structure_mask(structures)[self.batch].nonzero().squeeze(1)

    def select(self, structures: torch.Tensor) -> Batch:
        """The sub-batch of these structures (distinct indices, any order; kept in batch order).

        Neighbour lists, labels and frame ids come along. Building it reads the number of
        selected atoms and edges back from the device (one synchronisation on a GPU).
        """
        device = self.positions.device
        keep = self._structure_mask(structures)
        keep_atom = keep[self.batch]
        atoms = keep_atom.nonzero().squeeze(1)
        edges = keep_atom[self.edge_index[0]].nonzero().squeeze(1)
        chosen = structures.to(device).sort().values
        new_atom = torch.cumsum(keep_atom.long(), 0) - 1  # old atom index -> new
        new_structure = torch.cumsum(keep.long(), 0) - 1
        counts = self.n_atoms[chosen]
        return Batch(
            positions=self.positions[atoms],
            numbers=self.numbers[atoms],
            batch=new_structure[self.batch[atoms]],
            ptr=torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]),
            cell=self.cell[chosen],
            pbc=self.pbc[chosen],
            edge_index=new_atom[self.edge_index[:, edges]],
            edge_shift=self.edge_shift[edges],
            energy=self.energy[chosen],
            forces=self.forces[atoms],
            energy_mask=self.energy_mask[chosen],
            forces_mask=self.forces_mask[chosen],
            fixed=self.fixed[atoms],
            frame_id=self.frame_id[chosen],
            stress=None if self.stress is None else self.stress[chosen],
            stress_mask=None if self.stress_mask is None else self.stress_mask[chosen],
            # a label absent from the batch is absent from every part of it; present, it is
            # known only from the masks (read when needed)
            **{name: False for name in FLAGS if getattr(self, name) is False},
        )


#: The host-side label flags of a :class:`Batch` (set by :func:`collate`).
FLAGS = ("any_energy", "any_forces", "any_stress")


def concat(batches: list[Batch]) -> Batch:
    """One batch holding the structures of ``batches`` in order (their neighbour lists kept).

    Offsets come from tensor shapes only, so nothing is read back from the device.
    """
    if not batches:
        raise ValueError("cannot concatenate an empty list of batches")
    atom_offsets, structure_offsets = [0], [0]
    for b in batches[:-1]:
        atom_offsets.append(atom_offsets[-1] + b.positions.shape[0])
        structure_offsets.append(structure_offsets[-1] + b.n_structures)

    def cat(name: str, dim: int = 0) -> torch.Tensor:
        return torch.cat([getattr(b, name) for b in batches], dim=dim)

    flags: dict = {}
    for name in FLAGS:
        # a batch without a stress mask has no stress, whether its flag is known or not
        values = [
            False if name == "any_stress" and b.stress_mask is None else getattr(b, name)
            for b in batches
        ]
        flags[name] = None if None in values else any(values)
    if all(b.force_atoms is not None for b in batches):
        flags["force_atoms"] = torch.cat(
            [b.force_atoms + o for b, o in zip(batches, atom_offsets, strict=True)]
        )
    return Batch(
        positions=cat("positions"),
        numbers=cat("numbers"),
        batch=torch.cat([b.batch + o for b, o in zip(batches, structure_offsets, strict=True)]),
        ptr=torch.cat(
            [batches[0].ptr[:1]]
            + [b.ptr[1:] + o for b, o in zip(batches, atom_offsets, strict=True)]
        ),
        cell=cat("cell"),
        pbc=cat("pbc"),
        edge_index=torch.cat(
            [b.edge_index + o for b, o in zip(batches, atom_offsets, strict=True)], dim=1
        ),
        edge_shift=cat("edge_shift"),
        energy=cat("energy"),
        forces=cat("forces"),
        energy_mask=cat("energy_mask"),
        forces_mask=cat("forces_mask"),
        fixed=cat("fixed"),
        frame_id=cat("frame_id"),
        **_concat_stress(batches),
        **flags,
    )


def _concat_stress(batches: list[Batch]) -> dict:
    """The ``stress``/``stress_mask`` fields of :func:`concat` (NaN and False where a batch has
    no stress; both None when none has)."""
    if all(b.stress is None for b in batches):
        return {"stress": None, "stress_mask": None}
    stress, mask = [], []
    for b in batches:
        S = b.n_structures
        if b.stress is None:
            stress.append(b.cell.new_full((S, 3, 3), float("nan")))
            mask.append(torch.zeros(S, dtype=torch.bool, device=b.cell.device))
        else:
            stress.append(b.stress)
            mask.append(b.stress_mask)
    return {"stress": torch.cat(stress), "stress_mask": torch.cat(mask)}


def collate(graphs: list[Graph]) -> Batch:
    """Concatenate graphs of any sizes into one :class:`Batch`."""
    if not graphs:
        raise ValueError("cannot collate an empty list of graphs")
    counts = torch.tensor([g.positions.shape[0] for g in graphs], dtype=torch.long)
    ptr = torch.zeros(len(graphs) + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(counts, 0)
    edge_index = torch.cat([g.edge_index + ptr[s] for s, g in enumerate(graphs)], dim=1)
    with_stress = any(g.has_stress for g in graphs)
    return Batch(
        positions=torch.cat([g.positions for g in graphs]),
        numbers=torch.cat([g.numbers for g in graphs]),
        batch=torch.repeat_interleave(torch.arange(len(graphs)), counts),
        ptr=ptr,
        cell=torch.stack([g.cell for g in graphs]),
        pbc=torch.stack([g.pbc for g in graphs]),
        edge_index=edge_index,
        edge_shift=torch.cat([g.edge_shift for g in graphs]),
        energy=torch.stack([g.energy for g in graphs]),
        forces=torch.cat([g.forces for g in graphs]),
        energy_mask=torch.tensor([g.has_energy for g in graphs]),
        forces_mask=torch.tensor([g.has_forces for g in graphs]),
        fixed=torch.cat([g.fixed for g in graphs]),
        frame_id=torch.tensor([g.frame_id for g in graphs], dtype=torch.long),
        stress=_stack_stress(graphs) if with_stress else None,
        stress_mask=torch.tensor([g.has_stress for g in graphs]) if with_stress else None,
        any_energy=any(g.has_energy for g in graphs),
        any_forces=any(g.has_forces for g in graphs),
        any_stress=with_stress,
        force_atoms=torch.cat(
            [
                torch.arange(int(ptr[s]), int(ptr[s + 1]), dtype=torch.long)
                for s, g in enumerate(graphs)
                if g.has_forces
            ]
            or [torch.zeros(0, dtype=torch.long)]
        ),
    )


def _stack_stress(graphs: list[Graph]) -> torch.Tensor:
    """[S, 3, 3] stress labels, NaN where a structure has none."""
    like = graphs[0].positions
    nan = torch.full((3, 3), float("nan"), dtype=like.dtype)
    return torch.stack([g.stress if g.stress is not None else nan for g in graphs])


def edge_vectors(batch: Batch, select: torch.Tensor | None = None) -> torch.Tensor:
    """Edge vectors r_j - r_i (+ periodic shift), [E, 3], differentiable w.r.t. positions;
    ``select`` (bool [E]) keeps only some edges."""
    i, j = batch.edge_index
    shift = batch.edge_shift
    if select is not None:
        i, j, shift = i[select], j[select], shift[select]
    vec = batch.positions[j] - batch.positions[i]
    if shift.numel():
        cell = batch.cell[batch.batch[i]]
        vec = vec + torch.einsum("ek,ekl->el", shift, cell)
    return vec


def frames_to_batch(
    frames: list[Frame], cutoff: float, skin: float = 0.0, dtype: torch.dtype = torch.float32
) -> Batch:
    """Convenience: build graphs and collate them."""
    return collate([Graph.from_frame(f, cutoff, skin, dtype) for f in frames])


def scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Sum ``values`` (first dim) into ``size`` bins given by ``index``."""
    out = values.new_zeros((size, *values.shape[1:]))
    return out.index_add(0, index, values)
