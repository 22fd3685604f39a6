"""The sweeps' plots: Gen PPL (± its spread over seeds) per setting, one figure per sweep kind,
returned as PNG bytes (``dind.results`` writes them)."""

from __future__ import annotations

import io
from typing import Any

from dind.frontier import STAGE1


def _figure(panels: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, panels, figsize=(6.4 * panels, 4.2), dpi=120)
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
    """Gen PPL against NFEs, and beside it against seconds per sample: an NFE of stage 1 is a
    pass over one block against the KV cache, one of a later stage a pass over L tokens."""
    plt, fig, (ax, ax_s) = _figure(panels=2)
    series = (("one stage", "s"), ("two stages", "o"))
    _lines(ax, summary, series, "nfe_mean", "nfe_mean")
    ax.set_xlabel("NFEs per sample")
    timed = [s for s in summary if s.get("seconds_mean") is not None]
    _lines(ax_s, timed, series, "seconds_mean", "seconds_mean")
    ax_s.set_xlabel("seconds per sample (wall clock)")
    ax_s.set_title("Quality against seconds")
    if timed:  # summaries written before seconds were recorded leave the panel empty
        ax_s.legend(fontsize=8)
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


def plot_parallel(summary: list[dict[str, Any]], judge: str) -> bytes:
    """Gen PPL against seconds per sample: stage 1, and each refinement rule's series, every
    point labelled with its unigram entropy (a cheaper setting must not buy quality by
    losing diversity)."""
    plt, fig, ax = _figure()
    series = list(dict.fromkeys(s["series"] for s in summary))
    markers = "so^vDP*X<>"
    for pts in _lines(ax, summary, [(n, markers[i % 10]) for i, n in enumerate(series)],
                      "seconds_mean", "seconds_mean"):  # fmt: skip
        for s in pts:
            ax.annotate(f"H={s['entropy_mean']:.2f}", (s["seconds_mean"], s["gen_ppl_mean"]),
                        textcoords="offset points", xytext=(3, 3), fontsize=6)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("seconds per sample (wall clock)")
    return _png(plt, fig, ax, judge, "Quality against seconds: parallel refinement")


PLOTS = {"gamma": plot_gamma, "policy": plot_policy, "nfe": plot_nfe, "topp": plot_topp,
         "mix": plot_mix, "parallel": plot_parallel}  # fmt: skip
