"""Mixed-scale training (eq. 7-8): a block size drawn per example from P_B.

The loss is E_{B ~ P_B}[L_BD(x; theta, B)]: each row of a batch draws its own block size, and
the attention mask and per-block noise follow it. The paper's bimodal P_B puts 1 - lambda on
the draft block (4) and lambda = 0.1 on the whole sequence (L).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dind.config import BlockSizeDistribution


def sample_block_sizes(
    dist: BlockSizeDistribution, batch_size: int, device: torch.device | str = "cpu"
) -> Tensor:
    """(batch_size,) block sizes drawn i.i.d. from P_B (uses the global torch RNG)."""
    sizes = torch.tensor(dist.block_sizes, dtype=torch.long)
    if len(sizes) == 1:
        return sizes.expand(batch_size).clone().to(device)
    probs = torch.tensor(dist.probs, dtype=torch.float)
    idx = torch.multinomial(probs, batch_size, replacement=True)
    return sizes[idx].to(device)
