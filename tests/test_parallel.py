"""Parallel decoding (``dind.parallel``): several masked positions per denoiser call."""

import pytest
import torch

from dind.denoise import BlockView, DenoiseSettings, denoise_block
from dind.errors import DindError
from dind.nucleus import token_probs
from dind.parallel import Parallel

MASK, V, L = 12, 13, 24


class Recorder(torch.nn.Module):
    """Logits a fixed function of every visible (token, position) pair; each call's input and
    the logits it returned are recorded, so a test can replay what the sampler saw."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, mask=None, logit_index=None, **_):
        B, T = x.shape
        pos = torch.arange(T, dtype=torch.float64)
        feat = ((x.double() + 1) * (pos + 1)).sum(-1, keepdim=True)  # (B, 1): the whole input
        vocab = torch.arange(V, dtype=torch.float64)
        logits = 6 * torch.cos(feat[..., None] * 0.013 + vocab * 1.7 + pos[:, None] * 0.29)
        if logit_index is not None:
            logits = logits.gather(1, logit_index[..., None].expand(-1, -1, V))
        self.calls.append((x.clone(), None if logit_index is None else logit_index.clone(), logits))
        return logits.float()


def fill(parallel: Parallel, B: int = 3, masked_from: int = 1, **settings):
    """Fill positions masked_from.. of B rows in one block of L with ``parallel``."""
    model = Recorder()
    x = torch.randint(0, MASK, (B, L), generator=torch.Generator().manual_seed(0))
    x[:, masked_from:] = MASK
    conf = torch.zeros(B, L, dtype=torch.float64)
    nfe = torch.zeros(B, dtype=torch.long)
    gens = [torch.Generator().manual_seed(10 + r) for r in range(B)]
    s = DenoiseSettings(MASK, parallel=parallel, **settings)
    denoise_block(BlockView(model, L, None), x, conf, 0, L, s, gens, nfe)
    return model, x, conf, nfe


def committed_per_call(model):
    """For each call: the positions of each row that were masked before it and not after."""
    xs = [c[0] for c in model.calls]
    after = xs[1:]
    return [
        (xs[c] == MASK) & (after[c] != MASK) if c < len(after) else None for c in range(len(xs))
    ]


@pytest.mark.parametrize("spec", ["1", "3", "top:3", "tau:0.5", "tau:1.0", "top:100", "100"])
def test_every_token_keeps_the_probability_of_the_call_that_committed_it(spec):
    par = Parallel.parse(spec)
    model, x, conf, nfe = fill(par)
    assert (x != MASK).all()
    xs = [c[0] for c in model.calls] + [x]
    for c, (before, index, logits) in enumerate(model.calls):
        new = (before == MASK) & (xs[c + 1] != MASK)  # (B, L) committed by call c
        for r, j in torch.nonzero(new).tolist():
            row = logits[r, j] if index is None else logits[r, index[r].tolist().index(j)]
            p = token_probs(row.float(), MASK)
            assert conf[r, j].item() == pytest.approx(p[x[r, j]].item(), rel=1e-6)
        per_row = new.sum(1)
        if par.pick in ("uniform", "top"):  # k per call, fewer at the end
            remaining = (before == MASK).sum(1)
            assert per_row.tolist() == torch.minimum(remaining, torch.tensor(par.k)).tolist()
        else:  # at least one per call for every row still masked, one each at tau = 1
            active = (before == MASK).any(1)
            assert (per_row[active] >= 1).all() and (per_row[~active] == 0).all()
            if par.tau == 1.0:
                assert (per_row[active] == 1).all()
    calls = [sum(bool((b[r] == MASK).any()) for b, _, _ in model.calls) for r in range(3)]
    assert nfe.tolist() == calls  # one NFE per call a row took part in


def test_tau_commits_exactly_the_draws_that_reach_it():
    """Every call of tau:0.5 commits the positions whose drawn token has probability >= 0.5,
    or one position when none does; more than one per call happens."""
    model, x, conf, nfe = fill(Parallel.parse("tau:0.5"))
    xs = [c[0] for c in model.calls] + [x]
    several = 0
    for c, (before, index, logits) in enumerate(model.calls):
        for r in range(3):
            new = torch.nonzero((before[r] == MASK) & (xs[c + 1][r] != MASK)).flatten().tolist()
            at = index[r].tolist()
            probs = [token_probs(logits[r, at.index(j)].float(), MASK)[x[r, j]].item() for j in new]
            assert len(new) == 1 or all(p >= 0.5 - 1e-9 for p in probs)
            several += len(new) > 1
    assert several > 0
    assert (nfe < L - 1).all()  # fewer calls than tokens


def test_more_positions_than_masked_finish_in_one_call():
    for spec in ("100", "top:100"):
        model, x, conf, nfe = fill(Parallel.parse(spec), masked_from=4)
        assert (x != MASK).all() and nfe.tolist() == [1, 1, 1] and len(model.calls) == 1


def test_one_per_call_is_bd3lm_first_hitting():
    """The default rule is the first-hitting sampler itself: same tokens, one call each."""
    _, x1, c1, n1 = fill(Parallel())
    _, x2, c2, n2 = fill(Parallel.parse("1"))
    assert torch.equal(x1, x2) and torch.equal(c1, c2) and n1.tolist() == [L - 1] * 3


def test_rows_do_not_depend_on_the_batch():
    _, x, conf, _ = fill(Parallel.parse("tau:0.3"))
    model = Recorder()
    one = x[1:2].clone()
    one[:, 1:] = MASK
    c1, n1 = torch.zeros(1, L, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    s = DenoiseSettings(MASK, parallel=Parallel.parse("tau:0.3"))
    denoise_block(
        BlockView(model, L, None), one, c1, 0, L, s, [torch.Generator().manual_seed(11)], n1
    )
    assert torch.equal(one[0], x[1]) and torch.equal(c1[0], conf[1])


@pytest.mark.parametrize(
    ("spec", "msg"),
    [
        ("0", "at least 1"),
        ("top:0", "at least 1"),
        ("tau:0", r"\(0, 1\]"),
        ("tau:1.5", r"\(0, 1\]"),
        ("x", "write K, top:K or tau:X"),
        ("tau:", "write K"),
        ("top:2.5", "write K"),
    ],
)
def test_bad_parallel_settings_are_one_line_errors(spec, msg):
    with pytest.raises(DindError, match=msg):
        Parallel.parse(spec)


def _model():
    from dind.config import ModelConfig
    from helpers import random_dit

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, mask_id=39, seq_len=32, hidden_dim=32, cond_dim=16,
                      n_blocks=2, n_heads=2)  # fmt: skip
    return random_dit(cfg)


def test_default_and_one_per_call_are_todays_sampler():
    from dind.config import SamplerConfig
    from dind.sampler import sample

    model = _model()
    base = dict(stages=(4, 32), remask=(0.5,), length=32, seed=3)
    today = sample(model, SamplerConfig(**base), 3, 3, 0, 39)
    ones = sample(model, SamplerConfig(**base, parallel=("1", "1")), 3, 3, 0, 39)
    for a, b in zip(today, ones, strict=True):
        assert (a.stage_tokens, a.snapshot_confidence, a.nfe) == (
            b.stage_tokens,
            b.snapshot_confidence,
            b.nfe,
        )
    eight = sample(model, SamplerConfig(**base, parallel=("1", "8")), 3, 3, 0, 39)
    for a, b in zip(today, eight, strict=True):
        assert b.stage_tokens[0] == a.stage_tokens[0]  # the same drafts
        assert b.remasked[1] == a.remasked[1]
        assert b.nfe == [a.nfe[0], 2]  # 16 remasked tokens, 8 per call
        refilled = [b.stage_tokens[1][p] for p in b.remasked[1]]
        assert 39 not in refilled


def test_parallel_settings_are_checked_and_recorded():
    from dind.config import SamplerConfig
    from dind.sampler import sample
    from dind.samples import to_record

    with pytest.raises(DindError, match="2 stages need 2 parallel settings, got 1"):
        SamplerConfig(stages=(4, 32), remask=(0.5,), length=32, parallel=("8",))
    with pytest.raises(DindError, match="first-hitting"):
        SamplerConfig(stages=(4,), length=32, sampler="ancestral", parallel=("4",))
    with pytest.raises(DindError, match="write K, top:K or tau:X"):
        SamplerConfig(stages=(4,), length=32, parallel=("fast",))

    class Tok:
        def decode(self, ids):
            return " ".join(map(str, ids))

    cfg = SamplerConfig(stages=(4, 32), remask=(0.5,), length=32, parallel=("1", "tau:0.9"))
    s = sample(_model(), cfg, 1, 1, 0, 39)[0]
    assert to_record(s, Tok(), cfg)["parallel"] == ["1", "tau:0.9"]
    plain = SamplerConfig(stages=(4,), length=32)
    assert "parallel" not in to_record(sample(_model(), plain, 1, 1, 0, 39)[0], Tok(), plain)


@pytest.mark.parametrize("spec", ["1", "16", "top:4", "tau:0.9", "tau:1"])
def test_a_rule_reads_back_as_written(spec):
    assert str(Parallel.parse(spec)) == spec and Parallel.parse(str(Parallel.parse(spec)))


@pytest.mark.parametrize("spec", ["3", "top:3", "tau:0.5", "100"])
@pytest.mark.parametrize("confidence", ["model", "nucleus"])
def test_draws_in_chunks_of_rows_are_the_draws_all_at_once(spec, confidence, monkeypatch):
    """On the CPU a call draws its rows in chunks (``DRAW_CHUNK_BYTES``): chunks of one row
    and of two give the tokens, confidences and calls of every row at once."""
    import dind.denoise

    par = Parallel.parse(spec)
    runs = []
    for rows in (10_000, 1, 2):  # rows per chunk
        monkeypatch.setattr(dind.denoise, "DRAW_CHUNK_BYTES", rows * 8 * V)
        _, x, conf, nfe = fill(par, B=4, top_p=0.8, confidence=confidence)
        runs.append((x, conf, nfe))
    for x, conf, nfe in runs[1:]:
        assert torch.equal(x, runs[0][0]) and torch.equal(nfe, runs[0][2])
        assert torch.equal(conf, runs[0][1])


@pytest.mark.parametrize("sampler", ["first_hitting", "ancestral"])
def test_one_per_call_and_ancestral_draws_do_not_depend_on_the_chunks(sampler, monkeypatch):
    """The first-hitting and the ancestral samplers draw through the same chunks: chunks of
    one row give what every row at once gives."""
    import dind.denoise

    runs = []
    for rows in (10_000, 1):
        monkeypatch.setattr(dind.denoise, "DRAW_CHUNK_BYTES", rows * 8 * V)
        _, x, conf, nfe = fill(Parallel(), B=4, top_p=0.8, sampler=sampler, steps=3)
        runs.append((x, conf, nfe))
    assert (runs[0][0] != MASK).all()
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
