"""Inter-stage remasking (section 3.2, eq. 6): which floor(gamma * L) tokens are masked again.

Policies:
- ``snapshot`` (the paper's): the lowest snapshot confidences, recorded when each token was
  committed (a token carried through a stage keeps the score of the stage that committed it).
- ``posthoc`` (baseline): confidences from one extra forward pass over the finished draft:
  the whole sequence, unmasked, in one block (block size L, bidirectional), scored by the
  model's raw distribution at each position (mask token excluded, no SUBS override, which
  would give every visible token probability 1). That pass counts as one NFE of the stage.
  Past the model's context it is one pass per window of the stage's window walk, each
  token scored by the first window that holds it (as it is filled), one NFE per window.
- ``random`` (baseline): a uniformly random subset, from the sample's own generator.

BOS (position 0) and prompt tokens are never eligible. Ties in confidence go to the lower
position first (a stable sort), so the choice is deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dind.config import POLICIES
from dind.denoise import probs_of

__all__ = ["POLICIES", "posthoc_scores", "select", "select_batch"]


def select(
    scores: Tensor, eligible: Tensor, n: int, policy: str, generator: torch.Generator
) -> Tensor:
    """Positions (sorted) to mask again for one sample: scores (L,), eligible (L,) bool."""
    return select_batch(scores[None], eligible, n, policy, [generator])[0]


def select_batch(
    scores: Tensor, eligible: Tensor, n: int, policy: str, generators: list[torch.Generator]
) -> Tensor:
    """(B, n') positions (sorted per row) to mask again, n' = min(n, eligible positions):
    scores (B, L), eligible (L,) bool, row b's random choice from ``generators[b]``. One
    batched sort; only the random policy draws per row (a ``randperm`` each)."""
    eligible = eligible.to(scores.device)
    n = min(n, int(eligible.sum()))
    B = scores.shape[0]
    if n == 0:
        return torch.zeros(B, 0, dtype=torch.long, device=scores.device)
    if policy == "random":
        candidates = torch.nonzero(eligible).flatten()
        order = torch.stack([
            torch.randperm(len(candidates), generator=g, device=g.device)[:n] for g in generators
        ]).to(scores.device)  # fmt: skip
        return candidates[order].sort(dim=1).values
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=scores.device)
    ranked = torch.where(eligible[None, :], scores.double(), inf)
    order = torch.sort(ranked, dim=1, stable=True).indices  # ties: lower position first
    return order[:, :n].sort(dim=1).values


@torch.no_grad()
def posthoc_scores(
    model: torch.nn.Module, x: Tensor, mask_id: int, windows: list[tuple[int, int]]
) -> Tensor:
    """(B, L) probability of each token of the finished draft under bidirectional passes over
    ``windows`` (ordered, covering [0, L): [(0, L)] is one full pass)."""
    scores = torch.empty(x.shape, dtype=torch.float64, device=x.device)
    done = 0
    for lo, hi in windows:
        logits = model(x[:, lo:hi]).flatten(0, 1)  # (B * (hi - lo), V)
        p = probs_of(logits, x[:, lo:hi].flatten(), mask_id).view(len(x), hi - lo)
        scores[:, done:hi] = p[:, done - lo :]  # a token already scored keeps its first score
        done = hi
    return scores
