"""Random displacement fields for the physics terms (owns sampling, centring and the skin rule).

Per structure: ``u_i ~ Uniform[−1, 1)³`` for every atom, zero on fixed atoms (and on atoms not
selected when ``local_fraction < 1``), minus the mean over the displaced atoms of that structure
(scatter by structure index), times δ. Two fields, ``d1`` (A → C) and ``d2`` (A → B).

Two samplers:

- :func:`frame_uniform` (default): a counter-based hash of
  ``(seed, step, frame_id, atom, coordinate, stream)``. The field of a frame does not depend on
  the device, the DDP rank, the batch size or the other frames in the batch, so ``k`` ranks and
  one process on the union draw identical fields. Its only state is the step counter.
- a ``torch.Generator`` stream (``generator=``): one draw for the whole batch; its state is saved
  and restored with the owner's ``state_dict``.
"""

from __future__ import annotations

import math

import torch

from piwsl.data.batch import Batch, scatter_sum
from piwsl.errors import ConfigError

_M32 = 0xFFFFFFFF
_STREAMS = 4  # 0: d1, 1: d2, 2: local selection, 3: spare


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x·c) mod 2³² for int64 ``x`` in [0, 2³²) without int64 overflow."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (Wellons' lowbias32) on int64 tensors holding values in [0, 2³²)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _fold(h: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Mix a (≤ 64-bit, non-negative) key into the hash state ``h``.

    A Python ``int`` key stays on the host (no tensor is created, nothing is copied to a GPU).
    """
    h = hash32((h ^ (value & _M32)) & _M32)
    return hash32((h ^ ((value >> 32) & _M32) ^ 0x9E3779B9) & _M32)


def structure_keys(batch: Batch, seed: int, step: int) -> torch.Tensor:
    """Per structure, a 32-bit hash of (seed, step, frame_id), int64 [S] on the batch's device."""
    device = batch.positions.device
    h = torch.zeros(batch.n_structures, dtype=torch.long, device=device)
    return _fold(_fold(_fold(h, int(seed)), int(step)), batch.frame_id.to(device))


