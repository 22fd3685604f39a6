"""A preallocated key/value cache for block-by-block sampling; the sampler owns it.

Clean blocks only ever attend to earlier clean blocks, so their keys and values are fixed
once the block is done: the sampler runs one cache-filling pass per finished block and then
``advance``s. While a block is being denoised, each call writes that block's keys and values
into the slot just past ``length`` (overwritten on the next call) and attends to
``[0, length + T)``. Preallocation avoids re-copying the prefix on every denoiser call.
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
