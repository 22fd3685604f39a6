"""Typed configuration for dind: the model, the mixed-scale block sizes, training, sampling.

Design choices:
- Plain dataclasses with a docstring per field and validation in ``__post_init__``; the CLI
  generates its options from them (``dind.cli_options``: the docstrings are the help, a
  ``Literal`` field's values the choices), presets are Python functions returning them, and
  the resolved config is saved as JSON inside every run folder and checkpoint.
- Each set of choices is one ``Literal`` alias here, and its values (``get_args``) the one
  tuple the code checks against. The module imports no torch: building the CLI is fast.
- ``ModelConfig`` holds what the backbone's weights depend on (and BD3-LM's ``config.json``
  fields map onto it); everything about how a model is trained lives in ``TrainConfig``.
- Errors a user can cause raise ``DindError`` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from dind.errors import DindError

AttnBackend = Literal["sdpa", "flex"]
Objective = Literal["bd3", "ar"]
TokenizerName = Literal["gpt2", "bpe"]
PresetName = Literal["tiny", "base", "small"]
RemaskPolicy = Literal["snapshot", "posthoc", "random"]
NucleusRule = Literal["bd3lm", "hf"]
SamplerName = Literal["first_hitting", "ancestral"]
Confidence = Literal["model", "nucleus"]
Recompute = Literal["masked", "delayed", "asked"]
Dtype = Literal["auto", "bf16", "tf32", "fp32"]
"""Precision of a model's passes while sampling (``dind.devices.resolve_dtype``)."""

POLICIES: tuple[str, ...] = get_args(RemaskPolicy)
"""The remasking policies (``dind.remask``)."""
NUCLEUS_RULES: tuple[str, ...] = get_args(NucleusRule)
"""The nucleus rules (``dind.nucleus.nucleus_keep``)."""
DTYPES: tuple[str, ...] = get_args(Dtype)

SAMPLE_SETTINGS = ("ar_cache", "stage1_cache", "stage1_no_cache", "two_stages",
                   "two_stages_parallel")  # fmt: skip
"""What ``dind bench sample`` times: AR decoding with a KV cache; stage 1 (block 4) with and
without the cache; two stages (4, L) at gamma refining one token per call; the same with the
parallel refinement rule (``dind.parallel``)."""


