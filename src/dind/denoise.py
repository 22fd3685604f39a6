"""Denoising inside one block: the first-hitting and the T-step ancestral samplers.

Design choices:
- A block's logits come from ``BlockView``: with the KV cache, the block alone against the
  cached clean prefix; without it, the whole prefix recomputed under the block-causal mask
  (clean blocks see only earlier clean blocks either way), which is what makes the two paths
  give the same tokens.
- Past the model's context the view is a window: block [start, end) sees [end - C, end) of
  the sequence (C the context), with rotary positions counted from the window's start, as
  BD3-LM's sliding window does. A clean token's keys depend on where its window starts, so
  when the window slides the cache is refilled with the new window's clean part (by the
  block's first call, ``BlockView.cached_logits``): recomputing that window without a cache
  gives the same tokens.
- Randomness is per sample: row r draws its positions and its Gumbel noise from its own
  ``torch.Generator``, so sample i is the same whatever the batch it is drawn in.
- Nucleus (top-p) draws, in float64, are ``dind.nucleus``'s; a call's many rows go through it
  in chunks (``draw_rows``).
- Snapshot confidence (eq. 5) is the probability the denoiser gave the committed token at the
  moment it was committed: by default the model's own (untruncated) probability; with
  ``confidence="nucleus"`` the top-p-renormalized one.
- A window that lies inside one block (a stage whose block is L, no cache) attends without a
  mask: it would be all True, and SDPA's fastest kernels take no mask.
- NFEs are counted per sample, in counters on the tokens' device: a denoiser call counts for
  a row when that row had a masked token in the block (and, for the ancestral sampler, when
  its tokens changed since its last prediction: an unchanged block reuses the last prediction
  and costs nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dind.attention import block_causal_mask
from dind.kv_cache import KVCache, RefreshCache
from dind.nucleus import draw, token_probs
from dind.parallel import Parallel


@dataclass
class BlockView:
    """How the denoiser sees block [start, end) of ``x`` at one stage: the window
    [max(0, end - context), end), block-causal, rotary positions counted from its start."""

    model: torch.nn.Module
    block_size: int
    cache: KVCache | None  # None: recompute the window on every call
    context: int | None = None  # the model's window; None: the whole sequence fits
    held: tuple[int, int] = (0, 0)  # (its window's start, the end of what the cache holds)
    refresh: int | None = None  # approximate: a full pass every ``refresh`` calls (below)
    mask_id: int = -1  # which positions a full pass leaves to recompute (with ``refresh``)
    recompute: str = "masked"  # | "delayed" | "asked": what a call between full passes redoes
    approx: RefreshCache | None = None  # with ``refresh``: the last full pass's cache
    approx_state: tuple = ()  # (its span, calls since it)

    def window_start(self, end: int) -> int:
        return 0 if self.context is None else max(0, end - self.context)

    def window_mask(self, lo: int, end: int, device) -> Tensor | None:
        """The block-causal mask of the window [lo, end), or None where the whole window is
        one block and every token sees every other (a stage whose block is L): no mask lets
        attention take its fastest kernels, and on the CPU gives the same logits (tested)."""
        if lo // self.block_size == (end - 1) // self.block_size:
            return None
        return block_causal_mask(end, self.block_size, device, lo)  # (end - lo, end - lo)

    @torch.no_grad()
    def logits(self, x: Tensor, start: int, end: int, index: Tensor | None = None) -> Tensor:
        """(B, end - start, V) logits for the block, or (B, k, V) at block offsets ``index``."""
        lo = self.window_start(end)
        if self.cache is not None:
            return self.cached_logits(x, lo, start, end, index)
        mask = self.window_mask(lo, end, x.device)
        if self.refresh and mask is None and index is not None:
            return self.approximate_logits(x, lo, end, index + start - lo)
        if index is not None:
            return self.model(x[:, lo:end], mask=mask, logit_index=index + start - lo)
        return self.model(x[:, lo:end], mask=mask)[:, start - lo : end - lo]

    @torch.no_grad()
    def cached_logits(
        self, x: Tensor, lo: int, start: int, end: int, index: Tensor | None
    ) -> Tensor:
        """The block's logits against the KV cache, which must hold its clean context [lo,
        start). The cache holds [lo, h) (``held``); the clean positions [h, start) not in it
        yet (the blocks finished since the last call, or the whole context when the window has
        moved or the stage begins after a prompt) go through this same call, ahead of the
        block, under the block-causal mask: their keys and values are written to the cache and
        kept, and only the block's rows ask for logits. So filling the cache costs no pass of
        its own: a stage-1 block of b positions costs b calls (one commit each), not b + 1."""
        if self.held[0] != lo:  # the window moved: its clean part is recomputed
            self.cache.reset()
            self.held = (lo, lo)
        h = self.held[1]
        pos = torch.arange(h - lo, end - lo, device=x.device)
        if h == start:  # nothing to add: the block alone, as every call after a block's first
            return self.model(x[:, start:end], positions=pos, kv_cache=self.cache,
                              logit_index=index)  # fmt: skip
        mask = block_causal_mask(end, self.block_size, x.device, lo, first_row=h)
        if index is None:
            index = torch.arange(start - h, end - h, device=x.device).expand(x.shape[0], -1)
        else:
            index = index + (start - h)
        out = self.model(x[:, h:end], positions=pos, mask=mask, kv_cache=self.cache,
                         logit_index=index)  # fmt: skip
        self.cache.advance(start - h)
        self.held = (lo, start)
        return out

    @torch.no_grad()
    def approximate_logits(self, x: Tensor, lo: int, end: int, index: Tensor) -> Tensor:
        """Logits at window offsets ``index`` (B, k) through Fast-dLLM's approximate cache
        (``dind.kv_cache.RefreshCache``). A full pass (the first call on a window, then every
        ``refresh``-th) keeps every position's keys and values and notes the positions masked
        then: the only ones whose tokens change until the next full pass. The calls between
        recompute just those (the masked ones and the ones committed since), against the
        others' keys and values from the full pass. ``refresh`` 1 is the exact pass.
        ``recompute="delayed"`` (dKV-Cache's delayed caching) recomputes fewer: only what the
        last call left masked (the masked ones and the ones it committed), so a committed
        token's keys and values are computed once more, at the call after its commit, and kept
        from then until the next full pass. ``recompute="asked"`` recomputes fewer still: what
        the last call committed, and the positions whose logits this call asks; the masked
        positions not asked keep the full pass's keys and values (their token has not changed,
        their context has). With positions picked uniformly that is 2k rows a call instead of
        every masked one; a rule that asks every masked position's logits (top, tau) recomputes
        what ``delayed`` does."""
        window = x[:, lo:end]
        span, calls = self.approx_state or (None, 0)
        if span != (lo, end) or calls % self.refresh == 0:
            self.approx = RefreshCache()
            out = self.model(window, kv_cache=self.approx, logit_index=index)
            self.approx.before = window == self.mask_id
            self.approx.rows = masked_rows(self.approx.before)  # what the next calls redo
            self.approx_state = ((lo, end), 1)
            return out
        if self.recompute != "masked":
            masked, before = window == self.mask_id, self.approx.before
            if self.recompute == "delayed":  # masked at the last call: masked now or just committed
                redo = before
            else:  # asked: just committed, or asked for
                redo = (before & ~masked).scatter(1, index, True)
            self.approx.rows, self.approx.before = masked_rows(redo), masked
        rows = self.approx.rows
        out = self.model(window.gather(1, rows), positions=rows, kv_cache=self.approx,
                         logit_index=torch.searchsorted(rows, index))  # fmt: skip
        self.approx_state = (span, calls + 1)
        return out


def masked_rows(masked: Tensor) -> Tensor:
    """(B, w) the masked positions of each row of ``masked`` (B, T) in increasing order, w the
    most of a row, padded with the row's last one (so each row stays sorted; a row with none
    gets position 0, recomputed for nothing). ``masked_first``, padded at the other end."""
    order, valid = masked_first(masked)
    last = order.gather(1, (valid.sum(1) - 1).clamp(min=0)[:, None])
    return torch.where(valid, order, last)


# A CPU call draws from its rows in chunks of at most this many bytes of float64
# probabilities (see ``draw_rows``); a GPU takes all rows at once.
DRAW_CHUNK_BYTES = 16 << 20


def _chunks(logits: Tensor, rows: Tensor, mask_id: int):
    """Yields (i, ``token_probs`` of rows ``rows[i : i + n]`` of ``logits``): n rows of at
    most ``DRAW_CHUNK_BYTES`` of float64 on the CPU, every row at once elsewhere."""
    n = max(1, len(rows) if logits.device.type != "cpu" else
            DRAW_CHUNK_BYTES // (8 * logits.shape[-1]))  # fmt: skip
    for i in range(0, len(rows), n):
        yield i, token_probs(logits[rows[i : i + n]], mask_id)


def _cat(parts: list[Tensor], like: Tensor) -> Tensor:
    return torch.cat(parts) if parts else like.new_empty(0)


def draw_rows(
    logits: Tensor, rows: Tensor, s: DenoiseSettings, generators: list[torch.Generator]
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``draw`` at rows ``rows`` (n,) of ``logits`` (N, V), row ``rows[i]``'s noise from
    ``generators[i]``: the tokens (n,), their nucleus probabilities (None unless the snapshot
    confidence is the nucleus one) and the model's probabilities of them (n,).

    On the CPU the rows go through in chunks (``_chunks``): the same tokens and probabilities
    (every step is per row, each generator draws in the same order), without a dozen N x V
    float64 temporaries. glibc maps every block over 32 MB afresh and unmaps it on free, so
    at N = 1024 rows of GPT-2's vocabulary a call paid for zeroing gigabytes of new pages
    (dev/LOG.md, session 13); chunks stay in the heap."""
    nucleus_p, f64 = s.confidence == "nucleus", logits.new_empty(0, dtype=torch.float64)
    tokens, p_nucleus, p_model = [], [], []
    for i, probs in _chunks(logits, rows, s.mask_id):
        t, p = draw(probs, s.top_p, generators[i : i + len(probs)], s.nucleus, nucleus_p)
        tokens.append(t)
        p_nucleus += [p] if nucleus_p else []
        p_model.append(probs.gather(-1, t[:, None])[:, 0])
    return _cat(tokens, rows), _cat(p_nucleus, f64) if nucleus_p else None, _cat(p_model, f64)


