"""Judges: strided scoring against direct per-token computations, EOS handling, spec errors,
and the offline SmolLM2 judge."""

from __future__ import annotations

import math
import socket

import pytest
import torch

import dind.judges
from dind.attention import causal_mask
from dind.checkpoint import save_checkpoint
from dind.config import ModelConfig, RunConfig, TrainConfig
from dind.errors import DindError
from dind.judges import (
    DindARJudge,
    HFJudge,
    JudgeScore,
    load_judge,
    smollm2_folder,
    smollm2_judge,
    strided_nll,
)
from dind.model import DiT
from dind.tokenizer import EOT, gpt2_tokenizer, train_bpe

SHORT = "The cat sat on the mat and looked at the door."
LONG = " ".join(
    f"Line {i}: the quick brown fox jumps over the lazy dog near river {i * 7}." for i in range(12)
)


# Hundreds of tiny forwards: intra-op threads only add wake-up latency (100x on a busy box).
pytestmark = pytest.mark.usefixtures("one_thread")


def window_of(t: int, context: int, stride: int) -> int:
    """The window that scores token t (0-based, BOS not counted): windows are BOS + tokens
    [w * stride, w * stride + context - 1), and the first one whose end passes t scores it."""
    w = 0
    while w * stride + context - 1 <= t:
        w += 1
    return w


def reference_nll(logprob_of, seq: list[int], eos: int, context: int, stride: int | None):
    """Per-token loop over seq = [BOS] + tokens: -log p(tokens[t] | BOS + tokens[start:t]) with
    start from the strided rule (or 0 with stride None), EOS targets left out.
    ``logprob_of(ctx, tgt)`` -> float."""
    bos, tokens = seq[0], seq[1:]
    nll, n = 0.0, 0
    for t, target in enumerate(tokens):
        if target == eos:
            continue
        start = 0 if stride is None else window_of(t, context, stride) * stride
        nll -= logprob_of([bos, *tokens[start:t]], target)
        n += 1
    return nll, n


def bare_slices_nll(logprob_of, seq: list[int], context: int, stride: int) -> float:
    """The former rule, BD3-LM's: windows are bare slices of [BOS] + tokens, so only the first
    one holds the BOS (no EOS in seq)."""
    nll = 0.0
    for j in range(1, len(seq)):
        start = max(0, math.ceil((j - context + 1) / stride)) * stride
        nll -= logprob_of(seq[start:j], seq[j])
    return nll


# ----------------------------------------------------------------------------- HF judge


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=gpt2_tokenizer().hf, bos_token=EOT, eos_token=EOT
    )
    # A large init spread makes logits depend strongly on context, so a wrong window shows.
    cfg = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=len(tok), initializer_range=0.3
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    return folder, model, tok


def hf_logprob(model):
    @torch.no_grad()
    def logprob_of(ctx: list[int], tgt: int) -> float:
        logits = model(input_ids=torch.tensor([ctx])).logits[0, -1].double()
        return float(logits.log_softmax(-1)[tgt])

    return logprob_of


def test_hf_judge_short_text_matches_direct_forward(tiny_gpt2):
    folder, model, tok = tiny_gpt2
    judge = load_judge(str(folder))
    assert isinstance(judge, HFJudge) and (judge.context, judge.stride) == (64, 32)
    tokens = tok(SHORT, add_special_tokens=False).input_ids
    s = judge.score(SHORT)
    assert s.tokens == tokens and s.n_tokens == len(tokens)
    # One full forward over [BOS] + tokens, gather, sum.
    x = torch.tensor([[tok.bos_token_id, *tokens]])
    with torch.no_grad():
        logp = model(input_ids=x).logits[0, :-1].double().log_softmax(-1)
    direct = -float(logp.gather(1, x[0, 1:, None]).sum())
    assert s.nll_sum == pytest.approx(direct, rel=1e-5)


@pytest.mark.slow
def test_hf_judge_long_text_uses_strided_windows(tiny_gpt2):
    folder, model, tok = tiny_gpt2
    judge = load_judge(str(folder))
    tokens = tok(LONG, add_special_tokens=False).input_ids
    assert len(tokens) > 2 * 64  # several windows, the last one partial
    s = judge.score(LONG)
    seq = [tok.bos_token_id, *tokens]
    ref, n = reference_nll(hf_logprob(model), seq, tok.eos_token_id, 64, 32)
    assert s.n_tokens == n == len(tokens)
    assert s.nll_sum == pytest.approx(ref, rel=1e-5)
    # The check has teeth: non-overlapping windows, or later windows without their BOS (bare
    # slices of [BOS] + tokens, the former rule), give clearly different totals.
    chunked, _ = reference_nll(hf_logprob(model), seq, tok.eos_token_id, 64, 63)
    assert abs(chunked - ref) > 2e-4 * abs(ref)
    bare = bare_slices_nll(hf_logprob(model), seq, 64, 32)
    assert abs(bare - ref) > 1e-3 * abs(ref)


