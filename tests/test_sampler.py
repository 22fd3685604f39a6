import dataclasses
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from dind import remask
from dind.config import SamplerConfig
from dind.denoise import DenoiseSettings
from dind.errors import DindError
from dind.kv_cache import KVCache
from dind.model import DiT
from dind.sampler import ar_generate, run_stage, sample, sample_seed
from dind.samples import to_record
from helpers import SwitchDenoiser, random_dit, tiny_run, write_corpus

MASK, BOS, V = 20, 19, 21


class MockDenoiser(torch.nn.Module):
    """Logits are a fixed function of exactly the (token, position) pairs a query can see, so
    any mistake in which context a call gets changes the samples."""

    def __init__(self, seq_len: int = 32, context_free: bool = False, record: bool = False):
        super().__init__()
        self.config = SimpleNamespace(seq_len=seq_len)
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.context_free = context_free
        self.calls: list | None = [] if record else None
        """With ``record``: per logit query of row 0, its position and the (token, position)
        pairs it sees, in order (only the rows that ask for logits)."""
        self.widths: list[int] = []
        """The rows of every call: the block's, and any clean ones it writes to the cache."""

    def new_kv_cache(self, batch_size, max_len=None, dtype=None):
        return KVCache(1, batch_size, 1, max_len or self.config.seq_len, 1, dtype=torch.float64)

    def forward(self, x, sigma=None, mask=None, positions=None, kv_cache=None, n_logits=None,
                logit_index=None):  # fmt: skip
        B, T = x.shape
        self.widths.append(T)
        pos = torch.arange(T) if positions is None else positions
        k = x.double()[:, None, :, None]  # (B, 1, T, 1): the token
        v = pos.double().expand(B, T)[:, None, :, None]  # its position
        if kv_cache is not None:
            k, v = kv_cache.write(0, k, v)
        toks, kpos = k[:, 0, :, 0], v[:, 0, :, 0]  # (B, S)
        vis = torch.ones(T, toks.shape[1], dtype=torch.bool) if mask is None else mask
        if self.calls is not None and n_logits != 0:
            for q in range(T) if logit_index is None else logit_index[0].tolist():
                seen = torch.nonzero(vis[q]).flatten().tolist()
                self.calls.append((int(pos[q]), [(int(toks[0, j]), int(kpos[0, j])) for j in seen]))
        feat = (vis.double() * ((toks + 1) * (kpos + 1))[:, None, :]).sum(-1)  # (B, T)
        if self.context_free:
            feat = torch.zeros_like(feat)
        vocab = torch.arange(V, dtype=torch.float64)
        logits = 3 * torch.cos(feat[..., None] * 0.37 + vocab * 1.3 + pos[:, None] * 0.11)
        if n_logits is not None:
            logits = logits[:, :n_logits]
        if logit_index is not None:
            logits = logits.gather(1, logit_index[..., None].expand(-1, -1, V))
        return logits.float()


def run(cfg: SamplerConfig, n=3, batch=3, model=None, prompt=None):
    return sample(model or MockDenoiser(cfg.length), cfg, n, batch, BOS, MASK, prompt)


@pytest.mark.parametrize(
    "stages,remask_ratios",
    [((1,), ()), ((2,), ()), ((4,), ()), ((8,), ()), ((4, 32), (0.5,)), ((2, 8, 32), (0.25, 0.5)),
     ((4, 4), (0.5,))],
)  # fmt: skip
def test_kv_cache_gives_the_tokens_of_recompute(stages, remask_ratios):
    base = dict(stages=stages, remask=remask_ratios, length=32, seed=5)
    a = run(SamplerConfig(**base, kv_cache=True))
    b = run(SamplerConfig(**base, kv_cache=False))
    assert [s.stage_tokens for s in a] == [s.stage_tokens for s in b]
    assert [s.snapshot_confidence for s in a] == [s.snapshot_confidence for s in b]


@pytest.mark.parametrize("prompt", [None, [3, 4, 5, 6, 7, 8, 9, 10, 11]])
@pytest.mark.parametrize("block_size", [2, 4, 8])
def test_a_finished_block_goes_to_the_cache_with_the_next_blocks_first_call(block_size, prompt):
    """No pass only fills the cache: every call is a denoiser call, of the block's b rows,
    except a block's first call, which carries ahead of it the clean positions that are not in
    the cache yet (the block before; before the first block with masks, BOS and the prompt)."""
    L, b = 32, block_size
    model = MockDenoiser(L)
    (s,) = run(SamplerConfig(stages=(b,), length=L), n=1, batch=1, model=model, prompt=prompt)
    assert len(model.widths) == s.nfe[0]  # one call per NFE, none besides
    first = (1 + len(prompt or [])) // b * b  # the first block with a masked position
    expected = []
    for start in range(first, L, b):
        masked = b - max(0, 1 + len(prompt or []) - start)  # BOS and the prompt are given
        carried = start if start == first else b  # the clean positions not yet cached
        expected += [carried + b] + [b] * (masked - 1)
    assert model.widths == expected