def top_probs(logits: Tensor, rows: Tensor, mask_id: int) -> Tensor:
    """(n,) the largest probability of each row ``rows`` of ``logits`` (N, V), float64, in
    ``_chunks`` (the same values as ``token_probs(logits[rows]).max(-1)``)."""
    parts = [probs.max(-1).values for _, probs in _chunks(logits, rows, mask_id)]
    return _cat(parts, logits.new_empty(0, dtype=torch.float64))


def probs_of(logits: Tensor, tokens: Tensor, mask_id: int) -> Tensor:
    """(N,) the probability of ``tokens[n]`` under row n of ``logits`` (N, V), float64, in
    ``_chunks`` (the same values as ``token_probs(logits).gather``)."""
    rows = torch.arange(len(logits), device=logits.device)
    parts = [probs.gather(-1, tokens[i : i + len(probs), None])[:, 0]
             for i, probs in _chunks(logits, rows, mask_id)]  # fmt: skip
    return _cat(parts, logits.new_empty(0, dtype=torch.float64))


@dataclass
class DenoiseSettings:
    mask_id: int
    top_p: float = 0.9
    nucleus: str = "bd3lm"  # | "hf": which tokens the top-p nucleus keeps
    confidence: str = "model"  # "model" (untruncated) | "nucleus"
    sampler: str = "first_hitting"  # | "ancestral"
    steps: int | None = None  # T for the ancestral sampler (default: the block size)
    parallel: Parallel = field(default_factory=Parallel)  # positions per first-hitting call


