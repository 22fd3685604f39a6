"""The top-p nucleus and the draws from it: every token the samplers commit is drawn here.

Nucleus (top-p) sampling draws with the exponential/Gumbel trick in float64 (BD3-LM found
fp32 sampling shifts generative perplexity). Two rules for the nucleus
(``dind.config.NUCLEUS_RULES``):
``bd3lm`` (the default, BD3-LM's ``_nucleus_sample``, which the paper's numbers come from)
keeps the tokens whose cumulative mass, their own included, is at most p, plus the top
token; ``hf`` (Hugging Face's) also keeps the token whose mass crosses p. For [0.85, 0.10,
...] at p = 0.9, bd3lm is greedy and hf samples from two tokens. Ties in probability are
ordered by token id (a stable sort), so the nucleus is deterministic. The sort over the
vocabulary is only paid where it matters: a row whose winner over the whole vocabulary
lies in the nucleus has its answer already (``draw``, unless the nucleus probability is
wanted: ``confidence="nucleus"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dind.model import NEG_INF


def token_probs(logits: Tensor, mask_id: int) -> Tensor:
    """Denoiser distribution over real tokens (SUBS: the mask is never predicted), float64."""
    # the mask at NEG_INF in the logits' dtype, then one float64 softmax (exp(NEG_INF) is 0
    # at any precision): no float64 copy of the logits beside the probabilities
    logits = logits.clone()
    logits[..., mask_id] = NEG_INF
    return logits.softmax(-1, dtype=torch.float64)


def _rule_keeps(ahead: Tensor, through: Tensor, top_p: float, rule: str) -> Tensor:
    """The nucleus rule on a token's mass ahead of it and through it (its own included); the
    top token (nothing ahead) is kept besides, by both callers."""
    if rule == "bd3lm":  # mass up to and including the token within p
        return through <= top_p
    if rule == "hf":  # the smallest prefix whose mass reaches p
        return ahead < top_p
    raise ValueError(f"unknown nucleus rule {rule!r}")


def nucleus_keep(sorted_p: Tensor, top_p: float, rule: str = "bd3lm") -> Tensor:
    """Which of the descending-sorted probabilities ``sorted_p`` (..., V) the nucleus keeps."""
    cum = sorted_p.cumsum(-1)
    keep = _rule_keeps(cum - sorted_p, cum, top_p, rule)
    keep[..., 0] = True
    return keep


def nucleus_probs(probs: Tensor, top_p: float, rule: str = "bd3lm") -> Tensor:
    """The top-p nucleus of each row of ``probs`` (N, V) float64, renormalized."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    kept = sorted_p * nucleus_keep(sorted_p, top_p, rule)
    p = torch.zeros_like(probs).scatter_(-1, order, kept)
    return p / p.sum(-1, keepdim=True)


def in_nucleus(probs: Tensor, tokens: Tensor, top_p: float, rule: str = "bd3lm") -> Tensor:
    """(N,) bool: whether ``tokens[n]`` is in the top-p nucleus of ``probs[n]`` (N, V), without
    a sort: the mass ahead of it in the nucleus's order (a larger probability, or an equal one
    at a smaller id) decides, as ``nucleus_keep`` decides on the sorted row."""
    p = probs.gather(-1, tokens[:, None])
    ids = torch.arange(probs.shape[-1], device=probs.device)
    ahead = (probs > p) | ((probs == p) & (ids < tokens[:, None]))
    mass = torch.where(ahead, probs, 0.0).sum(-1)
    return ~ahead.any(-1) | _rule_keeps(mass, mass + p[:, 0], top_p, rule)


def exponential_noise(like: Tensor, generators: list[torch.Generator]) -> Tensor:
    """Exp(1) noise shaped as ``like`` (N, V), row n from ``generators[n]``: each row's
    uniforms drawn in place from its generator, then -log(1 - u) over all rows at once. On the
    CPU this is ``exponential_``'s own stream and formula (``log1p(-u)``, to the last bit but
    one: its log is scalar, this one vectorized), at a third of the time: ``exponential_``
    runs one scalar log per token on one thread, 0.75 ms for GPT-2's vocabulary. An exact 0
    (u = 0, one in 2^53) becomes the smallest positive float, so no ratio is 0 / 0."""
    u = torch.empty_like(like)  # each row filled in place: no stacked copy of N x V
    for row, g in zip(u, generators, strict=True):
        row.uniform_(generator=g)
    return torch.log1p(u.neg_(), out=u).neg_().clamp_(min=torch.finfo(u.dtype).tiny)


def draw(
    probs: Tensor,
    top_p: float,
    generators: list[torch.Generator],
    rule: str = "bd3lm",
    nucleus_p: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """One token from the top-p nucleus of each row of ``probs`` (N, V) float64, with the
    exponential trick; row n's noise comes from ``generators[n]`` (drawn in list order, so a
    generator listed twice draws twice, in order). Returns the tokens (N,) and their
    nucleus-renormalized probabilities (N,), or None for those with ``nucleus_p=False``.
    The nucleus and the choice are one batched computation; only the noise is drawn per row,
    from that row's own generator.

    Without ``nucleus_p`` the rows are not sorted: the winner of ``probs / noise`` over the
    whole vocabulary is the nucleus's winner whenever it lies in the nucleus (renormalizing
    scales every ratio alike), which ``in_nucleus`` checks; only the other rows (about 1 -
    top_p of them) are sorted. The same tokens, up to a rounding tie between two ratios."""
    noise = exponential_noise(probs, generators)
    if nucleus_p:
        p = nucleus_probs(probs, top_p, rule)
        tokens = (p / noise).argmax(-1)
        return tokens, p.gather(-1, tokens[:, None])[:, 0]
    tokens = (probs / noise).argmax(-1)
    if top_p < 1.0:
        out = ~in_nucleus(probs, tokens, top_p, rule)
        if out.any():
            tokens[out] = (nucleus_probs(probs[out], top_p, rule) / noise[out]).argmax(-1)
    return tokens, None


def nucleus_sample(
    probs: Tensor, top_p: float, generator: torch.Generator, rule: str = "bd3lm"
) -> tuple[int, float]:
    """``draw`` for one distribution ``probs`` (V,): the token and its nucleus probability."""
    tokens, p = draw(probs[None], top_p, [generator], rule)
    return int(tokens[0]), float(p[0])
