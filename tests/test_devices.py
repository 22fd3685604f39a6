"""The GPU path, checked from the CPU where it can be (dev/GPU.md lists what needs a GPU)."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

from dind import devices
from dind.config import SamplerConfig
from dind.errors import DindError
from dind.loss import bd3_loss
from dind.mixed_scale import sample_block_sizes
from dind.model import DiT

REPO = Path(__file__).resolve().parents[1]


def test_precision_choices_on_this_machine():
    assert devices.resolve_dtype("fp32", "cpu") == "fp32"
    assert devices.resolve_dtype("auto", "cpu") == "fp32"
    assert devices.resolve_dtype("auto", "cuda") == "bf16"
    assert devices.resolve_dtype("tf32", "cuda") == "tf32"
    assert devices.resolve_dtype("bf16", "cpu") == "bf16"  # opt-in on the CPU
    with pytest.raises(DindError, match="--dtype tf32 needs a CUDA device"):
        devices.resolve_dtype("tf32", "cpu")
    with pytest.raises(DindError, match="dtype must be one of auto, bf16, tf32, fp32"):
        devices.resolve_dtype("fp16", "cpu")
    assert devices.default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def _matmul_settings() -> tuple:
    mkldnn = getattr(torch.backends.mkldnn, "matmul", None)
    return (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision(),
            getattr(mkldnn, "fp32_precision", None))  # fmt: skip


def test_cpu_sampling_precision_changes_nothing():
    """On the CPU the context neither autocasts nor touches any matmul setting."""
    before = _matmul_settings()
    with devices.sampling_precision("cpu") as dtype:
        assert dtype == "fp32"
        assert not torch.is_autocast_enabled("cpu") and devices.autocast_dtype("cpu") is None
        assert _matmul_settings() == before
    assert _matmul_settings() == before


def test_cpu_bf16_autocasts_the_passes_inside_only(tiny_cfg):
    """``--dtype bf16`` on the CPU: bfloat16 autocast inside the context (the KV cache follows
    it), no matmul setting touched, nothing left on after it. The logits stay near float32's
    (bfloat16 keeps 8 bits of mantissa); the sampler's probabilities are float64 either way."""
    from dind.sampler import sample

    torch.manual_seed(0)
    model = DiT(tiny_cfg).eval()
    torch.nn.init.normal_(model.output_layer.linear.weight, std=0.5)
    x = torch.randint(0, tiny_cfg.mask_id, (2, 16))
    before = _matmul_settings()
    with torch.no_grad():
        full = model(x)
        with devices.sampling_precision("cpu", "bf16") as dtype:
            assert dtype == "bf16" and devices.autocast_dtype("cpu") == torch.bfloat16
            assert _matmul_settings() == before
            half = model(x)
            drawn = sample(model, SamplerConfig(stages=(4, 16), remask=(0.5,), length=16), 2, 2,
                           tiny_cfg.mask_id - 1, tiny_cfg.mask_id)  # fmt: skip
    assert not torch.is_autocast_enabled("cpu") and _matmul_settings() == before
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    err = (half.float() - full).abs().max() / full.abs().max()
    assert 0 < err < 0.05, err  # rounded, and only rounded
    assert all(len(s.tokens) == 16 and tiny_cfg.mask_id not in s.tokens for s in drawn)


def test_cuda_tf32_is_scoped_and_leaves_the_cpu_alone():
    before = _matmul_settings()
    with devices.cuda_tf32(True):
        assert torch.backends.cuda.matmul.allow_tf32
        assert _matmul_settings()[2] == before[2]  # the CPU's oneDNN matmuls stay IEEE
        with devices.cuda_tf32(False):
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32
    assert _matmul_settings() == before


def test_loss_takes_block_sizes_on_the_cpu_or_on_x0_s_device(tiny_cfg):
    """Training keeps the block sizes on the CPU (the host plans the noise and the mask from
    them without waiting for the device): the same loss as sizes on x0's device. The training
    loss sums every token without selecting them (no sync), bit for bit the selected sum."""
    device = devices.default_device()
    model = DiT(tiny_cfg).to(device)
    x0 = torch.randint(0, 32, (6, 16), device=device)
    sizes = torch.tensor([4, 16, 4, 8, 16, 4])
    lo = torch.tensor([0.3, 0.5, 0.3, 0.2, 0.5, 0.3])
    hi = torch.tensor([0.8, 1.0, 0.8, 0.9, 1.0, 0.8])
    outs = []
    for where in ("cpu", device):
        torch.manual_seed(7)
        outs.append(bd3_loss(model, tiny_cfg, x0, sizes.to(where), lo.to(where), hi.to(where)))
    assert torch.equal(outs[0].loss, outs[1].loss) and torch.equal(outs[0].nll, outs[1].nll)
    out = outs[0]
    assert out.token_mask.all()
    assert torch.equal(out.loss, out.nll[out.token_mask].sum() / out.token_mask.sum())


def test_owt_recipe_runs_the_virtual_environment_s_executables(tmp_path):
    """Every step of ``runs/owt_reproduce.sh`` (torchrun included) is the venv's, and a dry run
    works on a machine without nvidia-smi."""
    env = {**os.environ, "DRY_RUN": "1"}
    env.pop("NGPU", None)
    res = subprocess.run(["bash", str(REPO / "runs" / "owt_reproduce.sh"), str(tmp_path / "owt")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    commands = [line[2:] for line in res.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) > 10
    assert all(c.startswith(".venv/bin/") for c in commands), commands
    assert any(c.startswith(".venv/bin/torchrun --nproc_per_node ") for c in commands)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_training_micro_step_never_waits_for_the_device(tiny_cfg, backend):
    """A mixed-scale micro-step (batch copy, noise, mask, forward, backward) runs with CUDA's
    sync debug mode set to raise: no host-device sync. (Resampling clipped bounds waits once
    per try by design, so this step draws unclipped.)"""
    import dataclasses

    from dind.config import BlockSizeDistribution

    cfg = dataclasses.replace(tiny_cfg, seq_len=64, attn_backend=backend)
    model = DiT(cfg).cuda()
    dist = BlockSizeDistribution((4, 64), (0.5, 0.5))
    rows = torch.randint(0, 32, (8, 64))

    def micro_step():
        x0 = devices.to_device(rows, "cuda")
        sizes = sample_block_sizes(dist, len(x0))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = bd3_loss(model, cfg, x0, sizes).loss
        loss.backward()
        return loss.detach().double()

    for _ in range(3):  # warm-up: kernels, allocator, the cached masks, flex compilation
        micro_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        total = micro_step() + micro_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(total).item()