def _store(x, conf, rows, cols, tokens, p_nucleus, p_model, s: DenoiseSettings) -> None:
    """Write drawn tokens and their snapshot confidence: the probability the denoiser gave
    each (``p_model``) or, with ``confidence="nucleus"``, the renormalized nucleus one."""
    x[rows, cols] = tokens
    conf[rows, cols] = (p_nucleus if s.confidence == "nucleus" else p_model).to(conf.dtype)


def denoise_block(
    view: BlockView,
    x: Tensor,
    conf: Tensor,
    start: int,
    end: int,
    settings: DenoiseSettings,
    generators: list[torch.Generator],
    nfe: Tensor,
) -> None:
    """Fill every masked position of block [start, end) in place; ``conf`` gets the snapshot
    confidence of each committed token, ``nfe`` (B,) the calls charged to each sample."""
    if settings.sampler == "first_hitting" and settings.parallel.one_per_call:
        _first_hitting(view, x, conf, start, end, settings, generators, nfe)
    elif settings.sampler == "first_hitting":
        _parallel(view, x, conf, start, end, settings, generators, nfe)
    elif settings.sampler == "ancestral":
        _ancestral(view, x, conf, start, end, settings, generators, nfe)
    else:
        raise ValueError(f"unknown sampler {settings.sampler!r}")


