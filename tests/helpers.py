"""Shared builders for tests: a tiny run on a small generated corpus, a mock denoiser."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dind.config import BlockSizeDistribution, ModelConfig, NoiseConfig, RunConfig, TrainConfig
from dind.kv_cache import KVCache
from dind.model import DiT

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


class SwitchDenoiser(torch.nn.Module):
    """A denoiser whose samples are either diverse or degenerate, decided by the token at
    position 1 (BOS is at 0): one of the ``N_BAD`` "bad" tokens there makes every later token
    uniform over the bad tokens (unigram entropy at most log 5 nats), any other token makes
    them uniform over all ``N_REAL`` tokens (about 4.9 nats over 256). Position 1 itself, and
    any query that cannot see it, draws a bad token with probability ~0.43. ``mode``:
    "switch" (as described), "always_bad" or "never_bad". Works with and without KV cache."""

    N_REAL, BOS, MASK, N_BAD = 200, 200, 201, 5
    V = 202

    def __init__(self, seq_len: int, mode: str = "switch"):
        super().__init__()
        self.config = SimpleNamespace(seq_len=seq_len)
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.mode = mode
        self.calls = 0

    def new_kv_cache(self, batch_size, max_len=None, dtype=None):
        return KVCache(1, batch_size, 1, max_len or self.config.seq_len, 1, dtype=torch.float64)

    def forward(self, x, sigma=None, mask=None, positions=None, kv_cache=None, n_logits=None,
                logit_index=None):  # fmt: skip
        self.calls += 1
        B, T = x.shape
        toks = x.double()
        if kv_cache is not None:  # cache slot s holds position s
            k, _ = kv_cache.write(0, toks[:, None, :, None], toks[:, None, :, None])
            toks = k[:, 0, :, 0]
        vis = torch.ones(T, toks.shape[1], dtype=torch.bool) if mask is None else mask
        if toks.shape[1] > 1:
            tok1 = torch.where(vis[None, :, 1], toks[:, 1:2], float(self.MASK)).long()  # (B, T)
        else:
            tok1 = torch.full((B, T), self.MASK)
        bad = torch.arange(self.V) < self.N_BAD
        real = torch.arange(self.V) < self.N_REAL
        degenerate = torch.where(bad, 0.0, -30.0)
        diverse = torch.where(real, 0.0, -30.0)
        lure = torch.where(bad, math.log(30.0), diverse)
        if self.mode == "always_bad":
            logits = degenerate.expand(B, T, self.V)
        else:
            seen_bad = (tok1 < self.N_BAD) & (self.mode == "switch")
            logits = torch.where((tok1 == self.MASK)[..., None], lure, diverse)
            logits = torch.where(seen_bad[..., None], degenerate, logits)
        if n_logits is not None:
            logits = logits[:, :n_logits]
        if logit_index is not None:
            logits = logits.gather(1, logit_index[..., None].expand(-1, -1, self.V))
        return logits.float()


def random_dit(cfg: ModelConfig) -> DiT:
    """A DiT in eval mode whose output layer and adaLN weights are drawn, not zero-initialized,
    so that its logits depend on every input (a fresh DiT predicts uniformly)."""
    model = DiT(cfg).eval()
    torch.nn.init.normal_(model.output_layer.linear.weight, std=0.5)
    for blk in model.blocks:
        torch.nn.init.normal_(blk.adaLN_modulation.weight, std=0.2)
    return model


def dind(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``dind ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dind", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        from dind.cli import main

        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def one_error(code: int, err: str, *parts: str) -> None:
    """Exit 2 and exactly one line on stderr: ``error: ...`` holding every one of ``parts``."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])
