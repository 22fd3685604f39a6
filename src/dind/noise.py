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

from dind.devices import to_device

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


def _per_block(bound: Bound, host_sizes: Tensor, seq_len: int, device=None) -> Bound:
    """A per-row bound repeated for each of the row's blocks: (G,), computed on the host from
    the CPU block sizes, then on ``device`` (default: stays on the CPU)."""
    if isinstance(bound, Tensor):
        per_block = bound.cpu().repeat_interleave(seq_len // host_sizes)
        return per_block if device is None else to_device(per_block, device)
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
    device: torch.device | str | None = None,
) -> Tensor:
    """Per-token t (B, L), constant within each block, in each row's [eps_min, eps_max], on
    ``device`` (default: the block sizes'). Everything that depends only on the block sizes
    is worked out on the host: with the sizes on the CPU, nothing waits for the device."""
    device = block_sizes.device if device is None else torch.device(device)
    host = block_sizes.cpu()
    n_blocks = seq_len // host  # (B,)
    n = int(n_blocks.sum())
    u = torch.rand(n, device=device)
    if antithetic:
        size_of_block = host.repeat_interleave(n_blocks)  # (G,)
        for size in torch.unique(host).tolist():  # stratify each size group on its own
            group = torch.nonzero(size_of_block == size).flatten()
            k = len(group)
            group = to_device(group, device)
            u[group] = (u[group] / k + torch.arange(k, device=device) / k) % 1
    lo = _per_block(eps_min, host, seq_len, device)
    hi = _per_block(eps_max, host, seq_len, device)
    t_block = lo + (hi - lo) * u  # (G,)
    return t_block[block_ids(to_device(host, device), seq_len)]


def q_xt(
    x0: Tensor,
    t: Tensor,
    block_sizes: Tensor,
    mask_id: int,
    eps_min: Bound = DEFAULT_EPS_MIN,
    eps_max: Bound = DEFAULT_EPS_MAX,
    resample: bool = True,
) -> Tensor:
    """Forward process: mask each token independently with probability t (eq. 3).

    The block sizes are read on the host (no wait for the device when they are on the CPU);
    a resampled draw waits once per try, to learn whether a block must be drawn again."""
    device = x0.device
    move = torch.rand(x0.shape, device=device) < t
    L = x0.shape[1]
    host = block_sizes.cpu()
    lo, hi = _per_block(eps_min, host, L), _per_block(eps_max, host, L)
    check_min, check_max = lo > DEFAULT_EPS_MIN, hi < DEFAULT_EPS_MAX  # bools, or (G,) each
    if resample and bool(torch.as_tensor(check_min | check_max).any()):
        lo, hi, check_min, check_max = (
            to_device(v, device) if isinstance(v, Tensor) else v
            for v in (lo, hi, check_min, check_max)
        )
        gid = block_ids(to_device(host, device), L)  # (B, L)
        flat = gid.flatten()
        sizes = to_device(host.repeat_interleave(L // host).float(), device)  # (G,) tokens each
        for _ in range(MAX_RESAMPLE_TRIES):  # bounds a block size cannot meet would loop forever
            masked = torch.zeros(len(sizes), device=device).index_add_(
                0, flat, move.flatten().float()
            )
            frac = masked / sizes  # (G,) masked fraction of each block
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
