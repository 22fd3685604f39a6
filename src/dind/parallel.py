"""Parallel decoding: how many masked positions of a block one denoiser call commits.

The first-hitting sampler of BD3-LM commits one masked position per call, chosen uniformly.
A stage may instead commit several per call (``dind.denoise`` applies the rule):

- ``K`` (an integer): K masked positions chosen uniformly, as first-hitting chooses one;
  ``1`` is BD3-LM's sampler exactly (the default).
- ``top:K``: the K masked positions the current prediction is most confident about (the
  largest top-token probability), as confidence-ordered parallel decoders choose.
- ``tau:X``: every masked position whose drawn token has probability at least X, and at least
  one per call (the most confident position): Fast-dLLM's threshold rule. Only a position
  whose top probability reaches X can pass, so tokens are drawn only there.

Every committed token's snapshot confidence is its probability at the call that committed it,
and the NFE count is the number of calls. Spelled per stage on the command line:
``--parallel 1,8`` drafts as BD3-LM does and refines 8 uniformly chosen tokens per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dind.errors import DindError

PICKS = ("uniform", "top", "tau")


@dataclass(frozen=True)
class Parallel:
    """One stage's rule: ``pick`` "uniform" or "top" commits ``k`` positions per call (fewer
    when fewer are masked); "tau" commits those whose drawn token's probability is at least
    ``tau`` (at least one)."""

    pick: str = "uniform"
    k: int = 1
    tau: float | None = None

    def __post_init__(self) -> None:
        if self.pick not in PICKS:
            raise DindError(f"parallel rule must be one of {', '.join(PICKS)}, got {self.pick!r}")
        if self.pick == "tau":
            if self.tau is None or not 0.0 < self.tau <= 1.0 or math.isnan(self.tau):
                raise DindError(f"tau must be in (0, 1], got {self.tau}")
        elif self.k < 1:
            raise DindError(f"positions per call must be at least 1, got {self.k}")

    @property
    def one_per_call(self) -> bool:
        """BD3-LM's first-hitting sampler: one uniformly chosen position per call."""
        return self.pick == "uniform" and self.k == 1

    @classmethod
    def parse(cls, text: str) -> Parallel:
        """``"8"``, ``"top:8"`` or ``"tau:0.9"``."""
        spec = text.strip()
        kind, sep, value = spec.partition(":")
        try:
            if not sep:
                return cls("uniform", int(spec))
            if kind == "top":
                return cls("top", int(value))
            if kind == "tau":
                return cls("tau", tau=float(value))
        except ValueError:
            pass
        raise DindError(
            f"parallel setting {spec!r}: write K, top:K or tau:X (e.g. 8, top:8, tau:0.9)"
        )

    def __str__(self) -> str:
        if self.pick == "tau":
            return f"tau:{self.tau:g}"
        return f"{self.k}" if self.pick == "uniform" else f"top:{self.k}"
