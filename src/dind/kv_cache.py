"""A preallocated key/value cache for block-by-block sampling; the sampler owns it.

Clean blocks only ever attend to earlier clean blocks, so their keys and values are fixed
once the block is done. A call writes the keys and values of its T rows just past ``length``
and attends to ``[0, length + T)``; the caller then ``advance``s over the rows it keeps (the
finished blocks a block's first call carries ahead of the block: ``dind.denoise.BlockView``),
and the block's own rows are overwritten by the next call. Preallocation avoids re-copying
the prefix on every denoiser call.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        shape = (batch_size, n_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.length = 0
        self.max_len = max_len

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, T, hd) after the prefix; return keys/values [0, length + T)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} > {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Keep the last written ``n`` positions as clean context."""
        self.length += n

    def reset(self) -> None:
        self.length = 0


class RefreshCache:
    """Fast-dLLM's approximate cache for a bidirectional pass over a whole window (a
    refinement stage whose block spans it): a full pass keeps every position's keys and
    values; a partial pass recomputes only the positions ``rows`` (B, w), writes their keys
    and values over the kept ones and attends to all of them. Between full passes the other
    positions' keys and values are stale (computed when more of the window was masked): an
    approximation, which ``dind.denoise.BlockView`` refreshes every ``refresh`` calls."""

    def __init__(self) -> None:
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.rows: Tensor | None = None  # the positions a partial pass recomputes; None: full
        self.before: Tensor | None = None  # (B, T) the positions masked at the last call

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.rows is None:  # a full pass: keep every position's keys and values
            if layer == len(self.k):
                self.k.append(k.contiguous())
                self.v.append(v.contiguous())
            else:
                self.k[layer], self.v[layer] = k.contiguous(), v.contiguous()
            return k, v
        B, H, w, hd = k.shape
        index = self.rows[:, None, :, None].expand(B, H, w, hd)
        self.k[layer].scatter_(2, index, k)
        self.v[layer].scatter_(2, index, v)
        return self.k[layer], self.v[layer]
