"""Markdown tables of the sweeps under runs/results (what docs/results.md shows), and copies
of their plots into docs/results/.  usage: .venv/bin/python runs/results_tables.py [RESULTS]"""

import csv
import shutil
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/results")
docs = Path("docs/results")
docs.mkdir(parents=True, exist_ok=True)


def fmt(value: str, digits: int = 1) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except ValueError:
        return value or ""


for csv_path in sorted(root.glob("*/*.csv")):
    if csv_path.stem.endswith("_seeds"):
        continue
    rows = list(csv.DictReader(csv_path.open()))
    mix = csv_path.stem == "mix"
    print(f"\n### {csv_path.parent.name} / {csv_path.stem} ({csv_path})\n")
    head = [
        "setting",
        "Gen PPL (mean ± std over seeds)",
        "min-max",
        "vs stage 1 (seeds better)",
        "entropy",
        "NFE",
    ] + (["NELBO B=4", "NELBO B=L"] if mix else [])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        delta = r.get("delta_vs_stage1") or ""
        vs = f"{float(delta):+.1f} ({r['better_than_stage1_seeds']})" if delta else ""
        cells = [
            r["setting"],
            f"{fmt(r['gen_ppl_mean'])} ± {fmt(r['gen_ppl_std'])}",
            f"{fmt(r['gen_ppl_min'])}-{fmt(r['gen_ppl_max'])}",
            vs,
            fmt(r["entropy_mean"], 2),
            fmt(r["nfe_mean"], 0),
        ]
        if mix:
            cells += [fmt(r.get("nelbo_small", ""), 3), fmt(r.get("nelbo_full", ""), 3)]
        print("| " + " | ".join(cells) + " |")
    png = csv_path.with_suffix(".png")
    if png.exists():
        prefix = "" if csv_path.parent.name == png.stem else f"{csv_path.parent.name}_"
        name = prefix + png.name
        shutil.copy(png, docs / name)
