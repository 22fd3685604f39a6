"""Shared builders for tests: a tiny run on a small generated corpus."""

from __future__ import annotations

import random
from pathlib import Path

from dind.config import BlockSizeDistribution, ModelConfig, NoiseConfig, RunConfig, TrainConfig

WORDS = [
    "the",
    "king",
    "and",
    "queen",
    "walk",
    "to",
    "the",
    "castle",
    "by",
    "night",
    "while",
    "a",
    "ghost",
    "speaks",
    "of",
    "old",
    "wars",
    "and",
    "gold",
    "rings",
    "in",
    "the",
    "hall",
]


def write_corpus(folder: Path, n_docs: int = 12, words_per_doc: int = 400, seed: int = 0) -> Path:
    """Documents of loosely structured text, a file each."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        words = []
        for _ in range(words_per_doc // 8):
            start = rng.randrange(len(WORDS) - 8)
            words += WORDS[start : start + 8]
        (folder / f"doc{i:02d}.txt").write_text(" ".join(words) + "\n")
    return folder


def tiny_run(corpus: Path, **train_overrides) -> RunConfig:
    train = dict(
        corpus=str(corpus),
        tokenizer="bpe",
        bpe_vocab_size=300,
        batch_size=4,
        max_steps=12,
        lr=3e-3,
        warmup_steps=2,
        ema=0.9,
        eval_every=6,
        eval_batches=2,
        log_every=1,
        block_dist=BlockSizeDistribution((4, 32), (0.5, 0.5)),
        noise=NoiseConfig(clip_search_widths=(0.5,), clip_search_delta=0.25),
    )
    train.update(train_overrides)
    return RunConfig(
        model=ModelConfig(
            vocab_size=301,
            mask_id=300,
            seq_len=32,
            hidden_dim=32,
            cond_dim=16,
            n_blocks=2,
            n_heads=2,
            dropout=0.0,
        ),
        train=TrainConfig(**train),
        preset="test",
    )
