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
