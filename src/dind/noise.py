"""The log-linear masking schedule with BD3-LM's clipped bounds and its data-driven search.

Design choices:
- Mask probability is t (log-linear schedule); the NELBO weight of a masked token is 1/t.
- One t per block, antithetic, stratified per block-size group: under mixed-scale training the
  rows of a batch have different block sizes, and the G_s blocks of the rows of size s draw t
  from their own strata [g/G_s, (g+1)/G_s) of [0, 1), mapped onto that size's interval. So the
  t of every group is uniform on its interval, whatever the other rows of the batch are (a
  single stratification over all blocks would pin a whole-sequence row, one block, to the
  stratum its position in the batch gives it). With one block size this is BD3-LM's draw.
- Clipped bounds [beta, omega] (BD3-LM's ``sampling_eps_min/max``), one interval per block size
  (``Intervals``): t is drawn in them, and (``resample``) a block whose realised masked fraction
  falls outside a bound that is not the default (1e-3 below, 1 above) is drawn again, as
  BD3-LM does.
- The search tries a grid of intervals and keeps the one whose per-block loss has the least
  variance on validation batches, for each block size on its own; reported NELBO always uses
  the unclipped (1e-3, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_EPS_MIN = 1e-3
DEFAULT_EPS_MAX = 1.0
MAX_RESAMPLE_TRIES = 100

Intervals = dict[int, tuple[float, float]]
"""Clipped noise interval (beta, omega) per block size."""
Bound = float | Tensor
"""A bound for the whole batch, or one per row (B,)."""


def default_interval(block_size: int, seq_len: int, eps_min: float, eps_max: float):
    """A block size's starting interval: whole-sequence rows (B = L) unclipped, the others the
    configured [eps_min, eps_max]."""
    return (DEFAULT_EPS_MIN, DEFAULT_EPS_MAX) if block_size == seq_len else (eps_min, eps_max)


def row_bounds(block_sizes: Tensor, intervals: Intervals) -> tuple[Bound, Bound]:
    """Each row's (beta, omega) from its block size: floats when the whole batch shares one
    interval (then the draw is exactly the single-size one), else (B,) tensors."""
    sizes = block_sizes.tolist()
    try:
        pairs = [intervals[b] for b in sizes]
    except KeyError as e:
        raise ValueError(f"no noise interval for block size {e}") from None
    if len(set(pairs)) == 1:
        return pairs[0]
    lo, hi = zip(*pairs, strict=True)
    return (torch.tensor(lo, device=block_sizes.device),
            torch.tensor(hi, device=block_sizes.device))  # fmt: skip


def _per_block(bound: Bound, block_sizes: Tensor, seq_len: int) -> Bound:
    """A per-row bound repeated for each of the row's blocks: (G,)."""
    if isinstance(bound, Tensor):
        return bound.repeat_interleave(seq_len // block_sizes)
    return bound


def block_ids(block_sizes: Tensor, seq_len: int) -> Tensor:
    """(B,) block sizes -> (B, L) index of each token's block, numbered over the whole batch."""
    n_blocks = seq_len // block_sizes  # (B,)
    offsets = torch.cumsum(n_blocks, 0) - n_blocks  # (B,) first global id of each row
    pos = torch.arange(seq_len, device=block_sizes.device)
    return offsets[:, None] + pos[None, :] // block_sizes[:, None]  # (B, L)


def sample_t(
    block_sizes: Tensor,
    seq_len: int,
    eps_min: Bound = DEFAULT_EPS_MIN,
    eps_max: Bound = DEFAULT_EPS_MAX,
    antithetic: bool = True,
) -> Tensor:
    """Per-token t (B, L), constant within each block, in each row's [eps_min, eps_max]."""
    gid = block_ids(block_sizes, seq_len)  # (B, L)
    n_blocks = seq_len // block_sizes  # (B,)
    n = int(n_blocks.sum())
    u = torch.rand(n, device=block_sizes.device)
    if antithetic:
        size_of_block = block_sizes.repeat_interleave(n_blocks)  # (G,)
        for size in torch.unique(block_sizes).tolist():  # stratify each size group on its own
            group = size_of_block == size
            k = int(group.sum())
            u[group] = (u[group] / k + torch.arange(k, device=u.device) / k) % 1
    lo = _per_block(eps_min, block_sizes, seq_len)
    hi = _per_block(eps_max, block_sizes, seq_len)
    t_block = lo + (hi - lo) * u  # (G,)
    return t_block[gid]


def q_xt(
    x0: Tensor,
    t: Tensor,
    block_sizes: Tensor,
    mask_id: int,
    eps_min: Bound = DEFAULT_EPS_MIN,
    eps_max: Bound = DEFAULT_EPS_MAX,
    resample: bool = True,
) -> Tensor:
    """Forward process: mask each token independently with probability t (eq. 3)."""
    move = torch.rand(x0.shape, device=x0.device) < t
    L = x0.shape[1]
    lo, hi = _per_block(eps_min, block_sizes, L), _per_block(eps_max, block_sizes, L)
    check_min, check_max = lo > DEFAULT_EPS_MIN, hi < DEFAULT_EPS_MAX  # bools, or (G,) each
    if resample and bool(torch.as_tensor(check_min | check_max).any()):
        gid = block_ids(block_sizes, L)
        sizes = torch.bincount(gid.flatten()).float()  # (G,)
        for _ in range(MAX_RESAMPLE_TRIES):  # bounds a block size cannot meet would loop forever
            frac = torch.bincount(gid.flatten(), weights=move.flatten().float()) / sizes
            # a bound that is the default is never enforced (BD3-LM)
            bad = ((frac < lo) & check_min) | ((frac > hi) & check_max)
            if not bad.any():
                break
            redraw = bad[gid]  # (B, L)
            move = torch.where(redraw, torch.rand(x0.shape, device=x0.device) < t, move)
    return torch.where(move, torch.full_like(x0, mask_id), x0)


def sigma_from_t(t: Tensor) -> Tensor:
    """Total noise sigma = -log(1 - t), capped where t = 1 (the time-conditioning input)."""
    return -torch.log1p(-t.clamp(max=1 - DEFAULT_EPS_MIN))


def clip_search_grid(widths: tuple[float, ...], delta: float) -> list[tuple[float, float]]:
    """Candidate (beta, omega): the unclipped interval plus, for each width w, [s, s + w] for
    s = 0, delta, 2 delta, ... with s + w <= 1 (bounds floored at 1e-3)."""
    grid = [(DEFAULT_EPS_MIN, DEFAULT_EPS_MAX)]
    for w in widths:
        k = 0
        while k * delta + w <= 1 + 1e-9:
            lo = max(round(k * delta, 6), DEFAULT_EPS_MIN)
            hi = min(round(k * delta + w, 6), 1.0)
            if (lo, hi) not in grid:
                grid.append((lo, hi))
            k += 1
    return grid
