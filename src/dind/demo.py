"""``make demo``: the main job on the embedded default, in a few minutes on 2 CPU cores.

Until the sampler lands it trains the tiny preset with mixed-scale training on the embedded
Shakespeare + Milton corpus and prints the held-out NELBO before and after.
"""

from __future__ import annotations

from pathlib import Path

from dind.config import tiny
from dind.train import read_metrics, train


def run_demo(out: Path, max_steps: int | None = None) -> None:
    run = tiny()
    if max_steps is not None:
        run.train.max_steps = max_steps
    resume = (out / "checkpoint").exists()
    print(
        f"dind demo: tiny preset ({run.model.n_blocks} x {run.model.hidden_dim}, "
        f"L = {run.model.seq_len}), block sizes {list(run.train.block_dist.block_sizes)} "
        f"with probabilities {list(run.train.block_dist.probs)}, run folder {out}"
    )
    train(run, out, resume=resume)
    evals = [m for m in read_metrics(out) if "val_nelbo" in m]
    first, last = evals[0], evals[-1]
    print()
    print(f"{'step':>6} {'val NELBO (nats/token)':>24} {'ppl bound':>10}")
    for m in (first, last):
        print(f"{m['step']:>6} {m['val_nelbo']:>24.4f} {m['val_ppl']:>10.2f}")
    sizes = [k for k in last if k.startswith("val_nelbo_bs")]
    print(
        "held-out NELBO by block size after training: "
        + ", ".join(f"B={k[12:]}: {last[k]:.4f}" for k in sizes)
    )
