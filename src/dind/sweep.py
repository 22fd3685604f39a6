"""Sweeps: the paper's ablations as one command each, over any checkpoint (``dind sweep``).

- ``gamma`` (Figure 2): generative perplexity against the remask ratio gamma for several
  stage-2 block sizes, with stage 1 alone as the reference line.
- ``policy`` (Table 2): the remasking policies (snapshot, post-hoc, random) at one setting.
- ``nfe`` (Table 1's frontier): quality against NFEs, two stages against one stage given
  comparable NFEs.
- ``mix`` (Table 3): training mixes of block sizes, each trained briefly from the same start
  and evaluated through the same pipeline (stage 1 and two stages).

Design choices:
- Every sweep is a list of named ``Setting``s built (and so checked) before any work starts:
  a bad grid value is reported with the setting it belongs to and the reason.
- Every setting is drawn under every seed of the seed list; the CSVs hold one row per
  (setting, seed) and a summary per setting: mean, standard deviation, min and max over seeds,
  and, where the sweep has a stage-1 reference, the mean paired difference to it (same seed,
  same drafts).
- Settings that share a stage 1 share its drafts: the refinement goes on from them, which is
  exactly what one multi-stage call would have drawn (``dind.sampler.sample_batch``), so a
  gamma sweep pays for one draft per seed plus the refinement passes.
- ``SweepOptions.retry_low_entropy`` (BD3-LM's redraws, ``dind.sampler``) applies to every
  setting's stage 1; the shared drafts are the accepted ones, so every setting refines the
  same drafts and the sample files carry their ``redraws``. ``judge_max_tokens`` cuts what the
  judge scores (``dind.judges``).
- Sampling runs at ``dind sample``'s default precision (``dind.devices``): bfloat16 autocast
  on CUDA, float32 on the CPU; the judge scores at its own.
- Outputs: ``<kind>_seeds.csv``, ``<kind>.csv``, ``<kind>.png`` and ``<kind>.json`` in the
  output folder, and the samples of each (setting, seed) under ``samples/``, each written
  atomically. ``SweepOptions.samples_from`` judges the samples an earlier sweep saved (each
  file checked against its setting) instead of drawing: one draw, several judges.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dind.config import BlockSizeDistribution, RunConfig
from dind.errors import DindError
from dind.frontier import STAGE1, add_matched_gaps
from dind.sampler import SamplerConfig

KINDS = ("gamma", "policy", "nfe", "topp", "mix")


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: a label, the plot series it belongs to, and its sampler."""

    name: str
    series: str
    x: float | None
    sampler: SamplerConfig


