"""The nucleus rules on hand-made distributions: BD3-LM's and Hugging Face's."""

import pytest
import torch

from dind.nucleus import exponential_noise, nucleus_keep, nucleus_sample


def _support(probs: list[float], top_p: float, rule: str, draws: int = 400) -> set[int]:
    """The tokens ``nucleus_sample`` draws, and a check of the probability it reports."""
    p = torch.tensor(probs, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    seen, reported = set(), {}
    for _ in range(draws):
        token, q = nucleus_sample(p, top_p, gen, rule)
        seen.add(token)
        reported[token] = q
    kept = sorted(seen)
    mass = float(p[kept].sum())
    for token in kept:  # the nucleus-renormalized probability of the drawn token
        assert reported[token] == pytest.approx(probs[token] / mass)
    return seen


@pytest.mark.parametrize(
    ("probs", "top_p", "bd3lm", "hf"),
    [
        ([0.85, 0.10, 0.05], 0.9, {0}, {0, 1}),  # the example: greedy against two
        ([0.5, 0.25, 0.125, 0.125], 0.75, {0, 1}, {0, 1}),  # mass exactly p: both stop there
        ([0.5, 0.25, 0.125, 0.125], 0.7, {0}, {0, 1}),
        ([0.95, 0.05], 0.5, {0}, {0}),  # the top token alone exceeds p: kept by both
        ([0.125, 0.5, 0.125, 0.25], 0.75, {1, 3}, {1, 3}),  # order of ids does not matter
    ],
)
def test_nucleus_rules_on_hand_made_distributions(probs, top_p, bd3lm, hf):
    assert _support(probs, top_p, "bd3lm") == bd3lm
    assert _support(probs, top_p, "hf") == hf


def test_nucleus_ties_go_to_the_lower_token_id():
    """Equal probabilities are ordered by id (a stable sort): the nucleus is deterministic."""
    probs = [0.25, 0.25, 0.25, 0.25]
    assert _support(probs, 0.5, "bd3lm") == {0, 1}
    assert _support(probs, 0.5, "hf") == {0, 1}
    assert _support(probs, 0.6, "bd3lm") == {0, 1}  # a third would bring 0.75 > 0.6
    assert _support(probs, 0.6, "hf") == {0, 1, 2}  # hf keeps the one that crosses p
    sorted_p = torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64)
    assert nucleus_keep(sorted_p, 0.7, "bd3lm").tolist() == [True, True, False]


def test_top_p_one_samples_the_full_distribution():
    probs = [0.7, 0.2, 0.06, 0.04]
    for rule in ("bd3lm", "hf"):
        assert _support(probs, 1.0, rule, draws=2000) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="unknown nucleus rule"):
        nucleus_keep(torch.tensor([1.0], dtype=torch.float64), 0.5, "topk")


def test_exponential_noise_is_exponential_s_stream():
    """Row n is what ``exponential_`` draws from generator n (to the last bit but one), and
    each generator ends where ``exponential_`` leaves it, so later draws are the same too."""
    V = 5000
    ours = [torch.Generator().manual_seed(s) for s in (3, 4, 5)]
    theirs = [torch.Generator().manual_seed(s) for s in (3, 4, 5)]
    for _ in range(2):
        noise = exponential_noise(torch.empty(3, V, dtype=torch.float64), ours)
        ref = torch.stack([torch.empty(V, dtype=torch.float64).exponential_(generator=g)
                           for g in theirs])  # fmt: skip
        torch.testing.assert_close(noise, ref, rtol=4e-16, atol=0)
        assert noise.min() > 0
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ours, theirs, strict=True))


def _reference_sample(probs, top_p, generator, rule):
    """The nucleus draw one row at a time, written plainly: the brute force ``draw`` batches."""
    p = probs.clone()
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True, stable=True)
        cum, keep = 0.0, []
        for i, q in enumerate(sorted_p.tolist()):
            before, cum = cum, cum + q
            keep.append(i == 0 or (cum <= top_p if rule == "bd3lm" else before < top_p))
        p = torch.zeros_like(probs)
        for i, k in enumerate(keep):
            if k:
                p[order[i]] = sorted_p[i]
        p = p / p.sum()
    e = torch.empty_like(p).exponential_(generator=generator)
    token = int(torch.argmax(p / e))
    return token, float(p[token])


