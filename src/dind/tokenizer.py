"""Tokenizers: GPT-2's BPE (BD3-LM's vocabulary, offline) and a small BPE trained on a corpus.

Design choices:
- Both kinds are a Hugging Face ``tokenizers`` byte-level BPE stored as one ``tokenizer.json``
  (plus a ``tokenizer_config.json`` that ``transformers.PreTrainedTokenizerFast`` accepts), so
  every run folder and checkpoint carries its tokenizer in the same form.
- EOS = BOS = ``<|endoftext|>``. The mask token is not a tokenizer entry: its id is one past
  the last real token, exactly as BD3-LM (GPT-2: 50257 tokens, mask id 50257, model
  vocabulary 50258). ``decode`` renders it as ``[MASK]`` and skips nothing else.
- GPT-2's ranks come from ``whisper/assets/gpt2.tiktoken`` inside the PyPI sdist
  ``openai-whisper==20250625`` (byte-identical to tiktoken's gpt2), fetched once with pip so a
  configured index or mirror is respected, and checked against a pinned sha256. The merges are
  recovered from the ranks; the built ``tokenizer.json`` is cached next to the ranks file.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from dind.errors import DindError
from dind.paths import cache_dir
from dind.utils import FetchError, PackageError, atomic_write, fetch_member

EOT = "<|endoftext|>"
MASK_TEXT = "[MASK]"
KINDS = ("gpt2", "bpe")
WHISPER_SDIST = "openai-whisper==20250625"
GPT2_RANKS_MEMBER = "whisper/assets/gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_EOT_ID = 50256


class Tokenizer:
    """A byte-level BPE with dind's conventions: EOS = BOS = ``<|endoftext|>``, mask outside."""

    def __init__(self, hf: HFTokenizer, kind: str):
        if kind not in KINDS:
            raise DindError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
        eot = hf.token_to_id(EOT)
        if eot is None:
            raise DindError(f"tokenizer has no {EOT} token")
        self.hf = hf
        self._kind = kind
        self._eot = eot
        self._mask = hf.get_vocab_size(with_added_tokens=True)  # one past the last real id

    @property
    def kind(self) -> str:
        return self._kind

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
        """Encodes in parallel (``tokenizers`` uses all cores)."""
        return [e.ids for e in self.hf.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; mask ids become ``[MASK]``, special tokens are kept."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i == self._mask:
                # Decode the run before the mask on its own: byte-level pieces never span it.
                out.append(self.hf.decode(run, skip_special_tokens=False))
                out.append(MASK_TEXT)
                run = []
            else:
                run.append(i)
        out.append(self.hf.decode(run, skip_special_tokens=False))
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` and a ``tokenizer_config.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / "tokenizer.json", self.hf.to_str(pretty=True))  # = hf.save
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": EOT,
            "eos_token": EOT,
            "unk_token": EOT,
            "model_max_length": 1_000_000,  # positions are the model's business, not ours
            "dind": {"kind": self.kind, "mask_id": self.mask_id},
        }
        atomic_write(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Read back what ``save`` wrote."""
        directory = Path(directory)
        file = directory / "tokenizer.json"
        if not file.is_file():
            raise DindError(f"{directory} has no tokenizer (tokenizer.json not found)")
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise DindError(f"{file} is not a valid tokenizer: {str(e)[:200]}") from None
        info: dict = {}
        config = directory / "tokenizer_config.json"
        if config.is_file():
            try:
                info = json.loads(config.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise DindError(f"{config} is not valid JSON") from None
            info = info.get("dind", {}) if isinstance(info, dict) else None
            if not isinstance(info, dict):
                raise DindError(f"{config} is not a tokenizer config (not a JSON object)")
        tok = cls(hf, info.get("kind", "bpe"))
        if "mask_id" in info and info["mask_id"] != tok.mask_id:
            raise DindError(
                f"{config} says mask id {info['mask_id']} but tokenizer.json gives {tok.mask_id}"
            )
        return tok


# ----------------------------------------------------------------------------- GPT-2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _fetch_gpt2_ranks(dest: Path) -> None:
    by_hand = f"place {GPT2_RANKS_MEMBER} from the {WHISPER_SDIST} sdist at {dest} by hand"
    try:
        fetch_member("pip", WHISPER_SDIST, GPT2_RANKS_MEMBER, dest, sdist=True,
                     sha256=GPT2_RANKS_SHA256)  # fmt: skip
    except PackageError as e:
        raise DindError(f"{WHISPER_SDIST} sdist: {e}; {by_hand}") from None
    except FetchError as e:
        raise DindError(
            f"could not fetch the GPT-2 tokenizer file from PyPI ({e}); {by_hand}"
        ) from None


def gpt2_ranks_file() -> Path:
    """The cached tiktoken ranks file (``cache_dir()/gpt2/gpt2.tiktoken``), fetched on first use."""
    folder = cache_dir() / "gpt2"
    folder.mkdir(parents=True, exist_ok=True)
    ranks_file = folder / "gpt2.tiktoken"
    if not ranks_file.exists():
        _fetch_gpt2_ranks(ranks_file)
    return ranks_file


def _read_ranks(path: Path) -> dict[bytes, int]:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != GPT2_RANKS_SHA256:
        # Also guards a hand-placed file: a wrong one would silently give other ids.
        raise DindError(f"{path} is not GPT-2's gpt2.tiktoken (sha256 mismatch); delete it")
    ranks = {}
    for line in data.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _gpt2_from_ranks(ranks: dict[bytes, int]) -> HFTokenizer:
    to_unicode = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_unicode[x] for x in b)

    def merge_of(token: bytes, rank: int) -> tuple[bytes, bytes]:
        # Re-run byte-pair merging with only the merges older than this token: the last
        # two parts standing are the pair that forms it.
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best, i = min(
                (ranks.get(parts[j] + parts[j + 1], rank), j) for j in range(len(parts) - 1)
            )
            if best >= rank:
                break
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
    vocab[EOT] = GPT2_EOT_ID
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(EOT, special=True)])
    return hf


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's BPE: 50257 tokens, ``<|endoftext|>`` = 50256, mask id 50257."""
    built = cache_dir() / "gpt2" / "tokenizer.json"
    if not built.exists():
        hf = _gpt2_from_ranks(_read_ranks(gpt2_ranks_file()))
        atomic_write(built, hf.to_str())
    tok = Tokenizer(HFTokenizer.from_file(str(built)), "gpt2")
    if (tok.eos_id, tok.mask_id) != (GPT2_EOT_ID, GPT2_EOT_ID + 1):
        raise DindError(f"{built} is not GPT-2's tokenizer; delete it to rebuild")
    return tok


# ----------------------------------------------------------------------------- corpus BPE


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` base tokens (fewer if the corpus is small) trained on
    ``texts``; any text still encodes (the 256 byte symbols are always in the vocabulary).
    The model vocabulary is one more (the mask)."""
    if vocab_size < 257:
        raise DindError(
            f"BPE vocabulary must be at least 257 (256 bytes + {EOT}), got {vocab_size}"
        )
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


def get_tokenizer(
    name: str, texts: Iterable[str] | None = None, vocab_size: int = 4096
) -> Tokenizer:
    """``"gpt2"``, or ``"bpe"`` trained on ``texts`` with ``vocab_size`` base tokens."""
    if name == "gpt2":
        return gpt2_tokenizer()
    if name == "bpe":
        if texts is None:
            raise DindError("the 'bpe' tokenizer needs texts to train on")
        return train_bpe(texts, vocab_size)
    raise DindError(f"unknown tokenizer {name!r}; choose one of {', '.join(KINDS)}")
