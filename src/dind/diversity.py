"""Diversity of one sample: its unigram entropy, and BD3-LM's low-entropy rule (which its
sampler uses to redraw degenerate drafts and ``dind eval`` reports)."""

from __future__ import annotations

import math
from collections import Counter

DEFAULT_ENTROPY_THRESHOLD = 4.0
"""Nats; BD3-LM's bound, also the default of the reported low-entropy share."""
BD3LM_ENTROPY_WINDOW = 256
"""BD3-LM checks the last this many positions, and only once the sequence is longer."""


def unigram_entropy(tokens: list[int]) -> float:
    """Entropy (nats) of the token frequency distribution of one sample."""
    if not tokens:
        return 0.0
    n = len(tokens)
    return -sum(c / n * math.log(c / n) for c in Counter(tokens).values())


def bd3lm_rejects(tokens: list[int], block_size: int) -> bool:
    """Whether BD3-LM's sampler would redraw this sequence (BOS at position 0 included).

    BD3-LM checks after every block: once the sequence so far is longer than 256 positions,
    a unigram entropy below 4 nats over its last 256 tokens rejects it. Checking the finished
    sequence at every block end is the same rule (a rejected draw stops early there; the set
    of accepted sequences is identical). BOS never falls in a window: windows start at 1 or
    later. Entropy is per sequence (BD3-LM pools its batch, but draws batches of one for
    Gen PPL)."""
    w = BD3LM_ENTROPY_WINDOW
    first_end = (w // block_size + 1) * block_size  # the first block end past w positions
    return any(
        unigram_entropy(tokens[end - w : end]) < DEFAULT_ENTROPY_THRESHOLD
        for end in range(first_end, len(tokens) + 1, block_size)
    )