@dataclass
class SweepOptions:
    """What every sweep shares: seeds, samples per seed, the judge."""

    seeds: tuple[int, ...] = (0, 1, 2)
    num_samples: int = 8
    """Samples per (setting, seed)."""
    batch_size: int = 8
    judge: str = "smollm2"
    top_p: float = 0.9
    nucleus: str = "bd3lm"
    """Nucleus rule of every setting (``dind.denoise.NUCLEUS_RULES``)."""
    stage1: int = 4
    """Stage-1 block size (the draft)."""
    window_stride: int | None = None
    """Every setting's ``SamplerConfig.window_stride`` (used past the model's context)."""
    save_samples: bool = True
    progress: bool = True
    retry_low_entropy: bool = False
    """Redraw stage-1 drafts by BD3-LM's low-entropy rule (``dind.sampler``)."""
    judge_max_tokens: int | None = None
    """Cut the judge's input to this many ids, BOS included (``dind.judges``)."""
    samples_from: Path | None = None
    """Judge the samples an earlier sweep of the same grid saved in this output folder (under
    ``samples/``) instead of drawing them: a second judge scores the very same texts."""

    def check(self) -> None:
        if not self.seeds:
            raise DindError("the seed list is empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise DindError(f"the seed list repeats a seed: {list(self.seeds)}")
        if self.num_samples <= 0 or self.batch_size <= 0:
            raise DindError("num-samples and batch-size must be positive")
        if self.window_stride is not None and self.window_stride <= 0:
            raise DindError(f"window stride must be positive, got {self.window_stride}")


# ----------------------------------------------------------------------------- grids


def parse_sizes(text: str, L: int) -> tuple[int, ...]:
    """Block sizes from "16,64,L" or "4,L/2": ``L`` stands for the sequence length."""
    sizes = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        m = re.fullmatch(r"L(?:/(\d+))?", item)
        try:
            sizes.append(L // int(m.group(1) or 1) if m else int(item))
        except (ValueError, ZeroDivisionError):
            raise DindError(f"block size {item!r}: not an integer, L or L/k") from None
    if not sizes:
        raise DindError(f"no block sizes in {text!r}")
    return tuple(sizes)


def parse_size(text: str, L: int) -> int:
    """One block size ("64", "L", "L/2")."""
    sizes = parse_sizes(text, L)
    if len(sizes) != 1:
        raise DindError(f"one block size expected, got {text!r}")
    return sizes[0]


def _setting(name: str, series: str, x: float | None, opts: SweepOptions, **kwargs) -> Setting:
    """A setting whose sampler takes the sweep's top-p, nucleus rule, redraw protocol and window
    stride unless it sets them."""
    shared = {"top_p": opts.top_p, "nucleus": opts.nucleus,
              "retry_low_entropy": opts.retry_low_entropy,
              "window_stride": opts.window_stride}  # fmt: skip
    try:
        sampler = SamplerConfig(**{**shared, **kwargs})
    except DindError as e:
        raise DindError(f"setting '{name}': {e}") from None
    return Setting(name, series, x, sampler)


def stage1_setting(L: int, opts: SweepOptions) -> Setting:
    return _setting(f"stage 1 (block {opts.stage1})", STAGE1, None, opts,
                    stages=(opts.stage1,), length=L)  # fmt: skip


def gamma_settings(
    L: int, gammas: tuple[float, ...], block_sizes: tuple[int, ...], opts: SweepOptions,
    policy: str = "snapshot",
) -> list[Setting]:  # fmt: skip
    """Figure 2: every (stage-2 block size, gamma), plus stage 1 alone."""
    out = [stage1_setting(L, opts)]
    for b in block_sizes:
        for g in gammas:
            out.append(_setting(f"block {b}, gamma {g:g}", f"stage-2 block {b}", g, opts,
                                stages=(opts.stage1, b), remask=(g,), remask_policy=policy,
                                length=L))  # fmt: skip
    return out


def policy_settings(
    L: int, gamma: float, block_size: int, policies: tuple[str, ...], opts: SweepOptions
) -> list[Setting]:
    """Table 2: each remasking policy at (block_size, gamma), plus stage 1 alone."""
    out = [stage1_setting(L, opts)]
    for p in policies:
        out.append(_setting(f"{p} (block {block_size}, gamma {gamma:g})", p, None, opts,
                            stages=(opts.stage1, block_size), remask=(gamma,),
                            remask_policy=p, length=L))  # fmt: skip
    return out


def nfe_settings(
    L: int, steps: tuple[int, ...], gammas: tuple[float, ...], block_size: int,
    opts: SweepOptions,
) -> list[Setting]:  # fmt: skip
    """The NFE frontier: one stage (first-hitting, and ancestral with T steps per block) and
    two stages (first-hitting, stage 2 over the ``gamma`` least confident tokens)."""
    single = "one stage"
    out = [_setting(f"stage 1, first-hitting (block {opts.stage1})", single, None, opts,
                    stages=(opts.stage1,), length=L)]  # fmt: skip
    for t in steps:
        out.append(_setting(f"stage 1, ancestral T={t} (block {opts.stage1})", single, None, opts,
                            stages=(opts.stage1,), length=L,
                            sampler="ancestral", steps=t))  # fmt: skip
    for g in gammas:
        name = f"two stages, block {block_size}, gamma {g:g}"
        out.append(_setting(name, "two stages", None, opts, stages=(opts.stage1, block_size),
                            remask=(g,), length=L))  # fmt: skip
    return out


def topp_settings(
    L: int, top_ps: tuple[float, ...], gammas: tuple[float, ...], block_size: int,
    opts: SweepOptions,
) -> list[Setting]:  # fmt: skip
    """The diversity control: stage 1 and two stages (one series per gamma) at each nucleus
    mass. A lower top-p also lowers Gen PPL by making text less diverse; comparing the curves
    at equal entropy (``dind.frontier``) says whether the second stage buys more."""
    out = []
    for p in top_ps:
        out.append(_setting(f"stage 1, top-p {p:g}", STAGE1, p, opts, stages=(opts.stage1,),
                            length=L, top_p=p))  # fmt: skip
        for g in gammas:
            out.append(_setting(f"two stages (block {block_size}, gamma {g:g}), top-p {p:g}",
                                topp_series(g), p, opts, stages=(opts.stage1, block_size),
                                remask=(g,), length=L, top_p=p))  # fmt: skip
    return out


def topp_series(gamma: float) -> str:
    return f"two stages, gamma {gamma:g}"


def check_unique(settings: list[Setting]) -> None:
    seen = set()
    for s in settings:
        if s.name in seen:
            raise DindError(f"setting '{s.name}' appears twice in the grid")
        seen.add(s.name)


# ----------------------------------------------------------------------------- running


def _stage1_key(cfg: SamplerConfig) -> tuple:
    return (cfg.stages[0], cfg.length, cfg.top_p, cfg.nucleus, cfg.sampler, cfg.steps,
            cfg.confidence, cfg.kv_cache, cfg.seed, cfg.retry_low_entropy,
            cfg.window_stride)  # fmt: skip


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def draw_and_judge(
    model, tokenizer, settings: list[Setting], opts: SweepOptions, judge,
    samples_dir: Path | None = None, label: str = "", samples_from: Path | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per (setting, seed): the judge's aggregate of that setting's samples, drawn
    (and saved in ``samples_dir``) or read from the files an earlier sweep saved in
    ``samples_from``."""
    from dind.devices import sampling_precision
    from dind.evaluate import evaluate_samples
    from dind.sampler import sample, write_samples

    device = next(model.parameters()).device  # "auto" precision there: bf16 on CUDA
    rows, drafts_by_key = [], {}
    pairs = [(seed, s) for seed in opts.seeds for s in settings]
    bar = tqdm(pairs, disable=not opts.progress, desc=f"sweep {label}".strip(), unit="setting")
    for seed, setting in bar:
        bar.set_postfix_str(f"seed {seed}: {setting.name}")
        cfg = dataclasses.replace(setting.sampler, seed=seed)
        name = f"{slug(setting.name)}_seed{seed}.jsonl"
        if samples_from is not None:
            records = saved_samples(samples_from / name, cfg, opts.num_samples)
        else:
            key, drafts = _stage1_key(cfg), None
            if len(cfg.stages) > 1:
                if key not in drafts_by_key:
                    first = dataclasses.replace(cfg, stages=cfg.stages[:1], remask=())
                    with sampling_precision(device):
                        drafts_by_key[key] = sample(model, first, opts.num_samples,
                                                    opts.batch_size, tokenizer.bos_id,
                                                    tokenizer.mask_id)  # fmt: skip
                drafts = drafts_by_key[key]
            with sampling_precision(device):
                drawn = sample(model, cfg, opts.num_samples, opts.batch_size, tokenizer.bos_id,
                               tokenizer.mask_id, drafts=drafts)  # fmt: skip
            if len(cfg.stages) == 1:
                drafts_by_key[key] = drawn
            if samples_dir is not None:
                write_samples(samples_dir / name, drawn, tokenizer, cfg)
            records = [{"text": tokenizer.decode(s.tokens[1:]), "nfe": s.nfe,
                        "seconds": s.seconds, "redraws": s.redraws} for s in drawn]  # fmt: skip
        a = evaluate_samples(records, judge)["aggregate"]
        rows.append({
            "setting": setting.name, "series": setting.series, "x": setting.x, "seed": seed,
            "gen_ppl": a["gen_ppl_mean"], "gen_ppl_token_weighted": a["gen_ppl_token_weighted"],
            "entropy": a["entropy_mean"], "nfe": a["nfe_mean"], "seconds": a["seconds_mean"],
            "n_samples": a["n_samples"],
        })  # fmt: skip
        if opts.retry_low_entropy:  # a column only when asked for: default CSVs are unchanged
            rows[-1]["redraws"] = sum(r.get("redraws") or 0 for r in records)
    return rows


def saved_samples(path: Path, cfg: SamplerConfig, num_samples: int) -> list[dict[str, Any]]:
    """The records an earlier sweep saved for ``cfg``; a file that is missing, short or drawn
    with another sampler is a one-line error (never silently judged as this setting)."""
    from dind.evaluate import read_samples
    from dind.sampler import sample_seed

    if not path.is_file():
        raise DindError(f"--samples-from: {path} not found (was the earlier sweep the same grid,"
                        " seeds included, and are its samples still there?)")  # fmt: skip
    records = read_samples(path)
    for i, r in enumerate(records):
        want = {"index": i, "seed": sample_seed(cfg.seed, i), "stages": list(cfg.stages),
                "remask_ratios": list(cfg.remask), "remask_policy": cfg.remask_policy,
                "top_p": cfg.top_p, "nucleus": cfg.nucleus}  # fmt: skip
        got = {k: r.get(k) for k in want}
        if got != want:
            diff = next(k for k in want if got[k] != want[k])
            raise DindError(f"--samples-from: {path} was drawn with {diff} {got[diff]!r}, this "
                            f"setting has {want[diff]!r}")  # fmt: skip
    if len(records) != num_samples:
        raise DindError(f"--samples-from: {path} holds {len(records)} samples, the sweep asks "
                        f"for {num_samples}")  # fmt: skip
    return records


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


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Floats at full precision (``repr`` round-trips), so a CSV reader recomputes the summary
    from the per-seed rows exactly."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    _write_atomic(path, buf.getvalue().encode())


def format_summary(summary: list[dict[str, Any]], judge: str) -> str:
    lines = [f"Gen PPL under {judge}, mean ± std over seeds (min-max)",
             f"{'setting':<44} {'Gen PPL':>17} {'range':>15} {'vs stage 1':>11} "
             f"{'entropy':>8} {'NFE':>6}"]  # fmt: skip
    for s in summary:
        delta, gap = s.get("delta_vs_stage1"), s.get("matched_gap_log_mean")
        vs = "" if delta is None else f"{delta:+.1f} ({s['better_than_stage1_seeds']})"
        if gap is not None:  # the top-p control: against stage 1's curve at equal entropy
            vs = f"{math.expm1(gap):+.0%} ({s['matched_gap_seeds']})"
        lines.append(
            f"{s['setting']:<44} {s['gen_ppl_mean']:>9.1f} ± {s['gen_ppl_std']:<5.1f} "
            f"{s['gen_ppl_min']:>7.1f}-{s['gen_ppl_max']:<7.1f} {vs:>11} "
            f"{s['entropy_mean']:>8.2f} {s['nfe_mean']:>6.0f}"
        )
    return "\n".join(lines)


@dataclass
class SweepResult:
    kind: str
    judge: str
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


def finish(
    kind: str, out: Path, rows: list[dict[str, Any]], meta: dict[str, Any],
    plot: Callable[[list[dict[str, Any]], str], bytes], reference: Reference,
) -> SweepResult:  # fmt: skip
    """Summaries, CSVs, the JSON record and the plot of a finished sweep (the top-p control's
    summary also gets each setting's matched-entropy gap to stage 1's curve)."""
    summary = summarize(rows, reference)
    if kind == "topp":
        add_matched_gaps(summary, rows)
    files = {"seeds_csv": out / f"{kind}_seeds.csv", "csv": out / f"{kind}.csv",
             "png": out / f"{kind}.png", "json": out / f"{kind}.json"}  # fmt: skip
    write_csv(files["seeds_csv"], rows)
    write_csv(files["csv"], summary)
    _write_atomic(files["png"], plot(summary, meta.get("judge", "")))
    record = {"kind": kind, **meta, "rows": rows, "summary": summary}
    _write_atomic(files["json"], json.dumps(record, indent=2, default=str).encode())
    return SweepResult(kind, meta.get("judge", ""), rows, summary, files)


# ----------------------------------------------------------------------------- plots


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    return plt, fig, ax


def _judge_label(judge: str) -> str:
    """``oracle:/long/path`` reads as ``oracle`` on an axis."""
    return judge.partition(":")[0] if judge.startswith("oracle") else judge


def _lines(ax, summary, series_markers, x_key: str, sort_key: str) -> list[list[dict]]:
    """One error-bar line per series (Gen PPL ± its spread over seeds); returns the points."""
    drawn = []
    for series, marker in series_markers:
        pts = sorted((s for s in summary if s["series"] == series), key=lambda s: s[sort_key])
        if pts:
            ax.errorbar([s[x_key] for s in pts], [s["gen_ppl_mean"] for s in pts],
                        yerr=[s["gen_ppl_std"] for s in pts], marker=marker, capsize=3,
                        label=series)  # fmt: skip
            drawn.append(pts)
    return drawn


def _png(plt, fig, ax, judge: str, title: str, ylabel_note: str = "") -> bytes:
    """Label the Gen PPL axis, title, legend, and the figure's PNG bytes."""
    ax.set_ylabel(f"Gen PPL ({_judge_label(judge)}){ylabel_note}")
    ax.set_title(title)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _reference_line(ax, summary, label: str = "stage 1 alone") -> None:
    for s in summary:
        if s["series"] == STAGE1:
            m, sd = s["gen_ppl_mean"], s["gen_ppl_std"]
            ax.axhline(m, color="gray", linestyle="--", label=f"{label} ({m:.1f})")
            ax.axhspan(m - sd, m + sd, color="gray", alpha=0.12, linewidth=0)


def plot_gamma(summary: list[dict[str, Any]], judge: str) -> bytes:
    plt, fig, ax = _figure()
    _reference_line(ax, summary)
    series = dict.fromkeys(s["series"] for s in summary if s["series"] != STAGE1)
    _lines(ax, summary, [(name, "o") for name in series], "x", "x")
    ax.set_xlabel("remask ratio gamma")
    return _png(plt, fig, ax, judge, "Revision scope: Gen PPL vs gamma (Figure 2)")


def plot_policy(summary: list[dict[str, Any]], judge: str) -> bytes:
    plt, fig, ax = _figure()
    _reference_line(ax, summary)
    bars = [s for s in summary if s["series"] != STAGE1]
    ax.bar([s["series"] for s in bars], [s["gen_ppl_mean"] for s in bars],
           yerr=[s["gen_ppl_std"] for s in bars], capsize=4,
           color=["tab:green", "tab:orange", "tab:red", "tab:blue"][: len(bars)])  # fmt: skip
    return _png(plt, fig, ax, judge, "Remasking policy (Table 2)")


def plot_nfe(summary: list[dict[str, Any]], judge: str) -> bytes:
    plt, fig, ax = _figure()
    _lines(ax, summary, (("one stage", "s"), ("two stages", "o")), "nfe_mean", "nfe_mean")
    ax.set_xlabel("NFEs per sample")
    return _png(plt, fig, ax, judge, "Quality against NFEs")


def plot_topp(summary: list[dict[str, Any]], judge: str) -> bytes:
    from matplotlib.ticker import ScalarFormatter

    plt, fig, ax = _figure()
    series = [(STAGE1, "s")] + [(name, "o^vD"[i % 4]) for i, name in enumerate(
        dict.fromkeys(s["series"] for s in summary if s["series"] != STAGE1))]  # fmt: skip
    for pts in _lines(ax, summary, series, "entropy_mean", "x"):
        for s in pts:
            ax.annotate(f"p={s['x']:g}", (s["entropy_mean"], s["gen_ppl_mean"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)  # fmt: skip
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("unigram entropy (nats): diversity")
    return _png(plt, fig, ax, judge, "Quality against diversity across top-p", ", log scale")


def plot_mix(summary: list[dict[str, Any]], judge: str) -> bytes:
    plt, fig, ax = _figure()
    mixes = list(dict.fromkeys(s["series"] for s in summary))
    width = 0.38
    for j, (label, is_stage1) in enumerate((("stage 1", True), ("two stages", False))):
        pts = [next(s for s in summary if s["series"] == m and (s["x"] == 1) == is_stage1)
               for m in mixes]  # fmt: skip
        ax.bar([i + (j - 0.5) * width for i in range(len(mixes))],
               [s["gen_ppl_mean"] for s in pts], width, yerr=[s["gen_ppl_std"] for s in pts],
               capsize=3, label=label)  # fmt: skip
    ax.set_xticks(range(len(mixes)), mixes, fontsize=8, rotation=10)
    return _png(plt, fig, ax, judge, "Training mix (Table 3)")


# ----------------------------------------------------------------------------- sampling sweeps


def run_sampling_sweep(
    kind: str, checkpoint: str, out: Path, opts: SweepOptions,
    build: Callable[[int], list[Setting]], length: int | None = None,
) -> SweepResult:  # fmt: skip
    """Build and check the grid, load the judge, then draw, judge and write (gamma, policy,
    nfe). ``build`` makes the settings for the sequence length L (past the model's context
    the sampler slides a window); the first one is the reference the others are compared
    with, seed by seed (stage 1 alone)."""
    from dind.checkpoint import load_checkpoint, read_config, resolve
    from dind.judges import load_judge
    from dind.sampler import check_window_stride

    opts.check()
    model_len = read_config(resolve(checkpoint)).model.seq_len
    L = model_len if length is None else length
    if L <= 0:
        raise DindError(f"length must be positive, got {L}")
    check_window_stride(opts.window_stride, model_len)
    settings = build(L)
    check_unique(settings)
    judge = load_judge(opts.judge, _device(), opts.judge_max_tokens)
    ck = load_checkpoint(checkpoint, _device())
    saved = None if opts.samples_from is None else opts.samples_from / "samples" / kind
    samples_dir = out / "samples" / kind if opts.save_samples and saved is None else None
    rows = draw_and_judge(ck.model, ck.tokenizer, settings, opts, judge, samples_dir, kind,
                          saved)  # fmt: skip
    # every grid starts with its stage-1 setting; top-p's stage-1 rows differ in top-p
    reference = None if kind == "topp" else settings[0].name
    meta = {"checkpoint": str(checkpoint), "length": L, "judge": judge.name,
            "seeds": list(opts.seeds), "num_samples": opts.num_samples, **_protocol(opts),
            "settings": [{"name": s.name, "series": s.series, "x": s.x,
                          "sampler": dataclasses.asdict(s.sampler)} for s in settings]}  # fmt: skip
    plot = {"gamma": plot_gamma, "policy": plot_policy, "nfe": plot_nfe, "topp": plot_topp}[kind]
    return finish(kind, out, rows, meta, plot, reference)


def _protocol(opts: SweepOptions) -> dict[str, Any]:
    """The evaluation options a sweep's JSON records beside its settings."""
    out = {"retry_low_entropy": opts.retry_low_entropy,
           "judge_max_tokens": opts.judge_max_tokens}  # fmt: skip
    if opts.samples_from is not None:  # only then: the JSON of a drawing sweep is unchanged
        out["samples_from"] = str(opts.samples_from)
    return out


def _device() -> str:
    from dind.devices import default_device

    return default_device()


# ----------------------------------------------------------------------------- training mixes


@dataclass(frozen=True)
class Mix:
    """One training mix: a name and its block-size distribution P_B."""

    name: str
    dist: BlockSizeDistribution


DEFAULT_MIXES = ("4", "4,L:0.9,0.1", "4,L/2:0.9,0.1", "pow4")
POWER_MIXES = {"pow2": 2, "pow4": 4}
"""Table 3's uniform mixture. The paper's text says "all power-of-two scales" but its list,
{4, 16, 64, ..., 1024}, is the powers of 4, which ``pow4`` follows (the default)."""


def power_sizes(base: int, small: int, L: int) -> tuple[int, ...]:
    """``small``, ``small * base``, ... up to L, with L itself added when it is not one of them
    (the mixture always reaches the whole sequence; at L = 1024, pow4 is the paper's list)."""
    sizes, b = [], small
    while b <= L:
        sizes.append(b)
        b *= base
    if sizes[-1:] != [L]:
        sizes.append(L)
    return tuple(sizes)


def parse_mix(spec: str, L: int, small: int = 4) -> Mix:
    """A mix from "4" (fixed), "4,L:0.9,0.1" (sizes:probabilities, uniform without them),
    "pow2" or "pow4" (uniform over ``small`` times the powers of 2 or 4, up to L)."""
    spec = spec.strip()
    try:
        if spec in POWER_MIXES:
            sizes = power_sizes(POWER_MIXES[spec], small, L)
            dist = BlockSizeDistribution(sizes, tuple(1 / len(sizes) for _ in sizes))
            name = "uniform {" + ",".join(map(str, sizes)) + "}"
        else:
            size_text, _, prob_text = spec.partition(":")
            sizes = parse_sizes(size_text, L)
            dist = BlockSizeDistribution.parse(",".join(map(str, sizes)), prob_text or None)
            name = (f"fixed {sizes[0]}" if len(sizes) == 1 else
                    f"mix ({', '.join(map(str, sizes))})")  # fmt: skip
        bad = [b for b in dist.block_sizes if b <= 0 or L % b]
        if bad:
            raise DindError(f"block size(s) {bad} do not divide L = {L}")
    except DindError as e:
        raise DindError(f"mix '{spec}': {e}") from None
    return Mix(name, dist)


def run_mix_sweep(
    out: Path, base: RunConfig, mixes: list[str], steps: int, opts: SweepOptions,
    gamma: float = 0.5, init_from: str | None = None, pretrain_steps: int = 0,
    nelbo_batches: int = 8,
) -> SweepResult:  # fmt: skip
    """Table 3: fine-tune one run per mix from the same start (``init_from``, or a run
    pretrained here at the full length for ``pretrain_steps``), then draw stage 1 and two
    stages (block L, ``gamma``) under every seed and judge them; held-out NELBO at block 4 and
    at L beside. Finished runs in ``out/runs`` are reused."""
    from dind.checkpoint import load_checkpoint, read_config, resolve
    from dind.evaluate import heldout_nelbo
    from dind.judges import load_judge
    from dind.train import train

    opts.check()
    if steps <= 0 or pretrain_steps < 0:
        raise DindError("steps must be positive and pretrain-steps non-negative")
    if init_from is not None and pretrain_steps:
        raise DindError("give --init-from or --pretrain-steps, not both")
    if init_from is not None:
        base = dataclasses.replace(base, model=read_config(resolve(init_from)).model)
    L = base.model.seq_len
    parsed = [parse_mix(m, L, opts.stage1) for m in mixes]
    if len({m.name for m in parsed}) != len(parsed):
        raise DindError("two mixes of the grid are the same")
    if not parsed:
        raise DindError("no training mixes given")
    settings = [stage1_setting(L, opts),
                _setting(f"two stages (block {L}, gamma {gamma:g})", "two stages", None, opts,
                         stages=(opts.stage1, L), remask=(gamma,), length=L)]  # fmt: skip
    judge = load_judge(opts.judge, _device(), opts.judge_max_tokens)

    def run_for(dist: BlockSizeDistribution, n: int) -> RunConfig:
        warmup = min(base.train.warmup_steps, max(n // 10, 1))
        train_cfg = dataclasses.replace(base.train, block_dist=dist, max_steps=n,
                                        eval_every=n, warmup_steps=warmup)  # fmt: skip
        return dataclasses.replace(base, train=train_cfg)

    runs_dir = out / "runs"
    start = init_from
    if pretrain_steps:
        folder = runs_dir / "pretrain_full_length"
        full = BlockSizeDistribution((L,), (1.0,))
        print(f"pretraining at the full length (block {L}) for {pretrain_steps} steps")
        train(run_for(full, pretrain_steps), folder, resume=(folder / "checkpoint").exists(),
              progress=opts.progress)  # fmt: skip
        start = str(folder)
    rows = []
    for mix in parsed:
        folder = runs_dir / slug(mix.name)
        print(f"training mix {mix.name}: sizes {list(mix.dist.block_sizes)}, "
              f"probabilities {[round(p, 3) for p in mix.dist.probs]}, {steps} steps")  # fmt: skip
        done = (folder / "checkpoint").exists()
        train(run_for(mix.dist, steps), folder, resume=done, init_from=None if done else start,
              progress=opts.progress)  # fmt: skip
        nelbo = {key: heldout_nelbo(folder, b, max_batches=nelbo_batches)["nelbo"]
                 for key, b in (("nelbo_small", opts.stage1), ("nelbo_full", L))}  # fmt: skip
        ck = load_checkpoint(folder, _device())
        samples_dir = out / "samples" / "mix" / slug(mix.name) if opts.save_samples else None
        for r in draw_and_judge(ck.model, ck.tokenizer, settings, opts, judge, samples_dir,
                                mix.name):  # fmt: skip
            # series: the mix; x: 1 for the stage-1 row, 2 for the two-stage row
            rows.append({**r, "setting": f"{mix.name} / {r['setting']}", "series": mix.name,
                         "x": 1 if r["series"] == STAGE1 else 2, **nelbo})  # fmt: skip
    meta = {"init_from": init_from, "pretrain_steps": pretrain_steps, "steps": steps,
            "length": L, "judge": judge.name, "seeds": list(opts.seeds),
            "num_samples": opts.num_samples, "gamma": gamma, **_protocol(opts),
            "mixes": [{"name": m.name, "block_sizes": list(m.dist.block_sizes),
                       "probs": list(m.dist.probs)} for m in parsed]}  # fmt: skip
    # each mix's two-stage row is compared with that mix's own stage-1 row, seed by seed
    references = {m.name: f"{m.name} / {settings[0].name}" for m in parsed}
    return finish("mix", out, rows, meta, plot_mix, references)


SUMMARY_COLUMNS = (("setting", "setting"), ("Gen PPL", "gen_ppl_mean"),
                   ("± (seeds)", "gen_ppl_std"), ("min", "gen_ppl_min"), ("max", "gen_ppl_max"),
                   ("vs stage 1", "delta_vs_stage1"), ("seeds better", "better_than_stage1_seeds"),
                   ("entropy", "entropy_mean"), ("NFE", "nfe_mean"))  # fmt: skip
CAPTIONS = {
    "gamma": "Revision scope: Gen PPL against gamma per stage-2 block size (Figure 2)",
    "policy": "Remasking policies (Table 2)",
    "nfe": "Quality against NFEs: one stage against two stages (Table 1's frontier)",
    "topp": "Quality against diversity: stage 1 and two stages across top-p",
    "mix": "Training mixes: stage 1 and two stages (Table 3)",
}


def report_parts(folder: Path) -> tuple[list, list]:
    """The tables and plots of every sweep found in ``folder``, for ``dind.report``."""
    tables, plots = [], []
    for kind in KINDS:
        csv_path, png = folder / f"{kind}.csv", folder / f"{kind}.png"
        if not csv_path.is_file():
            continue
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        judge = ""
        if (folder / f"{kind}.json").is_file():
            judge = json.loads((folder / f"{kind}.json").read_text()).get("judge", "")
        body = [[_number(r.get(key, "")) for _, key in SUMMARY_COLUMNS] for r in rows]
        head = [h for h, _ in SUMMARY_COLUMNS]
        if kind == "topp":  # the honest comparison: against stage 1's curve at equal entropy
            head.insert(6, "vs stage 1 at equal entropy")
            for line, r in zip(body, rows, strict=True):
                gap, seeds = r.get("matched_gap_log_mean", ""), r.get("matched_gap_seeds")
                line.insert(6, f"{math.expm1(float(gap)):+.0%} ({seeds})" if gap else "")
        caption = f"{CAPTIONS[kind]}; judge {judge}" if judge else CAPTIONS[kind]
        tables.append((caption, head, body))
        if png.is_file():
            plots.append((CAPTIONS[kind], png))
    if not tables:
        raise DindError(f"no sweep results (gamma.csv, policy.csv, nfe.csv, mix.csv) in {folder}")
    return tables, plots


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text