@pytest.mark.parametrize("prompt", [None, [5, 6, 7, 8, 9, 10]])
@pytest.mark.parametrize("block_size", [2, 4, 16])
def test_kv_cache_exact_with_arandom_dit(tiny_cfg, block_size, prompt):
    """A real model: the cache (filled by each block's first call, a prompt with the first
    block that has masks) gives the tokens of recomputing the prefix on every call."""
    model = random_dit(tiny_cfg)
    cached, recomputed = (
        sample(model, SamplerConfig(stages=(block_size,), length=16, kv_cache=c, seed=2,
                                    top_p=1.0), 2, 2, 31, 32, prompt)
        for c in (True, False)
    )  # fmt: skip
    assert [s.tokens for s in cached] == [s.tokens for s in recomputed]
    assert cached[0].tokens != cached[1].tokens  # two samples, not one twice
    for a, b in zip(cached, recomputed, strict=True):  # the context each call saw, too
        conf_a, conf_b = torch.tensor(a.snapshot_confidence), torch.tensor(b.snapshot_confidence)
        torch.testing.assert_close(conf_a, conf_b, rtol=1e-5, atol=1e-7)


def test_gamma_zero_changes_nothing():
    (s,) = run(SamplerConfig(stages=(4, 32), remask=(0.0,), length=32), n=1, batch=1)
    assert s.stage_tokens[1] == s.stage_tokens[0]
    assert s.remasked[1] == [] and s.nfe[1] == 0


@pytest.mark.parametrize("policy", ["snapshot", "posthoc", "random"])
def test_remasking_picks_exactly_floor_gamma_L(policy):
    L, gamma = 32, 0.3
    samples = run(SamplerConfig(stages=(4, 32), remask=(gamma,), remask_policy=policy, length=L))
    n = math.floor(gamma * L)
    for s in samples:
        chosen = s.remasked[1]
        assert len(chosen) == n and len(set(chosen)) == n and 0 not in chosen
        before, after = s.stage_tokens
        assert all(before[i] == after[i] for i in range(L) if i not in chosen)
        assert MASK not in after
        assert s.nfe[1] == n + (1 if policy == "posthoc" else 0)
        if policy == "snapshot":  # exactly the n lowest confidences, ties to lower positions
            conf = s.snapshot_confidence[0]
            order = sorted(range(1, L), key=lambda i: (conf[i], i))
            assert chosen == sorted(order[:n])
            # committed tokens keep their score; re-filled ones get the new stage's
            assert all(s.snapshot_confidence[1][i] == conf[i] for i in range(L) if i not in chosen)


def test_ties_are_broken_by_position_and_bos_is_never_chosen():
    scores = torch.tensor([0.0, 0.5, 0.2, 0.2, 0.2, 0.9])
    eligible = torch.tensor([False, True, True, True, True, True])
    g = torch.Generator().manual_seed(0)
    assert remask.select(scores, eligible, 2, "snapshot", g).tolist() == [2, 3]
    assert remask.select(scores, eligible, 9, "snapshot", g).tolist() == [1, 2, 3, 4, 5]


def test_snapshot_confidence_is_the_probability_at_commit_time():
    """With context-free logits the commit-time distribution is known in closed form."""
    L = 16
    model = MockDenoiser(L, context_free=True)
    (s,) = sample(model, SamplerConfig(stages=(4,), length=L, top_p=1.0), 1, 1, BOS, MASK)
    logits = model(torch.zeros(1, L, dtype=torch.long)).double()
    logits[..., MASK] = -1e6
    probs = logits.softmax(-1)[0]
    for i in range(1, L):
        assert s.snapshot_confidence[0][i] == pytest.approx(float(probs[i, s.tokens[i]]), rel=1e-9)
    assert s.snapshot_confidence[0][0] == 1.0  # BOS


def test_same_seed_same_samples_whatever_the_batch_size():
    cfg = SamplerConfig(stages=(4, 32), remask=(0.5,), length=32, seed=11)
    one = run(cfg, n=4, batch=1)
    four = run(cfg, n=4, batch=4)
    three = run(cfg, n=4, batch=3)
    assert [s.stage_tokens for s in one] == [s.stage_tokens for s in four]
    assert [s.stage_tokens for s in one] == [s.stage_tokens for s in three]
    assert len({tuple(s.tokens) for s in one}) > 1  # different samples differ
    other = run(SamplerConfig(stages=(4, 32), remask=(0.5,), length=32, seed=12), n=4)
    assert [s.tokens for s in other] != [s.tokens for s in one]


def test_every_position_filled_and_nfe_accounting():
    L = 32
    cfg = SamplerConfig(stages=(4, 16, 32), remask=(0.25, 0.5), length=L)
    for s in run(cfg):
        assert all(MASK not in toks for toks in s.stage_tokens)
        assert s.nfe == [L - 1, 8, 16]  # every masked position once (BOS is given)
        assert len(s.seconds) == 3 and s.tokens[0] == BOS