@dataclass
class ModelConfig:
    """The DiT backbone of BD3-LM, any size."""

    vocab_size: int = 50258
    """Embedding rows: the tokenizer's vocabulary plus one mask token (GPT-2: 50257 + 1)."""
    mask_id: int = 50257
    """Id of the mask token m (BD3-LM: the last id)."""
    seq_len: int = 1024
    """Sequence length L the model is trained at (BD3-LM's ``model_length``)."""
    hidden_dim: int = 768
    """Width d of the residual stream."""
    cond_dim: int = 128
    """Width of the time-conditioning vector c fed to every adaLN."""
    n_blocks: int = 12
    """Number of transformer blocks."""
    n_heads: int = 12
    """Attention heads; head_dim = hidden_dim / n_heads (rotary needs it even)."""
    dropout: float = 0.1
    """Dropout on the attention and MLP branches during training."""
    time_conditioning: bool = False
    """Feed the noise level to adaLN. BD3-LM's default is False (c is a learned constant)."""
    causal: bool = False
    """Causal attention and no x_0 half: the autoregressive baseline (``--objective ar``)."""
    attn_backend: AttnBackend = "sdpa"
    """"sdpa" (any device) or "flex" (FlexAttention, CUDA only; same logits)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "hidden_dim", "cond_dim", "n_blocks", "n_heads"):
            if getattr(self, name) <= 0:
                raise DindError(f"model.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.mask_id < self.vocab_size:
            raise DindError(f"mask_id {self.mask_id} is outside the vocabulary {self.vocab_size}")
        if self.hidden_dim % self.n_heads or (self.hidden_dim // self.n_heads) % 2:
            raise DindError(f"hidden_dim {self.hidden_dim} must split into {self.n_heads} heads "
                            "of even size (rotary embeddings)")  # fmt: skip
        if not 0.0 <= self.dropout < 1.0:
            raise DindError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attn_backend not in get_args(AttnBackend):
            raise DindError(f"attn_backend must be 'sdpa' or 'flex', got {self.attn_backend!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.n_heads


@dataclass
class BlockSizeDistribution:
    """P_B of eq. 7-8: a categorical distribution over block sizes that divide L.

    The paper's bimodal choice is ``block_sizes=(4, L), probs=(0.9, 0.1)`` (lambda = 0.1);
    a fixed block size is the one-element case.
    """

    block_sizes: tuple[int, ...] = (4,)
    """Block sizes B, each a positive divisor of L."""
    probs: tuple[float, ...] = (1.0,)
    """Probability of each block size; must sum to 1."""

    def __post_init__(self) -> None:
        self.block_sizes = tuple(int(b) for b in self.block_sizes)
        self.probs = tuple(float(p) for p in self.probs)
        if not self.block_sizes:
            raise DindError("at least one block size is needed")
        if len(self.block_sizes) != len(self.probs):
            raise DindError(f"{len(self.block_sizes)} block sizes but {len(self.probs)} "
                            "probabilities")  # fmt: skip
        if len(set(self.block_sizes)) != len(self.block_sizes):
            raise DindError(f"block sizes repeat: {list(self.block_sizes)}")
        if any(b <= 0 for b in self.block_sizes):
            raise DindError(f"block size must be positive, got {min(self.block_sizes)}")
        bad = [p for p in self.probs if not 0.0 <= p <= 1.0 or math.isnan(p)]
        if bad:
            raise DindError(f"block probability must be in [0, 1], got {bad[0]}")
        if abs(sum(self.probs) - 1.0) > 1e-6:
            raise DindError(f"block probabilities must sum to 1, got {sum(self.probs):g}")

    @property
    def draft(self) -> int:
        """The draft block size: the most probable one (the larger size on a tie)."""
        return max(zip(self.probs, self.block_sizes, strict=True))[1]

    def check_divides(self, seq_len: int) -> None:
        bad = [b for b in self.block_sizes if seq_len % b]
        if bad:
            raise DindError(f"block size(s) {bad} do not divide the sequence length {seq_len}")

    @classmethod
    def parse(
        cls, block_sizes: str, probs: str | None, seq_len: int | None = None
    ) -> BlockSizeDistribution:
        """From the CLI's ``--block-sizes 4,L --block-probs 0.9,0.1`` (probs default uniform;
        ``L`` and ``L/k`` need ``seq_len``)."""
        sizes = parse_block_sizes(block_sizes, seq_len)
        if probs is None:
            ps = tuple(1.0 / max(len(sizes), 1) for _ in sizes)
        else:
            try:
                ps = tuple(float(p) for p in probs.split(",") if p.strip())
            except ValueError:
                raise DindError(
                    f"--block-probs must be numbers separated by commas: {probs!r}"
                ) from None
        return cls(sizes, ps)


def parse_block_sizes(text: str, seq_len: int | None = None) -> tuple[int, ...]:
    """Block sizes from "16,64,L" or "4,L/2": ``L`` stands for the sequence length ``seq_len``
    (refused when it is None). The one parser of block sizes: training, sweeps and benches."""
    sizes = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        m = re.fullmatch(r"L(?:/(\d+))?", item)
        if m and seq_len is None:
            raise DindError(f"block size {item!r}: L is not known here; give a number")
        try:
            sizes.append(seq_len // int(m.group(1) or 1) if m else int(item))
        except (ValueError, ZeroDivisionError):
            raise DindError(f"block size {item!r}: not an integer, L or L/k") from None
    if not sizes:
        raise DindError(f"no block sizes in {text!r}")
    return tuple(sizes)


@dataclass
class NoiseConfig:
    """Log-linear masking schedule with BD3-LM's clipped bounds [beta, omega]."""

    eps_min: float = 1e-3
    """beta: lower bound of t (and of a block's masked fraction when resampling), for every block
    size below L that ``intervals`` does not name; whole-sequence rows start unclipped."""
    eps_max: float = 1.0
    """omega: upper bound of t, likewise."""
    intervals: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Given (beta, omega) per block size, overriding the defaults above and never searched
    (the search, when on, picks the other sizes' intervals at each validation)."""
    antithetic: bool = True
    """Stratify the per-block t over all blocks of the batch (variance reduction)."""
    resample: bool = True
    """Redraw a block's mask when its masked fraction falls outside [beta, omega] (BD3-LM)."""
    clip_search: bool = True
    """At each validation, pick (beta, omega) minimising the loss variance (BD3-LM's var_min)."""
    clip_search_widths: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    """Interval widths omega - beta tried by the search (BD3-LM's OWT recipe)."""
    clip_search_delta: float = 0.05
    """Step between interval starts in the search."""

    def __post_init__(self) -> None:
        self.clip_search_widths = tuple(float(w) for w in self.clip_search_widths)
        try:  # JSON gives string keys and lists
            self.intervals = {int(b): (float(lo), float(hi))
                              for b, (lo, hi) in dict(self.intervals).items()}  # fmt: skip
        except (TypeError, ValueError):
            raise DindError(f"noise intervals must map block sizes to (beta, omega): "
                            f"{self.intervals!r}") from None  # fmt: skip
        for lo, hi in [(self.eps_min, self.eps_max), *self.intervals.values()]:
            if not 0.0 < lo <= hi <= 1.0:
                raise DindError(f"noise bounds must satisfy 0 < beta <= omega <= 1, got "
                                f"[{lo}, {hi}]")  # fmt: skip
        if any(not 0 < w <= 1 for w in self.clip_search_widths) or self.clip_search_delta <= 0:
            raise DindError("clip-search widths must be in (0, 1] and delta positive")


@dataclass
class TrainConfig:
    """Everything about one training run except the backbone's shape."""

    objective: Objective = "bd3"
    """"bd3": the (mixed-scale) block diffusion NELBO; "ar": next-token loss, causal attention."""
    block_dist: BlockSizeDistribution = field(default_factory=BlockSizeDistribution)
    """P_B, the per-example block-size distribution (mixed-scale training)."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """Noise schedule bounds and their search."""
    corpus: str = "shakespeare"
    """"shakespeare" (the embedded default), "english" (it and more public-domain English:
    ``dind.english``) or comma-separated text files/folders."""
    tokenizer: TokenizerName = "bpe"
    """"gpt2" (BD3-LM's, vocab 50257 + mask) or "bpe" (trained on the corpus)."""
    bpe_vocab_size: int = 4096
    """Base vocabulary of the corpus-trained BPE."""
    batch_size: int = 16
    """Sequences per device per micro-step."""
    grad_accum: int = 1
    """Micro-steps per optimizer step (global batch = batch_size * grad_accum * world)."""
    max_steps: int = 1000
    """Optimizer steps to train for."""
    lr: float = 3e-4
    """Peak learning rate (constant after warmup, as BD3-LM)."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr."""
    weight_decay: float = 0.0
    """AdamW weight decay (BD3-LM: 0)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    ema: float = 0.9999
    """EMA decay of the weights that are saved and evaluated (0 disables)."""
    eval_every: int = 200
    """Validate (and save) every this many steps; 0 only at the end."""
    eval_batches: int = 8
    """Validation batches per evaluation."""
    log_every: int = 10
    """Write a metrics.jsonl line every this many steps."""
    seed: int = 0
    """Seeds data order, noise and initialization."""
    compile: bool = False
    """torch.compile the backbone."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""

    def __post_init__(self) -> None:
        if isinstance(self.block_dist, dict):
            self.block_dist = BlockSizeDistribution(**self.block_dist)
        if isinstance(self.noise, dict):
            self.noise = NoiseConfig(**self.noise)
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.objective not in get_args(Objective):
            raise DindError(f"objective must be 'bd3' or 'ar', got {self.objective!r}")
        if self.tokenizer not in get_args(TokenizerName):
            raise DindError(f"tokenizer must be 'gpt2' or 'bpe', got {self.tokenizer!r}")
        for name in ("batch_size", "grad_accum", "max_steps", "eval_batches", "log_every"):
            if getattr(self, name) <= 0:
                raise DindError(f"{name.replace('_', '-')} must be positive")
        if self.lr <= 0 or self.warmup_steps < 0 or self.eval_every < 0:
            raise DindError("lr must be positive and warmup/eval intervals non-negative")
        if not 0.0 <= self.ema < 1.0:
            raise DindError(f"ema decay must be in [0, 1), got {self.ema}")


@dataclass
class RunConfig:
    """What a run folder records: the model and how it is trained."""

    model: ModelConfig
    train: TrainConfig
    preset: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        try:
            return cls(
                model=ModelConfig(**d["model"]),
                train=TrainConfig(**d["train"]),
                preset=d.get("preset", "custom"),
            )
        except (KeyError, TypeError) as e:
            raise DindError(f"run config is not a dind config: {e}") from None


@dataclass
class SamplerConfig:
    """One sampling run: the stages of Algorithm 1 and how each block is denoised."""

    stages: tuple[int, ...] = (4,)
    """Block size of each stage, never decreasing (an equal size re-drafts the remasked tokens
    locally, Figure 2's smallest stage-2 block), each dividing L; (4,) is plain BD3-LM."""
    remask: tuple[float, ...] = ()
    """gamma_k for each stage after the first, in [0, 1]."""
    remask_policy: RemaskPolicy = "snapshot"
    """snapshot (the paper's) | posthoc | random."""
    length: int = 1024
    """Sequence length L, BOS included."""
    top_p: float = 0.9
    """Nucleus mass; 1.0 samples from the full distribution."""
    nucleus: NucleusRule = "bd3lm"
    """Which tokens the nucleus keeps: "bd3lm" (BD3-LM's rule, the paper's protocol) or "hf"
    (Hugging Face's, one token more: the one whose mass crosses top_p)."""
    sampler: SamplerName = "first_hitting"
    """first_hitting (one token per call, BD3-LM's protocol) | ancestral (T steps per block)."""
    steps: int | None = None
    """T for the ancestral sampler (default: the block size)."""
    kv_cache: bool = True
    """Keep clean blocks' keys/values; False recomputes the prefix on every call."""
    confidence: Confidence = "model"
    """Snapshot confidence: the model's untruncated probability, or "nucleus"."""
    seed: int = 0
    """Sample i draws from its own generator seeded from (seed, i)."""
    retry_low_entropy: bool = False
    """BD3-LM's protocol: redraw a stage-1 draft that fails its low-entropy rule (dind.sampler)."""
    window_stride: int | None = None
    """Past the model's context: the step between the windows of a stage whose block is at
    least the context, in 1..context (default: half of it)."""
    parallel: tuple[str, ...] = ()
    """Positions committed per call, one entry per stage: K (chosen uniformly), top:K (the most
    confident) or tau:X (each drawn token of probability >= X, at least one); empty: one."""
    refresh: int | None = None
    """Fast-dLLM's approximate cache in a later stage whose block spans the window: a full pass
    every R calls; the calls between recompute only what it left masked (1: exact; None: off)."""
    recompute: Recompute = "masked"
    """With refresh, what a call between full passes recomputes: "masked" (what the full pass
    left masked), "delayed" (what the last call left masked: dKV-Cache's) or "asked" (what
    the last call committed and what this call asks logits for)."""

    def __post_init__(self) -> None:
        self.stages = tuple(int(b) for b in self.stages)
        self.parallel = tuple(str(p) for p in self.parallel)
        self.remask = tuple(float(g) for g in self.remask)
        if self.length <= 0:
            raise DindError(f"length must be positive, got {self.length}")
        if self.window_stride is not None and self.window_stride <= 0:
            raise DindError(f"window stride must be positive, got {self.window_stride}")
        if not self.stages:
            raise DindError("at least one stage is needed")
        if self.refresh is not None and self.refresh < 1:
            raise DindError(f"refresh must be at least 1, got {self.refresh}")
        if self.refresh is not None and self.sampler != "first_hitting":
            raise DindError(f"refresh is for the first-hitting sampler, not {self.sampler}")
        if any(b <= 0 for b in self.stages):
            raise DindError(f"stage block sizes must be positive: {list(self.stages)}")
        if any(b > c for b, c in zip(self.stages, self.stages[1:], strict=False)):
            raise DindError(f"stage block sizes must not decrease: {list(self.stages)}")
        bad = [b for b in self.stages if self.length % b]
        if bad:
            raise DindError(f"stage block size(s) {bad} do not divide the length {self.length}")
        if len(self.remask) != len(self.stages) - 1:
            raise DindError(f"{len(self.stages)} stages need {len(self.stages) - 1} remask "
                            f"ratio(s), got {len(self.remask)}")  # fmt: skip
        if any(not 0.0 <= g <= 1.0 or math.isnan(g) for g in self.remask):
            raise DindError(f"remask ratios must be in [0, 1]: {list(self.remask)}")
        for what, name, choices in (("remask policy", "remask_policy", POLICIES),
                                    ("nucleus rule", "nucleus", NUCLEUS_RULES),
                                    ("sampler", "sampler", get_args(SamplerName)),
                                    ("confidence", "confidence", get_args(Confidence)),
                                    ("recompute", "recompute", get_args(Recompute))):  # fmt: skip
            if getattr(self, name) not in choices:
                raise DindError(f"{what} must be one of {', '.join(choices)}, got "
                                f"{getattr(self, name)!r}")  # fmt: skip
        if self.recompute != "masked" and self.refresh is None:
            raise DindError(f"recompute {self.recompute!r} is for the approximate cache: "
                            "set refresh")  # fmt: skip
        if not 0.0 < self.top_p <= 1.0:
            raise DindError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.steps is not None and self.steps <= 0:
            raise DindError("steps must be positive")
        if self.parallel:
            from dind.parallel import Parallel

            if len(self.parallel) != len(self.stages):
                raise DindError(f"{len(self.stages)} stages need {len(self.stages)} parallel "
                                f"settings, got {len(self.parallel)}")  # fmt: skip
            rules = [Parallel.parse(p) for p in self.parallel]
            if self.sampler == "ancestral" and not all(r.one_per_call for r in rules):
                raise DindError("parallel settings are for the first-hitting sampler")

    def parallel_rule(self, stage: int):
        """Stage ``stage``'s (0-based) ``dind.parallel.Parallel`` rule."""
        from dind.parallel import Parallel

        return Parallel.parse(self.parallel[stage]) if self.parallel else Parallel()


# ----------------------------------------------------------------------------- presets


def tiny() -> RunConfig:
    """Trains usefully in minutes on 2 CPU cores: 4 x 128, L = 128, a 4096-token BPE."""
    return RunConfig(
        preset="tiny",
        model=ModelConfig(
            vocab_size=4097,
            mask_id=4096,
            seq_len=128,
            hidden_dim=128,
            cond_dim=64,
            n_blocks=4,
            n_heads=4,
            dropout=0.0,
        ),
        train=TrainConfig(
            block_dist=BlockSizeDistribution((4, 128), (0.9, 0.1)),
            tokenizer="bpe",
            bpe_vocab_size=4096,
            batch_size=16,
            max_steps=600,
            lr=2e-3,
            warmup_steps=50,
            ema=0.99,
            eval_every=150,
            eval_batches=8,
            noise=NoiseConfig(clip_search_widths=(0.5, 0.7, 0.9), clip_search_delta=0.1),
        ),
    )


def base() -> RunConfig:
    """Between tiny and small: 6 x 256, L = 256, an 8192-token BPE on the ``english`` corpus,
    the paper's mix (4, L) with lambda = 0.1. Sized by measurement to train in about an hour
    on 2 CPU cores: 7.4 s per BD3 step at batch 16 (8 x 384 took 16.4 s), so 480 steps
    (``runs/scale.sh base``: 360 at block L, then 120 of the mix; dev/LOG.md)."""
    return RunConfig(
        preset="base",
        model=ModelConfig(
            vocab_size=8193,
            mask_id=8192,
            seq_len=256,
            hidden_dim=256,
            cond_dim=128,
            n_blocks=6,
            n_heads=4,
            dropout=0.0,
        ),
        train=TrainConfig(
            block_dist=BlockSizeDistribution((4, 256), (0.9, 0.1)),
            corpus="english",
            tokenizer="bpe",
            bpe_vocab_size=8192,
            batch_size=16,
            max_steps=480,
            lr=1e-3,
            warmup_steps=50,
            ema=0.999,
            eval_every=120,
            eval_batches=8,
            noise=NoiseConfig(clip_search_widths=(0.5, 0.7, 0.9), clip_search_delta=0.1),
        ),
    )


def small() -> RunConfig:
    """BD3-LM's OWT model: 12 x 768, 12 heads, L = 1024, GPT-2 vocabulary; the paper's
    mixed-scale fine-tuning mix (4, 1024) with lambda = 0.1 and BD3-LM's optimizer."""
    return RunConfig(
        preset="small",
        model=ModelConfig(),
        train=TrainConfig(
            block_dist=BlockSizeDistribution((4, 1024), (0.9, 0.1)),
            tokenizer="gpt2",
            batch_size=16,
            grad_accum=32,
            max_steps=40_000,
            lr=3e-4,
            warmup_steps=2500,
            ema=0.9999,
            eval_every=10_000,
            eval_batches=100,
        ),
    )


PRESETS = {"tiny": tiny, "base": base, "small": small}  # the values of PresetName


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise DindError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()
