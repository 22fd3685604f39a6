"""OpenWebText (or any local text corpus) as flat GPT-2 token files, BD3-LM style.

Design choices:
- ``source="openwebtext"`` is the Hugging Face hub dataset BD3-LM trains on, loaded with
  ``datasets.load_dataset`` (needs hub access). Anything else is a local ``.jsonl``/``.json``,
  ``.parquet`` or ``.txt`` file, or a folder of them (one kind per folder, files in sorted
  order). A local folder literally named ``openwebtext`` is reached as ``./openwebtext``.
  ``.txt`` files hold one document per blank-line-separated paragraph.
- As in BD3-LM, the LAST ``holdout`` documents are validation and the rest train, every
  document is followed by EOS (``<|endoftext|>``) and the documents are concatenated in order.
  Each split becomes one flat ``uint16`` file (GPT-2's 50257 ids fit), so training memory-maps
  it and cuts rows of any length without a copy (``dind.data.open_token_rows``, the reader;
  this module only writes): the files do not depend on ``seq_len``, which ``meta.json``
  records only as the length the data was prepared for.
- Tokenizing runs in ``num_proc`` worker processes through ``Dataset.map``, which also shows
  the progress bar and caches the tokenized documents in the ``datasets`` cache, so a run that
  dies while writing restarts from the token ids. Each worker builds its own tokenizer (the
  Rust object is not pickled) and caps its Rust thread pool so workers do not oversubscribe.
- Files are written under temporary names and renamed; ``meta.json`` comes last and marks the
  folder complete. A complete folder from the same source, text field and holdout is reused
  as is; a folder holding anything else is refused rather than overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dind.errors import DindError
from dind.utils import atomic_open, atomic_write

if TYPE_CHECKING:
    import datasets

HUB_SOURCE = "openwebtext"
SPLITS = ("train", "val")
TOKENIZER_KIND = "gpt2"
# Local file suffixes -> the ``datasets`` builder that reads them.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
META = "meta.json"
WRITE_BATCH = 10_000  # documents per write: ~10M tokens of memory at OWT's document length


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DindError(
            "preparing OpenWebText needs the 'datasets' package: pip install 'datasets>=2.14'"
        ) from None
    return datasets


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _local_files(path: Path) -> tuple[str, list[str]]:
    """The builder name and the sorted data files of a local file or folder."""
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in BUILDERS)
        if not files:
            raise DindError(f"{path} holds no {'/'.join(BUILDERS)} files")
    builders = {BUILDERS.get(p.suffix.lower()) for p in files}
    if None in builders:
        raise DindError(f"{path}: unsupported file type; expected {', '.join(BUILDERS)}")
    if len(builders) > 1:
        raise DindError(f"{path} mixes file types ({', '.join(sorted(builders))}); use one kind")
    return builders.pop(), [str(p) for p in files]


def load_documents(source: str, text_field: str = "text", split: str = "train") -> datasets.Dataset:
    """The documents of ``source`` as a ``datasets.Dataset`` with a string column
    ``text_field``: the hub's OpenWebText for ``"openwebtext"``, else a local file or folder."""
    ds_lib = _import_datasets()
    if source == HUB_SOURCE:
        try:
            ds = ds_lib.load_dataset(HUB_SOURCE, split=split)
        except Exception as e:  # network, auth and missing-split errors have many types
            raise DindError(
                f"could not load {source!r} from the Hugging Face hub ({_first_line(e)}); "
                "without hub access, pass a local .jsonl/.parquet/.txt file or folder"
            ) from None
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DindError(f"{source}: no such file or folder (nor the hub name {HUB_SOURCE!r})")
        builder, files = _local_files(path)
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        try:
            ds = ds_lib.load_dataset(builder, data_files={split: files}, split=split, **kwargs)
        except Exception as e:  # malformed JSON/parquet surfaces as assorted exception types
            raise DindError(f"could not read {source} as {builder}: {_first_line(e)}") from None
    if text_field not in ds.column_names:
        raise DindError(
            f"{source} has no text field {text_field!r} (fields: {', '.join(ds.column_names)}); "
            "choose one with --text-field"
        )
    dtype = getattr(ds.features[text_field], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise DindError(f"{source}: field {text_field!r} holds {dtype or 'non-text'}, not text")
    return ds


# ----------------------------------------------------------------------------- tokenizing

_WORKER_TOKENIZER: Any = None  # one per process: built on first use, never pickled


def _tokenize_batch(batch: dict[str, list], text_field: str, threads: int) -> dict[str, list]:
    global _WORKER_TOKENIZER
    if _WORKER_TOKENIZER is None:
        if threads > 0:
            # Read by the Rust pool when it starts; without it each worker takes every core.
            os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        from dind.tokenizer import gpt2_tokenizer

        _WORKER_TOKENIZER = gpt2_tokenizer()
    tok = _WORKER_TOKENIZER
    eos = np.array([tok.eos_id], dtype=np.uint16)
    texts = [t or "" for t in batch[text_field]]  # a null document is an empty one
    ids = [np.concatenate([np.asarray(d, dtype=np.uint16), eos]) for d in tok.encode_batch(texts)]
    return {"ids": ids}  # uint16 arrays keep the cached column at 2 bytes per token


@contextlib.contextmanager
def _progress_bars(enabled: bool, ds_lib: Any) -> Iterator[None]:
    """``datasets``' bars on or off for the block; the global setting is restored after."""
    was_enabled = not ds_lib.utils.are_progress_bars_disabled()
    (ds_lib.enable_progress_bars if enabled else ds_lib.disable_progress_bars)()
    try:
        yield
    finally:
        (ds_lib.enable_progress_bars if was_enabled else ds_lib.disable_progress_bars)()


def _write_tokens(ds: datasets.Dataset, dest: Path, progress: bool) -> int:
    """Concatenate the ``ids`` column of ``ds`` into ``dest`` (flat uint16); returns tokens."""
    import pyarrow.compute as pc
    from tqdm import tqdm

    n_tokens = 0
    with (
        atomic_open(dest, "wb") as f,
        tqdm(total=len(ds), unit="doc", desc=f"writing {dest.name}", disable=not progress) as bar,
    ):
        for table in ds.with_format("arrow").iter(batch_size=WRITE_BATCH):
            flat = pc.list_flatten(table["ids"]).to_numpy(zero_copy_only=False)
            flat.astype(np.uint16, copy=False).tofile(f)
            n_tokens += flat.size
            bar.update(table.num_rows)
    return n_tokens


# ----------------------------------------------------------------------------- preparing


def _source_id(source: str) -> str:
    # Absolute paths, so the same data reached from another folder still hits the cache.
    return source if source == HUB_SOURCE else str(Path(source).expanduser().resolve())


def _cached_meta(out_dir: Path, source: str, text_field: str, holdout: int) -> dict | None:
    """The meta of a complete earlier preparation of the same data in ``out_dir``; None if
    ``out_dir`` is empty or holds only an unfinished preparation; DindError otherwise."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise DindError(f"{out_dir} exists and is not a folder")
    meta_file = out_dir / META
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
            same = (meta["source"], meta.get("text_field", "text"), meta["holdout"]) == (
                source,
                text_field,
                holdout,
            )
            complete = all(
                (out_dir / f"{s}.bin").is_file()
                and (out_dir / f"{s}.bin").stat().st_size == 2 * meta["n_tokens"][s]
                for s in SPLITS
            )
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DindError(f"{meta_file} is not a dind meta.json; choose another folder") from None
        if not same:
            raise DindError(
                f"{out_dir} already holds {meta['source']} (text field "
                f"{meta.get('text_field', 'text')!r}, holdout {meta['holdout']}); "
                "choose another folder"
            )
        if not complete:
            raise DindError(f"{out_dir} is incomplete (token files do not match {META}); delete it")
        return meta
    # No meta.json: only dind's own names from a run that died before finishing may be redone.
    ours = {f"{s}.bin" for s in SPLITS} | {"tokenizer"}
    foreign = [p.name for p in out_dir.iterdir() if p.name not in ours and p.suffix != ".part"]
    if foreign:
        raise DindError(
            f"{out_dir} is not empty (has {', '.join(sorted(foreign)[:3])}); choose a new folder"
        )
    return None


def prepare_openwebtext(
    source: str,
    out_dir: str | Path,
    seq_len: int = 1024,
    holdout: int = 100_000,
    num_proc: int | None = None,
    text_field: str = "text",
    progress: bool = True,
) -> dict:
    """Tokenize ``source`` with GPT-2 into ``out_dir/{train,val}.bin`` (flat uint16, EOS after
    each document; the last ``holdout`` documents are ``val``) plus ``meta.json`` and
    ``tokenizer/``. Returns the meta dict; a complete earlier run of the same data is reused."""
    from dind.tokenizer import gpt2_tokenizer

    if seq_len < 1:
        raise DindError(f"seq_len must be positive, got {seq_len}")
    if holdout < 1:
        raise DindError(f"holdout must be at least 1 document, got {holdout}")
    if num_proc is None:
        num_proc = min(8, os.cpu_count() or 1)
    if num_proc < 1:
        raise DindError(f"num_proc must be at least 1, got {num_proc}")
    out_dir = Path(out_dir).expanduser()
    source_id = _source_id(source)
    cached = _cached_meta(out_dir, source_id, text_field, holdout)
    if cached is not None:
        return cached

    ds_lib = _import_datasets()
    with _progress_bars(progress, ds_lib):
        docs = load_documents(source, text_field=text_field)
    n_docs = len(docs)
    if n_docs <= holdout:
        raise DindError(
            f"{source} has {n_docs} documents, not more than the holdout of {holdout}; "
            "pass a smaller --holdout"
        )
    # Built here first so a missing GPT-2 file is fetched once, not by every worker.
    tok = gpt2_tokenizer()
    if tok.mask_id > np.iinfo(np.uint16).max + 1:
        raise DindError(f"a vocabulary of {tok.mask_id} tokens does not fit uint16 files")
    procs = min(num_proc, n_docs)
    with _progress_bars(progress, ds_lib):
        tokenized = docs.map(
            _tokenize_batch,
            batched=True,
            num_proc=procs if procs > 1 else None,
            remove_columns=docs.column_names,
            fn_kwargs={
                "text_field": text_field,
                "threads": max(1, (os.cpu_count() or 1) // procs) if procs > 1 else 0,
            },
            desc="tokenizing",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {
        "train": tokenized.select(range(n_docs - holdout)),
        "val": tokenized.select(range(n_docs - holdout, n_docs)),
    }
    n_tokens = {s: _write_tokens(parts[s], out_dir / f"{s}.bin", progress) for s in SPLITS}
    tok.save(out_dir / "tokenizer")
    meta = {
        "seq_len": seq_len,
        "tokenizer": TOKENIZER_KIND,
        "eos_id": tok.eos_id,
        "n_docs": {s: len(parts[s]) for s in SPLITS},
        "n_tokens": n_tokens,
        "source": source_id,
        "holdout": holdout,
        "text_field": text_field,
    }
    atomic_write(out_dir / META, json.dumps(meta, indent=2) + "\n")  # last: marks it complete
    return meta
