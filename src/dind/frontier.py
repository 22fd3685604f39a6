"""The quality-diversity frontier: is a method better than what a smaller top-p also buys?

A lower nucleus mass lowers generative perplexity by making text less diverse (lower unigram
entropy), so a Gen PPL gain is only a gain of the method where it beats the reference's curve
at the *same* entropy. The reference curve is a set of (entropy, Gen PPL) points, typically
stage 1 across top-p; a candidate point's matched-entropy gap is its log Gen PPL minus the
curve's log Gen PPL at its entropy, interpolated linearly in (entropy, log Gen PPL) between
the two curve points around it. Negative: better than sharpening the reference. A point
outside the curve's entropy range gets no gap: the curve is never extrapolated.

Points are paired by sampling seed: each seed's candidate is compared with the same seed's
curve, so the spread over seeds is the spread of paired gaps.

``dind frontier`` computes the gaps between any two sets of runs: sweep records
(``<kind>.json`` of ``dind sweep``) or evaluations (``dind eval --out``), see ``load_points``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dind.errors import DindError

STAGE1 = "stage 1"
REFERENCE = "reference"

__all__ = [
    "add_matched_gaps", "compare", "curve_at", "format_gaps", "load_points",
    "matched_entropy_gaps", "select", "split_record",
]  # fmt: skip


def curve_at(points: list[tuple[float, float]], entropy: float) -> float | None:
    """A curve's value at ``entropy``, linear between its two points around it; ``points`` are
    (entropy, value). None outside the curve's entropy range: a gap is never extrapolated."""
    pts = sorted(points)
    for (e0, y0), (e1, y1) in zip(pts, pts[1:], strict=False):
        if e0 <= entropy <= e1:
            return y0 if e1 == e0 else y0 + (y1 - y0) * (entropy - e0) / (e1 - e0)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == entropy else None


def matched_entropy_gaps(
    rows: list[dict[str, Any]], reference_series: str = STAGE1
) -> dict[str, list[float | None]]:
    """Per setting outside ``reference_series``, per seed: log Gen PPL minus the reference
    curve's log Gen PPL at the same entropy, the curve being that seed's reference points (e.g.
    stage 1 across top-p) interpolated in entropy. Negative: better than what sharpening stage
    1 alone buys at that diversity; None where the entropy lies outside the curve."""
    curves: dict[Any, list[tuple[float, float]]] = {}
    for r in rows:
        if r["series"] == reference_series and r["gen_ppl"]:
            curves.setdefault(r["seed"], []).append((r["entropy"], math.log(r["gen_ppl"])))
    gaps: dict[str, list[float | None]] = {}
    for r in rows:
        if r["series"] == reference_series:
            continue
        at = curve_at(curves.get(r["seed"], []), r["entropy"]) if r["gen_ppl"] else None
        gaps.setdefault(r["setting"], []).append(
            None if at is None else math.log(r["gen_ppl"]) - at
        )
    return gaps


def _gap_stats(gaps: list[float | None]) -> dict[str, Any]:
    inside = [g for g in gaps if g is not None]
    return {
        "matched_gap_log_mean": statistics.fmean(inside) if inside else None,
        "matched_gap_log_std": statistics.stdev(inside) if len(inside) > 1 else None,
        "matched_gap_seeds": f"{len(inside)}/{len(gaps)}",
    }


