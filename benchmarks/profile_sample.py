"""Where sampling's time goes: one batch under torch.profiler, the top ops by self time.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/profile_sample.py --preset small \\
        --length 512 --batch 16 [--stages 4,L --remask 0.5 --parallel 1,64 --refresh 8 \\
        --recompute delayed] [--dtype bf16]

A model of the preset's size with random weights, as ``dind bench sample`` times (the cost
of a call does not depend on the weights; a threshold rule's call count does). The profiler
adds overhead: read the shares, and take seconds from ``dind bench sample``.
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from dind.bench import random_model
from dind.cli_options import parse_list
from dind.config import SamplerConfig, parse_block_sizes
from dind.devices import sampling_precision
from dind.sampler import sample

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--preset", default="small")
p.add_argument("--length", type=int, default=512)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--stages", default="4", help="block sizes; L (or L/k) for the length")
p.add_argument("--remask", default="", help="gamma of each later stage")
p.add_argument("--parallel", default="", help="one rule per stage, as dind sample's")
p.add_argument("--refresh", type=int, default=None)
p.add_argument("--recompute", default="masked", help="with --refresh: masked or delayed")
p.add_argument("--dtype", default="auto", help="auto, fp32 or bf16 (as dind sample's)")
p.add_argument("--rows", type=int, default=25, help="ops to list")
args = p.parse_args()

L, B = args.length, args.batch
model = random_model(args.preset, L)
bos, mask = model.config.mask_id - 1, model.config.mask_id
scfg = SamplerConfig(
    stages=parse_block_sizes(args.stages, L),
    remask=parse_list(args.remask, float, "--remask"),
    parallel=parse_list(args.parallel, str, "--parallel"),
    refresh=args.refresh,
    recompute=args.recompute,
    length=L,
)
with torch.no_grad(), sampling_precision("cpu", args.dtype):
    sample(model, SamplerConfig(length=16), B, B, bos, mask)  # warm-up
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sample(model, scfg, B, B, bos, mask)
seconds = time.perf_counter() - t0
print(f"{args.preset}, L = {L}, batch {B}: {seconds:.1f} s under the profiler "
      f"({seconds / B:.2f} s per sample, {B * L / seconds:.1f} tokens/s)")  # fmt: skip
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
