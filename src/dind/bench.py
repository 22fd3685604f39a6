"""Benchmarks: the figures that speed targets are judged by (recorded in dev/LOG.md).

``bench_train`` times one optimizer step of the mixed-scale BD3 objective against the AR
objective on the same model and the same tokens, interleaving the two so that both see the
same machine state, and reports the median seconds per step and their ratio.
``bench_sample`` times sampling (AR decoding, stage 1 with and without the KV cache, two
stages one token per call and with a parallel rule) at several batch sizes, in seconds per
sample and tokens per second (and, for the sampler's settings, the seconds of each stage as the
samples record them, so a two-stage setting's ratio to its own stage 1 needs no second run),
at ``dind sample``'s precisions (``--dtype``, default auto:
bf16 autocast on CUDA, fp32 on the CPU), and records the one it ran as ``dtype``.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

import torch

from dind.config import (
    SAMPLE_SETTINGS,
    BlockSizeDistribution,
    ModelConfig,
    SamplerConfig,
    preset,
)
from dind.devices import default_device, sampling_precision, synchronize
from dind.errors import DindError
from dind.loss import ar_loss, bd3_loss
from dind.mixed_scale import sample_block_sizes
from dind.model import DiT


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
        synchronize(device)
        t0 = time.perf_counter()
        with autocast:
            if objective == "bd3":
                loss = bd3_loss(model, cfg, x0, sample_block_sizes(dist, B)).loss  # as training
            else:
                loss = ar_loss(model, cfg, x0).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(device)
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


def random_model(preset_name: str, length: int | None = None, head_std: float = 0.02) -> DiT:
    """The preset's model at context ``length`` (default: the preset's) with random weights
    (seed 0), in eval mode: what sampling is timed, profiled and checked for identity on. The
    output head is drawn too (a trained-from-zero head would make sampling degenerate); its
    std sets how peaked the predictions are."""
    model_cfg = preset(preset_name).model
    cfg = ModelConfig(**{**model_cfg.__dict__, "seq_len": length or model_cfg.seq_len,
                         "dropout": 0.0})  # fmt: skip
    torch.manual_seed(0)
    model = DiT(cfg).eval()
    torch.nn.init.normal_(model.output_layer.linear.weight, std=head_std)
    return model


def bench_sample(
    preset_name: str = "tiny",
    length: int = 1024,
    batch_sizes: tuple[int, ...] = (1, 16),
    repeats: int = 1,
    dtype: str = "auto",
    gamma: float = 0.5,
    parallel: str = "16",
    settings: tuple[str, ...] = SAMPLE_SETTINGS,
    refresh: int | None = None,
    recompute: str = "masked",
) -> dict[str, Any]:
    """Seconds per sample and tokens per second of each setting at each batch size, on a
    model of the preset's size at length L (random weights: the cost of a call does not
    depend on them; a threshold rule's call count does, so time ``tau:X`` on a trained model
    through ``dind sweep parallel`` instead). Each timing is ``repeats`` batches after a short
    warm-up (the same setting at length 16); all are measured in this one run."""
    from dind.parallel import Parallel
    from dind.sampler import ar_generate, sample

    unknown = sorted(set(settings) - set(SAMPLE_SETTINGS))
    if unknown:
        raise DindError(
            f"unknown bench setting {unknown[0]!r}: one of {', '.join(SAMPLE_SETTINGS)}"
        )
    Parallel.parse(parallel)  # one-line errors before any work
    SamplerConfig(stages=(4, 8), remask=(gamma,), length=8, refresh=refresh, recompute=recompute)
    device = torch.device(default_device())
    model = random_model(preset_name, length).to(device)
    bos, mask = model.config.mask_id - 1, model.config.mask_id

    def job(name: str, n: int, batch: int):
        if name == "ar_cache":
            return lambda: ar_generate(model, n, batch, bos, mask)
        stages = (4,) if name.startswith("stage1") else (4, n)
        scfg = SamplerConfig(
            stages=stages,
            remask=() if len(stages) == 1 else (gamma,),
            length=n,
            kv_cache=name != "stage1_no_cache",
            parallel=("1", parallel) if name == "two_stages_parallel" else (),
            refresh=refresh if name == "two_stages_parallel" else None,
            recompute=recompute if name == "two_stages_parallel" else "masked",
        )
        return lambda: sample(model, scfg, batch, batch, bos, mask)  # fmt: skip

    def timed(name: str, batch: int) -> tuple[float, list[float]]:
        """Seconds per batch, and for the sampler's settings the batch's seconds in each
        stage as the samples record them (averaged over the repeats)."""
        job(name, 16, batch)()  # warm-up: allocations, kernels
        synchronize(device)
        runs = []  # each run's seconds per stage: the sum of its samples' shares
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = job(name, length, batch)()
            if name != "ar_cache":
                runs.append([sum(t) for t in zip(*(s.seconds for s in out), strict=True)])
        synchronize(device)
        return (time.perf_counter() - t0) / repeats, [
            sum(t) / repeats for t in zip(*runs, strict=True)
        ]

    figures: dict[str, dict[str, dict[str, Any]]] = {}
    with sampling_precision(device, dtype) as dtype:
        for batch in batch_sizes:
            per = figures[f"batch{batch}"] = {}
            for name in settings:
                seconds, stages = timed(name, batch)
                per[name] = {"seconds_per_sample": seconds / batch,
                             "tokens_per_s": batch * length / seconds}  # fmt: skip
                if len(stages) > 1:  # the stages' seconds per sample, one run: paired
                    per[name]["stage_seconds_per_sample"] = [t / batch for t in stages]
    return {
        "bench": "sample",
        "preset": preset_name,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "length": length,
        "params": model.num_params(),
        "repeats": repeats,
        "gamma": gamma,
        "parallel": parallel,
        "refresh": refresh,
        "recompute": recompute,
        "figures": figures,
        "ratios": _sample_ratios(figures, batch_sizes),
    }


def batching_gain(seconds: dict[int, float]) -> dict[int, float]:
    """Each batch size's throughput over the first one's, from the seconds a batch of each takes
    for the same work per sample: (B / B0) * t(B0) / t(B). The ceilings' scripts
    (benchmarks/matmul_ceiling.py, call_ceiling.py) state their gains in it."""
    ref = next(iter(seconds))
    return {b: (b / ref) * seconds[ref] / t for b, t in seconds.items()}


def _sample_ratios(figures: dict, batch_sizes: tuple[int, ...]) -> dict[str, float]:
    """The targets' ratios (issue 13) of whatever was timed: wall clock against stage 1 with
    the cache per batch size, and the tokens per second of every larger batch over batch 1."""
    out = {}
    for key, per in figures.items():
        base = per.get("stage1_cache", {}).get("seconds_per_sample")
        for name in ("two_stages", "two_stages_parallel", "stage1_no_cache", "ar_cache"):
            if base and name in per:
                out[f"{key}:{name}_over_stage1_cache"] = per[name]["seconds_per_sample"] / base
            stages = per.get(name, {}).get("stage_seconds_per_sample")
            if stages:  # within one run: no second run of stage 1 to subtract
                out[f"{key}:{name}_over_its_stage1"] = sum(stages) / stages[0]
    one = figures.get("batch1", {})
    for big in (f"batch{b}" for b in sorted(batch_sizes) if b > 1):
        for name, fig in figures[big].items():
            if name in one:
                out[f"{name}:tokens_per_s_{big}_over_batch1"] = (
                    fig["tokens_per_s"] / one[name]["tokens_per_s"]
                )
    return out
