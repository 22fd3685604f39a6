"""OpenWebText-style preparation on small local corpora (the hub is not reachable in tests).

DIND_CACHE is left alone so the cached GPT-2 file is reused; the ``datasets`` cache goes to a
temporary folder so tests never see each other's tokenized documents.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from dind.data import open_token_rows  # noqa: E402
from dind.errors import DindError  # noqa: E402
from dind.owt import load_documents, prepare_openwebtext  # noqa: E402
from dind.tokenizer import gpt2_tokenizer  # noqa: E402

N_DOCS, HOLDOUT, SEQ = 30, 5, 16


def _documents() -> list[str]:
    words = ["block", "diffusion", "naïve", "café", "数据", "🙂", "tokens", "  spaced", "x\ty"]
    docs = []
    for i in range(N_DOCS):
        body = " ".join(words[(i + k) % len(words)] for k in range(1 + (i * 7) % 23))
        docs.append(f"Doc {i}: {body}\n\nEnd of {i}." if i % 5 else body)
    docs[3] = ""  # an empty document still gets its EOS
    return docs


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def _write_source(kind: str, folder: Path, docs: list[str]) -> Path:
    if kind == "jsonl":
        return _write_jsonl(folder / "docs.jsonl", docs)
    if kind == "parquet":
        path = folder / "docs.parquet"
        datasets.Dataset.from_dict({"text": docs}).to_parquet(str(path))
        return path
    # A folder of two files: read in sorted name order, so documents keep their order.
    src = folder / "corpus"
    src.mkdir()
    _write_jsonl(src / "b.jsonl", docs[12:])
    _write_jsonl(src / "a.jsonl", docs[:12])
    return src


def _expected_stream(docs: list[str]) -> np.ndarray:
    tok = gpt2_tokenizer()
    out: list[int] = []
    for d in docs:
        out += tok.encode(d) + [tok.eos_id]
    return np.array(out, dtype=np.uint16)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "folder"])
def test_prepare_matches_direct_tokenization(tmp_path, kind):
    docs = _documents()
    source = _write_source(kind, tmp_path, docs)
    out = tmp_path / "out"
    meta = prepare_openwebtext(
        str(source), out, seq_len=SEQ, holdout=HOLDOUT, num_proc=2, progress=False
    )

    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    want_train = _expected_stream(docs[:-HOLDOUT])
    want_val = _expected_stream(docs[-HOLDOUT:])
    np.testing.assert_array_equal(train, want_train)
    np.testing.assert_array_equal(val, want_val)
    eos = gpt2_tokenizer().eos_id
    assert int((train == eos).sum()) == N_DOCS - HOLDOUT  # one EOS per document, none inside
    assert int((val == eos).sum()) == HOLDOUT
    assert train[-1] == eos and val[-1] == eos

    assert meta == json.loads((out / "meta.json").read_text())
    assert meta["n_docs"] == {"train": N_DOCS - HOLDOUT, "val": HOLDOUT}
    assert meta["n_tokens"] == {"train": want_train.size, "val": want_val.size}
    assert meta["seq_len"] == SEQ and meta["eos_id"] == eos == 50256
    assert meta["tokenizer"] == "gpt2" and meta["holdout"] == HOLDOUT
    assert meta["source"] == str(source.resolve())
    assert (out / "tokenizer" / "tokenizer.json").is_file()

    for split, flat in (("train", want_train), ("val", want_val)):
        rows = open_token_rows(out, split, SEQ)
        n = flat.size // SEQ
        assert rows.rows.shape == (n, SEQ) and len(rows) == n and rows.seq_len == SEQ
        assert isinstance(rows.rows, np.memmap)  # a view on the file, not a copy
        np.testing.assert_array_equal(rows.rows, flat[: n * SEQ].reshape(n, SEQ))
    batch = open_token_rows(out, "train", SEQ).batch([0, 2])
    np.testing.assert_array_equal(batch.numpy(), want_train[: 3 * SEQ].reshape(3, SEQ)[[0, 2]])


def test_second_call_is_cached_and_foreign_folders_are_refused(tmp_path, monkeypatch):
    source = _write_jsonl(tmp_path / "docs.jsonl", _documents())
    out = tmp_path / "out"
    meta = prepare_openwebtext(str(source), out, seq_len=SEQ, holdout=HOLDOUT, num_proc=1,
                               progress=False)  # fmt: skip
    stamp = (out / "train.bin").stat().st_mtime_ns

    def no_loading(*args, **kwargs):
        raise AssertionError("a cached preparation must not load the documents again")

    monkeypatch.setattr("dind.owt.load_documents", no_loading)
    again = prepare_openwebtext(str(source), out, seq_len=SEQ, holdout=HOLDOUT, progress=False)
    assert again == meta
    assert (out / "train.bin").stat().st_mtime_ns == stamp

    other = _write_jsonl(tmp_path / "other.jsonl", _documents()[::-1])
    with pytest.raises(DindError, match="already holds"):
        prepare_openwebtext(str(other), out, seq_len=SEQ, holdout=HOLDOUT, progress=False)
    with pytest.raises(DindError, match="already holds"):
        prepare_openwebtext(str(source), out, seq_len=SEQ, holdout=HOLDOUT + 1, progress=False)

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    with pytest.raises(DindError, match="not empty"):
        prepare_openwebtext(str(source), unrelated, seq_len=SEQ, holdout=HOLDOUT, progress=False)
    assert sorted(p.name for p in unrelated.iterdir()) == ["notes.txt"]


def test_bad_inputs_raise_dind_errors(tmp_path):
    docs = _documents()
    source = _write_jsonl(tmp_path / "docs.jsonl", docs)
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DindError, match="nope.jsonl"):
        prepare_openwebtext(str(missing), tmp_path / "o1", holdout=HOLDOUT, progress=False)
    with pytest.raises(DindError, match="nope.jsonl"):
        load_documents(str(missing))
    for holdout in (N_DOCS, N_DOCS + 1):
        with pytest.raises(DindError, match="smaller --holdout"):
            prepare_openwebtext(str(source), tmp_path / "o2", holdout=holdout, progress=False)
    no_text = _write_jsonl(tmp_path / "body.jsonl", docs, field="body")
    with pytest.raises(DindError, match="no text field 'text'"):
        prepare_openwebtext(str(no_text), tmp_path / "o3", holdout=HOLDOUT, progress=False)
    assert load_documents(str(no_text), text_field="body")["body"] == docs
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    with pytest.raises(DindError, match="bad.jsonl"):
        load_documents(str(bad))
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_open_token_rows_errors(tmp_path):
    with pytest.raises(DindError, match="not found"):
        open_token_rows(tmp_path, "train", SEQ)
    np.arange(40, dtype=np.uint16).tofile(tmp_path / "val.bin")
    assert open_token_rows(tmp_path, "val", 16).rows.shape == (2, 16)  # 8 tokens dropped
    with pytest.raises(DindError, match="fewer than one row"):
        open_token_rows(tmp_path, "val", 41)


def test_hub_source_failure_is_a_dind_error(monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach the Hugging Face hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DindError, match="'openwebtext'.*Couldn't reach"):
        load_documents("openwebtext")
    assert calls == [(("openwebtext",), {"split": "train"})]


@pytest.mark.slow
def test_training_reads_a_tokenized_folder(tmp_path):
    """`dind data openwebtext` output feeds `dind train --corpus DIR --tokenizer gpt2`."""
    import os
    import subprocess
    import sys

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": f"document {i} " + "words " * 30}) + "\n"
                           for i in range(12)))  # fmt: skip
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "dind.cli", *args], capture_output=True,
                              text=True, env=env, timeout=300)  # fmt: skip

    res = cli("data", "openwebtext", "--source", str(src), "--out", str(tmp_path / "tok"),
              "--seq-len", "16", "--holdout", "3", "--num-proc", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr
    base = ["train", "--out", str(tmp_path / "run"), "--corpus", str(tmp_path / "tok"),
            "--seq-len", "16", "--max-steps", "2", "--eval-every", "0", "--batch-size", "2",
            "--block-sizes", "4,16", "--no-progress"]  # fmt: skip
    bad = cli(*base)  # the tiny preset's default tokenizer is a corpus BPE
    assert bad.returncode == 2 and "--tokenizer gpt2" in bad.stderr
    res = cli(*base, "--tokenizer", "gpt2")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model"]["vocab_size"] == 50258