def test_hf_judge_excludes_eos_targets(tiny_gpt2):
    folder, model, tok = tiny_gpt2
    judge = load_judge(str(folder))
    text = f"First document here.{EOT}Second one follows.{EOT}"
    s = judge.score(text)
    eos = tok.eos_token_id
    assert s.tokens.count(eos) == 2
    assert s.n_tokens == len(s.tokens) - 2
    ref, n = reference_nll(hf_logprob(model), [eos, *s.tokens], eos, 64, 32)
    assert (s.n_tokens, s.nll_sum) == (n, pytest.approx(ref, rel=1e-5))
    assert judge.score("") == JudgeScore(0.0, 0, [])


# ----------------------------------------------------------------------------- windows


def test_windows_match_one_window_for_a_judge_that_needs_its_bos():
    """A toy judge that predicts from the previous token only when its input starts with BOS
    (and is uniform otherwise) is exact under BOS-per-window: a long text scored in windows
    equals the same text scored in one piece, to rounding."""
    V, bos = 12, 11
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    seen = []

    def logits_fn(x, first):
        seen.append(x[0].tolist())
        if int(x[0, 0]) != bos:
            return torch.zeros(x.shape[1] - first, V)
        return table[x[0, first:]]

    tokens = torch.randint(V - 1, (200,), generator=torch.Generator().manual_seed(1)).tolist()
    one = strided_nll(tokens, bos, None, 1024, 512, logits_fn)
    assert len(seen) == 1
    seen.clear()
    windowed = strided_nll(tokens, bos, None, 24, 10, logits_fn)
    assert len(seen) > 10 and all(w[0] == bos and len(w) <= 24 for w in seen)
    assert windowed.n_tokens == one.n_tokens == 200
    assert windowed.nll_sum == pytest.approx(one.nll_sum, rel=1e-6)

    def logprob_of(ctx, tgt):  # the toy judge, one target at a time
        row = table[ctx[-1]] if ctx[0] == bos else torch.zeros(V, dtype=torch.float64)
        return float(row.log_softmax(-1)[tgt])

    assert windowed.nll_sum == pytest.approx(
        reference_nll(logprob_of, [bos, *tokens], -1, 24, 10)[0], rel=1e-6
    )
    # teeth: the same windows without their BOS (the former rule) are far off
    bare = bare_slices_nll(logprob_of, [bos, *tokens], 24, 10)
    assert abs(bare - one.nll_sum) > 0.05 * one.nll_sum


