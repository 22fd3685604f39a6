"""``make demo``: the main job on the embedded default, in a few minutes on 2 CPU cores.

It trains the tiny preset with mixed-scale training on the embedded Shakespeare + Milton
corpus (or reuses the finished run), prints the held-out NELBO before and after, then drafts
two sequences with block size 4 and revises them with one global pass (gamma = 0.5), showing
which tokens were remasked and what changed. Evaluation with a judge comes with the
evaluation issue.
"""

from __future__ import annotations

from pathlib import Path

from dind.checkpoint import load_checkpoint
from dind.config import tiny
from dind.sampler import SamplerConfig, sample, write_samples
from dind.show import render_sample
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

    ck = load_checkpoint(out)
    L = run.model.seq_len
    cfg = SamplerConfig(stages=(4, L), remask=(0.5,), length=L, seed=0)
    tok = ck.tokenizer
    samples = sample(ck.model, cfg, 2, 2, tok.bos_id, tok.mask_id)
    write_samples(out / "samples.jsonl", samples, tok, cfg)
    print(
        f"\ndraft (block 4) then one global pass (block {L}) over the 50% least confident "
        "tokens; remasked tokens struck through, changed ones in green:\n"
    )
    for s in samples:
        print(render_sample(s, tok, cfg.stages) + "\n")
    print(f"samples written to {out / 'samples.jsonl'}")
