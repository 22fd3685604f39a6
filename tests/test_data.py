import numpy as np
import pytest

from dind.data import batch_indices, build_rows, load_corpus, prepare_data, split_documents
from dind.errors import DindError
from dind.tokenizer import train_bpe


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIND_CACHE", str(tmp_path / "cache"))


def test_rows_have_eos_after_each_document_in_order():
    docs = ["alpha beta gamma", "delta", "epsilon zeta eta theta", "iota kappa"]
    tok = train_bpe(docs * 5, 300)
    L = 5
    rows = build_rows(docs, tok, L)
    stream = []
    for d in docs:
        stream += tok.encode(d) + [tok.eos_id]
    n = len(stream) // L
    assert rows.shape == (n, L)
    assert rows.flatten().tolist() == stream[: n * L]
    assert rows.dtype == np.uint16


def test_split_holds_out_whole_documents_deterministically():
    docs = {f"d{i:02d}": f"text of document {i}" for i in range(25)}
    a, b = split_documents("x", docs), split_documents("x", dict(reversed(docs.items())))
    assert a.val_names == b.val_names == ["d09", "d19"]
    assert set(a.val_names).isdisjoint(a.train_names)
    assert sorted(a.train_names + a.val_names) == sorted(docs)
    assert a.val_docs == [docs["d09"], docs["d19"]]


def test_text_corpus_and_bad_inputs(tmp_path):
    folder = tmp_path / "c"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        (folder / "sub" / f"{i}.txt").write_text(f"document number {i} " * 50)
    (folder / "skip.md").write_text("not a txt file")
    corpus = load_corpus(str(folder))
    assert len(corpus.train_docs) + len(corpus.val_docs) == 3 and len(corpus.val_docs) == 1
    with pytest.raises(DindError, match="not found: /no/such"):
        load_corpus("/no/such")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    with pytest.raises(DindError, match="empty"):
        load_corpus(str(empty))
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text("just one document")
    with pytest.raises(DindError, match="at least 2 documents"):
        load_corpus(str(one))
    tok = train_bpe(corpus.train_docs, 300)
    with pytest.raises(DindError, match="too short"):
        prepare_data(str(folder), tok, 100_000)


def test_prepare_data_caches_and_memory_maps(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_text(f"some words for document {i} " * 40)
    tok = train_bpe(load_corpus(str(folder)).train_docs, 300)
    train, val = prepare_data(str(folder), tok, 16)
    train2, _ = prepare_data(str(folder), tok, 16)
    assert isinstance(train2.rows, np.memmap)
    assert np.array_equal(np.asarray(train.rows), np.asarray(train2.rows))
    assert train.seq_len == 16 and len(val) > 0
    assert tuple(train.batch([0, 1]).shape) == (2, 16)


def test_batch_indices_resume_ranks_and_epochs():
    N, B = 10, 3
    run = [batch_indices(N, B, s, seed=7) for s in range(8)]
    assert all(np.array_equal(batch_indices(N, B, s, seed=7), run[s]) for s in range(5, 8))
    flat = np.concatenate(run)
    assert sorted(flat[:10].tolist()) == list(range(10))  # every row once per epoch
    assert sorted(flat[10:20].tolist()) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:20])  # a new order each epoch
    # two ranks split the global batch of one-rank training with batch 2 * B
    for s in range(4):
        r0, r1 = (batch_indices(N, B, s, seed=7, rank=r, world_size=2) for r in (0, 1))
        assert np.array_equal(np.concatenate([r0, r1]), batch_indices(N, 2 * B, s, seed=7))


def test_shakespeare_corpus():
    try:
        corpus = load_corpus("shakespeare")
    except DindError as e:
        pytest.skip(str(e))
    assert len(corpus.train_docs) > 30 and 1 <= len(corpus.val_docs) < len(corpus.train_docs)
    assert set(corpus.val_names).isdisjoint(corpus.train_names)
    assert "hamlet_gut" in corpus.train_names + corpus.val_names
    assert not any(name.endswith("_f") for name in corpus.train_names)  # no duplicate spellings
    assert len(set(corpus.train_docs)) == len(corpus.train_docs)  # no byte-identical copies