@pytest.mark.parametrize("n", [10, 23, 24, 100, 400, 1600])
def test_a_long_text_costs_what_its_windows_cost(n):
    """Structural, not timed: the forward passes grow linearly with the length (one per
    ``stride`` tokens past the first window, each of at most ``context`` ids), and the output
    head sees each token once, plus each window's last position (the old code asked every
    window for all its logits: twice the rows)."""
    V, bos, context, stride = 12, 11, 24, 10
    tokens = torch.randint(V - 1, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    calls = []

    def logits_fn(x, first):
        calls.append((x.shape[1], first))
        return torch.zeros(x.shape[1] - first, V)

    s = strided_nll(tokens, bos, None, context, stride, logits_fn)
    windows = 1 if n <= context - 1 else 1 + math.ceil((n - (context - 1)) / stride)
    assert len(calls) == windows and all(length <= context for length, _ in calls)
    assert sum(T - first for T, first in calls) <= n + windows
    assert s.n_tokens == n and s.nll_sum == pytest.approx(n * math.log(V))


def test_hf_judge_heads_only_the_scored_positions_and_keeps_one_window_scores(tiny_gpt2):
    folder, model, tok = tiny_gpt2
    judge = load_judge(str(folder))
    rows = []
    hook = judge.model.lm_head.register_forward_hook(lambda m, a, out: rows.append(out.shape[1]))
    try:
        tokens = tok(LONG, add_special_tokens=False).input_ids
        judge.score(LONG)
        assert len(rows) == 1 + math.ceil((len(tokens) - 63) / 32)
        assert sum(rows) <= len(tokens) + len(rows)  # not 64 rows a window
        rows.clear()
        short = judge.score(SHORT)
        assert len(rows) == 1
    finally:
        hook.remove()

    @torch.no_grad()
    def full_logits(x, first):  # every position's logits, as before
        return model(input_ids=x).logits[0, first:]

    ids = tok(SHORT, add_special_tokens=False).input_ids
    before = strided_nll(ids, judge.bos_id, judge.eos_id, 64, 32, full_logits)
    assert (short.nll_sum, short.n_tokens) == (before.nll_sum, before.n_tokens)  # bit for bit


def markov_gpt2(V: int, bos: int, length: int, steps: int):
    """A tiny GPT-2 trained on a first-order Markov chain, every row starting with BOS: it
    predicts from the last token, so windows should barely change its score."""
    from transformers import GPT2Config, GPT2LMHeadModel

    g = torch.Generator().manual_seed(0)
    P = (torch.randn(V - 1, V - 1, generator=g) * 2.5).softmax(-1)

    def chains(b: int, n: int, gen: torch.Generator) -> torch.Tensor:
        x = torch.empty(b, n, dtype=torch.long)
        x[:, 0] = torch.randint(V - 1, (b,), generator=gen)
        for t in range(1, n):
            x[:, t] = torch.multinomial(P[x[:, t - 1]], 1, generator=gen)[:, 0]
        return x

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=length, vocab_size=V,
                     bos_token_id=bos, eos_token_id=bos)  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = torch.cat([torch.full((16, 1), bos), chains(16, length - 1, g)], 1)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), chains


@pytest.mark.slow
def test_windows_of_a_trained_causal_judge_match_one_window():
    V, bos, length = 24, 23, 64
    model, chains = markov_gpt2(V, bos, length, steps=100)

    @torch.no_grad()
    def logits_fn(x, first):
        return model(input_ids=x).logits[0, first:]

    for seed in (5, 6):
        tokens = chains(1, length - 4, torch.Generator().manual_seed(seed))[0].tolist()
        one = strided_nll(tokens, bos, None, 1024, 512, logits_fn)  # positions < length
        windowed = strided_nll(tokens, bos, None, 16, 8, logits_fn)
        assert windowed.n_tokens == one.n_tokens == len(tokens)
        assert windowed.nll_sum == pytest.approx(one.nll_sum, rel=0.03)
        assert one.nll_sum / one.n_tokens < 0.8 * math.log(V - 1)  # it learned something


# ----------------------------------------------------------------------------- truncation


@pytest.mark.slow
def test_max_tokens_scores_the_first_n_ids_bos_included(tiny_gpt2):
    folder, model, tok = tiny_gpt2
    judge = load_judge(str(folder), max_tokens=40)
    assert judge.max_tokens == 40
    tokens = tok(LONG, add_special_tokens=False).input_ids
    s = judge.score(LONG)
    assert s.tokens == tokens[:39] and s.n_tokens == 39  # 40 ids with the BOS
    ref, _ = reference_nll(hf_logprob(model), [tok.bos_token_id, *tokens[:39]], -1, 64, 32)
    assert s.nll_sum == pytest.approx(ref, rel=1e-5)
    assert judge.score(SHORT) == load_judge(str(folder)).score(SHORT)  # shorter: unchanged
    long = load_judge(str(folder), max_tokens=150).score(LONG)  # windows after the cut too
    ref, n = reference_nll(hf_logprob(model), [tok.bos_token_id, *tokens[:149]], -1, 64, 32)
    assert (long.n_tokens, long.nll_sum) == (n, pytest.approx(ref, rel=1e-5)) and n == 149


def test_max_tokens_errors(tiny_gpt2, tmp_path):
    folder, _, _ = tiny_gpt2
    with pytest.raises(DindError, match="at least 2"):
        load_judge(str(folder), max_tokens=1)
    from dind.synthetic import write_corpus

    write_corpus(tmp_path / "syn", n_docs=2, doc_length=8, seed=0)
    with pytest.raises(DindError, match="oracle judge scores whole texts"):
        load_judge(f"oracle:{tmp_path / 'syn'}", max_tokens=64)


# ----------------------------------------------------------------------------- dind AR judge


