"""``make demo``: the main job on the embedded default, in minutes on 2 CPU cores.

1. Train the tiny preset with mixed-scale training on the embedded Shakespeare + Milton
   corpus (or reuse the finished run) and print the held-out NELBO before and after.
2. Sample with stage 1 alone (block 4) and with two stages (4, then one global pass over the
   50% least confident tokens), the same seeds for both, so the drafts are identical.
3. Judge both with the default judge (SmolLM2, offline) and print the comparison, then show
   one draft-then-refine trajectory: remasked tokens struck through, changed ones in green.
"""

from __future__ import annotations

from pathlib import Path

from dind.checkpoint import load_checkpoint
from dind.config import tiny
from dind.evaluate import evaluate_samples
from dind.sampler import SamplerConfig, sample, write_samples
from dind.show import render_sample
from dind.train import read_metrics, train


def run_demo(
    out: Path, max_steps: int | None = None, num_samples: int = 16, judge: str = "smollm2"
) -> dict:
    run = tiny()
    if max_steps is not None:
        run.train.max_steps = max_steps
        run.train.eval_every = 0
    resume = (out / "checkpoint").exists()
    print(f"dind demo: tiny preset ({run.model.n_blocks} x {run.model.hidden_dim}, "
          f"L = {run.model.seq_len}), block sizes {list(run.train.block_dist.block_sizes)} "
          f"with probabilities {list(run.train.block_dist.probs)}, run folder {out}")  # fmt: skip
    train(run, out, resume=resume)
    evals = [m for m in read_metrics(out) if "val_nelbo" in m]
    first, last = evals[0], evals[-1]
    print(f"\n{'step':>6} {'held-out NELBO (nats/token)':>28} {'ppl bound':>10}")
    for m in (first, last):
        print(f"{m['step']:>6} {m['val_nelbo']:>28.4f} {m['val_ppl']:>10.2f}")

    ck = load_checkpoint(out)
    tok, L = ck.tokenizer, run.model.seq_len
    settings = {
        "stage 1 only (block 4)": SamplerConfig(stages=(4,), length=L),
        "two stages (4, then L; gamma 0.5, snapshot)": SamplerConfig(
            stages=(4, L), remask=(0.5,), length=L
        ),
    }
    from dind.judges import load_judge

    scorer = load_judge(judge)
    rows, trajectories = [], None
    for (name, cfg), file in zip(settings.items(), ("stage1", "two_stage"), strict=True):
        samples = sample(ck.model, cfg, num_samples, 8, tok.bos_id, tok.mask_id, progress=True)
        write_samples(out / f"samples_{file}.jsonl", samples, tok, cfg)
        records = [{"text": tok.decode(s.tokens[1:]), "nfe": s.nfe, "seconds": s.seconds}
                   for s in samples]  # fmt: skip
        rows.append((name, evaluate_samples(records, scorer, progress=True)["aggregate"]))
        if len(cfg.stages) > 1:
            trajectories = (samples, cfg)
    print(f"\nGenerative perplexity under {scorer.name} ({num_samples} samples each, same seeds):")
    print(f"{'setting':<46} {'Gen PPL':>9} {'entropy':>8} {'NFE':>6} {'s/sample':>9}")
    for name, a in rows:
        print(f"{name:<46} {a['gen_ppl_mean']:>9.1f} {a['entropy_mean']:>8.2f} "
              f"{a['nfe_mean']:>6.0f} {a['seconds_mean']:>9.3f}")  # fmt: skip
    samples, cfg = trajectories
    print("\nOne trajectory (remasked tokens struck through, changed ones in green):\n")
    print(render_sample(samples[0], tok, cfg.stages))
    print(f"\nsamples in {out}/samples_*.jsonl; rerun `make demo` to reuse the trained model")
    return {"nelbo_before": first["val_nelbo"], "nelbo_after": last["val_nelbo"],
            "comparison": dict(rows)}  # fmt: skip
