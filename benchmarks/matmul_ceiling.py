"""The most that batching can gain stage 1 through its matmuls alone, on this machine: each
linear layer of a stage-1 call, timed at batch 1 and at larger batches, summed over the model.

A stage-1 call (block 4, one logit row per sample, as the first-hitting sampler issues)
multiplies 4 rows per sample through every layer's qkv, output and MLP weights, one row per
sample through the adaLN modulations and the vocabulary head. Batch B multiplies 4B rows
through the same weights. If a call were only these matmuls, batch B would give

    gain(B) = B * seconds(batch 1) / seconds(batch B)

times batch 1's tokens per second: the ceiling for `dind bench sample`'s batching ratio
before attention, the draws and Python. A bandwidth-bound batch 1 and a compute-bound batch B
set it; on a GPU it is far higher than on a CPU.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/matmul_ceiling.py --preset small \\
        --batches 1,16,32 --dtypes fp32,bf16
"""

import argparse
import statistics
import time

import torch

from dind.bench import batching_gain
from dind.cli_options import parse_list
from dind.config import SamplerConfig, preset
from dind.utils import check_writable_file, write_json

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--preset", default="small")
p.add_argument("--batches", default="1,16,32", help="batch sizes; the first is the reference")
p.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16")
p.add_argument("--repeats", type=int, default=20, help="calls timed per shape (median)")
p.add_argument("--out", default=None, help="write the figures here as JSON")
args = p.parse_args()

batches = parse_list(args.batches, int, "--batches")
dtypes = parse_list(args.dtypes, str, "--dtypes")
if not batches or min(batches) <= 0 or any(d not in PRECISIONS for d in dtypes) or not dtypes:
    raise SystemExit("error: --batches must be positive integers, --dtypes fp32 and/or bf16")
if args.out:
    check_writable_file(args.out)
cfg = preset(args.preset).model
d, bs = cfg.hidden_dim, SamplerConfig().stages[0]
# (in, out, rows per sample, times per call): the layers of one stage-1 call
layers = [
    (d, 3 * d, bs, cfg.n_blocks),  # qkv
    (d, d, bs, cfg.n_blocks),  # attention output
    (d, 4 * d, bs, cfg.n_blocks),  # MLP up
    (4 * d, d, bs, cfg.n_blocks),  # MLP down
    (cfg.cond_dim, 6 * d, 1, cfg.n_blocks),  # adaLN modulation
    (d, cfg.vocab_size, 1, 1),  # the vocabulary head, one logit row
]


def seconds(n_in: int, n_out: int, rows: int, dtype: torch.dtype) -> float:
    x = torch.randn(rows, n_in, dtype=dtype)
    w = torch.randn(n_out, n_in, dtype=dtype)
    torch.nn.functional.linear(x, w)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        torch.nn.functional.linear(x, w)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


figures = {"preset": args.preset, "threads": torch.get_num_threads(), "repeats": args.repeats,
           "layers": [{"in": i, "out": o, "rows_per_sample": r, "per_call": n}
                      for i, o, r, n in layers],
           "layer_s": {}, "call_s": {}, "gain": {}}  # fmt: skip
with torch.no_grad():
    for name in dtypes:
        dtype = PRECISIONS[name]
        each = {b: [seconds(i, o, r * b, dtype) for i, o, r, _ in layers] for b in batches}
        call = {b: sum(n * t for (*_, n), t in zip(layers, each[b], strict=True)) for b in batches}
        gain = batching_gain(call)
        figures["layer_s"][name] = {str(b): t for b, t in each.items()}
        figures["call_s"][name] = {str(b): s for b, s in call.items()}
        figures["gain"][name] = {str(b): g for b, g in gain.items()}
        cells = ", ".join(f"batch {b} {1e3 * call[b]:.2f} ms ({g:.2f}x)" for b, g in gain.items())
        print(f"{args.preset} {name}: a stage-1 call's matmuls {cells}")
if args.out:
    write_json(args.out, figures)
