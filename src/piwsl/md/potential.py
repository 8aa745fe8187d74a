"""A piwsl model evaluated on many structures at once, for batched MD.

:class:`BatchedPotential` holds one neighbour list per replica, built with a skin and reused while
no atom of that replica has moved more than ``skin / 2`` since it was built (the models' smooth
cutoff makes a reused list give the same result as a fresh one), and evaluates every active replica
in one model call. A model trained on top of a prior (Δ-learning) gets the prior's energy and forces
added per replica (the prior is a program such as GFN2-xTB: one call per replica and step, each
continuing from the replica's previous step, see :meth:`piwsl.priors.base.Prior.session`). Time
spent in the model and in the prior is accumulated separately (s).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from ase import Atoms

from piwsl.data.batch import Batch, Graph, collate
from piwsl.data.frames import Frame
from piwsl.evaluation.predict import check_model_knows, inference_model
from piwsl.priors.base import Prior


class BatchedPotential:
    """Energies (eV) and forces (eV/Å) of R structures per call (see the module docstring)."""

    def __init__(
        self,
        model,
        device: str | torch.device = "cpu",
        skin: float = 0.5,
        dtype: torch.dtype | None = None,
        allow_prior_mismatch: bool = False,
        compile: bool | str = False,
    ) -> None:
        """``compile``: run the model's energy and forces as one compiled graph (True: with
        inductor; a string: that ``torch.compile`` backend, e.g. ``"aot_eager"`` in tests)."""
        if not skin >= 0:
            raise ValueError(f"skin must be ≥ 0 Å, got {skin}")
        ready = inference_model(model, device, dtype, allow_prior_mismatch)
        self.model, self.device, self.dtype = ready.model, ready.device, ready.dtype
        if compile:  # the model's energy and forces as one compiled graph (piwsl.models.compiled)
            from piwsl.models.compiled import CompiledForceField

            backend = compile if isinstance(compile, str) else "inductor"
            self.model = CompiledForceField(ready.model, backend=backend, inference=True)
        self.source, self.skin = ready.source, float(skin)
        self.prior: Prior | None = ready.prior
        self.model_s = 0.0
        self.prior_s = 0.0
        self.n_calls = 0
        self.n_neighbor_builds = 0
        self._templates: list[Atoms] = []
        self._graphs: list[Graph | None] = []
        self._built_at: list[np.ndarray | None] = []
        self._batch: Batch | None = None
        self._batch_members: tuple[int, ...] = ()
        self._prior_sessions: list = []

    @property
    def cutoff(self) -> float:
        return float(self.model.cutoff)

    def set_structures(self, templates: list[Atoms]) -> None:
        """The replicas (numbers, cell, pbc) that later calls give positions for."""
        frames = [Frame.from_atoms(t, "<MD replica>", k) for k, t in enumerate(templates)]
        check_model_knows(self.model, frames)
        self._templates = list(templates)
        self._graphs = [None] * len(templates)
        self._built_at = [None] * len(templates)
        self._batch, self._batch_members = None, ()
        # one prior session per replica: tblite restarts each SCF from the replica's last step
        self._prior_sessions = [self.prior.session() for _ in templates] if self.prior else []

    def _refresh(self, positions: list[np.ndarray], members: tuple[int, ...]) -> bool:
        """Rebuild the neighbour lists that went stale; True when the batch must be re-collated."""
        rebuilt = members != self._batch_members
        for k in members:
            ref = self._built_at[k]
            fresh = ref is not None and self.skin > 0
            if fresh and np.sqrt(((positions[k] - ref) ** 2).sum(1)).max() < 0.5 * self.skin:
                continue
            frame = Frame.from_atoms(self._templates[k], "<MD replica>", k, positions[k])
            self._graphs[k] = Graph.from_frame(frame, self.cutoff, self.skin, dtype=self.dtype)
            self._built_at[k] = positions[k].copy()
            self.n_neighbor_builds += 1
            rebuilt = True
        return rebuilt

    def __call__(
        self, positions: np.ndarray, ptr: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Energies [R] (NaN for inactive replicas) and forces [M, 3] (0 for inactive ones) at
        ``positions`` [M, 3] (Å; replica k owns rows ``ptr[k]:ptr[k+1]``)."""
        members = tuple(int(k) for k in np.flatnonzero(active))
        energies = np.full(len(ptr) - 1, np.nan)
        forces = np.zeros_like(positions, dtype=np.float64)
        if not members:
            return energies, forces
        per = [positions[ptr[k] : ptr[k + 1]] for k in range(len(ptr) - 1)]
        start = time.perf_counter()
        if self._refresh(per, members) or self._batch is None:
            self._batch = collate([self._graphs[k] for k in members]).to(
                device=self.device, dtype=self.dtype
            )
            self._batch_members = members
        rows = np.concatenate([np.arange(ptr[k], ptr[k + 1]) for k in members])
        pos = torch.as_tensor(positions[rows], dtype=self.dtype, device=self.device)
        with torch.no_grad():  # conservative forces re-enable grad inside the ForceField
            out = self.model(
                self._batch.with_positions(pos), compute_forces=True, create_graph=False
            )
        energies[list(members)] = out["energy"].detach().to("cpu", torch.float64).numpy()
        forces[rows] = out["forces"].detach().to("cpu", torch.float64).numpy()
        self.model_s += time.perf_counter() - start
        self.n_calls += 1
        if self.prior is not None:
            start = time.perf_counter()
            for k in members:
                e, f = self._prior_sessions[k](
                    Frame.from_atoms(self._templates[k], "<MD replica>", k, per[k])
                )
                energies[k] += e
                forces[ptr[k] : ptr[k + 1]] += f
            self.prior_s += time.perf_counter() - start
        return energies, forces
