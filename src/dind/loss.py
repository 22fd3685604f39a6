"""Training objectives as components: the block diffusion NELBO (eq. 4) and the AR loss.

Design choices:
- The loss owns the vectorized training input: x_t ⊕ x_0 (B, 2L) with rotary positions
  0..L-1 twice and the block-diffusion mask, one forward pass for all blocks; only the x_t
  half produces logits.
- Per token: -(1/t) log p_theta(x0 | x_t) on masked positions, 0 elsewhere (SUBS gives an
  unmasked position its own token with probability 1), averaged over tokens.
- Position 0 (BOS) is never masked (BD3-LM's ``ignore_bos``); evaluation leaves it out of the
  average, training counts it, as BD3-LM does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dind import attention, noise
from dind.config import ModelConfig
from dind.model import NEG_INF


@dataclass
class LossOutput:
    loss: Tensor
    """Scalar: sum of ``nll`` over ``token_mask`` / number of counted tokens."""
    nll: Tensor
    """(B, L) per-token weighted negative log-likelihood (0 where not masked)."""
    token_mask: Tensor
    """(B, L) bool, the tokens counted in the average."""


def _log_prob_of(logits: Tensor, target: Tensor, mask_id: int | None) -> Tensor:
    """log softmax(logits)[target] without materialising a second (B, T, V) tensor;
    the mask token's logit is excluded from the normaliser (SUBS)."""
    logits = logits.float()
    if mask_id is not None:
        index = torch.full((1,), mask_id, device=logits.device)  # made there: no host copy
        logits = logits.index_fill(-1, index, NEG_INF)
    picked = logits.gather(-1, target[..., None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def bd3_loss(
    model: nn.Module,
    cfg: ModelConfig,
    x0: Tensor,
    block_sizes: Tensor,
    eps_min: float = noise.DEFAULT_EPS_MIN,
    eps_max: float = noise.DEFAULT_EPS_MAX,
    antithetic: bool = True,
    resample: bool = True,
    eval_mode: bool = False,
) -> LossOutput:
    """Block diffusion NELBO with a block size per example (mixed-scale when they differ).

    x0 (B, L) clean tokens; block_sizes (B,), each dividing L, on any device: on the CPU (as
    training passes them) the noise and the mask are planned without waiting for x0's device.
    """
    B, L = x0.shape
    host = block_sizes.cpu()
    t = noise.sample_t(host, L, eps_min, eps_max, antithetic, device=x0.device)  # (B, L)
    xt = noise.q_xt(x0, t, host, cfg.mask_id, eps_min, eps_max, resample)
    xt[:, 0] = x0[:, 0]  # BOS is never masked
    x_in = torch.cat((xt, x0), dim=1)  # (B, 2L)
    positions = torch.arange(L, device=x0.device).repeat(2)  # (2L,)
    sizes = host if bool((host != host[0]).any()) else int(host[0])
    if cfg.attn_backend == "flex":
        mask = attention.flex_block_diff_mask(L, sizes, x0.device)
    else:
        mask = attention.block_diff_mask(L, sizes, x0.device)
    logits = model(x_in, noise.sigma_from_t(t[:, 0]), mask=mask, positions=positions, n_logits=L)
    log_p = _log_prob_of(logits, x0, cfg.mask_id)  # (B, L)
    masked = xt == cfg.mask_id
    nll = torch.where(masked, -log_p / t, torch.zeros_like(log_p))
    token_mask = torch.ones_like(masked)
    if not eval_mode:  # every token counts: the same sum as selecting them all, with no sync
        return LossOutput(nll.sum() / token_mask.sum(), nll, token_mask)
    token_mask[:, 0] = False
    return LossOutput(nll[token_mask].sum() / token_mask.sum(), nll, token_mask)


def ar_loss(model: nn.Module, cfg: ModelConfig, x0: Tensor) -> LossOutput:
    """Next-token cross-entropy with causal attention (the autoregressive baseline)."""
    inputs, targets = x0[:, :-1], x0[:, 1:]
    T = inputs.shape[1]
    if cfg.attn_backend == "flex":
        mask = attention.flex_causal_mask(T, x0.device)
    else:
        mask = attention.causal_mask(T, x0.device)
    logits = model(inputs, mask=mask)  # (B, L-1, V)
    nll = -_log_prob_of(logits, targets, cfg.mask_id)
    token_mask = torch.ones_like(nll, dtype=torch.bool)
    return LossOutput(nll.mean(), nll, token_mask)
