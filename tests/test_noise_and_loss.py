import math

import pytest
import torch

from dind import noise
from dind.config import BlockSizeDistribution
from dind.errors import DindError
from dind.loss import ar_loss, bd3_loss
from dind.mixed_scale import sample_block_sizes
from dind.model import DiT


def test_t_is_constant_within_blocks_and_stratified_per_size_group():
    sizes = torch.tensor([4, 16, 8, 4])
    t = noise.sample_t(sizes, 16, 0.2, 0.9, antithetic=True)
    gid = noise.block_ids(sizes, 16)
    n = int(gid.max()) + 1
    assert n == 4 + 1 + 2 + 4
    per_block = torch.stack([t[gid == g].unique() for g in range(n)]).squeeze(-1)
    assert per_block.numel() == n  # exactly one t per block
    u = (per_block - 0.2) / 0.7
    # antithetic within each size group: its G_s blocks, in batch order, fill the G_s strata
    for size in (4, 16, 8):
        group = torch.tensor([sizes[r] == size for r in range(4) for _ in range(16 // sizes[r])])
        k = int(group.sum())
        lo = torch.arange(k) / k
        assert ((u[group] >= lo - 1e-6) & (u[group] <= lo + 1 / k + 1e-6)).all(), size
    assert (t >= 0.2).all() and (t <= 0.9).all()


def test_one_block_size_draws_exactly_bd3lms_t():
    """A batch of one block size draws t as before per-size groups existed: u_g / G + g / G."""
    sizes = torch.full((6,), 4)
    torch.manual_seed(3)
    t = noise.sample_t(sizes, 32, 0.3, 0.8)
    torch.manual_seed(3)
    n = 6 * 8
    u = torch.rand(n)
    ref = 0.3 + (0.8 - 0.3) * ((u / n + torch.arange(n) / n) % 1)
    assert torch.equal(t, ref[noise.block_ids(sizes, 32)])
    # and a batch whose rows share one interval gets plain floats (the same code path)
    assert noise.row_bounds(sizes, {4: (0.3, 0.8)}) == (0.3, 0.8)


def _ks_uniform(values: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov statistic of ``values`` against Uniform(lo, hi)."""
    x = ((values.double() - lo) / (hi - lo)).sort().values
    n = len(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - x, x - (i - 1) / n).max())


@pytest.mark.slow
def test_whole_sequence_rows_draw_t_uniformly_on_their_interval():
    """The paper's mix at batch 16: the t of the B = L rows is uniform on their own interval,
    whatever the small-block rows beside them (KS test, 0.1% level), and the B = 4 rows stay in
    theirs."""
    L, dist = 64, BlockSizeDistribution((4, 64), (0.9, 0.1))
    intervals = {4: (0.5, 1.0), 64: (1e-3, 1.0)}
    full, small = [], []
    for _ in range(1500):
        sizes = sample_block_sizes(dist, 16)
        lo, hi = noise.row_bounds(sizes, intervals)
        t = noise.sample_t(sizes, L, lo, hi)[:, 0]  # (B,) the row's first block
        full.append(t[sizes == L])
        small.append(noise.sample_t(sizes, L, lo, hi)[sizes == 4])
    full, small = torch.cat(full), torch.cat(small)
    assert len(full) > 1000
    assert _ks_uniform(full, 1e-3, 1.0) < 1.95 / math.sqrt(len(full))
    assert small.min() >= 0.5 and small.max() <= 1.0
    share = float((full < 1 / 64).double().mean())  # a uniform draw gives 1.6%
    assert abs(share - (1 / 64 - 1e-3) / (1 - 1e-3)) < 0.01


def test_resampling_respects_each_rows_interval():
    x0 = torch.randint(0, 10, (32, 32))
    sizes = torch.tensor([8, 32] * 16)
    lo, hi = noise.row_bounds(sizes, {8: (0.3, 0.8), 32: (1e-3, 1.0)})
    assert isinstance(lo, torch.Tensor) and lo.shape == (32,)
    t = noise.sample_t(sizes, 32, lo, hi)
    xt = noise.q_xt(x0, t, sizes, mask_id=10, eps_min=lo, eps_max=hi, resample=True)
    small = (xt[sizes == 8] == 10).float().view(16, 4, 8).mean(-1)
    assert (small >= 0.3).all() and (small <= 0.8).all()
    assert ((t[sizes == 32] >= 1e-3) & (t[sizes == 32] <= 1.0)).all()
    with pytest.raises(ValueError, match="no noise interval for block size 32"):
        noise.row_bounds(sizes, {8: (0.3, 0.8)})


def test_resampling_keeps_masked_fraction_in_bounds():
    x0 = torch.randint(0, 10, (64, 32))
    sizes = torch.full((64,), 8)
    t = noise.sample_t(sizes, 32, 0.3, 0.8)
    xt = noise.q_xt(x0, t, sizes, mask_id=10, eps_min=0.3, eps_max=0.8, resample=True)
    frac = (xt == 10).float().view(64, 4, 8).mean(-1)
    assert (frac >= 0.3).all() and (frac <= 0.8).all()
    # unmasked tokens are untouched
    keep = xt != 10
    assert torch.equal(xt[keep], x0[keep])


def test_clip_search_grid():
    grid = noise.clip_search_grid((0.5,), 0.25)
    assert grid[0] == (1e-3, 1.0)
    assert (0.25, 0.75) in grid and (0.5, 1.0) in grid and (1e-3, 0.5) in grid
    assert all(0 < lo < hi <= 1 for lo, hi in grid)


def test_loss_finite_zero_on_unmasked_and_weighted_by_inverse_t(tiny_cfg):
    model = DiT(tiny_cfg)
    torch.nn.init.normal_(model.output_layer.linear.weight, std=0.5)  # non-uniform predictions
    x0 = torch.randint(0, 32, (4, 16))
    sizes = torch.tensor([4, 16, 8, 4])
    torch.manual_seed(1)
    out = bd3_loss(model, tiny_cfg, x0, sizes, antithetic=True, resample=False)
    assert torch.isfinite(out.loss) and torch.isfinite(out.nll).all()
    # Recompute the same draw by hand: same seed -> same t and x_t.
    torch.manual_seed(1)
    t = noise.sample_t(sizes, 16)
    xt = noise.q_xt(x0, t, sizes, 32, resample=False)
    xt[:, 0] = x0[:, 0]
    masked = xt == 32
    assert masked.any() and (~masked).any()
    assert (out.nll[~masked] == 0).all()
    assert (out.nll[masked] > 0).all()
    # nll * t is the plain cross-entropy, which does not depend on t: check the 1/t weight
    # against an independent forward pass of x_t alone under each row's attention mask.
    from dind.attention import block_diff_mask

    ce = []
    for i in range(4):
        m = block_diff_mask(16, int(sizes[i]))
        x_in = torch.cat((xt[i : i + 1], x0[i : i + 1]), 1)
        logits = model(x_in, mask=m, positions=torch.arange(16).repeat(2))[:, :16].float()
        logits[..., 32] = -1e6
        ce.append(-logits.log_softmax(-1).gather(-1, x0[i : i + 1, :, None])[0, :, 0])
    ce = torch.stack(ce)
    torch.testing.assert_close(out.nll[masked], (ce / t)[masked], rtol=1e-4, atol=1e-5)
    assert math.isclose(out.loss.item(), out.nll.mean().item(), rel_tol=1e-5)


def test_ar_loss_is_next_token_cross_entropy(tiny_cfg):
    cfg = tiny_cfg
    model = DiT(cfg)
    torch.nn.init.normal_(model.output_layer.linear.weight, std=0.5)
    x0 = torch.randint(0, 32, (2, 16))
    out = ar_loss(model, cfg, x0)
    # Causality: the prediction at position 3 does not change when later tokens change.
    x1 = x0.clone()
    x1[:, 10:] = (x1[:, 10:] + 1) % 32
    out1 = ar_loss(model, cfg, x1)
    torch.testing.assert_close(out.nll[:, :9], out1.nll[:, :9])
    # The value: brute force, one forward per prefix with no attention mask at all (the last
    # position of a prefix sees exactly what causal attention lets it see), the cross-entropy
    # of the next token over the vocabulary without the mask token (mask_id is the last id).
    assert cfg.mask_id == cfg.vocab_size - 1
    with torch.no_grad():
        ce = torch.stack(
            [
                torch.nn.functional.cross_entropy(
                    model(x0[:, :p])[:, -1, : cfg.mask_id].float(), x0[:, p], reduction="none"
                )
                for p in range(1, 16)
            ],
            dim=1,
        )  # (2, 15): position p - 1 predicts token p
    assert out.nll.shape == ce.shape
    torch.testing.assert_close(out.nll.detach(), ce, rtol=1e-4, atol=1e-5)
    assert math.isclose(out.loss.item(), ce.mean().item(), rel_tol=1e-5)
    assert out.token_mask.all()


def test_block_sizes_follow_probabilities():
    """Counts of 20,000 draws lie within 5 standard deviations of n * p for every size
    (a false alarm has probability below 1e-5)."""
    dist = BlockSizeDistribution((4, 16, 64), (0.7, 0.2, 0.1))
    n = 20_000
    draws = sample_block_sizes(dist, n)
    for b, p in zip(dist.block_sizes, dist.probs, strict=True):
        count = (draws == b).sum().item()
        sd = math.sqrt(n * p * (1 - p))
        assert abs(count - n * p) < 5 * sd, (b, count, n * p)
    assert set(draws.unique().tolist()) <= set(dist.block_sizes)


def test_fixed_block_size_is_one_element_case():
    draws = sample_block_sizes(BlockSizeDistribution((8,), (1.0,)), 100)
    assert (draws == 8).all()


@pytest.mark.parametrize(
    "sizes,probs,msg",
    [
        ("4,1024", "0.9,0.2", "sum to 1"),
        ("0,16", "0.5,0.5", "positive"),
        ("4,16", "1.0", "2 block sizes but 1"),
        ("4,x", None, "block size 'x': not an integer"),
    ],
)
def test_bad_block_distribution(sizes, probs, msg):
    with pytest.raises(DindError, match=msg):
        BlockSizeDistribution.parse(sizes, probs)


def test_block_size_must_divide_L():
    with pytest.raises(DindError, match="do not divide"):
        BlockSizeDistribution((4, 24), (0.5, 0.5)).check_divides(64)
