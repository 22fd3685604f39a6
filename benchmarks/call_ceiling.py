"""The most that batching can gain stage 1 through the model's calls alone, on this machine:
the forward passes a stage-1 block costs (its denoiser calls, the first of which also writes
the block before to the cache), timed at batch 1 and at larger batches against a KV cache
filled to several lengths, and summed over the stage. Nothing of the sampler runs: no draws,
no position picks, no Python bookkeeping.

With block b and one commit per call, a block starting at position S costs b denoiser calls
of one logit row each (the first-hitting sampler's call): the first of 2b rows (the block
before, written to the cache, and the block) against the S - b cached positions, the others
of b rows against the S cached ones. The script times both at the cache lengths
``--points`` spread over [0, L - b], interpolates linearly between them and sums
over the L / b blocks. Batch B then gives

    gain(B) = B * stage(batch 1) / stage(batch B)

times batch 1's tokens per second (on a GPU, if there is one): the ceiling of `dind bench
sample`'s stage-1 batching before the sampler's own work. Unlike benchmarks/matmul_ceiling.py
it includes attention over the cache, whose reads grow with the batch (each sample has its own
keys and values) while the weights' do not.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/call_ceiling.py --preset small \\
        --batches 1,16 --dtypes fp32,bf16
"""

import argparse
import statistics
import time

import numpy as np
import torch

from dind.attention import block_causal_mask
from dind.bench import batching_gain, random_model
from dind.cli_options import parse_list
from dind.config import SamplerConfig
from dind.devices import default_device, sampling_precision, synchronize
from dind.utils import check_writable_file, write_json

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--preset", default="small")
p.add_argument("--length", type=int, default=1024)
p.add_argument("--batches", default="1,16", help="batch sizes; the first is the reference")
p.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16")
p.add_argument("--points", type=int, default=5, help="cache lengths timed over [0, L - b]")
p.add_argument("--repeats", type=int, default=10, help="calls timed per shape (median)")
p.add_argument("--out", default=None, help="write the figures here as JSON")
args = p.parse_args()

batches = parse_list(args.batches, int, "--batches")
dtypes = parse_list(args.dtypes, str, "--dtypes")
b, L = SamplerConfig().stages[0], args.length
bad_dtypes = not dtypes or any(d not in ("fp32", "bf16") for d in dtypes)
if not batches or min(batches) <= 0 or bad_dtypes or args.points < 2 or L % b or 2 * b > L:
    raise SystemExit(f"error: --batches positive, --dtypes fp32 and/or bf16, --points at least "
                     f"2, --length a multiple of {b} (at least {2 * b})")  # fmt: skip
if args.out:
    check_writable_file(args.out)
device = default_device()
model = random_model(args.preset, L).to(device)
starts = np.linspace(0, L - b, args.points).round().astype(int) // b * b  # block starts
blocks = np.arange(0, L, b)  # every block's start


def median_seconds(fn) -> float:
    fn()  # warm-up
    times = []
    for _ in range(args.repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def block_seconds(batch: int, start: int, dtype: torch.dtype) -> float:
    """One block at ``start``: b denoiser calls, the first carrying the block before."""
    cache = model.new_kv_cache(batch, L, dtype=dtype)
    cache.length = start  # the cached keys' values do not change the time
    x = torch.randint(0, model.config.mask_id, (batch, b), device=device)
    pos = torch.arange(start, start + b, device=device)
    index = torch.zeros(batch, 1, dtype=torch.long, device=device)
    call = median_seconds(lambda: model(x, positions=pos, kv_cache=cache, logit_index=index))
    if start == 0:
        return b * call
    cache.length = start - b
    x2, pos2 = torch.cat([x, x], 1), torch.arange(start - b, start + b, device=device)
    mask = block_causal_mask(start + b, b, device, first_row=start - b)  # (2b, start + b)
    first = median_seconds(lambda: model(x2, positions=pos2, kv_cache=cache, mask=mask,
                                         logit_index=index + b))  # fmt: skip
    return first + (b - 1) * call


figures = {"preset": args.preset, "device": device, "length": L, "block": b,
           "threads": torch.get_num_threads(), "repeats": args.repeats,
           "starts": starts.tolist(), "block_s": {}, "stage_s": {}, "gain": {}}  # fmt: skip
with torch.no_grad():
    for name in dtypes:
        dtype = torch.bfloat16 if name == "bf16" else torch.float32
        with sampling_precision(device, name):
            each = {B: [block_seconds(B, int(s), dtype) for s in starts] for B in batches}
        stage = {B: float(np.interp(blocks, starts, t).sum()) for B, t in each.items()}
        gain = batching_gain(stage)
        figures["block_s"][name] = {str(B): t for B, t in each.items()}
        figures["stage_s"][name] = {str(B): s for B, s in stage.items()}
        figures["gain"][name] = {str(B): g for B, g in gain.items()}
        cells = ", ".join(f"batch {B} {stage[B]:.1f} s ({g:.2f}x)" for B, g in gain.items())
        print(f"{args.preset} {name}, L = {L}: stage 1's model calls {cells}")
if args.out:
    write_json(args.out, figures)