def save_dind(path, causal: bool):
    torch.manual_seed(0)
    tokenizer = train_bpe([LONG, SHORT, "a b c d e f g h i j k"] * 4, 300)
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, seq_len=16, hidden_dim=32,
        cond_dim=16, n_blocks=2, n_heads=2, dropout=0.0, causal=causal,
    )  # fmt: skip
    model = DiT(cfg)
    with torch.no_grad():  # DiT starts as uniform predictions; randomize so context matters
        for p in model.parameters():
            p.normal_(0.0, 0.3)
        model.output_layer.linear.bias[tokenizer.mask_id] = 10.0  # would dominate if not excluded
    run = RunConfig(model=cfg, train=TrainConfig(objective="ar" if causal else "bd3"))
    save_checkpoint(path, model, run, tokenizer, {4: (1e-3, 1.0)})
    return model.eval(), tokenizer


def test_dind_ar_judge_matches_direct_loop(tmp_path):
    model, tokenizer = save_dind(tmp_path / "ar", causal=True)
    judge = load_judge(str(tmp_path / "ar"))
    assert isinstance(judge, DindARJudge) and (judge.context, judge.stride) == (16, 8)

    @torch.no_grad()
    def logprob_of(ctx, tgt):
        logits = model(torch.tensor([ctx]), mask=causal_mask(len(ctx)))[0, -1].double()
        logits[tokenizer.mask_id] = -math.inf
        return float(logits.log_softmax(-1)[tgt])

    for text in (SHORT[:12], f"{SHORT}{EOT}{LONG[:80]}"):
        s = judge.score(text)
        seq = [tokenizer.bos_id, *tokenizer.encode(text)]
        ref, n = reference_nll(logprob_of, seq, tokenizer.eos_id, 16, 8)
        assert s.n_tokens == n and s.nll_sum == pytest.approx(ref, rel=1e-5)
    assert len(seq) > 3 * 16 and seq[1:].count(tokenizer.eos_id) == 1
    assert s.n_tokens == len(seq) - 2  # BOS is context and the one EOS is left out
    full, _ = reference_nll(logprob_of, seq, tokenizer.eos_id, 16, None)
    assert abs(full - ref) > 1e-3 * abs(ref)  # unbounded context would differ


def test_dind_diffusion_checkpoint_is_refused(tmp_path):
    save_dind(tmp_path / "bd3", causal=False)
    with pytest.raises(DindError, match="--objective ar"):
        load_judge(str(tmp_path / "bd3"))


# ----------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize("spec", ["no-such-judge-xyz", "", "not a judge!"])
def test_unknown_spec_fails_cleanly(monkeypatch, spec):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub reads the variable once, when first imported (maybe by an earlier test)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    reached = []

    def no_network(*args, **kwargs):
        reached.append(args)
        raise OSError("a test judge spec reached for the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(DindError) as e:
        load_judge(spec)
    assert reached == []  # offline: nothing was asked of the hub, so nothing to wait for
    assert "judge" in str(e.value) and "\n" not in str(e.value)


def test_folder_without_weights_fails_cleanly(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, _, _ = tiny_gpt2
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(DindError, match="cannot load judge") as e:
        load_judge(str(tmp_path))
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_judge_offline_ordering_and_cache(monkeypatch):
    try:
        smollm2_folder()  # fetched and built on first use
    except DindError as e:
        if "could not fetch" in str(e):
            pytest.skip(str(e))
        raise
    # the cached plain folder is loaded as it is: nothing fetched, dequantized or rewritten
    plain = smollm2_folder()
    stamp = {p.name: p.stat().st_mtime_ns for p in plain.iterdir()}

    def rebuilt(*args, **kwargs):
        raise AssertionError("the cached SmolLM2 judge was fetched or rebuilt")

    monkeypatch.setattr(dind.judges, "_fetch_smollm2_gguf", rebuilt)
    monkeypatch.setattr(dind.judges, "_build_smollm2_plain", rebuilt)
    judge = smollm2_judge()
    assert {p.name: p.stat().st_mtime_ns for p in plain.iterdir()} == stamp

    def ppl(text: str) -> float:
        s = judge.score(text)
        return math.exp(s.nll_sum / s.n_tokens)

    story = ppl("Once upon a time there was a little girl who loved to play in the park.")
    the = ppl("the the the the the the the the the the the the")
    salad = ppl("banana quantum sideways purple elephant yesterday carburetor whisper oblong")
    assert story < the < salad
    assert story < 30 and salad > 1000  # a working model, not a uniform one (~49152)
    s = judge.score(f"Hello there.{EOT}")
    assert s.n_tokens == len(s.tokens) - 1  # dind's document separator is SmolLM2's EOS