def nth_masked(masked: Tensor, n: Tensor) -> Tensor:
    """(B, k) block offsets of the ``n[b, j]``-th (0-based) masked position of each row of
    ``masked`` (B, bs); every ``n[b, j]`` must be below row b's masked count."""
    rank = masked.long().cumsum(1) - 1  # (B, bs): the rank of each masked position
    hit = (rank[:, None, :] == n[:, :, None]) & masked[:, None, :]  # (B, k, bs)
    return hit.long().argmax(-1)


def uniform_picks(masked: Tensor, rows: list[int], generators, k: int = 1) -> Tensor:
    """(B, w) block offsets, w = min(k, the most masked positions of a row): for each row in
    ``rows``, min(k, its masked count) of its masked positions in a uniformly random order
    from the row's own generator (``randint`` for one, a ``randperm`` for several), padded
    with its first pick. Only the draws are per row (one generator call each, after one host
    read of the counts); the positions are found in one batched computation."""
    counts = masked.sum(1).tolist()
    width = min(k, max(counts))
    n = torch.zeros(masked.shape[0], width, dtype=torch.long, device=masked.device)
    draws = []
    for r in rows:
        g = generators[r]
        if k == 1:
            draws.append(torch.randint(counts[r], (1,), generator=g, device=g.device))
        else:
            d = torch.randperm(counts[r], generator=g, device=g.device)[:width]
            draws.append(torch.cat([d, d[:1].expand(width - len(d))]))
    n[torch.tensor(rows, device=n.device)] = torch.stack(draws).to(n.device)
    return nth_masked(masked, n)


def masked_first(masked: Tensor) -> tuple[Tensor, Tensor]:
    """((B, w) block offsets, (B, w) valid): each row's masked positions in order, padded
    with its first one (w the most masked positions of a row)."""
    counts = masked.sum(1)
    width = int(counts.max())
    order = torch.sort((~masked).long(), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=masked.device)[None, :] < counts[:, None]
    return torch.where(valid, order, order[:, :1]), valid


def _first_hitting(view, x, conf, start, end, s, generators, nfe) -> None:
    """Each call commits exactly one masked position per sample, chosen uniformly."""
    masked = x[:, start:end] == s.mask_id  # (B, bs)
    while masked.any():
        rows = torch.nonzero(masked.any(1)).flatten().tolist()
        # the position does not depend on the logits: choose it first
        picks = uniform_picks(masked, rows, generators)  # (B, 1)
        logits = view.logits(x, start, end, index=picks)  # (B, 1, V): only where committed
        idx = torch.tensor(rows, device=x.device)
        j = picks[idx, 0]
        drawn = draw_rows(logits[:, 0], idx, s, [generators[r] for r in rows])
        _store(x, conf, idx, start + j, *drawn, s)
        masked[idx, j] = False
        nfe[idx] += 1


