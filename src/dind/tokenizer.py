"""Tokenizers: GPT-2's BPE (BD3-LM's vocabulary, offline) and a small BPE trained on a corpus.

Design choices:
- Both kinds are a Hugging Face ``tokenizers`` byte-level BPE stored as one ``tokenizer.json``
  (plus a ``tokenizer_config.json`` that ``transformers`` accepts), so every run folder and
  checkpoint carries its tokenizer in the same form.
- The mask token is not a tokenizer entry: its id is one past the last real token, exactly
  as BD3-LM (GPT-2: 50257 tokens, mask id 50257, model vocabulary 50258). ``decode`` renders
  it as ``[MASK]``.
- GPT-2's ranks come from ``whisper/assets/gpt2.tiktoken`` inside the PyPI sdist
  ``openai-whisper==20250625`` (byte-identical to tiktoken's gpt2), fetched once with pip so
  a configured index or mirror is respected; the merges are recovered from the ranks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from dind.cache import cache_dir
from dind.errors import DindError

EOT = "<|endoftext|>"
MASK_TEXT = "[MASK]"
WHISPER_SDIST = "openai-whisper==20250625"
GPT2_RANKS_MEMBER = "whisper/assets/gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


class Tokenizer:
    """A byte-level BPE with dind's conventions: EOS = BOS = ``<|endoftext|>``, mask outside."""

    def __init__(self, hf: HFTokenizer, kind: str):
        self.hf = hf
        self.kind = kind
        eot = hf.token_to_id(EOT)
        if eot is None:
            raise DindError(f"tokenizer has no {EOT} token")
        self._eot = eot
        self._mask = hf.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        return self._eot

    @property
    def bos_id(self) -> int:
        return self._eot

    @property
    def mask_id(self) -> int:
        return self._mask

    @property
    def vocab_size(self) -> int:
        """Rows the model's embedding needs: the real tokens plus the mask."""
        return self._mask + 1

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; mask ids become ``[MASK]``, special tokens are kept."""
        out, run = [], []
        for i in ids:
            i = int(i)
            if i == self._mask:
                out.append(self.hf.decode(run, skip_special_tokens=False))
                out.append(MASK_TEXT)
                run = []
            else:
                run.append(i)
        out.append(self.hf.decode(run, skip_special_tokens=False))
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": EOT,
            "eos_token": EOT,
            "unk_token": EOT,
            "model_max_length": 1_000_000,
            "dind": {"kind": self.kind, "mask_id": self.mask_id},
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        directory = Path(directory)
        file = directory / "tokenizer.json"
        if not file.exists():
            raise DindError(f"{directory} has no tokenizer (tokenizer.json)")
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise DindError(f"{file} is not a valid tokenizer: {str(e)[:200]}") from None
        kind = "bpe"
        config = directory / "tokenizer_config.json"
        if config.exists():
            kind = json.loads(config.read_text()).get("dind", {}).get("kind", "bpe")
        return cls(hf, kind)


# ----------------------------------------------------------------------------- GPT-2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    mapping, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _fetch_gpt2_ranks(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-q", WHISPER_SDIST, "-d", tmp]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if res.returncode != 0 or not sdists:
            raise DindError(
                f"could not fetch the GPT-2 tokenizer file from PyPI ({WHISPER_SDIST}); "
                f"place {GPT2_RANKS_MEMBER} from that sdist at {dest} by hand"
            )
        with tarfile.open(sdists[0]) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(GPT2_RANKS_MEMBER))
            data = tar.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != GPT2_RANKS_SHA256:
        raise DindError(f"{GPT2_RANKS_MEMBER} from {WHISPER_SDIST} has an unexpected checksum")
    tmp_file = dest.with_suffix(".part")
    tmp_file.write_bytes(data)
    os.replace(tmp_file, dest)


def _gpt2_from_ranks(ranks: dict[bytes, int]) -> HFTokenizer:
    to_unicode = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_unicode[x] for x in b)

    def merge_of(token: bytes, rank: int) -> tuple[bytes, bytes]:
        # Re-run byte-pair merging with only the merges older than this token: the last
        # two parts standing are the pair that forms it.
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(
                ((ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1)),
            )
            if best[0] >= rank:
                break
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise DindError("GPT-2 ranks file is inconsistent (a token has no merge)")
        return parts[0], parts[1]

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            a, b = merge_of(token, rank)
            merges.append((text(a), text(b)))
    vocab = {text(t): r for t, r in ranks.items()}
    vocab[EOT] = len(ranks)  # 50256
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(EOT, special=True)])
    return hf


def gpt2_ranks_file() -> Path:
    folder = cache_dir() / "gpt2"
    folder.mkdir(parents=True, exist_ok=True)
    ranks_file = folder / "gpt2.tiktoken"
    if not ranks_file.exists():
        _fetch_gpt2_ranks(ranks_file)
    return ranks_file


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's BPE: 50257 tokens, ``<|endoftext|>`` = 50256, mask id 50257."""
    folder = cache_dir() / "gpt2"
    built = folder / "tokenizer.json"
    if not built.exists():
        ranks_file = gpt2_ranks_file()
        ranks = {}
        for line in ranks_file.read_bytes().splitlines():
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        hf = _gpt2_from_ranks(ranks)
        tmp = built.with_suffix(".part")
        hf.save(str(tmp))
        os.replace(tmp, built)
    return Tokenizer(HFTokenizer.from_file(str(built)), "gpt2")


# ----------------------------------------------------------------------------- corpus BPE


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` tokens (fewer if the corpus is small) trained on
    ``texts``; any text still encodes (the 256 byte symbols are always in the vocabulary)."""
    if vocab_size < 258:
        raise DindError(f"BPE vocabulary must be at least 258 (bytes + {EOT}), got {vocab_size}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf, "bpe")


def get_tokenizer(name: str, texts: Iterable[str] | None = None, vocab_size: int = 4096):
    """``"gpt2"`` or ``"bpe"`` (trained on ``texts``)."""
    if name == "gpt2":
        return gpt2_tokenizer()
    if name == "bpe":
        if texts is None:
            raise DindError("a BPE tokenizer needs texts to train on")
        return train_bpe(texts, vocab_size)
    raise DindError(f"unknown tokenizer {name!r}; choose 'gpt2' or 'bpe'")
