"""Small building blocks shared by the built-in models: radial bases, cutoffs, activations."""

from __future__ import annotations

import math

import torch
from torch import nn


class CosineCutoff(nn.Module):
    """f(r) = ½(cos(πr/rc) + 1) for r < rc, else 0 (smooth, so skin edges contribute nothing)."""

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        f = 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0)
        return f * (r < self.cutoff).to(r.dtype)


class GaussianRBF(nn.Module):
    """exp(−γ (r − μ_k)²) on ``n`` centres evenly spaced in [0, rc] (SchNet)."""

    def __init__(self, n: int, cutoff: float) -> None:
        super().__init__()
        centres = torch.linspace(0.0, cutoff, n)
        self.register_buffer("centres", centres)
        width = centres[1] - centres[0] if n > 1 else torch.tensor(cutoff)
        self.gamma = float(0.5 / width**2)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (r.unsqueeze(-1) - self.centres.to(r.dtype)) ** 2)


class BesselRBF(nn.Module):
    """sin(kπr/rc)/r, k = 1..n (PaiNN, DimeNet)."""

    def __init__(self, n: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.arange(1, n + 1) * (math.pi / cutoff))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return torch.sin(self.freqs.to(r.dtype) * r) / r.clamp_min(1e-9)


class ShiftedSoftplus(nn.Module):
    """softplus(x) − log 2 (SchNet's activation; smooth, so forces and Hessians are smooth)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x) - math.log(2.0)


def safe_norm(vec: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """‖v‖ with a finite gradient at v = 0 (and finite second derivatives)."""
    return torch.sqrt((vec * vec).sum(dim=dim) + eps)