def add_matched_gaps(summary: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Each summary row outside stage 1 gets its matched-entropy gap: the mean and std over
    seeds of the log ratio (``matched_gap_log_mean/std``) and the seeds inside the curve."""
    for name, gaps in matched_entropy_gaps(rows).items():
        next(x for x in summary if x["setting"] == name).update(_gap_stats(gaps))


# ----------------------------------------------------------------------------- dind frontier


def _eval_point(record: dict[str, Any], label: str) -> dict[str, Any]:
    """One point from a ``dind eval --out`` record: its aggregate, under the samples' seed."""
    a = record["aggregate"]
    seeds = {r.get("seed") for r in record.get("samples", [])}
    return {"setting": label, "series": label, "seed": seeds.pop() if len(seeds) == 1 else None,
            "gen_ppl": a["gen_ppl_mean"], "entropy": a["entropy_mean"]}  # fmt: skip


def load_points(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """(setting, series, seed, Gen PPL, entropy) points of one file, and whether it is a sweep:
    every row of a sweep record (``<kind>.json``; a folder means its ``topp.json``), or the
    aggregate of an evaluation (``dind eval --out``) as one point named after the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "topp.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DindError(f"frontier: no such file: {path}") from None
    except (OSError, ValueError) as e:
        raise DindError(f"frontier: {path} is not a JSON record ({e})") from None
    if isinstance(record, dict) and "rows" in record and "kind" in record:
        return [dict(r) for r in record["rows"]], True
    if isinstance(record, dict) and "aggregate" in record:
        return [_eval_point(record, path.stem)], False
    raise DindError(f"frontier: {path} is neither a sweep record nor a `dind eval --out` file")


def _keep(
    rows: list[dict[str, Any]], path: Path, series: str | None, exclude: str | None
) -> list[dict[str, Any]]:
    rows = [r for r in rows if (series is None or r["series"] == series)
            and r["series"] != exclude]  # fmt: skip
    if not rows:
        raise DindError(f"frontier: {path} has no rows of series {series!r}")
    return rows


def select(
    paths: Sequence[Path], series: str | None, exclude: str | None = None
) -> list[dict[str, Any]]:
    """The points of several files: of a sweep record only the rows of ``series`` (when given)
    and never those of ``exclude``; an evaluation's one point always. With several files,
    each setting is prefixed by its file so that the names stay apart."""
    out = []
    for path in paths:
        rows, is_sweep = load_points(path)
        if is_sweep:
            rows = _keep(rows, path, series, exclude)
            if len(paths) > 1:
                rows = [{**r, "setting": f"{path}: {r['setting']}"} for r in rows]
        out += rows
    return out


def split_record(
    path: Path, reference_series: str, candidate_series: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One sweep record read once: its reference curve and the points to place against it."""
    rows, is_sweep = load_points(path)
    if not is_sweep:  # an evaluation's one point is both, as ``select`` gives it
        return rows, rows
    return (_keep(rows, path, reference_series, None),
            _keep(rows, path, candidate_series, reference_series))  # fmt: skip


def compare(
    reference: Sequence[dict[str, Any]], candidates: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per candidate setting: Gen PPL and entropy means and its matched-entropy gap to the
    reference curve, paired by seed. Points without a seed (or whose seed the reference lacks)
    are compared with the curve of every reference point pooled."""
    ref = [{**r, "series": REFERENCE} for r in reference]
    pooled = []  # one point per reference setting: mean entropy, geometric-mean Gen PPL
    for name in dict.fromkeys(r["setting"] for r in ref):
        mine = [r for r in ref if r["setting"] == name and r["gen_ppl"]]
        if mine:
            pooled.append({"setting": name, "series": REFERENCE, "seed": None,
                           "entropy": statistics.fmean(r["entropy"] for r in mine),
                           "gen_ppl": math.exp(statistics.fmean(math.log(r["gen_ppl"])
                                                                for r in mine))})  # fmt: skip
    seeds = {r["seed"] for r in ref}
    if any(c["series"] == REFERENCE for c in candidates):
        raise DindError(f"frontier: a candidate series may not be called {REFERENCE!r}")
    rows = [{**c, "paired": c["seed"] is not None and c["seed"] in seeds} for c in candidates]
    paired = [r for r in rows if r["paired"]]
    unpaired = [{**r, "seed": None} for r in rows if not r["paired"]]
    gaps = matched_entropy_gaps(ref + paired, REFERENCE)
    for name, g in matched_entropy_gaps(pooled + unpaired, REFERENCE).items():
        gaps.setdefault(name, []).extend(g)
    out = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == name]
        ppl = [r["gen_ppl"] for r in mine if r["gen_ppl"]]
        out.append({
            "setting": name, "n_seeds": len(mine),
            "gen_ppl_mean": statistics.fmean(ppl) if ppl else None,
            "entropy_mean": statistics.fmean(r["entropy"] for r in mine),
            "paired": all(r["paired"] for r in mine), **_gap_stats(gaps.get(name, [])),
        })  # fmt: skip
    return out


def curve_range(reference: Sequence[dict[str, Any]]) -> tuple[float, float]:
    entropies = [r["entropy"] for r in reference]
    return min(entropies), max(entropies)


def format_gaps(result: list[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> str:
    lo, hi = curve_range(reference)
    lines = [f"reference curve: {len(reference)} points, entropy {lo:.2f}-{hi:.2f}",
             f"{'setting':<48} {'Gen PPL':>9} {'entropy':>8} {'gap at equal entropy':>22} "
             f"{'seeds inside':>13}"]  # fmt: skip
    for s in result:
        g, sd = s["matched_gap_log_mean"], s["matched_gap_log_std"]
        gap = "outside the curve" if g is None else f"{math.expm1(g):+.1%}"
        if g is not None and sd is not None:
            gap += f" (sd {sd:.2f})"
        ppl = "-" if s["gen_ppl_mean"] is None else f"{s['gen_ppl_mean']:.1f}"
        lines.append(f"{s['setting']:<48} {ppl:>9} {s['entropy_mean']:>8.2f} {gap:>22} "
                     f"{s['matched_gap_seeds']:>13}")  # fmt: skip
    lines.append("gap: Gen PPL relative to the reference interpolated at the same entropy "
                 "(negative = better than what moving along the reference curve buys); "
                 "sd is of the log ratio over seeds")  # fmt: skip
    return "\n".join(lines)
