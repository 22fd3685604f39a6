"""Terminal rendering of a draft-then-refine trajectory (``dind sample --show``).

For each refinement stage: the previous stage's text with the remasked tokens struck
through in red, then the revised text with the tokens that changed in green and the
re-filled but unchanged ones in yellow.
"""

from __future__ import annotations

from dind.sampler import Sample
from dind.tokenizer import Tokenizer

RED, GREEN, YELLOW, DIM, RESET = "\x1b[9;31m", "\x1b[1;32m", "\x1b[33m", "\x1b[2m", "\x1b[0m"


def _render(tokens: list[int], tokenizer: Tokenizer, styles: dict[int, str]) -> str:
    out = []
    for i, t in enumerate(tokens[1:], start=1):  # position 0 is BOS
        piece = tokenizer.decode([t])
        style = styles.get(i)
        out.append(f"{style}{piece}{RESET}" if style else piece)
    return "".join(out)


def render_sample(s: Sample, tokenizer: Tokenizer, stage_sizes: tuple[int, ...]) -> str:
    lines = [f"{DIM}── sample {s.index} (seed {s.seed}) ──{RESET}",
             f"{DIM}stage 1 draft (block {stage_sizes[0]}, {s.nfe[0]} NFE):{RESET}"]  # fmt: skip
    if len(s.stage_tokens) == 1:
        lines.append(_render(s.tokens, tokenizer, {}))
    for k in range(1, len(s.stage_tokens)):
        before, after, positions = s.stage_tokens[k - 1], s.stage_tokens[k], s.remasked[k]
        lines.append(_render(before, tokenizer, {p: RED for p in positions}))
        changed = {p: GREEN if after[p] != before[p] else YELLOW for p in positions}
        n_changed = sum(1 for p in positions if after[p] != before[p])
        lines.append(f"{DIM}stage {k + 1} (block {stage_sizes[k]}, {len(positions)} remasked, "
                     f"{n_changed} changed, {s.nfe[k]} NFE):{RESET}")  # fmt: skip
        lines.append(_render(after, tokenizer, changed))
    return "\n".join(lines)
