"""Markdown tables of the sweeps under runs/results (what docs/results.md shows), and copies of
the plots of training seed 0 into docs/results/.

Layout read: RESULTS/<corpus>-s<training seed>/<kind>_seeds.csv (one model per folder, rows per
setting and sampling seed) and RESULTS/mix/mix.csv. For each corpus and sweep kind the table
gives, per setting: the mean over models of each model's mean Gen PPL (over sampling seeds) ±
the standard deviation across models, the mean within-model spread over sampling seeds, the
paired difference to stage 1 (same model, same seeds, same drafts) with the number of models on
which the setting was better, and entropy. For the top-p control: each two-stage setting's
matched-entropy gap to stage 1's curve, per model the mean over seeds, then mean ± std across
models.  usage: .venv/bin/python runs/results_tables.py [RESULTS [PLOT_PREFIX]] (the plots are
copied as docs/results/PLOT_PREFIX<name>_<kind>.png)
"""

import math
import re
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from dind.frontier import STAGE1, matched_entropy_gaps
from dind.results import read_csv

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/results")
prefix = sys.argv[2] if len(sys.argv) > 2 else ""
docs = Path("docs/results")
docs.mkdir(parents=True, exist_ok=True)


def rows_of(path: Path) -> list[dict]:
    rows = read_csv(path)
    for r in rows:
        r["seed"] = int(r["seed"])
    return rows


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {sd:.1f}"


