"""Terminal rendering of a draft-then-refine trajectory (``dind sample --show``).

For each refinement stage: the previous stage's text with the remasked tokens struck
through in red, then the revised text with the tokens that changed in green and the
re-filled but unchanged ones in yellow.
"""

from __future__ import annotations

from dind.samples import Sample, revisions
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
    for r in revisions(s):
        lines.append(_render(r.before, tokenizer, {p: RED for p in r.remasked}))
        lines.append(f"{DIM}stage {r.stage} (block {stage_sizes[r.stage - 1]}, "
                     f"{len(r.remasked)} remasked, {len(r.changed)} changed, {r.nfe} NFE):"
                     f"{RESET}")  # fmt: skip
        styles = {p: GREEN if p in r.changed else YELLOW for p in r.remasked}
        lines.append(_render(r.after, tokenizer, styles))
    return "\n".join(lines)