@pytest.mark.parametrize("rule", ["bd3lm", "hf"])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 1.0])
def test_batched_draw_is_the_per_row_draw(rule, top_p):
    """Each row of ``draw`` is the row drawn alone with its own generator; a generator listed
    twice draws twice, in order; the batch does not change any row."""
    from dind.nucleus import draw

    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(6, 50, dtype=torch.float64) * 3, -1)
    owners = [0, 1, 1, 2, 0, 3]  # rows 1, 2 share generator 1; rows 0, 4 generator 0

    def gens():
        return [torch.Generator().manual_seed(100 + g) for g in range(4)]

    g = gens()
    tokens, p = draw(probs, top_p, [g[o] for o in owners], rule)
    g = gens()
    expected = [_reference_sample(probs[n], top_p, g[o], rule) for n, o in enumerate(owners)]
    assert tokens.tolist() == [t for t, _ in expected]
    assert p.tolist() == pytest.approx([q for _, q in expected], rel=1e-12)
    g = gens()  # rows 3 and 5 alone: the same tokens as in the batch
    alone, _ = draw(probs[[3, 5]], top_p, [g[2], g[3]], rule)
    assert alone.tolist() == [tokens[3].item(), tokens[5].item()]


@pytest.mark.parametrize("k", [1, 3, 50])
def test_batched_position_picks_match_a_per_row_loop(k):
    """``uniform_picks`` against the loop it replaces: row r's candidates are its masked
    positions in order, and its generator picks one (randint) or orders them (randperm)."""
    from dind.denoise import masked_first, uniform_picks

    masked = torch.rand(6, 16, generator=torch.Generator().manual_seed(1)) < 0.4
    masked[2] = False  # a finished row takes no part
    masked[4] = True
    rows = [r for r in range(6) if masked[r].any()]
    picks = uniform_picks(masked, rows, [torch.Generator().manual_seed(r) for r in range(6)], k)
    counts = masked.sum(1).tolist()
    assert picks.shape == (6, min(k, max(counts)))
    for r in rows:
        candidates = torch.nonzero(masked[r]).flatten()
        g = torch.Generator().manual_seed(r)
        if k == 1:
            want = candidates[torch.randint(len(candidates), (1,), generator=g)]
        else:
            want = candidates[torch.randperm(len(candidates), generator=g)[:k]]
        n = len(want)
        assert picks[r, :n].tolist() == want.tolist()
        assert (picks[r, n:] == want[0]).all()  # padding repeats the first pick
    index, valid = masked_first(masked)
    for r in range(6):
        mine = torch.nonzero(masked[r]).flatten().tolist()
        assert index[r, valid[r]].tolist() == mine and valid[r].sum() == len(mine)


def test_masked_rows_are_each_rows_masked_positions_sorted_and_padded():
    from dind.denoise import masked_rows

    masked = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    rows = masked_rows(masked)
    assert rows.tolist() == [[1, 3, 4], [0, 0, 0], [0, 0, 0]]
    for r in range(3):  # brute force: the row's masked positions, then its last repeated
        want = [j for j in range(5) if masked[r, j]]
        assert rows[r, : len(want)].tolist() == want
        assert torch.all(rows[r, 1:] >= rows[r, :-1])


def _refinement_calls(n_blocks: int, refresh: int, recompute: str = "masked"):
    """Exact and approximate (``refresh``) logits of a whole-sequence refinement: a full
    pass over partly masked tokens, then three calls, each after committing one token a row."""
    from dind.config import ModelConfig
    from dind.denoise import BlockView
    from helpers import random_dit

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=33, mask_id=32, seq_len=16, hidden_dim=32, cond_dim=16,
                      n_blocks=n_blocks, n_heads=2)  # fmt: skip
    model = random_dit(cfg)
    seen: list[int] = []
    model.blocks[0].attn_qkv.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    view = BlockView(model, 16, None, 16, refresh=refresh, recompute=recompute, mask_id=32)
    x = torch.randint(0, 32, (2, 16))
    x[0, [1, 4, 5, 9, 12, 15]] = 32
    x[1, [0, 2, 3, 7]] = 32
    pairs = []
    for step in range(4):
        masked = x == 32
        index = torch.stack([torch.nonzero(m).flatten()[:1] for m in masked])  # (2, 1)
        with torch.no_grad():
            pairs.append((view.logits(x, 0, 16, index=index), model(x, logit_index=index)))
        for r in range(2):  # commit one per row
            x[r, torch.nonzero(masked[r]).flatten()[:1]] = step
    return pairs, seen


