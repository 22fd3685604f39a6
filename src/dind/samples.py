"""The samples schema: one owner for a sample and its JSONL record.

``dind sample``, the sweeps and the demo write samples through ``write_samples``; ``dind eval``,
``dind report``, the sweeps (``--samples-from``) and the demo read them through
``read_samples`` and, where the trajectory is needed, ``from_record``. A record holds the
decoded text, the sampler settings that drew it, and the trajectory: each stage's tokens, the
snapshot confidence of every token, the positions remasked before each stage, and the NFEs
and seconds of each stage. ``revisions`` is the one reading of a trajectory
that ``dind sample --show`` and ``dind report`` both render.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dind.errors import DindError
from dind.utils import atomic_open

if TYPE_CHECKING:
    from torch import Tensor

    from dind.config import SamplerConfig


@dataclass
class Sample:
    """One sequence and its trajectory through the stages."""

    index: int
    seed: int
    stage_tokens: list[list[int]] = field(default_factory=list)
    snapshot_confidence: list[list[float]] = field(default_factory=list)
    remasked: list[list[int]] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    redraws: int | None = None
    """Stage-1 drafts thrown away by ``retry_low_entropy``; None when the option is off."""
    rng_state: Tensor | None = field(default=None, repr=False)
    """The sample's generator state after its last stage (not saved): lets ``refine`` go on
    from this point exactly as one longer ``sample`` call would have."""

    @property
    def tokens(self) -> list[int]:
        return self.stage_tokens[-1]


TRAJECTORY = ("stage_tokens", "snapshot_confidence", "remasked", "nfe", "seconds")


def to_record(s: Sample, tokenizer, cfg: SamplerConfig) -> dict[str, Any]:
    """The JSONL record of one sample (other tools read these keys)."""
    return {
        "index": s.index,
        "seed": s.seed,
        "text": tokenizer.decode(s.tokens[1:]),  # position 0 is BOS
        "stages": list(cfg.stages),
        "remask_ratios": list(cfg.remask),
        "remask_policy": cfg.remask_policy,
        "top_p": cfg.top_p,
        "nucleus": cfg.nucleus,
        **{key: getattr(s, key) for key in TRAJECTORY},
        # only with retry_low_entropy, so a file drawn without it is as before
        **({} if s.redraws is None else {"redraws": s.redraws}),
        # only with parallel decoding, likewise
        **({"parallel": list(cfg.parallel)} if cfg.parallel else {}),
        **({"refresh": cfg.refresh} if cfg.refresh is not None else {}),
        **({"recompute": cfg.recompute} if cfg.recompute != "masked" else {}),
    }


def from_record(record: dict[str, Any]) -> Sample:
    """The ``Sample`` a record was written from (its generator state is not saved). Keys it
    does not know are ignored (older files also hold ``cache_passes``, no longer recorded:
    the cache is filled inside denoiser calls, ``dind.denoise.BlockView.cached_logits``)."""
    missing = [k for k in ("index", "seed", *TRAJECTORY) if k not in record]
    if missing:
        raise DindError(f"a sample record without its trajectory ({', '.join(missing)})")
    return Sample(record["index"], record["seed"], **{k: record[k] for k in TRAJECTORY},
                  redraws=record.get("redraws"))  # fmt: skip


def write_samples(path: str | Path, samples: list[Sample], tokenizer, cfg: SamplerConfig) -> list:
    """Write the samples' records as a JSONL file, atomically; returns the records."""
    records = [to_record(s, tokenizer, cfg) for s in samples]
    write_records(path, records)
    return records


def write_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Write sample records as a JSONL file, atomically."""
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """Records of a samples JSONL file; anything else is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise DindError(f"samples file not found: {path}")
    records = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DindError(f"{path} line {n} is not UTF-8 text: not a dind samples file") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DindError(f"{path} line {n} is not JSON: not a dind samples file") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DindError(f"{path} line {n} has no 'text': not a dind samples file")
        records.append(record)
    if not records:
        raise DindError(f"{path} holds no samples")
    return records


def file_name(setting: str, seed: int) -> str:
    """The samples file of a named sweep setting under one seed."""
    return f"{slug(setting)}_seed{seed}.jsonl"


def slug(text: str) -> str:
    """``text`` as a file name: runs of other characters become ``_``, lower case."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


@dataclass(frozen=True)
class Revision:
    """What stage ``stage`` (2, 3, ...) did to the tokens of the stage before it."""

    stage: int
    before: list[int]
    after: list[int]
    remasked: list[int]
    """Positions masked again before this stage (and re-filled by it)."""
    changed: frozenset[int]
    """The remasked positions whose token the stage changed."""
    nfe: int | None


def revisions(s: Sample | dict[str, Any]) -> list[Revision]:
    """Each refinement stage of a sample (or its record): before, after, what changed."""
    get = s.get if isinstance(s, dict) else lambda key, default=None: getattr(s, key, default)
    steps, remasked, nfe = get("stage_tokens") or [], get("remasked") or [], get("nfe") or []
    out = []
    for k in range(1, len(steps)):
        before, after = steps[k - 1], steps[k]
        chosen = [int(p) for p in remasked[k]]
        changed = frozenset(p for p in chosen if after[p] != before[p])
        calls = nfe[k] if k < len(nfe) else None
        out.append(Revision(k + 1, before, after, chosen, changed, calls))
    return out
