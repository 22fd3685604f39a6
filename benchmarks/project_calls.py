"""Seconds per sample of the two `dind bench sample` settings too slow to run whole on a CPU
at the `small` size and batch 16, projected from timed denoiser calls of the shapes the
sampler issues, not measured end to end:

- ``two_stages`` (one token per call, gamma 0.5, block L): every refinement call is the same
  bidirectional pass over the L tokens with one logit row per sample, so the refinement costs
  floor(gamma * L) times one call; stage 1 (timed whole by `dind bench sample`) comes on top.
- ``stage1_no_cache``: block [s, s + 4) is denoised by 4 calls over the prefix [0, s + 4)
  under the block-causal mask, one logit row each; a call is timed at the first block's prefix
  and at ``--points`` more prefix lengths, and the sum over all L / 4 blocks is taken by
  linear interpolation between them.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/project_calls.py --preset small --batch 16

Check it where both are measured: at batch 1 the projection should land near `dind bench
sample --batch-sizes 1` (the script prints both parts so the comparison is direct).
"""

import argparse
import math
import statistics
import time

import numpy as np
import torch

from dind.bench import random_model
from dind.config import SamplerConfig
from dind.denoise import BlockView
from dind.utils import check_writable_file, write_json

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--preset", default="small")
p.add_argument("--length", type=int, default=1024)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--gamma", type=float, default=0.5)
p.add_argument("--points", type=int, default=8, help="prefix lengths timed without the cache")
p.add_argument("--repeats", type=int, default=3, help="calls timed per shape (median)")
p.add_argument("--out", default=None, help="write the figures here as JSON")
args = p.parse_args()

L, B, bs = args.length, args.batch, SamplerConfig().stages[0]  # stage 1's block
if args.out:
    check_writable_file(args.out)  # before minutes of timing
model = random_model(args.preset, L)
mask = model.config.mask_id
x = torch.randint(0, mask, (B, L))
index = torch.zeros(B, 1, dtype=torch.long)  # one logit row per sample, as one per call asks


def call_seconds(view: BlockView, start: int, end: int) -> float:
    view.logits(x, start, end, index=index)  # warm-up for this shape
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        view.logits(x, start, end, index=index)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


with torch.no_grad():
    full = call_seconds(BlockView(model, L, None), 0, L)
    calls = math.floor(args.gamma * L)
    nocache = BlockView(model, bs, None)
    ends = sorted({bs} | {round(L * (i + 1) / args.points / bs) * bs for i in range(args.points)})
    timed = {end: call_seconds(nocache, end - bs, end) for end in ends}
    ys = [timed[e] for e in ends]
    # bs calls per block, one per position; linear between the timed ends
    total = sum(bs * float(np.interp(end, ends, ys)) for end in range(bs, L + 1, bs))

figures = {
    "preset": args.preset, "length": L, "batch": B, "threads": torch.get_num_threads(),
    "gamma": args.gamma, "repeats": args.repeats,
    "refinement_call_s": full, "refinement_calls": calls,
    "two_stages_refinement_s_per_sample": calls * full / B,
    "stage1_no_cache_call_s": {str(e): timed[e] for e in ends},
    "stage1_no_cache_s_per_sample": total / B,
    "projected": True,
}  # fmt: skip
print(f"{args.preset}, L = {L}, batch {B}, {torch.get_num_threads()} threads (projected):")
print(f"  refinement call {full:.3f} s x {calls} calls = "
      f"{calls * full / B:.1f} s per sample on top of stage 1")  # fmt: skip
print(f"  stage 1 without the cache: {total / B:.1f} s per sample "
      f"(calls {ys[0]:.3f} s at prefix {ends[0]} .. {ys[-1]:.3f} s at {ends[-1]})")  # fmt: skip
if args.out:
    write_json(args.out, figures)
