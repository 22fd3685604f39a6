"""The DiT backbone of BD3-LM, and its SUBS output parameterization.

Design choices:
- Parameter and buffer names and shapes are exactly BD3-LM's (``vocab_embed.embedding``,
  ``sigma_map.mlp.{0,2}``, ``rotary_emb.inv_freq``, ``blocks.i.{norm1,attn_qkv,attn_out,norm2,
  mlp.{0,2},adaLN_modulation}``, ``output_layer.{norm_final,linear,adaLN_modulation}``), so a
  checkpoint is a state dict with a ``backbone.`` prefix and nothing to rename.
- The model maps tokens to logits and nothing more: no loss, no noise, no sampling state.
  The loss (``dind.loss``) builds the x_t ⊕ x_0 input and the mask; the sampler owns the
  preallocated KV cache and passes it in.
- Positions are explicit (both halves of x_t ⊕ x_0 take rotary positions 0..L-1), which is
  also what a KV-cached block needs.
- The attention mask is whatever the caller passes: a dense boolean tensor for SDPA, or a
  FlexAttention ``BlockMask`` when ``attn_backend == "flex"``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import flex_attention as _plain_flex_attention

from dind.config import ModelConfig
from dind.kv_cache import KVCache

NEG_INF = -1e6  # BD3-LM's stand-in for -inf in SUBS (keeps logsumexp finite)


def subs_log_probs(logits: Tensor, xt: Tensor, mask_id: int) -> Tensor:
    """SUBS parameterization: never predict the mask; unmasked positions keep their token.

    logits (B, T, V) -> log-probabilities (B, T, V) in float32.
    """
    logits = logits.float().clone()
    logits[..., mask_id] = NEG_INF
    log_probs = logits.log_softmax(-1)
    unmasked = xt != mask_id  # (B, T)
    log_probs[unmasked] = NEG_INF
    log_probs[unmasked, xt[unmasked]] = 0.0
    return log_probs


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, computed in float32 (as BD3-LM)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = F.layer_norm(x.float(), [self.dim])
        return x * self.weight


class Rotary(nn.Module):
    """Rotary position embedding, non-interleaved (rotate-half), base 10000."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq)  # persistent: it is in BD3-LM's state dict

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (T,) or (B, T) -> cos, sin broadcastable to (B, H, T, head_dim)."""
        freqs = positions.float()[..., None] * self.inv_freq  # (..., T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (..., T, hd)
        if emb.dim() == 3:  # (B, T, hd) -> (B, 1, T, hd)
            emb = emb[:, None]
        return emb.cos(), emb.sin()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, T, hd)."""
    with torch.autocast(x.device.type, enabled=False):
        out = x.float() * cos + _rotate_half(x.float()) * sin
    return out.to(x.dtype)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of sigma (256) -> Linear -> SiLU -> Linear (BD3-LM's sigma_map)."""

    def __init__(self, cond_dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, sigma: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10_000) * torch.arange(half, device=sigma.device).float() / half
        )
        args = sigma.float()[:, None] * freqs[None]  # (B, half)
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1))  # (B, cond_dim)


@functools.cache
def _compiled_flex_attention(device_type: str):
    """FlexAttention, compiled once per process on CUDA (its fused kernel); eager elsewhere
    (forward only)."""
    if device_type == "cuda":
        return torch.compile(_plain_flex_attention, dynamic=False)
    return _plain_flex_attention


def flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask) -> Tensor:
    """FlexAttention from eager code and from code ``torch.compile`` traces alike: traced (a
    ``--compile`` model), the plain function, which the surrounding graph compiles into its
    fused kernel; eager, the compiled function made once. Tracing never meets a
    ``torch.compile`` call, nor the cache in front of it (either breaks the graph)."""
    if torch.compiler.is_compiling():
        return _plain_flex_attention(q, k, v, block_mask=block_mask)
    return _compiled_flex_attention(q.device.type)(q, k, v, block_mask=block_mask)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def keep_rows(x: Tensor, keep: int | Tensor, dim: int) -> Tensor:
    """The rows ``keep`` of ``x`` along its sequence dimension ``dim`` (1 for (B, T, d), 2
    for (B, H, T, hd)): the first n for an int, else the (B, k) index of each sample."""
    if isinstance(keep, int):
        return x.narrow(dim, 0, keep)
    B, k = keep.shape
    shape = list(x.shape)
    shape[dim] = k
    index = keep.view(B, *([1] * (dim - 1)), k, *([1] * (x.dim() - dim - 1)))
    return x.gather(dim, index.expand(shape))


