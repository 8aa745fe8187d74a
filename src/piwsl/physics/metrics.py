"""Non-conservativeness of a force field: the curl of its forces (for direct-force models).

Two estimates of the same quantity, averaged over random planes (p, q) per structure:

- :func:`force_curl`: ``qᵀ(J − Jᵀ)p`` exactly, with J = ∂F/∂R from two reverse-mode products
  (``∇_R(q·F)·p − ∇_R(p·F)·q``), in eV/Å².
- :func:`circulation`: the work ``W = ∮ F·dR`` around a small circle ``R(t) = R + a(p cos t +
  q sin t)`` (trapezoid rule on ``n_points`` points, exact for trigonometric polynomials below
  that degree), reported as ``W`` in meV per loop and as ``W/(πa²)`` in eV/Å², which tends to
  ``qᵀ(J − Jᵀ)p`` as a → 0.

p and q are random unit vectors in the 3n-dimensional configuration space of each structure
(orthonormal, mean-centred so they carry no rigid translation, zero on fixed atoms). Both vanish for
conservative models (to round-off). The loop points reuse A's neighbour list, so the radius must
stay below half the data skin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from piwsl.data.batch import Batch, scatter_sum
from piwsl.physics.displacements import centre


def _per_structure(values: torch.Tensor, batch: Batch) -> torch.Tensor:
    return scatter_sum(values.sum(-1).to(torch.float64), batch.batch, batch.n_structures)


def random_planes(
    batch: Batch, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` orthonormal pairs (p, q), each [n, N, 3], unit norm per structure."""
    N = batch.positions.shape[0]
    dtype = batch.positions.dtype
    movable = ~batch.fixed
    raw = torch.randn((2, n, N, 3), generator=generator, dtype=torch.float64).to(dtype)
    ps, qs = [], []
    for k in range(n):
        p = centre(raw[0, k], batch, movable)
        q = centre(raw[1, k], batch, movable)
        p = p / _per_structure(p * p, batch).sqrt().clamp_min(1e-30)[batch.batch].unsqueeze(1).to(
            dtype
        )
        q = q - _per_structure(p * q, batch)[batch.batch].unsqueeze(1).to(dtype) * p
        q = q / _per_structure(q * q, batch).sqrt().clamp_min(1e-30)[batch.batch].unsqueeze(1).to(
            dtype
        )
        ps.append(p)
        qs.append(q)
    return torch.stack(ps), torch.stack(qs)


def force_curl(model, batch: Batch, n_planes: int = 4, seed: int = 0) -> torch.Tensor:
    """Mean over ``n_planes`` random planes of |qᵀ(J − Jᵀ)p| per structure, float64 [S], eV/Å².

    Exact (autograd), cheap (two backward passes per plane), zero for conservative models.
    """
    generator = torch.Generator().manual_seed(seed)
    ps, qs = random_planes(batch, n_planes, generator)
    total = torch.zeros(batch.n_structures, dtype=torch.float64)
    with torch.enable_grad():
        positions = batch.positions.detach().requires_grad_(True)
        forces = model(batch.with_positions(positions), create_graph=True)["forces"]
        for k in range(n_planes):
            p, q = ps[k], qs[k]
            (gq,) = torch.autograd.grad((q * forces).sum(), positions, retain_graph=True)
            (gp,) = torch.autograd.grad((p * forces).sum(), positions, retain_graph=True)
            # ∇(q·F)·p = qᵀJp, ∇(p·F)·q = pᵀJq = qᵀJᵀp
            total += (_per_structure(gq * p, batch) - _per_structure(gp * q, batch)).abs()
    return total / n_planes


@dataclass
class Circulation:
    work_mev: torch.Tensor  # float64 [S]: mean |∮F·dR| per loop, meV
    curl_ev_a2: torch.Tensor  # float64 [S]: mean |∮F·dR| / (π a²), eV/Å²
    radius: float  # Å

    def mean(self) -> dict[str, float]:
        return {
            "circulation_meV": float(self.work_mev.mean()),
            "curl_eV_per_A2": float(self.curl_ev_a2.mean()),
        }


@torch.no_grad()
def circulation(
    model,
    batch: Batch,
    radius: float = 0.01,
    n_loops: int = 4,
    n_points: int = 16,
    seed: int = 0,
) -> Circulation:
    """Work of the predicted forces around ``n_loops`` random circles of ``radius`` Å.

    All ``n_points`` points of a loop are evaluated in one pass over ``batch.repeat``. For a
    conservative model the result is zero up to round-off; for direct forces it measures how far
    the force head is from being a gradient.
    """
    generator = torch.Generator().manual_seed(seed)
    ps, qs = random_planes(batch, n_loops, generator)
    S = batch.n_structures
    N = batch.positions.shape[0]
    t = torch.arange(n_points, dtype=torch.float64) * (2.0 * math.pi / n_points)
    work = torch.zeros(S, dtype=torch.float64)
    pos = batch.positions.detach()
    for k in range(n_loops):
        p, q = ps[k], qs[k]
        points = [pos + radius * (p * math.cos(float(a)) + q * math.sin(float(a))) for a in t]
        tangents = [radius * (-p * math.sin(float(a)) + q * math.cos(float(a))) for a in t]
        out = model(batch.repeat(points), create_graph=False)
        forces = out["forces"].detach()
        w = torch.zeros(S, dtype=torch.float64)
        for m in range(n_points):
            w += _per_structure(forces[m * N : (m + 1) * N] * tangents[m], batch)
        work += (w * (2.0 * math.pi / n_points)).abs()
    work = work / n_loops
    return Circulation(
        work_mev=work * 1e3, curl_ev_a2=work / (math.pi * radius**2), radius=float(radius)
    )
