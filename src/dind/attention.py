"""Attention masks for block diffusion: the one copy in dind.

Vectorized training (BD3-LM) feeds the concatenation x_t ⊕ x_0 of length 2L through the
model once. With q/kv index i in [0, 2L), "clean" means i >= L and block(i) = (i mod L) // B.
The mask is the OR of three parts:

- M_BD  (block-diagonal):       same block and same half;
- M_OBC (offset block-causal):  q in x_t, kv in x_0, block(q) > block(kv);
- M_BC  (block-causal):         q and kv both in x_0, block(q) >= block(kv).

With B = L the x_t half sees only itself: full-sequence masked diffusion (MDLM). Mixed-scale
training draws B per example, so every function here takes either one block size or a
(batch,) tensor of them; the weights never depend on B.

SDPA takes the dense boolean mask (True = may attend). FlexAttention (CUDA) takes the same
predicate as a ``mask_mod`` and skips the blocks it rules out entirely.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from dind.devices import to_device


def _block_diff_predicate(q_idx: Tensor, kv_idx: Tensor, seq_len: int, block_size) -> Tensor:
    """The mask as an elementwise predicate; broadcasts over q_idx, kv_idx and block_size."""
    q_clean = q_idx >= seq_len
    kv_clean = kv_idx >= seq_len
    q_block = (q_idx % seq_len) // block_size
    kv_block = (kv_idx % seq_len) // block_size
    block_diagonal = (q_block == kv_block) & (q_clean == kv_clean)
    offset_block_causal = (q_block > kv_block) & kv_clean & ~q_clean
    block_causal = (q_block >= kv_block) & kv_clean & q_clean
    return block_diagonal | offset_block_causal | block_causal


def block_diff_mask(
    seq_len: int, block_size: int | Tensor, device: torch.device | str | None = None
) -> Tensor:
    """Boolean mask of the x_t ⊕ x_0 training input, True where attention is allowed.

    block_size: an int -> (2L, 2L); a (B,) tensor (one block size per example) -> (B, 2L, 2L).
    """
    idx = torch.arange(2 * seq_len, device=device)
    q_idx, kv_idx = idx[:, None], idx[None, :]  # (2L, 1), (1, 2L)
    if isinstance(block_size, Tensor):
        bs = block_size.to(dtype=torch.long)
        bs = (bs if device is None else to_device(bs, device)).view(-1, 1, 1)  # (B, 1, 1)
        return _block_diff_predicate(q_idx[None], kv_idx[None], seq_len, bs)  # (B, 2L, 2L)
    return _block_diff_predicate(q_idx, kv_idx, seq_len, block_size)  # (2L, 2L)


def block_causal_mask(
    end: int,
    block_size: int,
    device: torch.device | str | None = None,
    start: int = 0,
    first_row: int | None = None,
) -> Tensor:
    """(T, T) M_BC over positions [start, end), T = end - start: a token sees its own block and
    every earlier one, blocks counted from position 0 (the x_0 corner of ``block_diff_mask`` of
    length ``end``, without building the rest; a window may start inside a block). With
    ``first_row``, only the rows of the queries [first_row, end): (end - first_row, T)."""
    idx = end + torch.arange(start, end, device=device)  # x_0 indices in x_t ⊕ x_0
    rows = idx if first_row is None else end + torch.arange(first_row, end, device=device)
    return _block_diff_predicate(rows[:, None], idx[None, :], end, block_size)


def causal_mask(seq_len: int, device: torch.device | str | None = None) -> Tensor:
    """(L, L) lower-triangular mask for the autoregressive objective."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def flex_block_diff_mask(seq_len: int, block_size: int | Tensor, device: torch.device | str):
    """The same mask as a FlexAttention ``BlockMask`` (CUDA); per-example block sizes work.

    The mask depends only on (L, block size, device), so each is built once per process
    (``create_block_mask`` evaluates the predicate everywhere: far too slow for every training
    micro-step). A batch of mixed block sizes gathers its rows from those cached masks; keep
    ``block_size`` on the CPU to do it without waiting for the device (the sizes are read on
    the host, the row index copied to the device without a sync)."""
    if not isinstance(block_size, Tensor):
        return _flex_single(seq_len, int(block_size), _device_key(device))
    from torch.nn.attention.flex_attention import BlockMask

    host = block_size.cpu()  # no sync when the caller passes CPU sizes (training does)
    sizes = torch.unique(host).tolist()  # sorted
    masks = [_flex_single(seq_len, b, _device_key(device)) for b in sizes]
    row = to_device(torch.searchsorted(torch.tensor(sizes), host), device)
    bs = to_device(host.to(dtype=torch.long), device)

    def mask_mod(b, h, q_idx, kv_idx):
        return _block_diff_predicate(q_idx, kv_idx, seq_len, bs[b])

    def rows(name: str) -> Tensor | None:
        parts = [getattr(m, name) for m in masks]
        return None if parts[0] is None else torch.cat(parts)[row]  # (B, 1, ...)

    return BlockMask.from_kv_blocks(
        rows("kv_num_blocks"), rows("kv_indices"), rows("full_kv_num_blocks"),
        rows("full_kv_indices"), BLOCK_SIZE=masks[0].BLOCK_SIZE, mask_mod=mask_mod,
        seq_lengths=masks[0].seq_lengths,
    )  # fmt: skip


def flex_causal_mask(seq_len: int, device: torch.device | str):
    """The causal ``BlockMask`` of length ``seq_len``, built once per (length, device)."""
    return _flex_causal(seq_len, _device_key(device))


def _device_key(device: torch.device | str) -> str:
    """A cache key that names the device: "cuda" means the current CUDA device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


@functools.lru_cache(maxsize=64)
def _flex_single(seq_len: int, block_size: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return _block_diff_predicate(q_idx, kv_idx, seq_len, block_size)

    return create_block_mask(mask_mod, None, None, 2 * seq_len, 2 * seq_len, device=device)


@functools.lru_cache(maxsize=16)
def _flex_causal(seq_len: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        lambda b, h, q, kv: q >= kv, None, None, seq_len, seq_len, device=device
    )
