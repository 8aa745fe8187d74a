"""The ASE calculator: a trained piwsl force field as ``ase.calculators.calculator.Calculator``.

Energies in eV, forces in eV/Å. The neighbour list (vesin, through :mod:`piwsl.data`) is rebuilt
on every call, or — with ``skin > 0`` — reused while no atom has moved more than ``skin / 2``
since it was built (and numbers, cell and pbc are unchanged); the models' smooth cutoff makes the
reused list give the same result as a fresh one.

A model trained on top of a prior (Δ-learning, :mod:`piwsl.priors`) is run as the sum
``E = E_prior + E_θ``, ``F = F_prior + F_θ``: the calculator rebuilds the recorded prior and
refuses to start when its program is missing or differs from the recorded version/settings
(``allow_prior_mismatch=True`` runs it anyway, with a warning).

Geometry sanity: a structure with two atoms closer than ``min_distance`` (default
:data:`~piwsl.data.checks.MIN_DISTANCE`, 0.5 Å) is evaluated, but with a
:class:`GeometryWarning` naming the atoms and their distance — the model never saw such a
structure, and its numbers there mean nothing (once per calculator; ``n_close_calls`` counts).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from piwsl.data.batch import Batch, Graph, collate, edge_vectors
from piwsl.data.checks import MIN_DISTANCE
from piwsl.data.frames import Frame
from piwsl.evaluation.predict import check_model_knows, inference_model
from piwsl.priors.base import Prior


class GeometryWarning(UserWarning):
    """A structure outside anything a model can have been trained on (atoms nearly on top of
    each other)."""


def state_changes(old, atoms, tol: float = 1e-15) -> list[str]:
    """What differs between ``old`` and ``atoms`` (ASE ``system_changes`` names).

    The same test as ASE's :meth:`Calculator.check_state` — arrays equal within ``tol`` relative
    and absolute, as ``numpy.allclose(rtol=tol, atol=tol)`` — restricted to what a model reads
    (positions, numbers, cell, pbc), in a few vectorised operations: ASE's generic check costs
    ~0.5 ms per call, ~10 % of an MD step of a small molecule. The tolerance matters: integrators
    that re-set positions through a constraint (Nosé–Hoover with ``FixCom``) change them at the
    rounding level, which must not trigger a new evaluation.
    """
    if old is None or len(old) != len(atoms):
        return list(all_changes)

    def close(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.all(np.abs(a - b) <= tol + tol * np.abs(b)))

    changes = []
    if not close(old.positions, atoms.positions):
        changes.append("positions")
    if not np.array_equal(old.numbers, atoms.numbers):
        changes.append("numbers")
    if not close(old.cell.array, atoms.cell.array):
        changes.append("cell")
    if not np.array_equal(old.pbc, atoms.pbc):
        changes.append("pbc")
    return changes


class PiwslCalculator(Calculator):
    """ASE calculator for a piwsl model.

    Parameters
    ----------
    model:
        A model file written by piwsl (``piwsl train`` / :func:`piwsl.models.save_model`), a
        :class:`~piwsl.models.ForceField` or a bare :class:`~piwsl.models.EnergyModel`.
    device:
        ``"cpu"``, ``"cuda"``, … (default: CPU). The model is moved there.
    skin:
        Extra neighbour-list radius in Å; ``0`` rebuilds the list on every call.
    dtype:
        Run the model in this floating dtype (e.g. ``torch.float64`` for finite-difference checks
        or tight geometry optimisations); a copy of the model is converted, the caller's is left
        alone. Default: the model's own dtype.
    allow_prior_mismatch:
        Run a model whose recorded prior differs from the installed one (program version,
        settings) instead of raising :class:`~piwsl.errors.PriorError`.
    min_distance:
        Warn (:class:`GeometryWarning`) when two atoms are closer than this (Å); 0 disables it.
    """

    implemented_properties = ["energy", "free_energy", "forces"]  # noqa: RUF012 (ASE API)

    def __init__(
        self,
        model,
        device: str | torch.device = "cpu",
        skin: float = 0.0,
        dtype: torch.dtype | None = None,
        allow_prior_mismatch: bool = False,
        min_distance: float = MIN_DISTANCE,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not skin >= 0:
            raise ValueError(f"skin must be ≥ 0 Å, got {skin}")
        if not min_distance >= 0:
            raise ValueError(f"min_distance must be ≥ 0 Å, got {min_distance}")
        self.min_distance = float(min_distance)
        #: calls on structures with atoms closer than ``min_distance`` (warned about once)
        self.n_close_calls = 0
        ready = inference_model(model, device, dtype, allow_prior_mismatch, "<atoms>")
        self.model, self.device, self.dtype, self.source = (
            ready.model,
            ready.device,
            ready.dtype,
            ready.source,
        )
        self.skin = float(skin)
        #: the external prior the model was trained on top of (added to every result), or None
        self.prior: Prior | None = ready.prior
        self._batch: Batch | None = None
        self._ref_positions: np.ndarray | None = None
        self._ref_key: tuple | None = None
        #: number of neighbour-list builds so far (for diagnostics and tests)
        self.n_neighbor_builds = 0

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    def _get_batch(self, frame: Frame) -> Batch:
        key = (frame.numbers.tobytes(), frame.cell.tobytes(), frame.pbc.tobytes())
        positions = torch.as_tensor(frame.positions, dtype=self.dtype, device=self.device)
        if (
            self.skin > 0
            and self._batch is not None
            and self._ref_key == key
            and self._ref_positions is not None
            and self._ref_positions.shape == frame.positions.shape
        ):
            moved = np.linalg.norm(frame.positions - self._ref_positions, axis=1).max()
            if moved < 0.5 * self.skin:
                return self._batch.with_positions(positions)
        graph = Graph.from_frame(frame, self.cutoff, self.skin, dtype=self.dtype)
        self.n_neighbor_builds += 1
        batch = collate([graph]).to(device=self.device, dtype=self.dtype)
        if self.skin > 0:
            self._batch = batch
            self._ref_positions = frame.positions.copy()
            self._ref_key = key
        return batch

    def _check_distances(self, batch: Batch) -> None:
        """Warn once when two atoms are closer than ``min_distance`` (edges cover every pair
        within the cutoff, so every such pair is among them)."""
        if self.min_distance <= 0 or batch.edge_index.shape[1] == 0:
            return
        with torch.no_grad():
            lengths = torch.linalg.vector_norm(edge_vectors(batch), dim=1)
            k = int(torch.argmin(lengths))
        shortest = float(lengths[k])
        if shortest >= self.min_distance:
            return
        self.n_close_calls += 1
        if self.n_close_calls == 1:
            i, j = (int(x) for x in batch.edge_index[:, k])
            warnings.warn(
                f"atoms {i} and {j} are {shortest:.3f} Å apart (closer than {self.min_distance} "
                "Å): no model is trained on such structures, and its energy and forces there "
                "are meaningless. Check the structure (or its length unit); further such calls "
                "of this calculator are counted in n_close_calls, not warned about",
                GeometryWarning,
                stacklevel=4,
            )

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """ASE's state check on positions, numbers, cell and pbc, faster (:func:`state_changes`)."""
        return state_changes(self.atoms, atoms, tol)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        frame = Frame.from_atoms(self.atoms)
        check_model_knows(self.model, [frame])
        batch = self._get_batch(frame)
        self._check_distances(batch)
        # no graph through the parameters (a direct-force head runs ~20 % faster); conservative
        # forces still come from autograd: the ForceField re-enables grad for them
        with torch.no_grad():
            out = self.model(batch, compute_forces=True, create_graph=False)
        energy = float(out["energy"].detach().cpu().double()[0])
        forces = out["forces"].detach().cpu().double().numpy().copy()
        if self.prior is not None:
            prior_energy, prior_forces = self.prior.checked(frame)
            energy += prior_energy
            forces += prior_forces
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