def test_prompt_is_fixed_in_every_stage():
    prompt = [3, 4, 5, 6, 7]
    cfg = SamplerConfig(stages=(4, 32), remask=(1.0,), length=32)
    for s in run(cfg, prompt=prompt):
        for toks in s.stage_tokens:
            assert toks[:6] == [BOS, *prompt]
        assert min(s.remasked[1]) == 6 and len(s.remasked[1]) == 32 - 6
        assert s.nfe[0] == 32 - 6


def test_ancestral_sampler():
    base = dict(stages=(4, 32), remask=(0.5,), length=32, sampler="ancestral", steps=8)
    a = run(SamplerConfig(**base, kv_cache=True))
    b = run(SamplerConfig(**base, kv_cache=False))
    assert [s.stage_tokens for s in a] == [s.stage_tokens for s in b]
    for s in a:
        assert MASK not in s.tokens
        assert s.nfe[0] <= 8 * (32 // 4)  # at most T calls per block, fewer when reused
        assert s.nfe[1] <= 8


def test_ar_decoding_cache_matches_recompute(tiny_cfg):
    model = DiT(tiny_cfg).eval()
    torch.nn.init.normal_(model.output_layer.linear.weight, std=0.5)
    a, n = ar_generate(model, 16, 2, 31, 32, seed=3, use_cache=True)
    b, _ = ar_generate(model, 16, 2, 31, 32, seed=3, use_cache=False)
    assert torch.equal(a, b) and n == 15 and (a[:, 0] == 31).all()


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(stages=(16, 4), remask=(0.5,)), "must not decrease"),
        (dict(stages=(4, 12), remask=(0.5,)), "do not divide"),
        (dict(stages=(4, 32), remask=(1.5,)), r"\[0, 1\]"),
        (dict(stages=(4, 32), remask=()), "need 1 remask"),
        (dict(stages=(4,), remask=(0.5,)), "need 0 remask"),
        (dict(stages=(4,), remask_policy="best"), "policy"),
        (dict(stages=(4,), nucleus="greedy"), "nucleus rule must be one of bd3lm, hf"),
    ],
)
def test_bad_sampler_config(kwargs, msg):
    with pytest.raises(DindError, match=msg):
        SamplerConfig(length=32, **kwargs)


def test_prompt_longer_than_L_is_an_error():
    with pytest.raises(DindError, match="does not fit"):
        run(SamplerConfig(stages=(4,), length=8), prompt=list(range(10)))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny model trained briefly once for this module's end-to-end tests."""
    from dind.train import train

    tmp = tmp_path_factory.mktemp("sampler")
    old = os.environ.get("DIND_CACHE")
    os.environ["DIND_CACHE"] = str(tmp / "cache")
    try:
        corpus = write_corpus(tmp / "corpus")
        train(tiny_run(corpus, max_steps=40, eval_every=0), tmp / "run", progress=False)
    finally:
        if old is None:
            os.environ.pop("DIND_CACHE")
        else:
            os.environ["DIND_CACHE"] = old
    return tmp