def test_refresh_cache_recomputes_only_the_positions_masked_at_the_full_pass():
    """One layer: a position's keys and values depend on its own token only, so the cache is
    exact there (brute force: the full pass at every call); two layers: the calls between
    full passes differ from it (the approximation is real), the full passes do not; and the
    calls between recompute only the 6 positions masked at the full pass (w of row 0)."""
    pairs, seen = _refinement_calls(n_blocks=1, refresh=100)
    for approx, exact in pairs:
        torch.testing.assert_close(approx, exact, rtol=1e-5, atol=1e-5)
    assert seen[0::2] == [16, 6, 6, 6]  # the view's calls: one full pass, then 6 rows
    pairs, _ = _refinement_calls(n_blocks=2, refresh=2)
    gaps = [float((a - e).abs().max()) for a, e in pairs]
    assert gaps[0] < 1e-5 and gaps[2] < 1e-5  # calls 1 and 3: full passes
    assert gaps[1] > 1e-4 and gaps[3] > 1e-4  # calls 2 and 4: stale keys of the others


def test_delayed_recompute_redoes_what_the_last_call_left_masked():
    """dKV-Cache's delayed caching: a call between full passes recomputes the positions masked
    at the call before (row 0: 6, then 5, then 4, one committed a call). One layer: exact
    against the full pass at every call, which only holds if every committed token's keys
    are recomputed once after its commit. Two layers, a full pass only at the first call:
    the same as ``masked`` at the first partial call (the same rows), then not (a token
    committed two calls ago keeps the keys it had one call after its commit)."""
    pairs, seen = _refinement_calls(n_blocks=1, refresh=100, recompute="delayed")
    for approx, exact in pairs:
        torch.testing.assert_close(approx, exact, rtol=1e-5, atol=1e-5)
    assert seen[0::2] == [16, 6, 5, 4]
    delayed, _ = _refinement_calls(n_blocks=2, refresh=100, recompute="delayed")
    masked, _ = _refinement_calls(n_blocks=2, refresh=100)
    gaps = [float((d[0] - m[0]).abs().max()) for d, m in zip(delayed, masked, strict=True)]
    assert gaps[0] == 0.0 and gaps[1] < 1e-6
    assert gaps[2] > 1e-4 and gaps[3] > 1e-4


def test_asked_recompute_redoes_the_last_commits_and_the_asked_positions():
    """``recompute="asked"``: a call between full passes recomputes what the call before it
    committed and the positions this call asks (1 + 1 rows here, where delayed redoes every
    masked one). One layer: still exact at every call (a masked position's keys depend on its
    own token, which has not changed). Two layers: it differs from delayed from the first
    partial call on (the masked positions not asked keep the full pass's keys)."""
    pairs, seen = _refinement_calls(n_blocks=1, refresh=100, recompute="asked")
    for approx, exact in pairs:
        torch.testing.assert_close(approx, exact, rtol=1e-5, atol=1e-5)
    assert seen[0::2] == [16, 2, 2, 2]
    asked, _ = _refinement_calls(n_blocks=2, refresh=100, recompute="asked")
    delayed, _ = _refinement_calls(n_blocks=2, refresh=100, recompute="delayed")
    gaps = [float((a[0] - d[0]).abs().max()) for a, d in zip(asked, delayed, strict=True)]
    assert gaps[0] == 0.0 and min(gaps[1:]) > 1e-5


def test_delayed_recompute_needs_refresh_and_is_exact_at_refresh_one():
    from dind.config import ModelConfig, SamplerConfig
    from dind.errors import DindError
    from dind.sampler import sample
    from helpers import random_dit

    cfg = ModelConfig(vocab_size=33, mask_id=32, seq_len=32, hidden_dim=32, cond_dim=16,
                      n_blocks=2, n_heads=2)  # fmt: skip
    model = random_dit(cfg)
    base = dict(stages=(4, 32), remask=(0.5,), length=32, seed=5, parallel=("1", "4"))
    exact = sample(model, SamplerConfig(**base), 3, 3, 1, 32)
    for recompute in ("delayed", "asked"):
        one = sample(model, SamplerConfig(**base, refresh=1, recompute=recompute), 3, 3, 1, 32)
        assert [s.stage_tokens for s in one] == [s.stage_tokens for s in exact]
    with pytest.raises(DindError, match="recompute 'delayed' is for the approximate cache"):
        SamplerConfig(**base, recompute="delayed")
    with pytest.raises(DindError, match="recompute must be one of masked, delayed, asked"):
        SamplerConfig(**base, refresh=2, recompute="stale")


