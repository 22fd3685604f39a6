"""Sweep grids: the named settings a sweep draws, each checked before any work starts.

A ``Setting`` is one point of a sweep: a label, the plot series it belongs to, its x value and
its sampler. The builders here make the paper's grids (Figure 2's gamma sweep, Table 2's
policies, the NFE frontier, the top-p control) and Table 3's training mixes; a bad value is
reported with the setting it belongs to and the reason. ``SweepOptions`` is what every sweep
shares: seeds, samples per seed, the judge and the sampler defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dind.config import (
    BlockSizeDistribution,
    Dtype,
    NucleusRule,
    SamplerConfig,
    parse_block_sizes,
)
from dind.errors import DindError
from dind.frontier import STAGE1


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: a label, the plot series it belongs to, and its sampler."""

    name: str
    series: str
    x: float | None
    sampler: SamplerConfig


@dataclass
class SweepOptions:
    """What every sweep shares: seeds, samples per seed, the judge, the sampler defaults."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Sampling seeds; the spread over seeds is reported."""
    num_samples: int = 8
    """Samples per (setting, seed)."""
    batch_size: int = 8
    """Sequences per batch."""
    judge: str = "smollm2"
    """The judge of Gen PPL: smollm2, oracle[:DIR], a dind AR run or a Hugging Face causal LM
    (``dind.judges``)."""
    top_p: float = 0.9
    """Nucleus mass of every setting that does not set its own."""
    nucleus: NucleusRule = "bd3lm"
    """Nucleus rule of every setting: bd3lm (BD3-LM's) or hf (``dind.nucleus.nucleus_keep``)."""
    stage1: int = 4
    """Stage-1 block size (the draft)."""
    window_stride: int | None = None
    """Past the model's context: the step between windows (default: half the context), every
    setting's ``SamplerConfig.window_stride``."""
    save_samples: bool = True
    """Keep every setting's samples (JSONL) under the output folder's ``samples/``."""
    progress: bool = True
    """Show progress bars."""
    retry_low_entropy: bool = False
    """Redraw stage-1 drafts by BD3-LM's low-entropy rule (``dind.sampler``)."""
    judge_max_tokens: int | None = None
    """Cut the judge's input to this many ids, BOS included (BD3-LM: L; ``dind.judges``)."""
    dtype: Dtype = "auto"
    """Precision of the sampler's model passes, as ``dind sample --dtype`` (auto: bf16 on
    CUDA, fp32 on the CPU); the JSON records any other."""
    samples_from: Path | None = None
    """Judge the samples an earlier sweep of the same grid saved in this output folder (under
    ``samples/``) instead of drawing them: a second judge scores the very same texts."""

    def check(self) -> None:
        if not self.seeds:
            raise DindError("the seed list is empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise DindError(f"the seed list repeats a seed: {list(self.seeds)}")
        if self.num_samples <= 0 or self.batch_size <= 0:
            raise DindError("num-samples and batch-size must be positive")
        if self.window_stride is not None and self.window_stride <= 0:
            raise DindError(f"window stride must be positive, got {self.window_stride}")
        from dind.devices import default_device, resolve_dtype

        resolve_dtype(self.dtype, default_device())


# ----------------------------------------------------------------------------- grids


def parse_size(text: str, L: int) -> int:
    """One block size ("64", "L", "L/2")."""
    sizes = parse_block_sizes(text, L)
    if len(sizes) != 1:
        raise DindError(f"one block size expected, got {text!r}")
    return sizes[0]


def make_setting(name: str, series: str, x: float | None, opts: SweepOptions, **kwargs) -> Setting:
    """A setting whose sampler takes the sweep's top-p, nucleus rule, redraw protocol and window
    stride unless it sets them."""
    shared = {"top_p": opts.top_p, "nucleus": opts.nucleus,
              "retry_low_entropy": opts.retry_low_entropy,
              "window_stride": opts.window_stride}  # fmt: skip
    try:
        sampler = SamplerConfig(**{**shared, **kwargs})
    except DindError as e:
        raise DindError(f"setting '{name}': {e}") from None
    return Setting(name, series, x, sampler)


def stage1_setting(L: int, opts: SweepOptions) -> Setting:
    name = f"stage 1 (block {opts.stage1})"
    return make_setting(name, STAGE1, None, opts, stages=(opts.stage1,), length=L)


def gamma_settings(
    L: int,
    gammas: tuple[float, ...],
    block_sizes: tuple[int, ...],
    opts: SweepOptions,
    policy: str = "snapshot",
) -> list[Setting]:
    """Figure 2: every (stage-2 block size, gamma), plus stage 1 alone."""
    out = [stage1_setting(L, opts)]
    for b in block_sizes:
        for g in gammas:
            two = dict(stages=(opts.stage1, b), remask=(g,), remask_policy=policy, length=L)
            out.append(
                make_setting(f"block {b}, gamma {g:g}", f"stage-2 block {b}", g, opts, **two)
            )
    return out


def policy_settings(
    L: int, gamma: float, block_size: int, policies: tuple[str, ...], opts: SweepOptions
) -> list[Setting]:
    """Table 2: each remasking policy at (block_size, gamma), plus stage 1 alone."""
    out = [stage1_setting(L, opts)]
    for p in policies:
        name = f"{p} (block {block_size}, gamma {gamma:g})"
        two = dict(stages=(opts.stage1, block_size), remask=(gamma,), remask_policy=p, length=L)
        out.append(make_setting(name, p, None, opts, **two))
    return out


def nfe_settings(
    L: int,
    steps: tuple[int, ...],
    gammas: tuple[float, ...],
    block_size: int,
    opts: SweepOptions,
) -> list[Setting]:
    """The NFE frontier: one stage (first-hitting, and ancestral with T steps per block) and
    two stages (first-hitting, stage 2 over the ``gamma`` least confident tokens)."""
    single, one = "one stage", dict(stages=(opts.stage1,), length=L)
    name = f"stage 1, first-hitting (block {opts.stage1})"
    out = [make_setting(name, single, None, opts, **one)]
    for t in steps:
        name = f"stage 1, ancestral T={t} (block {opts.stage1})"
        out.append(make_setting(name, single, None, opts, sampler="ancestral", steps=t, **one))
    for g in gammas:
        name = f"two stages, block {block_size}, gamma {g:g}"
        two = dict(stages=(opts.stage1, block_size), remask=(g,), length=L)
        out.append(make_setting(name, "two stages", None, opts, **two))
    return out


def topp_settings(
    L: int,
    top_ps: tuple[float, ...],
    gammas: tuple[float, ...],
    block_size: int,
    opts: SweepOptions,
) -> list[Setting]:
    """The diversity control: stage 1 and two stages (one series per gamma) at each nucleus
    mass. A lower top-p also lowers Gen PPL by making text less diverse; comparing the curves
    at equal entropy (``dind.frontier``) says whether the second stage buys more."""
    out = []
    for p in top_ps:
        one = dict(stages=(opts.stage1,), length=L, top_p=p)
        out.append(make_setting(f"stage 1, top-p {p:g}", STAGE1, p, opts, **one))
        for g in gammas:
            name = f"two stages (block {block_size}, gamma {g:g}), top-p {p:g}"
            two = dict(stages=(opts.stage1, block_size), remask=(g,), length=L, top_p=p)
            out.append(make_setting(name, topp_series(g), p, opts, **two))
    return out


def parallel_settings(
    L: int,
    gammas: tuple[float, ...],
    ks: tuple[int, ...],
    taus: tuple[float, ...],
    picks: tuple[str, ...],
    block_size: int,
    opts: SweepOptions,
    refreshes: tuple[int, ...] = (),
    recomputes: tuple[str, ...] = ("masked",),
) -> list[Setting]:
    """Fast refinement (``dind.parallel``): stage 1 alone, then for each gamma two stages whose
    refinement commits K positions per call (uniformly chosen, or the K most confident, one
    series per rule) or every position whose drawn token reaches tau; the draft is stage 1's,
    one per call. x is K or tau. Each of ``refreshes`` adds the uniform-K series again with
    Fast-dLLM's approximate cache, a full pass every R calls (``SamplerConfig.refresh``), once
    per rule of what the calls between recompute (``recomputes``; any but "masked" named)."""
    out = [stage1_setting(L, opts)]
    for g in gammas:
        two = dict(stages=(opts.stage1, block_size), remask=(g,), length=L)
        for pick in picks:
            prefix = "" if pick == "uniform" else f"{pick}:"
            for k in ks:
                name = f"gamma {g:g}, {prefix}{k} per call"
                rule = ("1", f"{prefix}{k}")
                out.append(
                    make_setting(name, f"gamma {g:g}, {pick} K", k, opts, parallel=rule, **two)
                )
        for tau in taus:
            name = f"gamma {g:g}, tau {tau:g}"
            rule = ("1", f"tau:{tau:g}")
            out.append(make_setting(name, f"gamma {g:g}, tau", tau, opts, parallel=rule, **two))
        for r, rule in ((r, rule) for r in refreshes for rule in recomputes):
            tag = f"refresh {r}" + ("" if rule == "masked" else f" {rule}")
            for k in ks:
                out.append(make_setting(f"gamma {g:g}, {k} per call, {tag}",
                                        f"gamma {g:g}, uniform K, {tag}", k, opts,
                                        parallel=("1", str(k)), refresh=r, recompute=rule,
                                        **two))  # fmt: skip
    return out


def topp_series(gamma: float) -> str:
    return f"two stages, gamma {gamma:g}"


def check_unique(settings: list[Setting]) -> None:
    seen = set()
    for s in settings:
        if s.name in seen:
            raise DindError(f"setting '{s.name}' appears twice in the grid")
        seen.add(s.name)


# ----------------------------------------------------------------------------- training mixes


@dataclass(frozen=True)
class Mix:
    """One training mix: a name and its block-size distribution P_B."""

    name: str
    dist: BlockSizeDistribution


DEFAULT_MIXES = ("4", "4,L:0.9,0.1", "4,L/2:0.9,0.1", "pow4")
POWER_MIXES = {"pow2": 2, "pow4": 4}
"""Table 3's uniform mixture. The paper's text says "all power-of-two scales" but its list,
{4, 16, 64, ..., 1024}, is the powers of 4, which ``pow4`` follows (the default)."""


def power_sizes(base: int, small: int, L: int) -> tuple[int, ...]:
    """``small``, ``small * base``, ... up to L, with L itself added when it is not one of them
    (the mixture always reaches the whole sequence; at L = 1024, pow4 is the paper's list)."""
    sizes, b = [], small
    while b <= L:
        sizes.append(b)
        b *= base
    if sizes[-1:] != [L]:
        sizes.append(L)
    return tuple(sizes)


def parse_mix(spec: str, L: int, small: int = 4) -> Mix:
    """A mix from "4" (fixed), "4,L:0.9,0.1" (sizes:probabilities, uniform without them),
    "pow2" or "pow4" (uniform over ``small`` times the powers of 2 or 4, up to L)."""
    spec = spec.strip()
    try:
        if spec in POWER_MIXES:
            sizes = power_sizes(POWER_MIXES[spec], small, L)
            dist = BlockSizeDistribution(sizes, tuple(1 / len(sizes) for _ in sizes))
            name = "uniform {" + ",".join(map(str, sizes)) + "}"
        else:
            size_text, _, prob_text = spec.partition(":")
            sizes = parse_block_sizes(size_text, L)
            dist = BlockSizeDistribution.parse(",".join(map(str, sizes)), prob_text or None)
            name = (f"fixed {sizes[0]}" if len(sizes) == 1 else
                    f"mix ({', '.join(map(str, sizes))})")  # fmt: skip
        bad = [b for b in dist.block_sizes if b <= 0 or L % b]
        if bad:
            raise DindError(f"block size(s) {bad} do not divide L = {L}")
    except DindError as e:
        raise DindError(f"mix '{spec}': {e}") from None
    return Mix(name, dist)
