"""A run's ``metrics.jsonl``: strict JSON, one record a line (a non-finite number is null),
appended as training goes. A kill can leave a partial last line: readers set it aside, and
``truncate`` (on ``--resume``) drops it, and says so, with the records after the checkpoint
resumed from."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from dind.errors import DindError
from dind.utils import atomic_write, finite_or_none

METRICS = "metrics.jsonl"


def append(path: Path, record: dict[str, Any]) -> None:
    """One line of strict JSON at the end of ``path`` (a kill mid-write leaves a partial last
    line, which ``read_records`` sets aside)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")


def read_records(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """Each complete line of ``path`` with its record, and the unterminated last line ("" if
    none): what a kill during a write leaves. Any other line that is not a record is an error."""
    *lines, partial = path.read_text(encoding="utf-8").split("\n")
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise DindError(f"{path} line {n} is not a metrics record; repair or delete it")
        out.append((line, record))
    return out, partial


def truncate(path: Path, step: int | None) -> None:
    """Keep the records up to ``step`` (None: none), rewritten atomically: those after the
    checkpoint resumed from are redone. A partial last line is dropped, and said so."""
    if not path.exists():
        return
    lines, partial = read_records(path)
    if partial:
        print(f"{path}: dropped a partial last line (a write cut short)", file=sys.stderr)
    keep = [line for line, record in lines if step is not None and record["step"] <= step]
    atomic_write(path, "".join(line + "\n" for line in keep))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's ``metrics.jsonl`` (a partial last line left out)."""
    return [record for _, record in read_records(Path(run_dir) / METRICS)[0]]
