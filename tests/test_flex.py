"""FlexAttention gives the logits of SDPA with the dense mask (same predicate, two kernels)."""

import dataclasses
import warnings

import pytest
import torch

from dind import attention
from dind.config import ModelConfig
from dind.loss import bd3_loss
from dind.model import DiT


def _pair(cfg: ModelConfig, device: str) -> tuple[DiT, DiT]:
    sdpa = DiT(cfg).to(device)
    for block in sdpa.blocks:  # non-trivial adaLN and outputs so the comparison means something
        torch.nn.init.normal_(block.adaLN_modulation.weight, std=0.1)
    torch.nn.init.normal_(sdpa.output_layer.linear.weight, std=0.3)
    flex = DiT(dataclasses.replace(cfg, attn_backend="flex")).to(device)
    flex.load_state_dict(sdpa.state_dict())
    return sdpa, flex


def test_flex_forward_matches_sdpa_on_cpu():
    """On CPU FlexAttention runs forward-only in eager mode; enough to check the mask_mod."""
    cfg = ModelConfig(vocab_size=65, mask_id=64, seq_len=128, hidden_dim=64, cond_dim=16,
                      n_blocks=2, n_heads=2, dropout=0.0)  # fmt: skip
    sdpa, flex = _pair(cfg, "cpu")
    L = cfg.seq_len
    x = torch.randint(0, 64, (3, 2 * L))
    pos = torch.arange(L).repeat(2)
    sizes = torch.tensor([4, 128, 16])  # a mixed-scale batch
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sdpa(x, mask=attention.block_diff_mask(L, sizes), positions=pos)
        out = flex(x, mask=attention.flex_block_diff_mask(L, sizes, "cpu"), positions=pos)
        ref1 = sdpa(x, mask=attention.block_diff_mask(L, 8), positions=pos)
        out1 = flex(x, mask=attention.flex_block_diff_mask(L, 8, "cpu"), positions=pos)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out1, ref1, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_flex_matches_sdpa_on_cuda_with_gradients():
    cfg = ModelConfig(vocab_size=1025, mask_id=1024, seq_len=256, hidden_dim=128, cond_dim=32,
                      n_blocks=2, n_heads=4, dropout=0.0)  # fmt: skip
    sdpa, flex = _pair(cfg, "cuda")
    x0 = torch.randint(0, 1024, (4, cfg.seq_len), device="cuda")
    sizes = torch.tensor([4, 256, 16, 4], device="cuda")
    losses = []
    for model, c in ((sdpa, cfg), (flex, dataclasses.replace(cfg, attn_backend="flex"))):
        torch.manual_seed(0)
        out = bd3_loss(model, c, x0, sizes)
        out.loss.backward()
        losses.append((out.nll.detach(), model.blocks[0].attn_qkv.weight.grad.clone()))
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(losses[1][1], losses[0][1], rtol=2e-2, atol=2e-4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("L,sizes", [(128, [4, 128, 16]), (32, [4, 32, 32, 4]), (64, [2, 64, 4])])
def test_mixed_block_mask_from_the_cache_is_create_block_mask_s(L, sizes, device):
    """A mixed batch's BlockMask gathered from the per-size masks built once is, tensor for
    tensor, the one ``create_block_mask`` builds for the batch (what every micro-step paid)."""
    from torch.nn.attention.flex_attention import create_block_mask

    bs = torch.tensor(sizes, device=device)

    def mask_mod(b, h, q_idx, kv_idx):
        return attention._block_diff_predicate(q_idx, kv_idx, L, bs[b])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = create_block_mask(mask_mod, len(sizes), None, 2 * L, 2 * L, device=device)
        got = attention.flex_block_diff_mask(L, bs.cpu(), device)
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                 "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):  # fmt: skip
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
    assert (got.BLOCK_SIZE, got.seq_lengths) == (ref.BLOCK_SIZE, ref.seq_lengths)
    assert torch.equal(got.to_dense(), ref.to_dense())
    # built once per (L, block size, device): the same object every micro-step
    assert attention.flex_block_diff_mask(L, sizes[0], device) is attention.flex_block_diff_mask(
        L, sizes[0], torch.device(device)
    )
    assert attention.flex_causal_mask(L, device) is attention.flex_causal_mask(L, device)


@pytest.mark.slow
def test_compiled_model_traces_flex_attention_without_a_compile_call(monkeypatch):
    """``--compile``: tracing the model must not reach the eagerly compiled FlexAttention (a
    ``torch.compile`` call inside traced code breaks the graph). With the factory made to
    fail, the whole model still compiles as one graph and gives the eager logits."""
    import dind.model

    cfg = ModelConfig(vocab_size=65, mask_id=64, seq_len=64, hidden_dim=32, cond_dim=16,
                      n_blocks=2, n_heads=2, dropout=0.0, attn_backend="flex")  # fmt: skip
    model = DiT(cfg).eval()
    L = cfg.seq_len
    x, pos = torch.randint(0, 64, (2, 2 * L)), torch.arange(L).repeat(2)
    mask = attention.flex_block_diff_mask(L, torch.tensor([4, 64]), "cpu")
    calls = []

    def factory(device_type):
        calls.append(device_type)
        if torch.compiler.is_compiling():
            raise AssertionError("traced code reached the compiled FlexAttention")
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention

    monkeypatch.setattr(dind.model, "_compiled_flex_attention", factory)
    torch._dynamo.reset()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = model(x, mask=mask, positions=pos)
        assert calls == ["cpu", "cpu"]  # eager: through the factory, once per layer
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        out = compiled(x, mask=mask, positions=pos)
    assert calls == ["cpu", "cpu"]
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