def test_refresh_one_is_the_exact_sampler_and_refresh_applies_after_stage_one():
    from dind.config import ModelConfig, SamplerConfig
    from dind.errors import DindError
    from dind.sampler import sample
    from helpers import random_dit

    cfg = ModelConfig(vocab_size=33, mask_id=32, seq_len=32, hidden_dim=32, cond_dim=16,
                      n_blocks=2, n_heads=2)  # fmt: skip
    model = random_dit(cfg)
    for kw in (dict(), dict(parallel=("1", "4")), dict(parallel=("1", "top:2"))):
        base = dict(stages=(4, 32), remask=(0.5,), length=32, seed=5, **kw)
        exact = sample(model, SamplerConfig(**base), 3, 3, 1, 32)
        one = sample(model, SamplerConfig(**base, refresh=1), 3, 3, 1, 32)
        assert [s.stage_tokens for s in one] == [s.stage_tokens for s in exact]
    # stage 1 (block 4 < L) is never approximate: the drafts are the exact ones
    base = dict(stages=(4, 32), remask=(0.5,), length=32, seed=5, parallel=("1", "4"))
    far = sample(model, SamplerConfig(**base, refresh=1000), 3, 3, 1, 32)
    assert [s.stage_tokens[0] for s in far] == [s.stage_tokens[0] for s in exact]
    with pytest.raises(DindError, match="refresh must be at least 1"):
        SamplerConfig(stages=(4, 32), remask=(0.5,), length=32, refresh=0)
    with pytest.raises(DindError, match="refresh is for the first-hitting sampler, not anc"):
        SamplerConfig(stages=(4, 32), remask=(0.5,), length=32, refresh=2, sampler="ancestral")


@pytest.mark.parametrize("rule", ["bd3lm", "hf"])
def test_in_nucleus_is_membership_of_the_sorted_nucleus(rule):
    """``in_nucleus`` (no sort) against ``nucleus_keep`` on the sorted row, for every token of
    distributions with ties (probabilities on a coarse grid) and without."""
    from dind.nucleus import in_nucleus

    g = torch.Generator().manual_seed(0)
    smooth = torch.softmax(torch.randn(4, 40, generator=g, dtype=torch.float64) * 2, -1)
    coarse = torch.randint(0, 4, (4, 40), generator=g).double()
    coarse[:, 0] += 1  # no row all zero
    for probs in (smooth, coarse / coarse.sum(-1, keepdim=True)):
        for top_p in (0.3, 0.5, 0.9):
            sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
            keep = torch.zeros_like(probs, dtype=torch.bool)
            keep.scatter_(-1, order, nucleus_keep(sorted_p, top_p, rule))
            for token in range(probs.shape[1]):
                tokens = torch.full((probs.shape[0],), token)
                assert in_nucleus(probs, tokens, top_p, rule).tolist() == keep[:, token].tolist()


@pytest.mark.parametrize("rule", ["bd3lm", "hf"])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 1.0])
def test_draw_without_the_nucleus_probability_skips_the_sort_for_the_same_tokens(rule, top_p):
    """``nucleus_p=False`` sorts only the rows whose whole-vocabulary winner falls outside
    the nucleus; the tokens are those of the sorted draw, on flat and on peaked rows."""
    from dind.nucleus import draw, in_nucleus

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(400, 64, generator=g, dtype=torch.float64)
    probs = torch.softmax(logits * torch.linspace(0.1, 4, 400, dtype=torch.float64)[:, None], -1)

    def gens():
        return [torch.Generator().manual_seed(7 + n % 5) for n in range(400)]

    sorted_tokens, _ = draw(probs, top_p, gens(), rule)
    tokens, p = draw(probs, top_p, gens(), rule, nucleus_p=False)
    assert p is None
    assert tokens.tolist() == sorted_tokens.tolist()
    g5 = gens()  # both paths were taken: some winners over the whole vocabulary lie outside
    noise = torch.stack([torch.empty_like(probs[0]).exponential_(generator=x) for x in g5])
    outside = ~in_nucleus(probs, (probs / noise).argmax(-1), top_p, rule)
    assert (0 < int(outside.sum()) < 400) if top_p < 1 else not outside.any()


@pytest.mark.parametrize("rows", [1, 3, 10_000])
def test_chunked_probabilities_are_the_whole_softmax(rows, monkeypatch):
    """``probs_of`` and ``top_probs`` (chunks of ``rows`` rows) give exactly what the whole
    float64 softmax gives: the probability of each row's token and each row's largest one."""
    import dind.denoise
    import dind.nucleus

    V, mask = 11, 10
    monkeypatch.setattr(dind.denoise, "DRAW_CHUNK_BYTES", rows * 8 * V)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, V, generator=g) * 3
    tokens = torch.randint(0, mask, (7,), generator=g)
    whole = dind.nucleus.token_probs(logits, mask)
    assert torch.equal(dind.denoise.probs_of(logits, tokens, mask),
                       whole.gather(-1, tokens[:, None])[:, 0])  # fmt: skip
    some = torch.tensor([0, 2, 3, 6])
    assert torch.equal(dind.denoise.top_probs(logits, some, mask), whole[some].max(-1).values)