def table(kind: str, models: dict[int, list[dict]]) -> None:
    settings = list(dict.fromkeys(r["setting"] for rows in models.values() for r in rows))
    reference = next(r["setting"] for r in next(iter(models.values())) if r["series"] in
                     (STAGE1, "one stage"))  # fmt: skip
    gaps = {seed: matched_entropy_gaps(rows) for seed, rows in models.items()}
    head = ["setting", f"Gen PPL (mean ± std over {len(models)} models)",
            "± over sampling seeds", "vs stage 1 (models better)", "entropy"]  # fmt: skip
    if kind == "topp":
        head[3] = "gap to stage 1's curve at equal entropy (sd over seeds / over models)"
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in settings:
        per_model, within, deltas, entropy, gap, gap_seeds = [], [], [], [], [], []
        for seed, rows in models.items():
            mine = [r for r in rows if r["setting"] == name and r["gen_ppl"]]
            ref = {r["seed"]: r["gen_ppl"] for r in rows if r["setting"] == reference}
            if not mine:
                continue
            ppl = [r["gen_ppl"] for r in mine]
            per_model.append(statistics.fmean(ppl))
            within.append(statistics.stdev(ppl) if len(ppl) > 1 else 0.0)
            entropy.append(statistics.fmean(r["entropy"] for r in mine))
            deltas.append(statistics.fmean(r["gen_ppl"] - ref[r["seed"]] for r in mine))
            inside = [g for g in gaps[seed].get(name, []) if g is not None]
            gap_seeds += inside
            if inside:
                gap.append(statistics.fmean(inside))
        if kind == "topp":  # in log units; a spread of 0.1 is about 10%
            sd = lambda v: f"{statistics.stdev(v):.2f}" if len(v) > 1 else "-"  # noqa: E731
            vs = "" if not gap_seeds else (
                f"{math.expm1(statistics.fmean(gap_seeds)):+.0%} ({sd(gap_seeds)} / {sd(gap)}; "
                f"{len(gap_seeds)} model-seeds inside the curve)")  # fmt: skip
        else:
            vs = (
                ""
                if name == reference
                else (
                    f"{statistics.fmean(deltas):+.1f} ({sum(d < 0 for d in deltas)}/{len(deltas)})"
                )
            )
        cells = [name, mean_sd(per_model), f"{statistics.fmean(within):.1f}", vs,
                 f"{statistics.fmean(entropy):.2f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


def paired_change(per: dict, one: dict, key: str) -> float:
    """Mean over the shared sampling seeds of per[seed][key] / one[seed][key] - 1."""
    return statistics.fmean(per[s][key] / one[s][key] - 1 for s in per if s in one)


def parallel_table(rows: list[dict]) -> None:
    """Fast refinement (issue 13), one model: each setting against one-token-per-call
    refinement at the same gamma (paired over sampling seeds: same drafts) and its wall clock
    against stage 1's."""
    by = defaultdict(dict)
    for r in rows:
        by[r["setting"]][r["seed"]] = r
    stage1 = next(n for n, per in by.items() if next(iter(per.values()))["series"] == STAGE1)
    sec1 = statistics.fmean(r["seconds"] for r in by[stage1].values())
    head = ["setting", "Gen PPL ± seeds", "vs 1 per call", "entropy", "vs 1 per call",
            "NFE", "s/sample", "x stage 1's seconds"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, per in by.items():
        # every rule, the approximate cache's included, against exact one per call
        pattern = r", (top:)?\d+ per call(, refresh \d+)?$|, tau [\d.]+$"
        one = by.get(re.sub(pattern, ", 1 per call", name))
        mean = lambda key, per=per: statistics.fmean(r[key] for r in per.values())  # noqa: E731
        vs = ("", "") if one is None or one is per else (
            f"{paired_change(per, one, 'gen_ppl'):+.1%}",
            f"{paired_change(per, one, 'entropy'):+.2%}")  # fmt: skip
        ppl = mean_sd([r["gen_ppl"] for r in per.values()])
        cells = [name, ppl, vs[0], f"{mean('entropy'):.3f}", vs[1], f"{mean('nfe'):.0f}",
                 f"{mean('seconds'):.3f}", f"{mean('seconds') / sec1:.2f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


folders = defaultdict(dict)
for folder in sorted(root.glob("*-s[0-9]*")):
    m = re.fullmatch(r"(.+)-s(\d+)", folder.name)
    if m and folder.is_dir():
        folders[m.group(1)][int(m.group(2))] = folder
for corpus, by_seed in folders.items():
    for kind in ("gamma", "policy", "topp", "nfe"):
        models = {s: rows_of(f / f"{kind}_seeds.csv") for s, f in sorted(by_seed.items())
                  if (f / f"{kind}_seeds.csv").is_file()}  # fmt: skip
        if not models:
            continue
        print(f"\n### {corpus} / {kind} (training seeds {sorted(models)})\n")
        table(kind, models)
        first = by_seed[min(by_seed)] / f"{kind}.png"
        if first.exists():
            shutil.copy(first, docs / f"{prefix}{corpus}_{kind}.png")
    for seed, f in sorted(by_seed.items()):
        if (f / "parallel_seeds.csv").is_file():
            print(f"\n### {corpus} / parallel (training seed {seed})\n")
            parallel_table(rows_of(f / "parallel_seeds.csv"))
            if (f / "parallel.png").exists():
                shutil.copy(f / "parallel.png", docs / f"{prefix}{corpus}_parallel.png")

mix = root / "mix" / "mix.csv"
if mix.is_file():
    print(f"\n### mix ({mix})\n")
    head = ["setting", "Gen PPL (mean ± std over seeds)", "vs stage 1 (seeds better)",
            "entropy", "NELBO B=4", "NELBO B=L"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in read_csv(mix):
        delta = r.get("delta_vs_stage1")
        vs = "" if delta is None else f"{delta:+.1f} ({r['better_than_stage1_seeds']})"
        cells = [r["setting"], f"{r['gen_ppl_mean']:.1f} ± {r['gen_ppl_std']:.1f}", vs,
                 f"{r['entropy_mean']:.2f}", f"{r['nelbo_small']:.3f}",
                 f"{r['nelbo_full']:.3f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    shutil.copy(mix.with_suffix(".png"), docs / "mix.png")
