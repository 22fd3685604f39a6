"""Multi-stage draft-then-refine sampling (Algorithm 1) and autoregressive decoding.

Stage 1 drafts the sequence block by block with a small block size; stage k > 1 masks again
the floor(gamma_k * L) lowest-confidence tokens of stage k-1's output and walks the sequence
with a larger block size, so a stage whose block size is L is one bidirectional pass over the
whole sequence. Inside every stage earlier blocks are clean context through an exact KV cache
(a finished block's keys and values are written by the next block's first denoiser call,
which carries it ahead of the block: no pass of its own; past the context, that call
recomputes the window's clean part), and tokens that are not masked stay fixed. The
sampler owns the cache and the per-sample random generators; the in-block samplers live in
``dind.denoise``, the remasking policies in ``dind.remask``.

Past the model's context C (L > C; nothing changes for L <= C):
- A stage whose block size is below C walks its blocks as inside the context, each block
  seeing the window of the last C positions that ends with it, as BD3-LM's sliding window
  does (``dind.denoise.BlockView``: positions, and how the cache follows the window).
- A stage whose block size is at least C cannot see a block at once: it walks windows of C
  positions, ``window_stride`` apart (half the context by default, so every window after the
  first sees C/2 filled tokens to its left; the context itself gives non-overlapping
  windows), the last one ending at L. Each window is one pass (bidirectional inside each of
  the stage's blocks: block L sees the whole window) that fills the positions of it that are
  still masked; the next window sees them as context.
- Snapshot confidence and remasking stay global: floor(gamma * L) of the whole sequence.

Low-entropy redraws (``retry_low_entropy``, off by default: no sample is ever dropped):
BD3-LM's protocol, opt-in. BD3-LM's sampler is one stage, so the rule
(``dind.diversity.bd3lm_rejects``) judges the stage-1 draft: a draft that fails it is drawn
again from all-masked, at most ``MAX_DRAWS`` draws in all, as in BD3-LM's ``_sample`` (whose
loop raises once a tenth draw has failed). Later stages refine the accepted draft and are not
checked (``dind eval`` reports the rule on the final tokens). A redraw continues the sample's
own generator, so it is deterministic and independent of the batch; a draft that passes at
once is the draft drawn without the option. After ``MAX_DRAWS`` failed draws the run stops with
a one-line error, as BD3-LM's does: a sample kept anyway would be one BD3-LM never reports.
``nfe`` describes the kept draw; ``redraws`` says how many were thrown
away, and ``seconds`` includes them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch
from torch import Tensor
from tqdm import tqdm

from dind import remask
from dind.config import SamplerConfig
from dind.denoise import BlockView, DenoiseSettings, denoise_block
from dind.devices import autocast_dtype
from dind.diversity import BD3LM_ENTROPY_WINDOW, DEFAULT_ENTROPY_THRESHOLD, bd3lm_rejects
from dind.errors import DindError
from dind.nucleus import draw, token_probs
from dind.samples import Sample

MAX_DRAWS = 10
"""Draws of one stage-1 draft under ``retry_low_entropy`` (BD3-LM's ``num_tries``)."""
MAX_SAMPLES = 1_000_000
"""Most sequences one call draws: they are all held in memory (every stage's tokens and
confidences) until the one file is written."""


def sample_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7_919 + 1) % (2**63)


def _prefix(length: int, bos_id: int, prompt: list[int] | None) -> list[int]:
    prefix = [bos_id] + list(prompt or [])
    if len(prefix) > length:
        raise DindError(
            f"prompt of {len(prefix) - 1} tokens does not fit in length {length} (with BOS)"
        )
    return prefix


def model_context(model: torch.nn.Module) -> int | None:
    """The model's sequence length (its context), or None for a model that does not say."""
    return getattr(getattr(model, "config", None), "seq_len", None)


def check_window_stride(stride: int | None, context: int) -> None:
    if stride is not None and stride > context:
        raise DindError(f"window stride {stride} exceeds the model's context {context}")