def _parallel(view, x, conf, start, end, s, generators, nfe) -> None:
    """Each call commits several masked positions per sample (``dind.parallel``): K chosen
    uniformly, the K the prediction is most confident about, or those whose drawn token
    reaches tau (at least one). One batched computation per call: only the draws are per
    row, from each row's own generator (a row's entries in column order)."""
    par, nucleus_p = s.parallel, s.confidence == "nucleus"
    masked = x[:, start:end] == s.mask_id  # (B, bs)
    while masked.any():
        active = masked.any(1)
        rows = torch.nonzero(active).flatten().tolist()
        if par.pick == "uniform":  # the positions do not depend on the logits
            index = uniform_picks(masked, rows, generators, par.k)
            counts = masked.sum(1, keepdim=True)
            valid = torch.arange(index.shape[1], device=x.device)[None, :] < counts
        else:  # every masked position asks for its logits
            index, valid = masked_first(masked)
        logits = view.logits(x, start, end, index=index).flatten(0, 1)  # (B * w, V)
        if par.pick == "uniform":
            keep = valid
        else:
            top = torch.full(valid.shape, -1.0, dtype=torch.float64, device=x.device)
            # the top-token probability of each entry asked
            top[valid] = top_probs(logits, valid.flatten().nonzero()[:, 0], s.mask_id)
            if par.pick == "top":  # the k largest, earlier on ties
                rank = torch.sort(top, dim=1, descending=True, stable=True).indices.argsort(1)
                keep = valid & (rank < par.k)
            else:  # tau: only a position whose top token reaches tau can pass
                keep = valid & (top >= par.tau)
                keep[active & ~keep.any(1), :] |= _first_max(top)[active & ~keep.any(1)]
        # the entries kept, row-major: each row's in column order from its own generator
        gens = [generators[r] for r in keep.nonzero()[:, 0].tolist()]
        tokens, p_nucleus, p_model = draw_rows(logits, keep.flatten().nonzero()[:, 0], s, gens)
        if par.pick == "tau":  # a drawn token below tau is not committed; at least one
            drawn = torch.full(valid.shape, -1.0, dtype=torch.float64, device=x.device)
            drawn[keep] = p_model
            passed = keep & (drawn >= par.tau)
            none = active & ~passed.any(1)
            passed[none, :] |= _first_max(torch.where(keep, top, -1.0))[none]
            tokens, p_model = tokens[passed[keep]], p_model[passed[keep]]
            p_nucleus = p_nucleus[passed[keep]] if nucleus_p else None
            keep = passed
        r_idx, j = keep.nonzero(as_tuple=True)
        cols = index[r_idx, j]
        _store(x, conf, r_idx, start + cols, tokens, p_nucleus, p_model, s)
        masked[r_idx, cols] = False
        nfe += active.long()


def _first_max(values: Tensor) -> Tensor:
    """(B, w) bool: True at the first largest entry of each row."""
    first = torch.zeros_like(values, dtype=torch.bool)
    first[torch.arange(values.shape[0], device=values.device), values.argmax(1)] = True
    return first


def _ancestral(view, x, conf, start, end, s, generators, nfe) -> None:
    """T steps from t = 1 to 0: a masked token is revealed between t and t - 1/T with
    probability (1/T) / t; a block whose tokens did not change reuses its last prediction."""
    T = s.steps or (end - start)
    masked = x[:, start:end] == s.mask_id
    stale = masked.any(1)  # rows whose prediction must be recomputed
    logits = None  # the last prediction (probabilities only for the rows drawn from)
    for k in range(T):
        if not masked.any():
            break
        t, t_next = 1 - k / T, 1 - (k + 1) / T
        if stale.any():
            fresh = view.logits(x, start, end)  # (B, bs, V)
            logits = fresh if logits is None else torch.where(stale[:, None, None], fresh, logits)
            nfe += stale.long()
        stale = torch.zeros_like(stale)
        rows, cols = [], []
        for r in torch.nonzero(masked.any(1)).flatten().tolist():
            candidates = torch.nonzero(masked[r]).flatten()
            if t_next <= 0:
                reveal = candidates
            else:
                g = generators[r]
                u = torch.rand(len(candidates), generator=g, dtype=torch.float64, device=g.device)
                reveal = candidates[(u < (t - t_next) / t).to(candidates.device)]
            rows += [r] * len(reveal)
            cols += reveal.tolist()
            masked[r, reveal] = False
            stale[r] = len(reveal) > 0 and bool(masked[r].any())
        if rows:  # every reveal of the step at once; each row's noise in column order
            r_idx = torch.tensor(rows, device=x.device)
            c_idx = torch.tensor(cols, device=x.device)
            gens = [generators[r] for r in rows]
            drawn = draw_rows(logits[r_idx, c_idx], torch.arange(len(rows), device=x.device), s,
                              gens)  # fmt: skip
            _store(x, conf, r_idx, start + c_idx, *drawn, s)
