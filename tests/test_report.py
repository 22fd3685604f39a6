"""The HTML sampling report: spans match the trajectory, escaping, embedding, atomic writes,
and (when chromium is installed) that a real browser renders it."""

import base64
import html
import math
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser

import pytest

from dind.errors import DindError
from dind.report import write_report
from dind.tokenizer import train_bpe

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A draft is written with small blocks, then revised globally.",
    "Diffusion models unmask tokens in parallel, one block at a time.",
] * 4


@pytest.fixture(scope="module")
def tok():
    return train_bpe(SENTENCES, vocab_size=320)


def png_bytes(width: int = 8, height: int = 4) -> bytes:
    """A valid RGB PNG, made by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(  # each scanline: filter type 0, then RGB pixels
        b"\x00" + b"".join(bytes([x * 30 % 256, y * 60 % 256, 128]) for x in range(width))
        for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def make_record(tok, text, remasked, replace, index=0, stages=(4, 128)):
    """A two-stage record: ``remasked`` positions are masked again for stage 2 and the
    positions in ``replace`` get a different token there (the others are re-filled as is)."""
    draft = [tok.bos_id] + tok.encode(text)
    revised = list(draft)
    other = tok.encode(" fox")[0]
    for p in replace:
        assert p in remasked
        revised[p] = other if draft[p] != other else tok.encode(" dog")[0]
    conf = [1.0] + [0.05 + 0.9 * (i % 10) / 10 for i in range(1, len(draft))]
    return {
        "index": index,
        "seed": 1234 + index,
        "text": tok.decode(revised[1:]),
        "stages": list(stages),
        "remask_ratios": [0.25],
        "remask_policy": "snapshot",
        "stage_tokens": [draft, revised],
        "snapshot_confidence": [conf, [1.0] * len(draft)],
        "remasked": [[], list(remasked)],
        "nfe": [12, 17],
        "cache_passes": [3, 0],
        "seconds": [0.1, 0.2],
    }


class Spans(HTMLParser):
    """The spans inside ``div.tokens`` (so the legend's examples do not count), and the text
    of each such div."""

    def __init__(self):
        super().__init__()
        self.spans: list[dict] = []
        self.divs: list[str] = []
        self._depth = 0  # >0 inside a div.tokens
        self._span: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("class") == "tokens":
            self._depth = 1
            self.divs.append("")
        elif self._depth and tag == "span":
            self._span = {**a, "text": ""}
            self.spans.append(self._span)

    def handle_endtag(self, tag):
        if tag == "span":
            self._span = None
        elif tag == "div":
            self._depth = 0

    def handle_data(self, data):
        if self._depth:
            self.divs[-1] += data
            if self._span is not None:
                self._span["text"] += data


def parse(path):
    p = Spans()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def by_class(p, cls):
    return [s for s in p.spans if s["class"] == cls]


def test_spans_follow_the_trajectory(tok, tmp_path):
    rec = make_record(tok, SENTENCES[1], remasked=[2, 5, 7, 9], replace=[5, 9])
    out = write_report(tmp_path / "r.html", title="t", samples=[rec], tokenizer=tok)
    assert out == tmp_path / "r.html"
    p = parse(out)
    draft, revised = rec["stage_tokens"]
    assert len(by_class(p, "remasked")) == 4
    changed = [q for q in rec["remasked"][1] if revised[q] != draft[q]]
    assert len(by_class(p, "changed")) == len(changed) == 2
    assert len(by_class(p, "kept")) == 2
    conf = rec["snapshot_confidence"][0]
    for span, pos in zip(by_class(p, "remasked"), rec["remasked"][1], strict=True):
        assert span["data-confidence"] == f"{conf[pos]:.3f}"
        assert span["title"] == f"confidence {conf[pos]:.3f}"
        assert f"rgba(220,38,38,{1 - conf[pos]:.3f})" in span["style"]
        assert span["text"] == tok.decode([draft[pos]])
    for span, pos in zip(by_class(p, "changed"), changed, strict=True):
        assert span["text"] == tok.decode([revised[pos]])
    # Token-by-token rendering loses nothing: each div reads as the decoded stage (no BOS).
    assert p.divs == [tok.decode(draft[1:]), tok.decode(revised[1:])]
    assert "stage 2: block 128, 4 remasked, 2 changed, 17 NFE" in out.read_text()


def test_three_stages_and_text_only_records(tok, tmp_path):
    rec = make_record(tok, SENTENCES[0], remasked=[1, 3], replace=[3], stages=(4, 16, 64))
    third = list(rec["stage_tokens"][1])
    third[4] = tok.encode(" lazy")[0] if third[4] != tok.encode(" lazy")[0] else third[4] + 1
    rec["stage_tokens"].append(third)
    rec["snapshot_confidence"].append([1.0] * len(third))
    rec["remasked"].append([4, 6])
    rec["nfe"].append(9)
    single = {"index": 1, "text": "only one stage", "stage_tokens": [[tok.bos_id, 5]]}
    bare = {"index": 2, "text": "just text"}
    out = write_report(tmp_path / "r.html", title="t", samples=[rec, single, bare], tokenizer=tok)
    text = out.read_text()
    assert "stage 2: block 16, 2 remasked, 1 changed, 17 NFE" in text
    assert "stage 3: block 64, 2 remasked, 1 changed, 9 NFE" in text
    p = parse(out)
    assert len(p.divs) == 4 + 2  # draft + revision per refinement, then one div per text
    assert p.divs[-2:] == ["only one stage", "just text"]
    assert len(by_class(p, "remasked")) == 4


def test_max_samples(tok, tmp_path):
    recs = [make_record(tok, s, [1], [1], index=i) for i, s in enumerate(SENTENCES[:3])]
    text = write_report(
        tmp_path / "r.html", title="t", samples=recs, tokenizer=tok, max_samples=2
    ).read_text()
    assert "<h2>Sample 0</h2>" in text and "<h2>Sample 1</h2>" in text
    assert "<h2>Sample 2</h2>" not in text


def test_escaping(tok, tmp_path):
    evil = "<script>alert('x')</script> & more"
    rec = make_record(tok, evil, remasked=[1, 2], replace=[2])
    out = write_report(
        tmp_path / "r.html",
        title=evil,
        intro=evil,
        tokenizer=tok,
        samples=[rec, {"index": 1, "text": evil}],
        tables=[(evil, [evil], [[evil]])],
        plots=[],
    )
    text = out.read_text()
    assert "<script" not in text.lower()
    assert "&lt;script&gt;" in text
    assert parse(out).divs[-1] == evil  # escaped in the file, intact once parsed


def test_tables(tok, tmp_path):
    rows = [["bd3lm", 128, 0.123456, math.nan], ["dind", 4, 12345.678, 2.5]]
    text = write_report(
        tmp_path / "r.html",
        title="t",
        samples=[],
        tokenizer=tok,
        tables=[("Perplexity by sampler", ["model", "L'", "ppl", "x"], rows)],
    ).read_text()
    assert "<caption>Perplexity by sampler</caption>" in text
    assert "<thead><tr><th>model</th><th>L&#x27;</th>" in text
    assert "<tbody>" in text and text.count("<tr>") == 3
    for cell in [
        "<td>bd3lm</td>",
        ">128</td>",
        ">0.1235</td>",
        ">–</td>",
        ">12,346</td>",
        ">2.5</td>",
    ]:
        assert cell in text


def test_plot_is_embedded(tok, tmp_path):
    png = tmp_path / "loss.png"
    png.write_bytes(png_bytes())
    text = write_report(
        tmp_path / "r.html", title="t", samples=[], tokenizer=tok, plots=[("Loss curve", png)]
    ).read_text()
    data = base64.b64encode(png.read_bytes()).decode()
    assert f'<img src="data:image/png;base64,{data}"' in text
    assert "<figcaption>Loss curve</figcaption>" in text
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from anywhere


def test_missing_plot_writes_nothing(tok, tmp_path):
    path = tmp_path / "r.html"
    with pytest.raises(DindError, match="plot not found: .*missing.png"):
        write_report(
            path, title="t", samples=[], tokenizer=tok, plots=[("x", tmp_path / "missing.png")]
        )
    assert list(tmp_path.iterdir()) == []


def test_unknown_policy_is_refused_and_nothing_written(tok, tmp_path):
    good = make_record(tok, SENTENCES[0], remasked=[1], replace=[1])
    bad = {**make_record(tok, SENTENCES[1], [1], [1], index=7), "remask_policy": "low_conf"}
    path = tmp_path / "r.html"
    # every sample is checked, not only the ones shown
    with pytest.raises(DindError, match=r"^sample 7: unknown remask_policy 'low_conf' \(valid: "
                       r"snapshot, posthoc, random\)$"):  # fmt: skip
        write_report(path, title="t", samples=[good, bad], tokenizer=tok, max_samples=1)
    assert list(tmp_path.iterdir()) == []
    for policy in ("snapshot", "posthoc", "random"):  # every real one is accepted and shown
        good["remask_policy"] = policy
        text = write_report(path, title="t", samples=[good], tokenizer=tok).read_text()
        assert f"remask 0.25 ({policy})" in text


def test_write_is_atomic(tok, tmp_path, monkeypatch):
    path = tmp_path / "r.html"
    write_report(path, title="first", samples=[], tokenizer=tok)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["r.html"]  # no .part left

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("dind.utils.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(path, title="second", samples=[], tokenizer=tok)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["r.html"]  # partial file removed
    assert "<title>first</title>" in path.read_text()  # the old report survives


def chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


@pytest.mark.slow
@pytest.mark.browser
def test_renders_in_chromium(tok, tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH")
    png = tmp_path / "plot.png"
    png.write_bytes(png_bytes(64, 32))
    rec = make_record(tok, SENTENCES[2], remasked=[2, 4, 6], replace=[4])
    report = write_report(
        tmp_path / "report.html",
        title="Sampling report",
        samples=[rec],
        tokenizer=tok,
        plots=[("A plot", png)],
        tables=[("Results table", ["name", "value"], [["dind", 42.5]])],
    )

    def run(profile: str, *args: str) -> str:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / profile}",
        ]
        done = subprocess.run(
            [exe, *flags, *args, f"file://{report}"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    dom = run("profile-dom", "--dump-dom")
    assert dom.count('class="remasked"') == 3 + 1  # the sample's spans and the legend's
    assert dom.count('class="changed"') == 1 + 1
    assert html.escape(tok.decode([rec["stage_tokens"][1][4]]), quote=False) in dom
    assert "Results table" in dom and ">42.5</td>" in dom
    assert '<img src="data:image/png;base64,' in dom

    shot = tmp_path / "shot.png"
    run("profile-shot", f"--screenshot={shot}", "--window-size=1200,2000")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 5_000