def frame_uniform(
    batch: Batch,
    seed: int,
    step: int,
    stream: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Uniform[−1, 1) values, a deterministic function of (seed, step, frame_id, atom, xyz, stream).

    ``atom`` is the index of the atom inside its structure, so the values of a frame are the same
    in any batch. Returns [N, 3] for one ``stream``, or [N, 3, 4] for all streams at once.
    """
    device = batch.positions.device
    n = batch.positions.shape[0]
    h = structure_keys(batch, seed, step)  # per structure (S hashes, not N)
    local = torch.arange(n, device=device) - batch.ptr.to(device)[batch.batch]
    streams = (
        torch.arange(_STREAMS, device=device)
        if stream is None
        else torch.tensor([stream], device=device)
    )
    counter = (local.view(n, 1, 1) * 3 + torch.arange(3, device=device).view(1, 3, 1)) * (
        _STREAMS
    ) + streams.view(1, 1, -1)
    bits = hash32((h[batch.batch].view(n, 1, 1) ^ counter) & _M32)
    bits = hash32(bits ^ 0x5BD1E995)  # a second round decorrelates neighbouring counters
    values = (bits.to(torch.float64) * 2.0**-31 - 1.0).to(dtype)
    return values if stream is None else values[..., 0]


def centre(u: torch.Tensor, batch: Batch, movable: torch.Tensor) -> torch.Tensor:
    """Zero ``u`` on non-movable atoms and subtract the per-structure mean over movable atoms."""
    S = batch.n_structures
    w = movable.to(u.dtype).unsqueeze(1)
    u = u * w
    count = scatter_sum(w, batch.batch, S).clamp_min(1.0)
    mean = scatter_sum(u, batch.batch, S) / count
    return (u - mean[batch.batch]) * w


def sample_displacements(
    batch: Batch,
    scale: float,
    *,
    seed: int = 0,
    step: int = 0,
    local_fraction: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Displacement fields ``(d1, d2)`` [N, 3] in Å (batch dtype), constants (no gradient).

    ``generator`` given: drawn from it (one stream for the whole batch); otherwise from
    :func:`frame_uniform` with ``(seed, step)``. Each displaced component before centring lies in
    [−δ, δ); after centring in (−2δ, 2δ), and ``|d_i − d_j|`` per component < 2δ.
    """
    if not scale > 0:
        raise ConfigError(f"perturbation_scale must be positive, got {scale} Å")
    if not 0 < local_fraction <= 1:
        raise ConfigError(f"local_fraction must lie in (0, 1], got {local_fraction}")
    dtype = batch.positions.dtype
    device = batch.positions.device
    n = batch.positions.shape[0]
    movable = ~batch.fixed.to(device)
    if generator is not None:
        draw = torch.rand((3, n, 3), generator=generator, dtype=torch.float64, device="cpu")
        draw = (2.0 * draw - 1.0).to(device=device)
        u, v, pick = draw[0], draw[1], draw[2, :, 0] * 0.5 + 0.5
    else:
        draw = frame_uniform(batch, seed, step)
        u, v, pick = draw[..., 0], draw[..., 1], draw[:, 0, 2] * 0.5 + 0.5
    if local_fraction < 1.0:
        movable = movable & (pick < local_fraction)
    d1 = centre(u, batch, movable) * scale
    d2 = centre(v, batch, movable) * scale
    return d1.to(dtype).detach(), d2.to(dtype).detach()


def required_skin(perturbation_scale: float) -> float:
    """Smallest neighbour-list skin (Å) for displaced copies to reuse A's list: 2√3·δ.

    Pair distances change by at most ``|d_i − d_j| < 2√3·δ`` (each component of ``u_i − u_j`` lies
    in (−2, 2); the mean cancels in the difference). A pair further apart than ``cutoff + skin``
    at A therefore stays beyond the cutoff in B and C when ``skin ≥ 2√3·δ``.
    """
    return 2.0 * math.sqrt(3.0) * perturbation_scale


def check_skin(skin: float, perturbation_scale: float, cutoff: float | None = None) -> None:
    """Raise :class:`ConfigError` if the neighbour-list skin cannot cover the displacements."""
    need = required_skin(perturbation_scale)
    if skin + 1e-12 < need:
        where = f" (cutoff {cutoff} Å)" if cutoff is not None else ""
        raise ConfigError(
            f"neighbour-list skin {skin} Å is too small for perturbation_scale δ = "
            f"{perturbation_scale} Å{where}: displaced copies reuse the list built at A and pair "
            f"distances change by up to 2√3·δ = {need:.4f} Å. Set the data skin to at least "
            f"{need:.4f} Å (or reduce perturbation_scale)."
        )


def missing_pairs(batch: Batch, positions: torch.Tensor, cutoff: float) -> int:
    """Number of pairs closer than ``cutoff`` at ``positions`` that ``batch``'s list lacks.

    A one-off check (numpy, per structure) that displaced copies stay covered by the neighbour
    list built at A; nonzero means the skin is too small for the displacements.
    """
    from piwsl.data.neighbors import neighbor_list

    pos = positions.detach().cpu().double().numpy()
    cells = batch.cell.detach().cpu().double().numpy()
    pbc = batch.pbc.cpu().numpy()
    ptr = batch.ptr.cpu().tolist()
    edges = batch.edge_index.cpu()
    shifts = batch.edge_shift.cpu().round().long()
    owner = batch.batch.cpu()[edges[0]]
    missing = 0
    for s in range(batch.n_structures):
        lo, hi = ptr[s], ptr[s + 1]
        sel = owner == s
        have = {
            (int(i) - lo, int(j) - lo, *map(int, sh))
            for i, j, sh in zip(edges[0, sel], edges[1, sel], shifts[sel], strict=True)
        }
        idx, sh = neighbor_list(pos[lo:hi], cells[s], pbc[s], cutoff)
        need = {(int(i), int(j), *map(int, k)) for i, j, k in zip(idx[0], idx[1], sh, strict=True)}
        missing += len(need - have)
    return missing