def _cli(*args, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIND_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "dind.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_trained_model_samples_end_to_end(trained_run):
    out = trained_run / "samples.jsonl"
    res = _cli("sample", "--checkpoint", str(trained_run / "run"), "--out", str(out),
               "--stages", "4,32", "--remask", "0.5", "--num-samples", "3", "--batch-size", "2",
               "--length", "32", "--seed", "1", "--show", "--no-progress",
               cache=trained_run / "cache")  # fmt: skip
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        for key in ("text", "stage_tokens", "snapshot_confidence", "remasked", "nfe", "seconds",
                    "seed"):  # fmt: skip
            assert key in r
        assert (
            len(r["stage_tokens"]) == 2 and r["remasked"][0] == [] and len(r["remasked"][1]) == 16
        )
        assert len(set(r["stage_tokens"][1])) > 5  # not all one token
        assert isinstance(r["text"], str) and r["text"]
    assert "stage 2" in res.stdout


@pytest.mark.slow
def test_cli_retry_low_entropy(trained_run):
    out = trained_run / "retry.jsonl"
    res = _cli("sample", "--checkpoint", str(trained_run / "run"), "--out", str(out),
               "--num-samples", "2", "--length", "32", "--retry-low-entropy", "--no-progress",
               cache=trained_run / "cache")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert [json.loads(line)["redraws"] for line in out.read_text().splitlines()] == [0, 0]
    assert "0 low-entropy redraws (the rule checks only sequences longer than 256)" in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,msg",
    [
        (["--stages", "8,4", "--remask", "0.5"], "must not decrease"),
        (["--stages", "4,32", "--remask", "2"], "[0, 1]"),
        (["--stages", "4,32", "--remask", "0.5,0.5"], "remask ratio"),
        (["--stages", "5"], "do not divide"),
        (["--prompt", "the king " * 40], "does not fit"),
        (["--nucleus", "topk"], "'topk' is not one of 'bd3lm', 'hf'"),
        (["--length", "0"], "length must be positive, got 0"),
        (["--length", "-32"], "length must be positive"),
        (["--length", "66"], "do not divide the length 66"),
        (["--length", "64", "--window-stride", "0"], "window stride must be positive"),
        (
            ["--length", "64", "--stages", "4,64", "--remask", "0.5", "--window-stride", "33"],
            "window stride 33 exceeds the model's context 32",
        ),
    ],
)
def test_cli_bad_sampling_input(trained_run, args, msg):
    out = trained_run / "bad.jsonl"
    res = _cli(
        "sample",
        "--checkpoint",
        str(trained_run / "run"),
        "--out",
        str(out),
        "--length",
        "32",
        "--no-progress",
        *args,
        cache=trained_run / "cache",
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and msg in lines[0], res.stderr
    assert not out.exists() and not list(trained_run.glob(".bad.jsonl*"))


@pytest.mark.slow
def test_cli_samples_past_the_context(trained_run):
    """A 32-token model drafts and refines 128 tokens (a sliding window, then windows)."""
    out = trained_run / "long.jsonl"
    res = _cli("sample", "--checkpoint", str(trained_run / "run"), "--out", str(out),
               "--stages", "4,128", "--remask", "0.25", "--num-samples", "2", "--batch-size", "2",
               "--length", "128", "--window-stride", "16", "--no-progress",
               cache=trained_run / "cache")  # fmt: skip
    assert res.returncode == 0, res.stderr
    for r in (json.loads(line) for line in out.read_text().splitlines()):
        assert [len(t) for t in r["stage_tokens"]] == [128, 128] and len(r["remasked"][1]) == 32
        assert 300 not in r["stage_tokens"][1] and r["nfe"] == [127, 32]  # 300: the mask


@pytest.mark.slow
def test_cli_checkpoint_without_tokenizer(trained_run, tmp_path):
    import shutil

    broken = tmp_path / "ck"
    shutil.copytree(trained_run / "run" / "checkpoint", broken)
    (broken / "tokenizer.json").unlink()
    res = _cli(
        "sample",
        "--checkpoint",
        str(broken),
        "--out",
        str(tmp_path / "s.jsonl"),
        cache=trained_run / "cache",
    )
    assert res.returncode == 2 and "no tokenizer" in res.stderr
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize("policy", remask.POLICIES)
@pytest.mark.parametrize("sampler", ["first_hitting", "ancestral"])
def test_refining_drafts_equals_sampling_all_stages(policy, sampler):
    """Going on from stage-1 drafts (what sweeps do to share one draft between settings) gives
    exactly the samples of one multi-stage call, at another batch size too."""
    common = dict(length=32, sampler=sampler, seed=5, remask_policy=policy)
    full_cfg = SamplerConfig(stages=(4, 8, 32), remask=(0.5, 0.25), **common)
    model = MockDenoiser(32)
    full = sample(model, full_cfg, 5, 5, BOS, MASK)
    drafts = sample(model, SamplerConfig(stages=(4,), **common), 5, 2, BOS, MASK)
    for first_two in (False, True):
        if first_two:  # go on from two stages done
            two = SamplerConfig(stages=(4, 8), remask=(0.5,), **common)
            start = sample(model, two, 5, 3, BOS, MASK, drafts=drafts)
        else:
            start = drafts
        refined = sample(model, full_cfg, 5, 3, BOS, MASK, drafts=start)
        for a, b in zip(full, refined, strict=True):
            assert a.stage_tokens == b.stage_tokens
            assert a.remasked == b.remasked
            assert a.snapshot_confidence == b.snapshot_confidence
            assert a.nfe == b.nfe
    assert all(len(d.stage_tokens) == 1 for d in drafts)  # the drafts are not modified


def test_refining_rejects_drafts_of_another_run():
    model = MockDenoiser(32)
    drafts = sample(model, SamplerConfig(stages=(4,), length=32, seed=1), 2, 2, BOS, MASK)
    two = SamplerConfig(stages=(4, 32), remask=(0.5,), length=32, seed=2)
    with pytest.raises(DindError, match="another seed"):
        sample(model, two, 2, 2, BOS, MASK, drafts=drafts)
    with pytest.raises(DindError, match="2 drafts for 3 samples"):
        sample(model, two, 3, 2, BOS, MASK, drafts=drafts)
    with pytest.raises(DindError, match="stage count"):
        sample(model, SamplerConfig(stages=(4,), length=32, seed=1), 2, 2, BOS, MASK,
               drafts=drafts)  # fmt: skip


# ----------------------------------------------------------------------------- low-entropy redraws

SW = SwitchDenoiser
RETRY = dict(stages=(4,), length=264, top_p=1.0, seed=3)  # L > 256: BD3-LM's rule applies


def bd3lm_rule_by_hand(tokens: list[int], block_size: int) -> bool:
    """BD3-LM's sampler loop, replayed: after each block, once more than 256 positions exist,
    reject when the entropy (nats) of the last 256 is below 4."""
    for n_blocks in range(1, len(tokens) // block_size + 1):
        x = torch.tensor(tokens[: n_blocks * block_size])
        if len(x) > 256:
            _, counts = torch.unique(x[-256:], return_counts=True)
            if float(torch.special.entr(counts.double() / counts.sum()).sum()) < 4:
                return True
    return False


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_retry_low_entropy_redraws_continue_each_samples_generator():
    model = SW(264)
    cfg = SamplerConfig(**RETRY, retry_low_entropy=True)
    drawn = sample(model, cfg, 6, 6, SW.BOS, SW.MASK)
    plain = sample(model, SamplerConfig(**RETRY), 6, 6, SW.BOS, SW.MASK)
    assert all(s.redraws is not None for s in drawn) and all(s.redraws is None for s in plain)
    assert not any(bd3lm_rule_by_hand(s.tokens, 4) for s in drawn)
    assert any(s.redraws > 0 for s in drawn) and any(s.redraws == 0 for s in drawn)
    for s, p in zip(drawn, plain, strict=True):
        # a draft that passes at once is the draft drawn without the option
        assert (s.tokens == p.tokens) == (s.redraws == 0)
        assert bd3lm_rule_by_hand(p.tokens, 4) == (s.redraws > 0)
        assert s.nfe == p.nfe == [263]  # the kept draw's calls
    # brute force: one sample at a time, its generator continuing from draw to draw
    settings = DenoiseSettings(SW.MASK, top_p=1.0, confidence="model", sampler="first_hitting")
    for s in drawn:
        g = torch.Generator().manual_seed(sample_seed(3, s.index))
        draws, tokens = 0, None
        while tokens is None or bd3lm_rule_by_hand(tokens, 4):
            x = torch.full((1, 264), SW.MASK)
            x[0, 0] = SW.BOS
            run_stage(
                model, x, torch.zeros(1, 264, dtype=torch.float64), 4, settings, [g], True, 264, 132
            )  # within the context: one window of L
            tokens, draws = x[0].tolist(), draws + 1
        assert (tokens, draws - 1) == (s.tokens, s.redraws)
    # deterministic and independent of the batch
    for batch in (1, 3):
        again = sample(model, cfg, 6, batch, SW.BOS, SW.MASK)
        assert [(s.tokens, s.redraws) for s in again] == [(s.tokens, s.redraws) for s in drawn]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_retry_low_entropy_changes_nothing_where_the_rule_never_fails():
    for model, length in ((SW(264, "never_bad"), 264), (SW(256, "always_bad"), 256)):
        base = {**RETRY, "length": length}  # at L = 256 BD3-LM never checks
        on = sample(model, SamplerConfig(**base, retry_low_entropy=True), 3, 3, SW.BOS, SW.MASK)
        off = sample(model, SamplerConfig(**base), 3, 3, SW.BOS, SW.MASK)
        assert [s.stage_tokens for s in on] == [s.stage_tokens for s in off]
        assert [s.redraws for s in on] == [0, 0, 0]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_retry_low_entropy_gives_up_after_ten_draws():
    model = SW(264, "always_bad")
    cfg = SamplerConfig(**RETRY, retry_low_entropy=True)
    with pytest.raises(DindError, match="sample 0: 10 stage-1 drafts") as e:
        sample(model, cfg, 1, 1, SW.BOS, SW.MASK)
    assert "\n" not in str(e.value)
    # ten whole drafts (263 first-hitting calls each, which also fill the cache), no more
    assert model.calls == 10 * 263


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_retry_low_entropy_checks_stage_1_and_carries_through_drafts():
    model = SW(264)
    common = dict(length=264, top_p=1.0, seed=4, retry_low_entropy=True)
    full_cfg = SamplerConfig(stages=(4, 264), remask=(0.5,), **common)
    full = sample(model, full_cfg, 6, 6, SW.BOS, SW.MASK)
    drafts = sample(model, SamplerConfig(stages=(4,), **common), 6, 4, SW.BOS, SW.MASK)
    refined = sample(model, full_cfg, 6, 2, SW.BOS, SW.MASK, drafts=drafts)
    assert [(s.stage_tokens, s.redraws) for s in refined] == [
        (s.stage_tokens, s.redraws) for s in full
    ]
    assert [s.redraws for s in full] == [d.redraws for d in drafts]
    assert any(s.redraws > 0 for s in full)
    assert not any(bd3lm_rule_by_hand(s.stage_tokens[0], 4) for s in full)
    plain = sample(model, SamplerConfig(stages=(4,), length=264, top_p=1.0, seed=4), 6, 6,
                   SW.BOS, SW.MASK)  # fmt: skip
    with pytest.raises(DindError, match="disagree on low-entropy redraws"):
        sample(model, full_cfg, 6, 6, SW.BOS, SW.MASK, drafts=plain)


@pytest.mark.usefixtures("one_thread")
def test_record_carries_redraws_only_when_asked():
    tok = SimpleNamespace(decode=lambda ids: " ".join(map(str, ids)))
    cfg = SamplerConfig(**RETRY)
    (s,) = sample(SW(264, "never_bad"), cfg, 1, 1, SW.BOS, SW.MASK)
    assert "redraws" not in to_record(s, tok, cfg)
    on = SamplerConfig(**RETRY, retry_low_entropy=True)
    (s,) = sample(SW(264), on, 1, 1, SW.BOS, SW.MASK)
    assert to_record(s, tok, on)["redraws"] == s.redraws


# ----------------------------------------------------------------------------- past the context


def _windowed_spans(L: int, C: int, b: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, window start) of every span a stage denoises, written out by hand: blocks
    seeing the last C positions up to their end, or windows of C ``stride`` apart."""
    if b < C:
        return [(a, a + b, max(0, a + b - C)) for a in range(0, L, b)]
    starts = list(range(0, L - C, stride)) + [L - C]
    return [(a, a + C, a) for a in starts]


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize(
    "stages,remask_ratios,stride",
    [((2,), (), None), ((5,), (), None), ((3, 6, 36), (0.5, 0.5), 12), ((3, 36), (0.5,), 4),
     ((2, 12), (0.75,), 5), ((4, 18), (0.5,), None)],
)  # fmt: skip
def test_each_denoiser_call_sees_exactly_its_window(kv_cache, stages, remask_ratios, stride):
    """Brute force: replay every denoiser call of a sample at L = 3C and check the query's
    position and the (token, rotary position) pairs it sees against the window of its span:
    the tokens of that moment, positions counted from the window's start, block-causal."""
    C, L = 12, 36 if 36 % stages[0] == 0 else 30
    model = MockDenoiser(C, record=True)
    cfg = SamplerConfig(stages=stages, remask=remask_ratios, length=L, seed=4,
                        kv_cache=kv_cache, window_stride=stride)  # fmt: skip
    (s,) = sample(model, cfg, 1, 1, BOS, MASK)
    calls = iter(model.calls)
    for k, b in enumerate(stages):
        x = list(s.stage_tokens[k - 1]) if k else [BOS] + [MASK] * (L - 1)
        for p in s.remasked[k]:
            x[p] = MASK
        final = s.stage_tokens[k]
        for start, end, lo in _windowed_spans(L, C, b, stride or C // 2):
            while MASK in x[start:end]:
                q, seen = next(calls)
                p = lo + q  # the position this call commits
                assert start <= p < end and x[p] == MASK
                assert seen == [(x[i], i - lo) for i in range(lo, end) if i // b <= p // b]
                x[p] = final[p]
        assert x == final
    assert next(calls, None) is None


@pytest.mark.parametrize(
    "stages,remask_ratios,stride,policy",
    [((4,), (), None, "snapshot"), ((4, 32), (0.5,), None, "snapshot"),
     ((4, 32), (0.5,), 16, "posthoc"), ((4, 8, 32), (0.25, 0.5), 5, "snapshot"),
     ((4, 16), (0.5,), 8, "random")],
)  # fmt: skip
def test_kv_cache_gives_the_tokens_of_recompute_past_the_context(
    tiny_cfg, stages, remask_ratios, stride, policy
):
    """L = 2 x the context of a real model: the sliding window's cache, refilled when the
    window moves, gives the tokens of recomputing the window on every call."""
    model = random_dit(tiny_cfg)
    common = dict(stages=stages, remask=remask_ratios, length=32, seed=2, window_stride=stride,
                  remask_policy=policy)  # fmt: skip
    cached = []
    model.register_forward_pre_hook(
        lambda m, args, kw: cached.append(kw.get("kv_cache") is not None), with_kwargs=True
    )
    a = sample(model, SamplerConfig(**common, kv_cache=True), 2, 2, 31, 32)
    assert any(cached)
    cached.clear()
    b = sample(model, SamplerConfig(**common, kv_cache=False), 2, 2, 31, 32)
    assert cached and not any(cached)
    for x, y in zip(a, b, strict=True):
        assert x.stage_tokens == y.stage_tokens and x.remasked == y.remasked
        assert torch.allclose(torch.tensor(x.snapshot_confidence),
                              torch.tensor(y.snapshot_confidence), rtol=1e-4)  # fmt: skip
        assert 32 not in x.tokens and len(x.tokens) == 32


def test_the_window_slides_only_past_the_context(tiny_cfg):
    """The first C positions of a stage-1 draft of length 2C are the draft of length C (same
    calls, same random draws): nothing changes until the sequence passes the context."""
    model = random_dit(tiny_cfg)
    for cache in (True, False):
        short, long = (sample(model, SamplerConfig(stages=(4,), length=n, seed=9, kv_cache=cache),
                              2, 2, 31, 32) for n in (16, 32))  # fmt: skip
        for x, y in zip(short, long, strict=True):
            assert y.tokens[:16] == x.tokens
            assert y.snapshot_confidence[0][:16] == x.snapshot_confidence[0]


@pytest.mark.parametrize("stages,remask_ratios", [((4,), ()), ((2, 8, 32), (0.25, 0.5))])
def test_inside_the_context_the_window_changes_nothing(stages, remask_ratios):
    """L = context: a model with a larger context, and any window stride, give the samples of
    the model whose context is exactly L."""
    base = dict(stages=stages, remask=remask_ratios, length=32, seed=3)
    ref = run(SamplerConfig(**base), model=MockDenoiser(32))
    for model, stride in ((MockDenoiser(128), None), (MockDenoiser(32), 1), (MockDenoiser(32), 32)):
        other = run(SamplerConfig(**base, window_stride=stride), model=model)
        assert [s.stage_tokens for s in other] == [s.stage_tokens for s in ref]
        assert [s.nfe for s in other] == [s.nfe for s in ref]


def test_window_walk_nfe_and_spans():
    """A global stage past the context: one call per remasked token whatever the stride (the
    overlap costs nothing with first-hitting); post-hoc scoring costs one call per window."""
    L, C = 64, 16
    for stride, windows in ((16, 4), (8, 7), (5, 11)):
        cfg = SamplerConfig(stages=(4, L), remask=(0.5,), length=L, window_stride=stride)
        for s in run(cfg, model=MockDenoiser(C)):
            assert s.nfe == [L - 1, L // 2] and MASK not in s.tokens
        posthoc = dataclasses.replace(cfg, remask_policy="posthoc")
        assert all(s.nfe[1] == L // 2 + windows for s in run(posthoc, model=MockDenoiser(C)))


@pytest.mark.parametrize(
    "kwargs,msg",
    [(dict(length=0), "length must be positive"), (dict(length=-8), "length must be positive"),
     (dict(window_stride=0), "window stride must be positive"),
     (dict(window_stride=-4), "window stride must be positive")],
)  # fmt: skip
def test_bad_length_or_window_stride(kwargs, msg):
    with pytest.raises(DindError, match=msg):
        SamplerConfig(**{"stages": (4,), "length": 32, **kwargs})


def test_window_stride_above_the_context_is_an_error():
    cfg = SamplerConfig(stages=(4, 64), remask=(0.5,), length=64, window_stride=17)
    with pytest.raises(DindError, match="window stride 17 exceeds the model's context 16"):
        run(cfg, model=MockDenoiser(16))


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(sampler="ancestral", steps=2), dict(sampler="ancestral", kv_cache=False),
     dict(kv_cache=False), dict(remask_policy="posthoc"), dict(remask_policy="random"),
     dict(length=32, window_stride=8), dict(length=32, sampler="ancestral", steps=3)],
)  # fmt: skip
@pytest.mark.slow
def test_sampling_makes_nothing_off_the_tokens_device(tiny_cfg, kwargs):
    """On CUDA a counter made on the CPU stopped every ancestral run (a device mismatch). Here
    the tokens are on the CPU and the default device is "meta": any tensor the sampler makes
    without naming its device (as the NFE counters were) lands there and fails, so the same
    samples come out only when everything follows the tokens (or is meant for the host)."""
    model = random_dit(tiny_cfg)
    L = kwargs.pop("length", 16)
    cfg = SamplerConfig(stages=(4, L), remask=(0.5,), length=L, seed=3, **kwargs)
    ref = sample(model, cfg, 3, 2, 31, 32)
    draft_cfg = dataclasses.replace(cfg, stages=(4,), remask=())
    with torch.device("meta"):
        got = sample(model, cfg, 3, 2, 31, 32)
        drafts = sample(model, draft_cfg, 3, 2, 31, 32)
        refined = sample(model, cfg, 3, 2, 31, 32, drafts=drafts)
    for other in (got, refined):
        assert [s.stage_tokens for s in other] == [s.stage_tokens for s in ref]
        assert [s.nfe for s in other] == [s.nfe for s in ref]


@pytest.mark.parametrize("sampler", ["first_hitting", "ancestral"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_stage_counters_are_on_the_tokens_device(tiny_cfg, sampler, use_cache):
    model = random_dit(tiny_cfg)
    x = torch.full((2, 16), 32)
    x[:, 0] = 31
    conf = torch.zeros(2, 16, dtype=torch.float64)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    settings = DenoiseSettings(32, sampler=sampler, steps=2)
    nfe, passes = run_stage(model, x, conf, 4, settings, gens, use_cache, 16, 8)
    assert nfe.device == passes.device == x.device
    assert (x != 32).all() and (nfe > 0).all()


def test_a_window_inside_one_block_attends_without_a_mask(tiny_cfg):
    """Block L without the cache: the window is one block, so the all-True mask is left out
    (SDPA's fast kernels take none); on the CPU the logits are the same, bit for bit."""
    from dind.denoise import BlockView

    view = BlockView(None, 16, None, 16)
    assert view.window_mask(0, 16, "cpu") is None
    assert view.window_mask(16, 32, "cpu") is None  # a window past the context, one block
    assert view.window_mask(0, 12, "cpu") is None  # part of one block
    assert view.window_mask(8, 24, "cpu") is not None  # straddles two blocks
    assert BlockView(None, 4, None, 16).window_mask(0, 16, "cpu") is not None
    model = random_dit(tiny_cfg)
    for B, T in ((1, 16), (3, 16), (2, 7)):
        x = torch.randint(0, 32, (B, T))
        with torch.no_grad():
            masked = model(x, mask=torch.ones(T, T, dtype=torch.bool))
            bare = model(x)
        assert torch.equal(masked, bare)


@pytest.mark.slow
def test_cli_dtype(trained_run):
    """``--dtype``: auto is fp32 on the CPU (the same file as --dtype fp32, timings aside); bf16
    runs on the CPU too; a bad value, or tf32 on a CPU machine, is a one-line error."""
    run_dir, cache = str(trained_run / "run"), trained_run / "cache"
    records = []
    for name, dtype in (("auto", []), ("fp32", ["--dtype", "fp32"]), ("bf16", ["--dtype", "bf16"])):
        out = trained_run / f"dtype_{name}.jsonl"
        res = _cli("sample", "--checkpoint", run_dir, "--out", str(out), "--stages", "4,32",
                   "--remask", "0.5", "--num-samples", "2", "--length", "32",
                   "--sampler", "ancestral", "--no-progress", *dtype, cache=cache)  # fmt: skip
        assert res.returncode == 0, res.stderr
        records.append([{k: v for k, v in json.loads(line).items() if k != "seconds"}
                        for line in out.read_text().splitlines()])  # fmt: skip
    if not torch.cuda.is_available():
        assert records[0] == records[1]
    assert [len(r) for r in records[2:]] == [2] and all(r["text"] for r in records[2])
    bad = [(["--dtype", "fp16"], "'fp16' is not one of 'auto', 'bf16', 'tf32', 'fp32'")]
    if not torch.cuda.is_available():
        bad.append((["--dtype", "tf32"], "--dtype tf32 needs a CUDA device"))
    for args, msg in bad:
        res = _cli("sample", "--checkpoint", run_dir, "--out", str(trained_run / "x.jsonl"),
                   "--no-progress", *args, cache=cache)  # fmt: skip
        assert res.returncode == 2 and msg in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["auto", "bf16", "tf32", "fp32"])
def test_cli_ancestral_sampler_on_cuda(trained_run, dtype):
    """``--sampler ancestral`` end to end on CUDA (it stopped with a device mismatch) at every
    precision, with and without the KV cache."""
    for cache_flag in ("--kv-cache", "--no-kv-cache"):
        out = trained_run / f"anc_{dtype}{cache_flag}.jsonl"
        res = _cli("sample", "--checkpoint", str(trained_run / "run"), "--out", str(out),
                   "--sampler", "ancestral", "--steps", "2", "--stages", "4,32", "--remask",
                   "0.5", "--num-samples", "3", "--batch-size", "2", "--length", "32",
                   "--dtype", dtype, cache_flag, "--no-progress",
                   cache=trained_run / "cache")  # fmt: skip
        assert res.returncode == 0, res.stderr
        for r in (json.loads(line) for line in out.read_text().splitlines()):
            assert 300 not in r["stage_tokens"][1] and len(r["remasked"][1]) == 16
            assert all(isinstance(n, int) and n > 0 for n in r["nfe"])


@pytest.mark.gpu
def test_no_mask_block_pass_matches_the_all_true_mask_on_cuda(tiny_cfg):
    """On CUDA the maskless pass takes another attention kernel: the same logits to kernel
    rounding, in float32 and under bf16 autocast."""
    model = random_dit(tiny_cfg).cuda()
    x = torch.randint(0, 32, (4, 16), device="cuda")
    full = torch.ones(16, 16, dtype=torch.bool, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x, mask=full), rtol=1e-4, atol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bare, masked = model(x).float(), model(x, mask=full).float()
    torch.testing.assert_close(bare, masked, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("policy", ["snapshot", "posthoc", "random"])
def test_batched_remask_choice_is_each_row_chosen_alone(policy):
    """``select_batch`` against a per-row reference written out in full: the n lowest eligible
    scores (ties to the lower position), or a random subset from the row's own generator."""
    B, L, n = 5, 20, 7
    scores = torch.rand(B, L, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    scores[1, 4:9] = 0.25  # ties
    eligible = torch.ones(L, dtype=torch.bool)
    eligible[:3] = False
    got = remask.select_batch(scores, eligible, n, policy,
                              [torch.Generator().manual_seed(s) for s in range(B)])  # fmt: skip
    for r in range(B):
        allowed = [i for i in range(L) if eligible[i]]
        if policy == "random":
            perm = torch.randperm(len(allowed), generator=torch.Generator().manual_seed(r))
            want = sorted(allowed[int(i)] for i in perm[:n])
        else:
            want = sorted(sorted(allowed, key=lambda i: (float(scores[r, i]), i))[:n])
        assert got[r].tolist() == want
    assert remask.select_batch(scores, eligible, 99, policy, [torch.Generator()] * B).shape == (
        B, L - 3)  # fmt: skip
