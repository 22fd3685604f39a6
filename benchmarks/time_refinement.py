"""Seconds of one refinement stage alone (no stage 1): a random draft of length L with the
fraction gamma of each row masked, refined in one block of L, at each batch size. It isolates
what `dind bench sample`'s two-stage rows add to stage 1, without stage 1's run-to-run spread.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/time_refinement.py --preset small \\
        --batch 16 --parallel 64 --refresh 8 --recompute delayed [--dtype bf16]

Random weights as `dind bench sample`; the draft and the masked positions are seeded, so two
versions of the code (PYTHONPATH=<worktree>/src) time the same work.
"""

import argparse
import time

import torch

from dind.bench import random_model
from dind.config import SamplerConfig
from dind.denoise import DenoiseSettings
from dind.devices import default_device, resolve_dtype, sampling_precision, synchronize
from dind.errors import DindError
from dind.parallel import Parallel
from dind.sampler import run_stage
from dind.utils import check_writable_file, write_json

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--preset", default="small")
p.add_argument("--length", type=int, default=1024)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--gamma", type=float, default=0.5)
p.add_argument("--parallel", default="64", help="the refinement's rule, as --parallel's")
p.add_argument("--refresh", type=int, default=None)
p.add_argument("--recompute", default="masked")
p.add_argument("--dtype", default="fp32", help="as dind sample's --dtype")
p.add_argument("--repeats", type=int, default=1)
p.add_argument("--out", default=None, help="write the figures here as JSON")
args = p.parse_args()
try:  # the sampler's own checks of the rule, cache and precision, before any work
    SamplerConfig(stages=(4, 8), remask=(args.gamma,), length=8, parallel=("1", args.parallel),
                  refresh=args.refresh, recompute=args.recompute)  # fmt: skip
    resolve_dtype(args.dtype, default_device())
except DindError as e:
    raise SystemExit(f"error: {e}") from None
if args.out:
    check_writable_file(args.out)

L, B, device = args.length, args.batch, default_device()
model = random_model(args.preset, L).to(device)
mask = model.config.mask_id
g = torch.Generator().manual_seed(0)
draft = torch.randint(0, mask - 1, (B, L), generator=g)
for r in range(B):
    draft[r, torch.randperm(L, generator=g)[: int(args.gamma * L)]] = mask
draft = draft.to(device)
settings = DenoiseSettings(mask_id=mask, parallel=Parallel.parse(args.parallel))


def refine(x: torch.Tensor) -> None:
    conf = torch.zeros(x.shape, dtype=torch.float64, device=device)
    gens = [torch.Generator(device).manual_seed(i) for i in range(len(x))]
    run_stage(model, x, conf, L, settings, gens, True, L, L // 2, refresh=args.refresh,
              recompute=args.recompute)  # fmt: skip


with torch.no_grad(), sampling_precision(device, args.dtype):
    refine(draft[:1].clone())  # warm-up: one row
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        refine(draft.clone())
    synchronize(device)
    seconds = (time.perf_counter() - t0) / args.repeats
rule = f"--parallel {args.parallel}, refresh {args.refresh} {args.recompute}, {args.dtype}"
print(f"{args.preset}, L = {L}, batch {B}, {rule}: {seconds:.2f} s, "
      f"{seconds / B:.3f} s per sample")  # fmt: skip
if args.out:
    write_json(args.out, {**vars(args), "device": device, "threads": torch.get_num_threads(),
                          "seconds": seconds, "seconds_per_sample": seconds / B})  # fmt: skip
