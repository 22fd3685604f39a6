"""The log-linear masking schedule with BD3-LM's clipped bounds and its data-driven search.

Design choices:
- Mask probability is t (log-linear schedule); the NELBO weight of a masked token is 1/t.
- One t per block, antithetic: with G blocks in the whole batch, block g draws t from its own
  stratum [g/G, (g+1)/G) of [0, 1), mapped onto [beta, omega]. Blocks have a per-example size
  under mixed-scale training, so blocks are counted over the batch, not per row.
- Clipped bounds [beta, omega] (BD3-LM's ``sampling_eps_min/max``): t is drawn in them, and
  (``resample``) a block whose realised masked fraction falls outside a bound that is not the
  default (1e-3 below, 1 above) is drawn again, as BD3-LM does.
- The search tries a grid of intervals and keeps the one whose per-block loss has the least
  variance on validation batches; reported NELBO always uses the unclipped (1e-3, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_EPS_MIN = 1e-3
DEFAULT_EPS_MAX = 1.0
MAX_RESAMPLE_TRIES = 100


def block_ids(block_sizes: Tensor, seq_len: int) -> Tensor:
    """(B,) block sizes -> (B, L) index of each token's block, numbered over the whole batch."""
    n_blocks = seq_len // block_sizes  # (B,)
    offsets = torch.cumsum(n_blocks, 0) - n_blocks  # (B,) first global id of each row
    pos = torch.arange(seq_len, device=block_sizes.device)
    return offsets[:, None] + pos[None, :] // block_sizes[:, None]  # (B, L)


def sample_t(
    block_sizes: Tensor,
    seq_len: int,
    eps_min: float = DEFAULT_EPS_MIN,
    eps_max: float = DEFAULT_EPS_MAX,
    antithetic: bool = True,
) -> Tensor:
    """Per-token t (B, L), constant within each block, in [eps_min, eps_max]."""
    gid = block_ids(block_sizes, seq_len)  # (B, L)
    n = int(gid.max().item()) + 1
    u = torch.rand(n, device=block_sizes.device)
    if antithetic:
        u = (u / n + torch.arange(n, device=u.device) / n) % 1
    t_block = eps_min + (eps_max - eps_min) * u  # (G,)
    return t_block[gid]


def q_xt(
    x0: Tensor,
    t: Tensor,
    block_sizes: Tensor,
    mask_id: int,
    eps_min: float = DEFAULT_EPS_MIN,
    eps_max: float = DEFAULT_EPS_MAX,
    resample: bool = True,
) -> Tensor:
    """Forward process: mask each token independently with probability t (eq. 3)."""
    move = torch.rand(x0.shape, device=x0.device) < t
    check_min, check_max = eps_min > DEFAULT_EPS_MIN, eps_max < DEFAULT_EPS_MAX
    if resample and (check_min or check_max):
        gid = block_ids(block_sizes, x0.shape[1])
        sizes = torch.bincount(gid.flatten()).float()  # (G,)
        for _ in range(MAX_RESAMPLE_TRIES):  # bounds a block size cannot meet would loop forever
            frac = torch.bincount(gid.flatten(), weights=move.flatten().float()) / sizes
            bad = torch.zeros_like(frac, dtype=torch.bool)
            if check_min:
                bad |= frac < eps_min
            if check_max:
                bad |= frac > eps_max
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
