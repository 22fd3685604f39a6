"""The ``dind`` command line: ``train``, ``bench``, ``demo``.

Every problem a user can cause surfaces as ``error: <one line>`` on stderr and exit code 2;
no traceback, and nothing half-written that looks whole.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dind.errors import DindError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Diffusion in Diffusion: draft with small blocks, revise globally.",
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (figures go to dev/LOG.md).")
app.add_typer(bench_app, name="bench")


def _build_run(
    preset_name,
    max_steps,
    block_sizes,
    block_probs,
    objective,
    corpus,
    tokenizer,
    batch_size,
    grad_accum,
    lr,
    warmup,
    eval_every,
    seed,
    compile_,
    seq_len,
    attn_backend,
):
    from dind.config import BlockSizeDistribution, preset

    run = preset(preset_name)
    tc = run.train
    updates = {
        "max_steps": max_steps,
        "objective": objective,
        "corpus": corpus,
        "tokenizer": tokenizer,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "lr": lr,
        "warmup_steps": warmup,
        "eval_every": eval_every,
        "seed": seed,
    }
    updates = {k: v for k, v in updates.items() if v is not None}
    if compile_:
        updates["compile"] = True
    if block_sizes is not None:
        updates["block_dist"] = BlockSizeDistribution.parse(block_sizes, block_probs)
    elif block_probs is not None:
        updates["block_dist"] = BlockSizeDistribution.parse(
            ",".join(map(str, tc.block_dist.block_sizes)), block_probs
        )
    run.train = dataclasses.replace(tc, **updates)
    model_updates = {}
    if seq_len is not None:
        model_updates["seq_len"] = seq_len
    if attn_backend is not None:
        model_updates["attn_backend"] = attn_backend
    if model_updates:
        run.model = dataclasses.replace(run.model, **model_updates)
    return run


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run folder (metrics, checkpoint, tokenizer).")],
    preset: Annotated[str, typer.Option(help="tiny | small")] = "tiny",
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    block_sizes: Annotated[
        str | None,
        typer.Option(help="Mixed-scale block sizes, e.g. 4,1024 (each must divide L)."),
    ] = None,
    block_probs: Annotated[
        str | None, typer.Option(help="Their probabilities, e.g. 0.9,0.1 (default uniform).")
    ] = None,
    objective: Annotated[str | None, typer.Option(help="bd3 | ar")] = None,
    corpus: Annotated[
        str | None, typer.Option(help="'shakespeare' or comma-separated text files/folders.")
    ] = None,
    tokenizer: Annotated[str | None, typer.Option(help="gpt2 | bpe")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Sequence length L.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per device.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    warmup: Annotated[int | None, typer.Option(help="Warmup steps.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Validate/save interval.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    attn_backend: Annotated[str | None, typer.Option(help="sdpa | flex (CUDA)")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    init_from: Annotated[
        Path | None, typer.Option(help="Fine-tune from this checkpoint or run folder.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a block diffusion model (mixed-scale) or the AR baseline."""
    from dind.train import train as run_train

    run = _build_run(
        preset,
        max_steps,
        block_sizes,
        block_probs,
        objective,
        corpus,
        tokenizer,
        batch_size,
        grad_accum,
        lr,
        warmup,
        eval_every,
        seed,
        compile,
        seq_len,
        attn_backend,
    )
    last = run_train(run, out, resume=resume, init_from=init_from, progress=progress)
    typer.echo(json.dumps(last))


@bench_app.command("train")
def bench_train(
    preset: Annotated[str, typer.Option(help="Model size to time.")] = "tiny",
    steps: Annotated[int, typer.Option(help="Timed steps per objective.")] = 10,
    batch_size: Annotated[int | None, typer.Option()] = None,
    block_sizes: Annotated[str, typer.Option(help="P_B of the BD3 objective.")] = "4,L",
    block_probs: Annotated[str, typer.Option()] = "0.9,0.1",
    attn_backend: Annotated[str, typer.Option(help="sdpa | flex")] = "sdpa",
    out: Annotated[Path | None, typer.Option(help="Also write the figures as JSON.")] = None,
) -> None:
    """Seconds per training step, mixed-scale BD3 vs AR, same model and tokens."""
    from dind.bench import bench_train as run_bench

    result = run_bench(preset, steps, batch_size, block_sizes, block_probs, attn_backend)
    typer.echo(json.dumps(result, indent=2))
    if out is not None:
        out.write_text(json.dumps(result, indent=2))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run folder for the demo.")] = Path("runs/demo"),
    max_steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
) -> None:
    """Train the tiny preset on the embedded corpus; print validation NELBO before/after."""
    from dind.demo import run_demo

    run_demo(out, max_steps)


def main() -> None:
    try:
        app()
    except DindError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
