"""A self-contained HTML report of draft-then-refine sampling.

One file a reader can open anywhere, offline: the CSS is inline, plots are embedded as
base64 ``data:`` URIs and there is no JavaScript. For each refinement stage of a sample the
report shows

* the draft (the previous stage's tokens), each remasked position shaded red by how
  unsure the denoiser was of it (background alpha ``1 - snapshot_confidence``), with the
  confidence in a ``title`` tooltip and a ``data-confidence`` attribute;
* the revision, where a remasked position that got a different token is green
  (``changed``) and one re-filled with the same token is muted (``kept``);
* one line of counts: block size, remasked, changed, denoiser calls (NFE).

Tokens are decoded one at a time, so token boundaries are exact (a byte-level token that is
half a UTF-8 character shows as U+FFFD). Position 0 (BOS) is never shown. The file is
written atomically: to a hidden ``.{name}.part`` sibling, then renamed into place.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dind.errors import DindError
from dind.samples import Revision, revisions
from dind.utils import atomic_write

if TYPE_CHECKING:
    from dind.tokenizer import Tokenizer

Table = tuple[str, list[str], list[list]]  # (caption, header, rows)
Piece = Callable[[int], str]  # the text of one token id

CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 2em; }
.intro { white-space: pre-wrap; }
.tokens { white-space: pre-wrap; font: 13px/1.6 ui-monospace, monospace; background: #fafafa;
          border: 1px solid #ddd; padding: .6em; margin: .3em 0 .8em; overflow-wrap: anywhere; }
.remasked { border-bottom: 1px solid #c00; }
.changed { background: #b7ebb7; }
.kept { background: #eee; color: #888; }
.counts { color: #555; font-size: .9em; margin: .2em 0; }
.scale { display: inline-block; width: 200px; height: 1em; vertical-align: middle;
         border: 1px solid #ccc;
         background: linear-gradient(to right, rgba(220,38,38,1), rgba(220,38,38,0)); }
table { border-collapse: collapse; margin: 1em 0; }
caption { font-weight: bold; text-align: left; padding: .3em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: .9em; }
"""

LEGEND = """<section class="legend"><h2>Legend</h2>
<p><span class="remasked" style="background: rgba(220,38,38,0.7)">remasked</span> a draft
token masked again for the next stage, shaded by the denoiser's confidence when it was
unmasked: <span class="scale"></span> confidence 0 (solid red) to 1 (no shading).
Hover a token for its confidence.</p>
<p><span class="changed">changed</span> a remasked position re-filled with a different token;
<span class="kept">kept</span> one re-filled with the same token.</p></section>"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell(value: object) -> tuple[str, bool]:
    """The text of a table cell and whether it is numeric (right-aligned)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _esc(value), False
    if isinstance(value, int):
        return str(value), True
    if math.isnan(value):
        return "–", True
    if math.isinf(value) or abs(value) < 1e4:
        return f"{value:.4g}", True
    return f"{value:,.0f}", True


def _table(caption: str, header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = (_cell(v) for v in row)
        body.append(
            "<tr>"
            + "".join(f'<td class="num">{t}</td>' if n else f"<td>{t}</td>" for t, n in cells)
            + "</tr>"
        )
    return (
        f"<table><caption>{_esc(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _figure(caption: str, png: Path) -> str:
    png = Path(png)
    if not png.is_file():
        raise DindError(f"plot not found: {png}")
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(caption)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _draft(tokens: Sequence[int], conf: Sequence[float], remasked: set[int], piece: Piece) -> str:
    out = []
    for pos in range(1, len(tokens)):
        text = _esc(piece(tokens[pos]))
        if pos in remasked:
            c = float(conf[pos])
            alpha = min(max(1.0 - c, 0.0), 1.0)
            out.append(
                f'<span class="remasked" data-confidence="{c:.3f}" '
                f'title="confidence {c:.3f}" '
                f'style="background: rgba(220,38,38,{alpha:.3f})">{text}</span>'
            )
        else:
            out.append(text)
    return "".join(out)


def _revision(r: Revision, piece: Piece) -> str:
    out, remasked = [], set(r.remasked)
    for pos in range(1, len(r.after)):
        text = _esc(piece(r.after[pos]))
        if pos in r.changed:
            was = _esc(f"was {piece(r.before[pos])!r}")
            out.append(f'<span class="changed" title="{was}">{text}</span>')
        elif pos in remasked:
            out.append(f'<span class="kept">{text}</span>')
        else:
            out.append(text)
    return "".join(out)


def _sample(record: dict, tokenizer: Tokenizer) -> str:
    stages = record.get("stages") or []
    meta = [f"seed {record['seed']}"] if "seed" in record else []
    if stages:
        meta.append("stages " + " → ".join(str(b) for b in stages))
    if record.get("remask_ratios"):
        ratios = ", ".join(f"{r:g}" for r in record["remask_ratios"])
        meta.append(f"remask {ratios} ({record.get('remask_policy', '?')})")
    parts = [
        f"<h2>Sample {_esc(record.get('index', '?'))}</h2>",
        f'<p class="counts">{_esc("; ".join(meta))}</p>',
    ]
    steps = record.get("stage_tokens") or []
    if len(steps) < 2:
        parts.append(f'<div class="tokens">{_esc(record.get("text", ""))}</div>')
        return "<section>" + "".join(parts) + "</section>"

    cache: dict[int, str] = {}

    def piece(t: int) -> str:
        if t not in cache:
            cache[t] = tokenizer.decode([t])
        return cache[t]

    for r in revisions(record):
        block = stages[r.stage - 1] if r.stage - 1 < len(stages) else "?"
        calls = "" if r.nfe is None else f", {r.nfe} NFE"
        chosen = set(r.remasked)
        parts += [
            f'<p class="counts">stage {r.stage}: block {block}, {len(r.remasked)} remasked, '
            f"{len(r.changed)} changed{calls}</p>",
            f'<h3>draft (stage {r.stage - 1})</h3><div class="tokens">'
            f"{_draft(r.before, record['snapshot_confidence'][r.stage - 2], chosen, piece)}"
            "</div>",
            f'<h3>revised (stage {r.stage})</h3><div class="tokens">{_revision(r, piece)}</div>',
        ]
    return "<section>" + "".join(parts) + "</section>"


def write_report(
    path: str | Path,
    *,
    title: str,
    samples: list[dict],
    tokenizer: Tokenizer,
    tables: Sequence[Table] = (),
    plots: Sequence[tuple[str, Path]] = (),
    intro: str = "",
    max_samples: int = 3,
) -> Path:
    """Write the report to ``path`` (atomically) and return it. ``samples`` are the records
    of :func:`dind.samples.write_samples`; the first ``max_samples`` are shown. Raises
    :class:`DindError` if a plot file is missing or a sample names a remasking policy that
    does not exist (nothing is written then)."""
    from dind.remask import POLICIES

    for r in samples:
        if "remask_policy" in r and r["remask_policy"] not in POLICIES:
            raise DindError(f"sample {r.get('index', '?')}: unknown remask_policy "
                            f"{r['remask_policy']!r} (valid: {', '.join(POLICIES)})")  # fmt: skip
    path = Path(path)
    body = [f"<h1>{_esc(title)}</h1>"]
    if intro:
        body.append(f'<p class="intro">{_esc(intro)}</p>')
    body += [_table(*t) for t in tables]
    body += [_figure(c, p) for c, p in plots]
    shown = samples[:max_samples]
    if shown:
        body.append(LEGEND)
        body += [_sample(r, tokenizer) for r in shown]
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    atomic_write(path, page)
    return path
