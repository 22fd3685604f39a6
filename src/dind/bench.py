"""Benchmarks: the figures that speed targets are judged by (recorded in dev/LOG.md).

``bench_train`` times one optimizer step of the mixed-scale BD3 objective against the AR
objective on the same model and the same tokens, interleaving the two so that both see the
same machine state, and reports the median seconds per step and their ratio.
``bench_sample`` samples at ``dind sample``'s precisions (``--dtype``, default auto: bf16
autocast on CUDA, fp32 on the CPU) and records the one it ran as ``dtype``.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

import torch

from dind.config import BlockSizeDistribution, ModelConfig, SamplerConfig, preset
from dind.devices import default_device, sampling_precision
from dind.loss import ar_loss, bd3_loss
from dind.mixed_scale import sample_block_sizes
from dind.model import DiT


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train(
    preset_name: str = "tiny",
    steps: int = 10,
    batch_size: int | None = None,
    block_sizes: str = "4,L",
    block_probs: str = "0.9,0.1",
    attn_backend: str = "sdpa",
) -> dict[str, Any]:
    run = preset(preset_name)
    device = torch.device(default_device())
    L = run.model.seq_len
    cfg = ModelConfig(**{**run.model.__dict__, "attn_backend": attn_backend, "dropout": 0.0})
    dist = BlockSizeDistribution.parse(block_sizes, block_probs, L)
    dist.check_divides(L)
    B = batch_size or run.train.batch_size
    torch.manual_seed(0)
    model = DiT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randint(0, cfg.mask_id, (B, L), device=device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def step(objective: str) -> float:
        _sync(device)
        t0 = time.perf_counter()
        with autocast:
            if objective == "bd3":
                loss = bd3_loss(model, cfg, x0, sample_block_sizes(dist, B)).loss  # as training
            else:
                loss = ar_loss(model, cfg, x0).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(2):  # warm-up (allocator, kernels, flex compilation)
        step("bd3"), step("ar")
    times: dict[str, list[float]] = {"bd3": [], "ar": []}
    for _ in range(steps):
        for objective in ("bd3", "ar"):
            times[objective].append(step(objective))
    bd3, ar = statistics.median(times["bd3"]), statistics.median(times["ar"])
    return {
        "bench": "train",
        "preset": preset_name,
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "attn_backend": attn_backend,
        "batch_size": B,
        "seq_len": L,
        "params": model.num_params(),
        "block_sizes": list(dist.block_sizes),
        "block_probs": list(dist.probs),
        "steps": steps,
        "bd3_s_per_step": bd3,
        "ar_s_per_step": ar,
        "ratio_bd3_over_ar": bd3 / ar,
    }


def bench_sample(
    preset_name: str = "tiny", length: int = 256, num_samples: int = 2, dtype: str = "auto"
) -> dict:
    """Seconds per sample (batch size 1, BD3-LM's protocol) for stage 1 with and without the
    KV cache, the full two stages (4, L) at gamma 0.25 and 0.5, and AR decoding with a KV
    cache on a causal model of the same size; all measured in this one run."""
    from dind.sampler import ar_generate, sample

    run = preset(preset_name)
    device = torch.device(default_device())
    cfg = ModelConfig(**{**run.model.__dict__, "seq_len": length, "dropout": 0.0})
    torch.manual_seed(0)
    model = DiT(cfg).to(device).eval()
    # random (not zero-initialised) heads so sampling is not degenerate
    torch.nn.init.normal_(model.output_layer.linear.weight, std=0.02)
    bos, mask = cfg.mask_id - 1, cfg.mask_id

    def timed(fn) -> float:
        fn()  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(num_samples):
            fn()
        _sync(device)
        return (time.perf_counter() - t0) / num_samples

    def diffusion(stages, remask=(), cache=True):
        scfg = SamplerConfig(stages=stages, remask=remask, length=length, kv_cache=cache)
        return lambda: sample(model, scfg, 1, 1, bos, mask)

    with sampling_precision(device, dtype) as dtype:
        res = {
            "stage1_cache": timed(diffusion((4,))),
            "stage1_no_cache": timed(diffusion((4,), cache=False)),
            "two_stage_gamma0.25": timed(diffusion((4, length), (0.25,))),
            "two_stage_gamma0.5": timed(diffusion((4, length), (0.5,))),
            "ar_cache": timed(lambda: ar_generate(model, length, 1, bos, mask)),
        }
    return {
        "bench": "sample",
        "preset": preset_name,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "length": length,
        "params": model.num_params(),
        "num_samples": num_samples,
        "seconds_per_sample": res,
        "cache_speedup_stage1": res["stage1_no_cache"] / res["stage1_cache"],
        "stage1_over_ar_per_token": res["stage1_cache"] / res["ar_cache"],
        "two_stage_over_stage1": {
            k: res[k] / res["stage1_cache"] for k in ("two_stage_gamma0.25", "two_stage_gamma0.5")
        },
    }
