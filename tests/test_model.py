import torch

from dind.attention import block_diff_mask
from dind.config import small
from dind.model import DiT, subs_log_probs
from helpers import random_dit


def reference_shapes(V: int, d: int, n_blocks: int, head_dim: int, cond: int = 128) -> dict:
    """The state-dict layout of BD3-LM's DiT, written out from its published key list."""
    ref = {
        "vocab_embed.embedding": (V, d),
        "sigma_map.mlp.0.weight": (cond, 256),
        "sigma_map.mlp.0.bias": (cond,),
        "sigma_map.mlp.2.weight": (cond, cond),
        "sigma_map.mlp.2.bias": (cond,),
        "rotary_emb.inv_freq": (head_dim // 2,),
        "output_layer.norm_final.weight": (d,),
        "output_layer.linear.weight": (V, d),
        "output_layer.linear.bias": (V,),
        "output_layer.adaLN_modulation.weight": (2 * d, cond),
        "output_layer.adaLN_modulation.bias": (2 * d,),
    }
    for i in range(n_blocks):
        p = f"blocks.{i}."
        ref.update(
            {
                p + "norm1.weight": (d,),
                p + "attn_qkv.weight": (3 * d, d),
                p + "attn_out.weight": (d, d),
                p + "norm2.weight": (d,),
                p + "mlp.0.weight": (4 * d, d),
                p + "mlp.0.bias": (4 * d,),
                p + "mlp.2.weight": (d, 4 * d),
                p + "mlp.2.bias": (d,),
                p + "adaLN_modulation.weight": (6 * d, cond),
                p + "adaLN_modulation.bias": (6 * d,),
            }
        )
    return ref


def test_small_preset_has_bd3lm_keys_and_shapes():
    cfg = small().model
    with torch.device("meta"):
        model = DiT(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == reference_shapes(50258, 768, 12, 64)
    # "About 170M parameters in all"
    assert 160e6 < model.num_params() < 175e6


def test_base_preset_lies_between_tiny_and_small():
    from dind.config import base, tiny

    sizes = []
    for run in (tiny(), base(), small()):
        with torch.device("meta"):
            sizes.append(DiT(run.model).num_params())
    assert sizes[0] < sizes[1] < sizes[2]
    run = base()
    L = run.model.seq_len
    assert run.train.block_dist.block_sizes == (4, L) and run.train.block_dist.probs == (0.9, 0.1)
    assert run.model.mask_id == run.train.bpe_vocab_size == run.model.vocab_size - 1
    assert run.train.corpus == "english" and run.model.hidden_dim % run.model.n_heads == 0


def test_any_size_through_config(tiny_cfg):
    model = DiT(tiny_cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == reference_shapes(33, 32, 2, 16, cond=16)


def test_subs_parameterization():
    logits = torch.randn(2, 5, 7)
    xt = torch.tensor([[6, 1, 6, 3, 6], [0, 6, 6, 6, 2]])  # 6 is the mask
    lp = subs_log_probs(logits, xt, mask_id=6)
    probs = lp.exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 5))
    assert (probs[..., 6] == 0).all()  # never predicts the mask
    unmasked = xt != 6
    assert (probs[unmasked].argmax(-1) == xt[unmasked]).all()
    assert torch.allclose(probs[unmasked].max(-1).values, torch.ones(()))


def test_xt_half_does_not_see_future_blocks(tiny_cfg):
    """Changing x_0 in blocks >= b leaves the x_t logits of block b unchanged."""
    model = random_dit(tiny_cfg)
    L, B = 16, 4
    x = torch.randint(0, 32, (1, 2 * L))
    mask = block_diff_mask(L, B)
    pos = torch.arange(L).repeat(2)
    out = model(x, mask=mask, positions=pos, n_logits=L)
    y = x.clone()
    y[0, L + 8 :] = (y[0, L + 8 :] + 3) % 32  # clean blocks 2 and 3 change
    out2 = model(y, mask=mask, positions=pos, n_logits=L)
    torch.testing.assert_close(out[:, :12], out2[:, :12])  # blocks 0..2 unchanged
    assert not torch.allclose(out[:, 12:], out2[:, 12:])  # block 3 sees clean block 2


def test_kv_cache_equals_block_causal_recompute(tiny_cfg):
    """Blocks decoded against the cache give the logits of one block-causal pass."""
    from dind.attention import block_diff_mask

    model = random_dit(tiny_cfg)
    L, bs = 16, 4
    x = torch.randint(0, 32, (2, L))
    block_causal = block_diff_mask(L, bs)[L:, L:]  # M_BC: clean blocks see blocks <= own
    ref = model(x, mask=block_causal)
    cache = model.new_kv_cache(2)
    for b in range(L // bs):
        sl = slice(b * bs, (b + 1) * bs)
        out = model(x[:, sl], positions=torch.arange(L)[sl], kv_cache=cache)
        torch.testing.assert_close(out, ref[:, sl], rtol=1e-4, atol=1e-5)
        cache.advance(bs)
    assert cache.length == L


def _last_block_rows(model) -> list[int]:
    """Record how many rows the last block's MLP sees on each call."""
    seen: list[int] = []
    model.blocks[-1].mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    return seen


def test_logits_at_a_few_rows_equal_the_full_pass_and_skip_the_rest(tiny_cfg):
    """``logit_index`` / ``n_logits`` give the full pass's rows (brute force: every row, then
    pick), under no mask, a (T, S) mask and a (B, T, S) mask; and the last block computes
    only the rows asked for (its MLP sees k rows, not T)."""
    from dind.attention import block_causal_mask

    model = random_dit(tiny_cfg)
    seen = _last_block_rows(model)
    L = 16
    x = torch.randint(0, 32, (3, L))
    index = torch.tensor([[0, 5, 9], [15, 15, 2], [7, 1, 3]])
    square = block_causal_mask(L, 4, "cpu", 0)
    for mask in (None, square, square[None].expand(3, -1, -1).clone()):
        full = model(x, mask=mask)
        picked = model(x, mask=mask, logit_index=index)
        ref = full.gather(1, index[..., None].expand(-1, -1, full.shape[-1]))
        torch.testing.assert_close(picked, ref, rtol=1e-5, atol=1e-6)
        first = model(x, mask=mask, n_logits=6)
        torch.testing.assert_close(first, full[:, :6], rtol=1e-5, atol=1e-6)
        assert seen[-3:] == [L, 3, 6]
    assert model(x, n_logits=0).shape == (3, 0, tiny_cfg.vocab_size)
    assert model(x, n_logits=L + 4).shape == (3, L, tiny_cfg.vocab_size)


def test_a_cache_filling_pass_writes_every_rows_keys_from_the_last_block(tiny_cfg):
    """``n_logits=0`` skips the last block's outputs but not its keys and values: the next
    block decoded against that cache gives the block-causal pass's logits."""
    from dind.attention import block_diff_mask

    model = random_dit(tiny_cfg)
    seen = _last_block_rows(model)
    L, bs = 16, 4
    x = torch.randint(0, 32, (2, L))
    ref = model(x, mask=block_diff_mask(L, bs)[L:, L:])
    cache = model.new_kv_cache(2)
    model(x[:, :bs], positions=torch.arange(bs), kv_cache=cache, n_logits=0)
    assert seen[-1] == 0
    cache.advance(bs)
    out = model(x[:, bs : 2 * bs], positions=torch.arange(bs, 2 * bs), kv_cache=cache)
    torch.testing.assert_close(out, ref[:, bs : 2 * bs], rtol=1e-4, atol=1e-5)
