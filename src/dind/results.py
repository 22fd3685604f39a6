"""Sweep results: per-setting summaries over seeds, the CSV, JSON and PNG files of a sweep, the
terminal table, and the tables and plots ``dind report`` shows.

The CSVs hold one row per (setting, seed) (``KIND_seeds.csv``) and a summary per setting
(``KIND.csv``): mean, standard deviation, min and max of Gen PPL over seeds, the means of the
rest, and, where the sweep has a stage-1 reference, the mean paired difference to it (same
seed, same drafts). The top-p control's summary also holds each setting's gap to stage 1's
curve at equal entropy (``dind.frontier``). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dind.errors import DindError
from dind.frontier import add_matched_gaps
from dind.plots import PLOTS
from dind.utils import atomic_write

KINDS = ("gamma", "policy", "nfe", "topp", "mix", "parallel")


Reference = str | dict[str, str] | None
"""The setting others are compared with: one name for the whole sweep, or one per series."""


def summarize(rows: list[dict[str, Any]], reference: Reference = None) -> list[dict[str, Any]]:
    """Per setting (in first-seen order): mean/std/min/max of Gen PPL over seeds, the means of
    the rest, and the mean paired difference to its ``reference`` setting (same seed)."""
    out = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == name]
        ppl = [r["gen_ppl"] for r in group if r["gen_ppl"] is not None] or [float("nan")]
        summary = {
            "setting": name, "series": group[0]["series"], "x": group[0]["x"],
            "n_seeds": len(group), "gen_ppl_mean": statistics.fmean(ppl),
            "gen_ppl_std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
            "gen_ppl_min": min(ppl), "gen_ppl_max": max(ppl),
        }  # fmt: skip
        for key in ("entropy", "nfe", "seconds"):
            summary[f"{key}_mean"] = statistics.fmean(r[key] for r in group)
        for key in ("nelbo_small", "nelbo_full"):
            if key in group[0]:
                summary[key] = group[0][key]
        ref_name = reference.get(summary["series"]) if isinstance(reference, dict) else reference
        ref = {r["seed"]: r["gen_ppl"] for r in rows if r["setting"] == ref_name}
        if ref and name != ref_name:
            paired = [(r["gen_ppl"], ref.get(r["seed"])) for r in group]
            diffs = [a - b for a, b in paired if a is not None and b is not None]
            summary["delta_vs_stage1"] = statistics.fmean(diffs) if diffs else None
            summary["better_than_stage1_seeds"] = f"{sum(d < 0 for d in diffs)}/{len(diffs)}"
        out.append(summary)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Floats at full precision (``repr`` round-trips), so a CSV reader recomputes the summary
    from the per-seed rows exactly."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(path, buf.getvalue())


def format_summary(summary: list[dict[str, Any]], judge: str) -> str:
    lines = [f"Gen PPL under {judge}, mean ± std over seeds (min-max)",
             f"{'setting':<44} {'Gen PPL':>17} {'range':>15} {'vs stage 1':>11} "
             f"{'entropy':>8} {'NFE':>6} {'seconds':>8}"]  # fmt: skip
    for s in summary:
        delta, gap = s.get("delta_vs_stage1"), s.get("matched_gap_log_mean")
        vs = "" if delta is None else f"{delta:+.1f} ({s['better_than_stage1_seeds']})"
        if gap is not None:  # the top-p control: against stage 1's curve at equal entropy
            vs = f"{math.expm1(gap):+.0%} ({s['matched_gap_seeds']})"
        lines.append(
            f"{s['setting']:<44} {s['gen_ppl_mean']:>9.1f} ± {s['gen_ppl_std']:<5.1f} "
            f"{s['gen_ppl_min']:>7.1f}-{s['gen_ppl_max']:<7.1f} {vs:>11} "
            f"{s['entropy_mean']:>8.2f} {s['nfe_mean']:>6.0f} {_seconds(s.get('seconds_mean')):>8}"
        )
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


@dataclass
class SweepResult:
    kind: str
    judge: str
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


def write_sweep(
    kind: str, out: Path, rows: list[dict[str, Any]], meta: dict[str, Any], reference: Reference
) -> SweepResult:
    """Summaries, CSVs, the JSON record and the plot of a finished sweep (the top-p control's
    summary also gets each setting's matched-entropy gap to stage 1's curve)."""
    summary = summarize(rows, reference)
    if kind == "topp":
        add_matched_gaps(summary, rows)
    files = {"seeds_csv": out / f"{kind}_seeds.csv", "csv": out / f"{kind}.csv",
             "png": out / f"{kind}.png", "json": out / f"{kind}.json"}  # fmt: skip
    write_csv(files["seeds_csv"], rows)
    write_csv(files["csv"], summary)
    atomic_write(files["png"], PLOTS[kind](summary, meta.get("judge", "")))
    record = {"kind": kind, **meta, "rows": rows, "summary": summary}
    atomic_write(files["json"], json.dumps(record, indent=2, default=str))
    return SweepResult(kind, meta.get("judge", ""), rows, summary, files)


SUMMARY_COLUMNS = (("setting", "setting"), ("Gen PPL", "gen_ppl_mean"),
                   ("± (seeds)", "gen_ppl_std"), ("min", "gen_ppl_min"), ("max", "gen_ppl_max"),
                   ("vs stage 1", "delta_vs_stage1"), ("seeds better", "better_than_stage1_seeds"),
                   ("entropy", "entropy_mean"), ("NFE", "nfe_mean"),
                   ("seconds", "seconds_mean"))  # fmt: skip
CAPTIONS = {
    "gamma": "Revision scope: Gen PPL against gamma per stage-2 block size (Figure 2)",
    "policy": "Remasking policies (Table 2)",
    "nfe": "Quality against NFEs: one stage against two stages (Table 1's frontier)",
    "topp": "Quality against diversity: stage 1 and two stages across top-p",
    "mix": "Training mixes: stage 1 and two stages (Table 3)",
    "parallel": "Fast refinement: Gen PPL and seconds with several tokens per call",
}


def report_parts(folder: Path) -> tuple[list, list]:
    """The tables and plots of every sweep found in ``folder``, for ``dind.report``."""
    tables, plots = [], []
    for kind in KINDS:
        csv_path, png = folder / f"{kind}.csv", folder / f"{kind}.png"
        if not csv_path.is_file():
            continue
        rows = read_csv(csv_path)
        judge = ""
        if (folder / f"{kind}.json").is_file():
            judge = json.loads((folder / f"{kind}.json").read_text()).get("judge", "")
        body = [[_cell(r.get(key)) for _, key in SUMMARY_COLUMNS] for r in rows]
        head = [h for h, _ in SUMMARY_COLUMNS]
        if kind == "topp":  # the honest comparison: against stage 1's curve at equal entropy
            head.insert(6, "vs stage 1 at equal entropy")
            for line, r in zip(body, rows, strict=True):
                gap, seeds = r.get("matched_gap_log_mean"), r.get("matched_gap_seeds")
                line.insert(6, "" if gap is None else f"{math.expm1(gap):+.0%} ({seeds})")
        caption = f"{CAPTIONS[kind]}; judge {judge}" if judge else CAPTIONS[kind]
        tables.append((caption, head, body))
        if png.is_file():
            plots.append((CAPTIONS[kind], png))
    if not tables:
        raise DindError(f"no sweep results (gamma.csv, policy.csv, nfe.csv, mix.csv) in {folder}")
    return tables, plots


def _cell(value):
    return "" if value is None else value


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows ``write_csv`` wrote: numbers as floats (every digit: they were written with
    ``repr``), empty cells as None, other text as it is."""
    with open(path, newline="") as f:
        return [{k: _value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _value(text: str):
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text