def keep_mask_rows(mask: Tensor | None, keep: int | Tensor) -> Tensor | None:
    """The query rows ``keep`` of an attention mask (T, S) or (B, T, S); None stays None."""
    if mask is None:
        return None
    if mask.dim() == 2 and not isinstance(keep, int):
        return mask[keep]  # (B, k, S)
    return keep_rows(mask, keep, dim=mask.dim() - 2)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN modulation and rotary attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.n_heads = cfg.n_heads
        self.attn_backend = cfg.attn_backend
        self.norm1 = LayerNorm(d)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d)
        )
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 6 * d)
        self.dropout = nn.Dropout(cfg.dropout)

    def attention(
        self, x: Tensor, rope: tuple[Tensor, Tensor], mask, kv_cache, layer: int, keep=None
    ) -> Tensor:
        B, T, d = x.shape
        qkv = self.attn_qkv(x).view(B, T, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if kv_cache is not None:  # clean context from the sampler's cache
            k, v = kv_cache.write(layer, k, v)  # (B, H, S, hd), S = cached + T
        if keep is not None:  # only these rows ask (every row still gives its keys)
            q, mask = keep_rows(q, keep, dim=2), keep_mask_rows(mask, keep)
        if self.attn_backend == "flex" and mask is not None and not isinstance(mask, Tensor):
            out = flex_attention(q, k, v, mask)
        else:
            if mask is not None and mask.dim() == 3:  # (B, T, S) -> (B, 1, T, S)
                mask = mask[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        return out.transpose(1, 2).reshape(B, q.shape[2], d)

    def forward(self, x, c, rope, mask, kv_cache=None, layer: int = 0, keep=None):
        """``keep``: None, or the rows whose outputs are wanted, an int n (the first n) or a
        (B, k) index; the block then returns only those rows (the model's last block, when
        the caller wants logits at a few positions: the rest need only their keys)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[
            :, None
        ].chunk(6, dim=-1)  # each (B, 1, d)
        h = self.attention(
            modulate(self.norm1(x), shift_msa, scale_msa), rope, mask, kv_cache, layer, keep
        )
        if keep is not None:
            x = keep_rows(x, keep, dim=1)
        x = x + gate_msa * self.dropout(self.attn_out(h))
        x = x + gate_mlp * self.dropout(self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x


class EmbeddingLayer(nn.Module):
    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.embedding[x]


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_final = LayerNorm(cfg.hidden_dim)
        self.linear = nn.Linear(cfg.hidden_dim, cfg.vocab_size)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 2 * cfg.hidden_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """BD3-LM's diffusion transformer. ``forward`` maps tokens to logits; that is all."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.vocab_embed = EmbeddingLayer(cfg.hidden_dim, cfg.vocab_size)
        self.sigma_map = TimestepEmbedder(cfg.cond_dim)
        self.rotary_emb = Rotary(cfg.head_dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.n_blocks))
        self.output_layer = FinalLayer(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # BD3-LM's init: adaLN and the output projection start at zero (identity blocks,
        # uniform predictions); the rest keeps PyTorch's defaults.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation.weight)
            nn.init.zeros_(block.adaLN_modulation.bias)
        for p in (
            self.output_layer.linear.weight,
            self.output_layer.linear.bias,
            self.output_layer.adaLN_modulation.weight,
            self.output_layer.adaLN_modulation.bias,
        ):
            nn.init.zeros_(p)

    def forward(
        self,
        x: Tensor,
        sigma: Tensor | None = None,
        mask=None,
        positions: Tensor | None = None,
        kv_cache=None,
        n_logits: int | None = None,
        logit_index: Tensor | None = None,
    ) -> Tensor:
        """Logits for tokens ``x``.

        x: (B, T) token ids.
        sigma: (B,) noise level; ignored (zeroed) unless ``time_conditioning``.
        mask: True-where-allowed attention mask (T, S), (B, T, S), a flex BlockMask, or None
            for full bidirectional attention. S = T plus the cached length.
        positions: (T,) or (B, T) rotary positions; default 0..T-1.
        kv_cache: a ``dind.kv_cache.KVCache``: x attends to its clean prefix, and x's own keys
            and values are written just past it (the sampler decides when to keep them).
        n_logits: project only the first n positions to the vocabulary (the x_t half;
            0 for a pass that only fills the KV cache).
        logit_index: (B, k) positions whose logits are wanted; the others skip the
            vocabulary projection (the first-hitting sampler needs one per call).
        Returns logits (B, T, V), or (B, n_logits, V), or (B, k, V).
        """
        B, T = x.shape
        if positions is None:
            positions = torch.arange(T, device=x.device)
        if sigma is None or not self.config.time_conditioning:
            sigma = torch.zeros(B, device=x.device)
        c = F.silu(self.sigma_map(sigma))  # (B, cond_dim)
        rope = self.rotary_emb(positions)
        h = self.vocab_embed(x)  # (B, T, d)
        # The last block computes only the rows whose logits are wanted (queries, output
        # and MLP; every row still gives its keys and values); with a flex BlockMask, whose
        # rows cannot be picked, the rows are picked after it.
        keep = logit_index
        if n_logits is not None:  # both given: pick after the last block, as documented
            keep = None if logit_index is not None or n_logits >= T else n_logits
        if keep is not None and mask is not None and not isinstance(mask, Tensor):
            keep = None
        for i, block in enumerate(self.blocks):
            h = block(h, c, rope, mask, kv_cache, i, keep if i == len(self.blocks) - 1 else None)
        if keep is None:
            if n_logits is not None:
                h = h[:, :n_logits]
            if logit_index is not None:
                h = h.gather(1, logit_index[..., None].expand(-1, -1, h.shape[-1]))  # (B, k, d)
        return self.output_layer(h, c)  # (B, T or n_logits, V)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> KVCache:
        cfg = self.config
        p = self.vocab_embed.embedding
        return KVCache(
            cfg.n_blocks,
            batch_size,
            cfg.n_heads,
            max_len or cfg.seq_len,
            cfg.head_dim,
            p.device,
            dtype or p.dtype,
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