def window_and_stride(model: torch.nn.Module, cfg: SamplerConfig) -> tuple[int, int]:
    """The most positions a denoiser call sees (L, or the context past it) and the step of
    the window walk; a one-line error for a stride the context cannot take."""
    context = model_context(model) or cfg.length
    check_window_stride(cfg.window_stride, context)
    return min(context, cfg.length), cfg.window_stride or max(context // 2, 1)


def stage_spans(length: int, block_size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """The spans a stage denoises, in order: its blocks; or, for a block of at least the
    window (L > window), windows ``stride`` apart, the last one ending at L."""
    if block_size < window or length <= window:
        return [(s, s + block_size) for s in range(0, length, block_size)]
    last = length - window
    return [(s, s + window) for s in [*range(0, last, stride), last]]


@torch.no_grad()
def run_stage(
    model: torch.nn.Module,
    x: Tensor,
    conf: Tensor,
    block_size: int,
    settings: DenoiseSettings,
    generators: list[torch.Generator],
    use_cache: bool,
    window: int,
    stride: int,
    refresh: int | None = None,
    recompute: str = "masked",
) -> Tensor:
    """One stage of Algorithm 1 over a batch, in place: returns the NFEs per row, on the
    tokens' device (as every counter the in-block samplers add to).
    ``window`` (at most L): the most positions a denoiser call sees; ``stride``: the step of
    the window walk of a block of at least the window. Under autocast (``dind.devices``) the
    KV cache holds keys and values at the autocast dtype, as the model computes them.
    ``refresh``: Fast-dLLM's approximate cache where a block spans the window
    (``dind.denoise.BlockView.approximate_logits``), recomputing ``recompute`` between full
    passes; None is exact."""
    B, L = x.shape
    nfe = torch.zeros(B, dtype=torch.long, device=x.device)
    cache = None
    if use_cache and block_size < window:
        cache = model.new_kv_cache(B, window, dtype=autocast_dtype(x.device))
    view = BlockView(model, block_size, cache, window, refresh=refresh, recompute=recompute,
                     mask_id=settings.mask_id)  # fmt: skip
    for start, end in stage_spans(L, block_size, window, stride):
        if (x[:, start:end] == settings.mask_id).any():
            denoise_block(view, x, conf, start, end, settings, generators, nfe)
    return nfe


@torch.no_grad()
def sample_batch(
    model: torch.nn.Module,
    cfg: SamplerConfig,
    indices: list[int],
    bos_id: int,
    mask_id: int,
    prompt: list[int] | None = None,
    drafts: list[Sample] | None = None,
) -> list[Sample]:
    """Draw the samples ``indices`` together (the result does not depend on the grouping).

    With ``drafts`` (samples of these indices that went through the first stages of ``cfg``
    under the same seed, e.g. a stage-1-only run), go on from them: the result is identical to
    drawing the samples with ``cfg`` from scratch, without paying for those stages again."""
    device = next(model.parameters()).device
    L, B = cfg.length, len(indices)
    window, stride = window_and_stride(model, cfg)
    prefix = _prefix(L, bos_id, prompt)
    seeds = [sample_seed(cfg.seed, i) for i in indices]
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    settings = DenoiseSettings(mask_id, cfg.top_p, cfg.nucleus, cfg.confidence, cfg.sampler,
                               cfg.steps)  # fmt: skip
    eligible = torch.ones(L, dtype=torch.bool, device=device)
    eligible[: len(prefix)] = False
    if drafts is None:
        first = 0
        x = torch.full((B, L), mask_id, dtype=torch.long, device=device)
        x[:, : len(prefix)] = torch.tensor(prefix, device=device)
        conf = torch.zeros(B, L, dtype=torch.float64, device=device)
        conf[:, : len(prefix)] = 1.0  # BOS and prompt: given, never remasked
        blank = (x.clone(), conf.clone())  # where a redrawn draft starts again
        samples = [Sample(i, s) for i, s in zip(indices, seeds, strict=True)]
    else:
        first = _check_drafts(drafts, indices, seeds, cfg)
        x = torch.tensor([d.tokens for d in drafts], dtype=torch.long, device=device)
        conf = torch.tensor([d.snapshot_confidence[-1] for d in drafts], dtype=torch.float64,
                            device=device)  # fmt: skip
        for g, d in zip(generators, drafts, strict=True):
            g.set_state(d.rng_state)
        samples = [copy.deepcopy(d) for d in drafts]
    for k in range(first, len(cfg.stages)):
        block_size = cfg.stages[k]
        t0 = time.perf_counter()
        extra = torch.zeros(B, dtype=torch.long, device=device)
        if k == 0:
            chosen = [[] for _ in range(B)]
        else:
            n = math.floor(cfg.remask[k - 1] * L)
            scores = conf
            if cfg.remask_policy == "posthoc" and n > 0:
                windows = stage_spans(L, L, window, stride)  # [(0, L)] inside the context
                scores = remask.posthoc_scores(model, x, mask_id, windows)
                extra += len(windows)  # the extra forward passes are denoiser calls
            chosen = remask.select_batch(scores, eligible, n, cfg.remask_policy, generators)
            x.scatter_(1, chosen, mask_id)
            chosen = chosen.tolist()
        stage = dataclasses.replace(settings, parallel=cfg.parallel_rule(k))
        nfe = run_stage(model, x, conf, block_size, stage, generators, cfg.kv_cache, window,
                        stride, cfg.refresh if k > 0 else None, cfg.recompute)  # fmt: skip
        if k == 0 and cfg.retry_low_entropy:
            redraws = _redraw_low_entropy(model, x, conf, blank, nfe, block_size, stage,
                                          generators, cfg.kv_cache, indices, window,
                                          stride)  # fmt: skip
            for s, n in zip(samples, redraws, strict=True):
                s.redraws = n
        tokens, confidences = x.tolist(), conf.tolist()  # waits for a GPU's queued work
        seconds = (time.perf_counter() - t0) / B  # the batch's time, shared equally
        calls = (nfe + extra).tolist()
        for r, s in enumerate(samples):
            s.remasked.append([int(p) for p in chosen[r]])
            s.stage_tokens.append(tokens[r])
            s.snapshot_confidence.append(confidences[r])
            s.nfe.append(calls[r])
            s.seconds.append(seconds)
            s.rng_state = generators[r].get_state()
    return samples


def _redraw_low_entropy(
    model: torch.nn.Module, x: Tensor, conf: Tensor, blank: tuple[Tensor, Tensor], nfe: Tensor,
    block_size: int, settings: DenoiseSettings, generators: list[torch.Generator],
    use_cache: bool, indices: list[int], window: int, stride: int,
) -> list[int]:  # fmt: skip
    """Draw stage 1 again, in place, for every row whose draft fails BD3-LM's rule, until all
    pass; returns the redraws per row. Only the failing rows are redrawn, each from its own
    generator, so a row's result does not depend on the others."""
    redraws = [0] * x.shape[0]
    failing = [r for r in range(x.shape[0]) if bd3lm_rejects(x[r].tolist(), block_size)]
    while failing:
        spent = [r for r in failing if redraws[r] + 1 == MAX_DRAWS]
        if spent:
            raise DindError(
                f"sample {indices[spent[0]]}: {MAX_DRAWS} stage-1 drafts in a row had a "
                f"{BD3LM_ENTROPY_WINDOW}-token window below {DEFAULT_ENTROPY_THRESHOLD:g} nats "
                "of unigram entropy (BD3-LM's limit); the model degenerates: drop "
                "--retry-low-entropy to keep such samples"
            )
        rows = torch.tensor(failing, device=x.device)
        xs, cs = blank[0][rows], blank[1][rows]  # fresh copies (advanced indexing)
        # the kept draw's count (on x's device)
        nfe[rows] = run_stage(model, xs, cs, block_size, settings,
                              [generators[r] for r in failing], use_cache, window,
                              stride)  # fmt: skip
        x[rows], conf[rows] = xs, cs
        for r in failing:
            redraws[r] += 1
        failing = [r for r in failing if bd3lm_rejects(x[r].tolist(), block_size)]
    return redraws


def _check_drafts(drafts: list[Sample], indices: list[int], seeds: list[int], cfg) -> int:
    """How many stages the drafts have done; a one-line error where they cannot be continued."""
    done = {len(d.stage_tokens) for d in drafts}
    if len(done) != 1 or not 0 < (first := done.pop()) < len(cfg.stages):
        raise DindError(f"drafts must share a stage count below the {len(cfg.stages)} stages")
    if [d.index for d in drafts] != indices or [d.seed for d in drafts] != seeds:
        raise DindError("drafts were drawn with other sample indices or another seed")
    if any(d.rng_state is None or len(d.tokens) != cfg.length for d in drafts):
        raise DindError("drafts must come from this session's sampler at the same length")
    if any((d.redraws is not None) != cfg.retry_low_entropy for d in drafts):
        raise DindError("drafts and this run disagree on low-entropy redraws")
    return first


def check_counts(num_samples: int, batch_size: int) -> None:
    """A one-line error for a sample count or batch size that cannot be drawn."""
    if num_samples <= 0 or batch_size <= 0:
        raise DindError("num-samples and batch-size must be positive")
    if num_samples > MAX_SAMPLES:
        raise DindError(f"num-samples {num_samples:,} is above the limit of {MAX_SAMPLES:,} per "
                        "call (all are held in memory until the file is written): draw them "
                        "in parts with other --seed values")  # fmt: skip


def sample(
    model: torch.nn.Module,
    cfg: SamplerConfig,
    num_samples: int,
    batch_size: int,
    bos_id: int,
    mask_id: int,
    prompt: list[int] | None = None,
    progress: bool = False,
    drafts: list[Sample] | None = None,
) -> list[Sample]:
    """Draw ``num_samples`` sequences, ``batch_size`` at a time (Algorithm 1); with ``drafts``
    (the first stages of the same samples, see ``sample_batch``) go on from them."""
    if drafts is not None and len(drafts) != num_samples:
        raise DindError(f"{len(drafts)} drafts for {num_samples} samples")
    check_counts(num_samples, batch_size)
    _prefix(cfg.length, bos_id, prompt)  # fail before any work
    model.eval()
    out: list[Sample] = []
    with tqdm(total=num_samples, disable=not progress, desc="sample", unit="seq") as bar:
        for first in range(0, num_samples, batch_size):
            idx = list(range(first, min(first + batch_size, num_samples)))
            part = None if drafts is None else drafts[first : first + len(idx)]
            out += sample_batch(model, cfg, idx, bos_id, mask_id, prompt, part)
            bar.update(len(idx))
    return out


@torch.no_grad()
def ar_generate(
    model: torch.nn.Module,
    length: int,
    batch_size: int,
    bos_id: int,
    mask_id: int,
    top_p: float = 0.9,
    seed: int = 0,
    use_cache: bool = True,
    nucleus: str = "bd3lm",
) -> tuple[Tensor, int]:
    """Left-to-right decoding of a causal model with a KV cache; returns tokens and NFEs."""
    device = next(model.parameters()).device
    generators = [torch.Generator(device=device).manual_seed(sample_seed(seed, i))
                  for i in range(batch_size)]  # fmt: skip
    x = torch.full((batch_size, length), bos_id, dtype=torch.long, device=device)
    cache = None
    if use_cache:
        cache = model.new_kv_cache(batch_size, length, dtype=autocast_dtype(device))
    for i in range(length - 1):
        if cache is not None:
            logits = model(x[:, i : i + 1], positions=torch.arange(i, i + 1, device=device),
                           kv_cache=cache)[:, -1]  # fmt: skip
            cache.advance(1)
        else:
            causal = torch.ones(i + 1, i + 1, dtype=torch.bool, device=device).tril()
            logits = model(x[:, : i + 1], mask=causal)[:, -1]
        x[:, i + 1] = draw(token_probs(logits, mask_id), top_p, generators, nucleus, False)[0]
    return x, length - 1
