"""The ``dind`` command line: ``train``, ``sample``, ``eval``, ``sweep``, ``data``, ``bench``,
``demo``.

Every problem a user can cause surfaces as ``error: <one line>`` on stderr and exit code 2
(a ``DindError``, or an ``OSError``: the path and the reason); no traceback, and nothing
half-written that looks whole. Output paths are checked before the work that fills them.
Ctrl-C prints ``interrupted`` and exits 130.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from dind.errors import DindError
from dind.utils import check_writable_dir, check_writable_file, write_json

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Diffusion in Diffusion: draft with small blocks, revise globally.",
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (figures go to dev/LOG.md).")
app.add_typer(bench_app, name="bench")


def _build_run(
    preset_name: str,
    train_updates: dict,
    model_updates: dict,
    block_sizes: str | None,
    block_probs: str | None,
    noise_updates: dict | None = None,
):
    """The preset, with the options the user gave (None means keep the preset's value)."""
    from dind.config import BlockSizeDistribution, preset

    run = preset(preset_name)
    updates = {k: v for k, v in train_updates.items() if v is not None}
    noise = {k: v for k, v in (noise_updates or {}).items() if v is not None}
    if noise:
        updates["noise"] = dataclasses.replace(run.train.noise, **noise)
    if block_sizes is not None or block_probs is not None:
        sizes = block_sizes or ",".join(map(str, run.train.block_dist.block_sizes))
        seq_len = model_updates.get("seq_len") or run.model.seq_len
        updates["block_dist"] = BlockSizeDistribution.parse(sizes, block_probs, seq_len)
    run.train = dataclasses.replace(run.train, **updates)
    model = {k: v for k, v in model_updates.items() if v is not None}
    if model:
        run.model = dataclasses.replace(run.model, **model)
    return run


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run folder (metrics, checkpoint, tokenizer).")],
    preset: Annotated[str, typer.Option(help="tiny | base | small")] = "tiny",
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    block_sizes: Annotated[
        str | None,
        typer.Option(help="Mixed-scale block sizes, e.g. 4,L or 4,1024 (each must divide L)."),
    ] = None,
    block_probs: Annotated[
        str | None, typer.Option(help="Their probabilities, e.g. 0.9,0.1 (default uniform).")
    ] = None,
    objective: Annotated[str | None, typer.Option(help="bd3 | ar")] = None,
    corpus: Annotated[
        str | None,
        typer.Option(help="'shakespeare', 'english' or comma-separated text files/folders."),
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
    noise_interval: Annotated[
        list[str] | None,
        typer.Option(
            help="A block size's clipped noise interval, repeatable: 128:0.001,1. "
            "A given interval is kept; the search picks the others."
        ),
    ] = None,
    clip_search: Annotated[
        bool | None, typer.Option(help="Search each block size's interval at validation.")
    ] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    init_from: Annotated[
        str | None,
        typer.Option(help="Fine-tune from a checkpoint, run folder, BD3-LM folder or hub id."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a block diffusion model (mixed-scale) or the AR baseline."""
    from dind.train import train as run_train

    check_writable_dir(out)
    noise_updates = {"intervals": _parse_intervals(noise_interval) if noise_interval else None,
                     "clip_search": clip_search}  # fmt: skip
    run = _build_run(
        preset,
        dict(max_steps=max_steps, objective=objective, corpus=corpus, tokenizer=tokenizer,
             batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup,
             eval_every=eval_every, seed=seed, compile=compile or None),
        dict(seq_len=seq_len, attn_backend=attn_backend),
        block_sizes,
        block_probs,
        noise_updates,
    )  # fmt: skip
    last = run_train(run, out, resume=resume, init_from=init_from, progress=progress)
    typer.echo(json.dumps(last))


def _parse_intervals(specs: list[str]) -> dict[int, tuple[float, float]]:
    """``["4:0.5,1.0", "128:0.001,1"]`` -> {4: (0.5, 1.0), 128: (0.001, 1.0)}."""
    out = {}
    for spec in specs:
        size, _, bounds = spec.partition(":")
        try:
            lo, hi = (float(v) for v in bounds.split(","))
            out[int(size)] = (lo, hi)
        except ValueError:
            raise DindError(f"--noise-interval must read SIZE:BETA,OMEGA, got {spec!r}") from None
    return out


def _parse_list(text: str, kind, flag: str) -> tuple:
    items = [v.strip() for v in text.split(",") if v.strip()]
    for v in items:
        try:
            kind(v)
        except ValueError:
            what = {int: "integers", float: "numbers"}.get(kind, "values")
            raise DindError(f"{flag} must be a comma-separated list of {what}: {v!r} in "
                            f"{text!r} is not one") from None  # fmt: skip
    return tuple(kind(v) for v in items)


@app.command()
def sample(
    checkpoint: Annotated[
        str, typer.Option(help="Checkpoint or run folder, a BD3-LM folder, or a hub id.")
    ],
    out: Annotated[Path, typer.Option(help="JSONL file, one line per sample.")],
    stages: Annotated[str, typer.Option(help="Block size per stage, e.g. 4,1024.")] = "4",
    remask: Annotated[
        str | None, typer.Option(help="gamma per stage after the first, e.g. 0.5 or 0.25,0.5.")
    ] = None,
    remask_policy: Annotated[str, typer.Option(help="snapshot | posthoc | random")] = "snapshot",
    num_samples: Annotated[int, typer.Option(help="Sequences to draw.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Sequences per batch.")] = 4,
    length: Annotated[
        int | None, typer.Option(help="L (default: the model's; longer slides a window).")
    ] = None,
    window_stride: Annotated[
        int | None,
        typer.Option(
            help="Past the context: step between the windows of a block >= the "
            "context (default context/2; the context: no overlap)."
        ),
    ] = None,
    top_p: Annotated[float, typer.Option(help="Nucleus mass.")] = 0.9,
    nucleus: Annotated[
        str, typer.Option(help="bd3lm (BD3-LM's nucleus, the paper's) | hf (one token more).")
    ] = "bd3lm",
    seed: Annotated[int, typer.Option()] = 0,
    sampler: Annotated[str, typer.Option(help="first_hitting | ancestral")] = "first_hitting",
    steps: Annotated[int | None, typer.Option(help="T per block (ancestral).")] = None,
    confidence: Annotated[str, typer.Option(help="model | nucleus")] = "model",
    kv_cache: Annotated[bool, typer.Option(help="Use the KV cache.")] = True,
    prompt: Annotated[str | None, typer.Option(help="Fixed prefix text.")] = None,
    retry_low_entropy: Annotated[
        bool,
        typer.Option(
            "--retry-low-entropy",
            help="BD3-LM's protocol: redraw a stage-1 draft with a 256-token window below 4 "
            "nats of unigram entropy (at most 10 draws).",
        ),
    ] = False,
    show: Annotated[bool, typer.Option("--show", help="Render draft and revision.")] = False,
    dtype: Annotated[
        str,
        typer.Option(
            help="Precision of the model's passes: auto (bf16 on CUDA, fp32 on the CPU) | "
            "bf16 | tf32 (CUDA) | fp32."
        ),
    ] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Draft-then-refine sampling (Algorithm 1) with snapshot-confidence remasking."""
    from dind.checkpoint import load_checkpoint
    from dind.devices import default_device, resolve_dtype, sampling_precision
    from dind.evaluate import BD3LM_ENTROPY_WINDOW
    from dind.sampler import SamplerConfig, check_counts
    from dind.sampler import sample as run_sample
    from dind.samples import write_samples

    check_writable_file(out)
    check_counts(num_samples, batch_size)
    if any(v.strip().upper().startswith("L") for v in stages.split(",")):
        raise DindError(f"--stages takes block sizes in tokens, e.g. 4,1024, got {stages!r}: "
                        "write the length itself for L (the sweeps' L and L/k shorthands "
                        "stand for their --length)")  # fmt: skip
    block_sizes = _parse_list(stages, int, "--stages")
    ratios = _parse_list(remask, float, "--remask") if remask else ()
    device = default_device()
    resolve_dtype(dtype, device)  # a bad --dtype fails before the checkpoint loads
    ck = load_checkpoint(checkpoint, device)
    cfg = SamplerConfig(stages=block_sizes, remask=ratios, remask_policy=remask_policy,
                        length=ck.run_config.model.seq_len if length is None else length,
                        top_p=top_p, nucleus=nucleus, sampler=sampler, steps=steps,
                        kv_cache=kv_cache, confidence=confidence, seed=seed,
                        retry_low_entropy=retry_low_entropy,
                        window_stride=window_stride)  # fmt: skip
    tok = ck.tokenizer
    prompt_ids = tok.encode(prompt) if prompt else None
    with sampling_precision(device, dtype):
        samples = run_sample(ck.model, cfg, num_samples, batch_size, tok.bos_id, tok.mask_id,
                             prompt_ids, progress=progress)  # fmt: skip
    write_samples(out, samples, tok, cfg)
    if show:
        from dind.show import render_sample

        for s in samples:
            typer.echo(render_sample(s, tok, cfg.stages) + "\n")
    per_stage = [sum(s.nfe[k] for s in samples) / len(samples) for k in range(len(cfg.stages))]
    redrawn = ""
    if retry_low_entropy:
        redrawn = f"; {sum(s.redraws for s in samples)} low-entropy redraws"
        if cfg.length <= BD3LM_ENTROPY_WINDOW:
            redrawn += f" (the rule checks only sequences longer than {BD3LM_ENTROPY_WINDOW})"
    typer.echo(
        f"wrote {len(samples)} samples to {out}; mean NFE per sample {sum(per_stage):.0f} "
        f"({' + '.join(f'{n:.0f}' for n in per_stage)} by stage){redrawn}"
    )


@app.command("eval")
def eval_(
    samples: Annotated[Path | None, typer.Argument(help="A dind samples JSONL file.")] = None,
    judge: Annotated[
        str,
        typer.Option(
            help="smollm2 | oracle[:DIR] | a dind AR run | a Hugging Face causal LM id or folder."
        ),
    ] = "smollm2",
    out: Annotated[Path | None, typer.Option(help="Write metrics JSON here.")] = None,
    entropy_threshold: Annotated[
        float,
        typer.Option(
            help="Report the share of samples whose unigram entropy (nats) is below this."
        ),
    ] = 4.0,
    judge_max_tokens: Annotated[
        int | None,
        typer.Option(
            help="Score only the first N judge ids, its BOS included (BD3-LM: N = L); "
            "default: the whole text."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Held-out NELBO of this checkpoint instead of judging samples."),
    ] = None,
    data: Annotated[
        str, typer.Option(help="held-out (the run's corpus) or a corpus.")
    ] = "held-out",
    block_size: Annotated[int | None, typer.Option(help="Block size for the NELBO.")] = None,
    max_batches: Annotated[int | None, typer.Option(help="Cap on held-out batches.")] = None,
    mauve: Annotated[
        bool,
        typer.Option(
            "--mauve",
            help="Also MAUVE of the samples against held-out text of --reference, on the "
            "judge's last-token hidden states.",
        ),
    ] = False,
    reference: Annotated[
        str | None,
        typer.Option(
            help="MAUVE's reference: a dind run (the corpus it records) or a corpus; its "
            "held-out documents are used."
        ),
    ] = None,
    mauve_seeds: Annotated[
        str, typer.Option(help="MAUVE seeds (reference draw and k-means); mean and std over them.")
    ] = "0,1,2",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Generative perplexity of samples under a judge (and MAUVE with --mauve), or held-out
    NELBO of a checkpoint."""
    from dind import evaluate

    if samples is not None and checkpoint is not None:
        raise DindError(f"give a samples file to judge or --checkpoint for held-out NELBO, not "
                        f"both ({samples} and --checkpoint {checkpoint})")  # fmt: skip
    if max_batches is not None and max_batches < 1:
        raise DindError(f"--max-batches must be at least 1 (leave it out for all), got "
                        f"{max_batches}")  # fmt: skip
    if out is not None:
        check_writable_file(out)
    if mauve and checkpoint is not None:
        raise DindError("--mauve scores samples: drop --checkpoint")
    if mauve and reference is None:
        raise DindError("--mauve needs --reference: a dind run (its corpus) or a corpus")
    seeds = _parse_list(mauve_seeds, int, "--mauve-seeds")
    if checkpoint is not None:
        result = evaluate.heldout_nelbo(checkpoint, block_size, data, max_batches,
                                        progress=progress)  # fmt: skip
        typer.echo(f"held-out {'NLL' if result['objective'] == 'ar' else 'NELBO'} "
                   f"{result['nelbo']:.4f} nats/token (ppl <= {result['ppl_bound']:.2f}) over "
                   f"{result['tokens']} tokens, block size {result['block_size']}")  # fmt: skip
    else:
        if samples is None:
            raise DindError("give a samples file, or --checkpoint for held-out NELBO")
        from dind.samples import read_samples

        records = read_samples(samples)  # validate before loading a judge
        from dind.devices import default_device
        from dind.judges import load_judge

        scorer = load_judge(judge, default_device(), judge_max_tokens)
        held_out = None
        if mauve:  # every check before the long Gen PPL loop
            from dind import mauve as mauve_lib

            mauve_lib.check_judge(scorer)
            if not seeds:
                raise DindError("--mauve-seeds names no seed")
            held_out = mauve_lib.held_out_text(reference, scorer)
        result = evaluate.evaluate_samples(records, scorer, entropy_threshold, progress)
        result["samples_file"] = str(samples)
        result["judge_max_tokens"] = judge_max_tokens
        if held_out is not None:
            texts = [r["text"] for r in records]
            m = mauve_lib.evaluate_mauve(texts, scorer, held_out, seeds, progress)
            result["aggregate"]["mauve"] = m["mauve"]
            result["aggregate"]["mauve_std"] = m["mauve_std"]
            result["mauve"] = m
        typer.echo(evaluate.format_table(result))
    if out is not None:
        write_json(out, result)


@app.command()
def export(
    src: Annotated[str, typer.Argument(help="dind run/checkpoint, BD3-LM folder or hub id.")],
    dest: Annotated[Path, typer.Argument(help="New folder in BD3-LM's layout.")],
) -> None:
    """Write a checkpoint as a folder BD3-LM's loading code accepts."""
    from dind.checkpoint import export_checkpoint

    typer.echo(f"exported {src} to {export_checkpoint(src, dest)}")


data_app = typer.Typer(no_args_is_help=True, help="Data sets dind builds.")
app.add_typer(data_app, name="data")


@data_app.command("synthetic")
def data_synthetic(
    out: Annotated[
        Path | None, typer.Option(help="Folder (default: the cache's corpora/synthetic).")
    ] = None,
    n_docs: Annotated[int, typer.Option(help="Documents.")] = 400,
    doc_length: Annotated[int, typer.Option(help="Words per document.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of the documents.")] = 0,
    generator_seed: Annotated[int, typer.Option(help="Seed of the generator.")] = 0,
) -> None:
    """The exact-likelihood benchmark: documents from a mixture of HMMs (latent per document)."""
    from dind import synthetic

    folder = check_writable_dir(out) if out else synthetic.default_corpus_dir()
    synthetic.write_corpus(folder, n_docs, doc_length, seed, generator_seed)
    g = synthetic.HMMMixture.load(folder / "generator.json")
    rate = g.entropy_rate(doc_length, n_samples=50)
    typer.echo(
        f"wrote {n_docs} documents to {folder / 'docs'}; generator entropy rate {rate:.4f} "
        f"nats/word at {doc_length} words: no model's held-out cross-entropy can beat it; "
        f"its own samples score Gen PPL ~ {math.exp(rate):.2f} under --judge oracle:{folder} "
        "(generated text scores lower only by being less diverse than the generator)"
    )


@data_app.command("openwebtext")
def data_openwebtext(
    out: Annotated[Path, typer.Option(help="Folder for train.bin, val.bin, meta.json.")],
    source: Annotated[
        str,
        typer.Option(
            help="'openwebtext' (the hub) or local .jsonl/.parquet/.txt files or a folder."
        ),
    ] = "openwebtext",
    seq_len: Annotated[int, typer.Option(help="Sequence length L training will cut.")] = 1024,
    holdout: Annotated[int, typer.Option(help="Last documents held out.")] = 100_000,
    num_proc: Annotated[int | None, typer.Option(help="Tokenizer worker processes.")] = None,
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "text",
) -> None:
    """BD3-LM's OpenWebText pipeline: GPT-2 tokens, EOS after each document, uint16 files."""
    from dind.owt import prepare_openwebtext

    check_writable_dir(out)
    meta = prepare_openwebtext(source, out, seq_len, holdout, num_proc, text_field)
    typer.echo(f"wrote {out}: {meta['n_tokens']['train']} training and "
               f"{meta['n_tokens']['val']} held-out tokens; train with --corpus {out} "
               "--tokenizer gpt2")  # fmt: skip


@data_app.command("english")
def data_english(
    tokens: Annotated[bool, typer.Option(help="Count each source's GPT-2 tokens.")] = True,
    bpe_vocab_size: Annotated[
        int | None,
        typer.Option(help="Also count tokens of a BPE of this size trained on the training part."),
    ] = None,
) -> None:
    """Fetch and cache the `english` corpus (once) and print its sources: documents, tokens,
    licence."""
    from dind.english import format_table, load_english, token_counts
    from dind.tokenizer import gpt2_tokenizer, train_bpe

    english = load_english()
    counts = {}
    if tokens:
        counts["GPT-2 tokens"] = token_counts(english, gpt2_tokenizer())
    if bpe_vocab_size:
        bpe = train_bpe(english.corpus.train_docs, bpe_vocab_size)
        counts[f"BPE-{bpe_vocab_size} tokens"] = token_counts(english, bpe)
    typer.echo(format_table(english, counts))


def _check_positive(*options: tuple[str, int | None]) -> None:
    for flag, value in options:
        if value is not None and value < 1:
            raise DindError(f"{flag} must be positive, got {value}")


@bench_app.command("sample")
def bench_sample(
    length: Annotated[int, typer.Option(help="L.")] = 256,
    preset: Annotated[str, typer.Option(help="Model size.")] = "tiny",
    num_samples: Annotated[int, typer.Option(help="Samples per timing.")] = 2,
    dtype: Annotated[str, typer.Option(help="auto | bf16 | tf32 | fp32, as dind sample.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Also write JSON.")] = None,
) -> None:
    """Seconds per sample: stage 1 with/without cache, two stages, AR decoding."""
    from dind.bench import bench_sample as run_bench

    _check_positive(("--length", length), ("--num-samples", num_samples))
    if out is not None:
        check_writable_file(out)
    result = run_bench(preset, length, num_samples, dtype)
    typer.echo(json.dumps(result, indent=2))
    if out is not None:
        write_json(out, result)


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

    _check_positive(("--steps", steps), ("--batch-size", batch_size))
    if out is not None:
        check_writable_file(out)
    result = run_bench(preset, steps, batch_size, block_sizes, block_probs, attn_backend)
    typer.echo(json.dumps(result, indent=2))
    if out is not None:
        write_json(out, result)


sweep_app = typer.Typer(
    no_args_is_help=True,
    help="The paper's ablations over any checkpoint: CSV (per seed and summary), PNG, JSON.",
)
app.add_typer(sweep_app, name="sweep")

SeedsOpt = Annotated[str, typer.Option(help="Seed list; the spread over seeds is reported.")]
SamplesOpt = Annotated[int, typer.Option(help="Samples per setting and seed.")]
JudgeOpt = Annotated[str, typer.Option(help="smollm2 | oracle[:DIR] | AR run | HF model.")]
CheckpointOpt = Annotated[str, typer.Option(help="Checkpoint, run folder, BD3-LM folder/id.")]
OutOpt = Annotated[Path, typer.Option(help="Folder for the CSVs, PNG, JSON and samples.")]
Stage1Opt = Annotated[int, typer.Option(help="Stage-1 (draft) block size.")]
BatchOpt = Annotated[int, typer.Option(help="Sequences per batch.")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus mass.")]
NucleusOpt = Annotated[str, typer.Option(help="Nucleus rule: bd3lm (BD3-LM's) | hf.")]
LengthOpt = Annotated[
    int | None, typer.Option(help="L (default: the model's; longer slides a window).")
]
StrideOpt = Annotated[
    int | None, typer.Option(help="Window stride past the context (default context/2).")
]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]
BlockOpt = Annotated[str, typer.Option(help="Stage-2 block size (L allowed).")]
GammaOpt = Annotated[float, typer.Option(help="Remask ratio.")]
RetryOpt = Annotated[
    bool,
    typer.Option("--retry-low-entropy", help="Redraw low-entropy drafts (BD3-LM's protocol)."),
]
JudgeMaxOpt = Annotated[
    int | None, typer.Option(help="Judge only the first N ids, BOS included (BD3-LM: N = L).")
]
SamplesFromOpt = Annotated[
    Path | None,
    typer.Option(help="Judge the samples an earlier sweep of this grid saved in that output "
                 "folder instead of drawing (one draw, several judges)."),
]  # fmt: skip


def _sweep_options(seeds, num_samples, batch_size, judge, top_p, nucleus, stage1, progress,
                   retry_low_entropy, judge_max_tokens, window_stride=None,
                   samples_from=None):  # fmt: skip
    from dind.grid import SweepOptions

    return SweepOptions(seeds=_parse_list(seeds, int, "--seeds"), num_samples=num_samples,
                        batch_size=batch_size, judge=judge, top_p=top_p, nucleus=nucleus,
                        stage1=stage1, progress=progress, retry_low_entropy=retry_low_entropy,
                        judge_max_tokens=judge_max_tokens,
                        window_stride=window_stride, samples_from=samples_from)  # fmt: skip


def _report_sweep(result) -> None:
    from dind.results import format_summary

    typer.echo(format_summary(result.summary, result.judge))
    typer.echo("wrote " + ", ".join(str(p) for p in result.files.values()))


@sweep_app.command("gamma")
def sweep_gamma(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    gammas: Annotated[str, typer.Option(help="Remask ratios.")] = "0.1,0.25,0.5,0.75,1.0",
    block_sizes: Annotated[
        str, typer.Option(help="Stage-2 block sizes; L and L/k allowed.")
    ] = "16,L/4,L",
    policy: Annotated[str, typer.Option(help="snapshot | posthoc | random")] = "snapshot",
    seeds: SeedsOpt = "0,1,2",
    num_samples: SamplesOpt = 8,
    batch_size: BatchOpt = 8,
    judge: JudgeOpt = "smollm2",
    top_p: TopPOpt = 0.9,
    nucleus: NucleusOpt = "bd3lm",
    stage1: Stage1Opt = 4,
    length: LengthOpt = None,
    window_stride: StrideOpt = None,
    progress: ProgressOpt = True,
    retry_low_entropy: RetryOpt = False,
    judge_max_tokens: JudgeMaxOpt = None,
    samples_from: SamplesFromOpt = None,
) -> None:
    """Figure 2: Gen PPL against gamma for several stage-2 block sizes, stage 1 as reference."""
    from dind import grid, sweep
    from dind.config import parse_block_sizes

    check_writable_dir(out)
    opts = _sweep_options(seeds, num_samples, batch_size, judge, top_p, nucleus, stage1, progress,
                          retry_low_entropy, judge_max_tokens, window_stride,
                          samples_from)  # fmt: skip
    ratios = _parse_list(gammas, float, "--gammas")

    def build(L):
        return grid.gamma_settings(L, ratios, parse_block_sizes(block_sizes, L), opts, policy)

    _report_sweep(sweep.run_sampling_sweep("gamma", checkpoint, out, opts, build, length))


@sweep_app.command("policy")
def sweep_policy(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    gamma: GammaOpt = 0.5,
    block_size: BlockOpt = "L",
    policies: Annotated[str, typer.Option()] = "snapshot,posthoc,random",
    seeds: SeedsOpt = "0,1,2",
    num_samples: SamplesOpt = 8,
    batch_size: BatchOpt = 8,
    judge: JudgeOpt = "smollm2",
    top_p: TopPOpt = 0.9,
    nucleus: NucleusOpt = "bd3lm",
    stage1: Stage1Opt = 4,
    length: LengthOpt = None,
    window_stride: StrideOpt = None,
    progress: ProgressOpt = True,
    retry_low_entropy: RetryOpt = False,
    judge_max_tokens: JudgeMaxOpt = None,
    samples_from: SamplesFromOpt = None,
) -> None:
    """Table 2: snapshot, post-hoc and random remasking at one (block size, gamma)."""
    from dind import grid, sweep

    check_writable_dir(out)
    opts = _sweep_options(seeds, num_samples, batch_size, judge, top_p, nucleus, stage1, progress,
                          retry_low_entropy, judge_max_tokens, window_stride,
                          samples_from)  # fmt: skip
    names = _parse_list(policies, str, "--policies")

    def build(L):
        return grid.policy_settings(L, gamma, grid.parse_size(block_size, L), names, opts)

    _report_sweep(sweep.run_sampling_sweep("policy", checkpoint, out, opts, build, length))


@sweep_app.command("nfe")
def sweep_nfe(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    steps: Annotated[
        str, typer.Option(help="One-stage ancestral steps T per block (fewer NFEs).")
    ] = "1,2,3",
    gammas: Annotated[str, typer.Option(help="Two-stage remask ratios.")] = "0.1,0.25,0.5,1.0",
    block_size: BlockOpt = "L",
    seeds: SeedsOpt = "0,1,2",
    num_samples: SamplesOpt = 8,
    batch_size: BatchOpt = 8,
    judge: JudgeOpt = "smollm2",
    top_p: TopPOpt = 0.9,
    nucleus: NucleusOpt = "bd3lm",
    stage1: Stage1Opt = 4,
    length: LengthOpt = None,
    window_stride: StrideOpt = None,
    progress: ProgressOpt = True,
    retry_low_entropy: RetryOpt = False,
    judge_max_tokens: JudgeMaxOpt = None,
    samples_from: SamplesFromOpt = None,
) -> None:
    """The quality-against-NFE frontier: one stage against two stages."""
    from dind import grid, sweep

    check_writable_dir(out)
    opts = _sweep_options(seeds, num_samples, batch_size, judge, top_p, nucleus, stage1, progress,
                          retry_low_entropy, judge_max_tokens, window_stride,
                          samples_from)  # fmt: skip
    ts = _parse_list(steps, int, "--steps")
    ratios = _parse_list(gammas, float, "--gammas")

    def build(L):
        return grid.nfe_settings(L, ts, ratios, grid.parse_size(block_size, L), opts)

    _report_sweep(sweep.run_sampling_sweep("nfe", checkpoint, out, opts, build, length))


@sweep_app.command("topp")
def sweep_topp(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    top_ps: Annotated[str, typer.Option(help="Nucleus masses.")] = "0.9,0.8,0.7,0.5",
    gammas: Annotated[
        str, typer.Option(help="Two-stage remask ratios, a series each.")
    ] = "0.25,0.5",
    block_size: BlockOpt = "L",
    seeds: SeedsOpt = "0,1,2",
    num_samples: SamplesOpt = 8,
    batch_size: BatchOpt = 8,
    judge: JudgeOpt = "smollm2",
    nucleus: NucleusOpt = "bd3lm",
    stage1: Stage1Opt = 4,
    length: LengthOpt = None,
    window_stride: StrideOpt = None,
    progress: ProgressOpt = True,
    retry_low_entropy: RetryOpt = False,
    judge_max_tokens: JudgeMaxOpt = None,
    samples_from: SamplesFromOpt = None,
) -> None:
    """The diversity control: stage 1 and two stages at each top-p, Gen PPL against entropy, and
    the gap to stage 1's curve at equal entropy."""
    from dind import grid, sweep

    check_writable_dir(out)
    opts = _sweep_options(seeds, num_samples, batch_size, judge, 0.9, nucleus, stage1, progress,
                          retry_low_entropy, judge_max_tokens, window_stride,
                          samples_from)  # fmt: skip
    ps = _parse_list(top_ps, float, "--top-ps")
    ratios = _parse_list(gammas, float, "--gammas")

    def build(L):
        return grid.topp_settings(L, ps, ratios, grid.parse_size(block_size, L), opts)

    _report_sweep(sweep.run_sampling_sweep("topp", checkpoint, out, opts, build, length))


@sweep_app.command("mix")
def sweep_mix(
    out: OutOpt,
    mix: Annotated[
        list[str] | None,
        typer.Option(
            help="A training mix, repeatable: 4 | 4,L:0.9,0.1 | 4,L/2:0.9,0.1 | pow2 | pow4."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Training steps per mix.")] = 300,
    init_from: Annotated[
        str | None, typer.Option(help="Start every mix from this checkpoint (the paper's).")
    ] = None,
    pretrain_steps: Annotated[
        int, typer.Option(help="Without --init-from: first pretrain at block L this long.")
    ] = 0,
    preset: Annotated[str, typer.Option(help="tiny | base | small")] = "tiny",
    corpus: Annotated[str | None, typer.Option(help="Corpus (default: the preset's).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="gpt2 | bpe")] = None,
    gamma: Annotated[float, typer.Option(help="Stage-2 remask ratio (block L).")] = 0.5,
    seeds: SeedsOpt = "0,1,2",
    num_samples: SamplesOpt = 8,
    batch_size: BatchOpt = 8,
    judge: JudgeOpt = "smollm2",
    top_p: TopPOpt = 0.9,
    nucleus: NucleusOpt = "bd3lm",
    stage1: Stage1Opt = 4,
    progress: ProgressOpt = True,
    retry_low_entropy: RetryOpt = False,
    judge_max_tokens: JudgeMaxOpt = None,
) -> None:
    """Table 3: train each block-size mix briefly from one start, judge stage 1 and two stages."""
    from dind import grid, sweep

    check_writable_dir(out)
    opts = _sweep_options(seeds, num_samples, batch_size, judge, top_p, nucleus, stage1, progress,
                          retry_low_entropy, judge_max_tokens)  # fmt: skip
    base = _build_run(preset, dict(corpus=corpus, tokenizer=tokenizer), {}, None, None)
    result = sweep.run_mix_sweep(out, base, list(mix or grid.DEFAULT_MIXES), steps, opts,
                                 gamma, init_from, pretrain_steps)  # fmt: skip
    _report_sweep(result)


@app.command()
def report(
    samples: Annotated[Path, typer.Argument(help="A dind samples JSONL file.")],
    checkpoint: Annotated[str, typer.Option(help="The checkpoint that drew them (tokenizer).")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")],
    sweep: Annotated[
        list[Path] | None, typer.Option(help="A `dind sweep` output folder (repeatable).")
    ] = None,
    title: Annotated[str, typer.Option()] = "dind: draft, remask, revise",
    max_samples: Annotated[int, typer.Option(help="Samples shown.")] = 3,
) -> None:
    """One self-contained HTML page: trajectories shaded by snapshot confidence, sweep tables
    and plots."""
    from dind.checkpoint import load_tokenizer
    from dind.report import write_report
    from dind.results import report_parts
    from dind.samples import read_samples

    check_writable_file(out)
    records = read_samples(samples)
    tables, plots = [], []
    for folder in sweep or []:
        t, p = report_parts(folder)
        tables += t
        plots += p
    path = write_report(out, title=title, samples=records, tokenizer=load_tokenizer(checkpoint),
                        tables=tables, plots=plots, max_samples=max_samples)  # fmt: skip
    typer.echo(f"wrote {path}")


@app.command()
def frontier(
    sweeps: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Sweep records (`topp.json`, or its folder): each file's stage 1 "
            "is the reference curve of its other settings."
        ),  # fmt: skip
    ] = None,
    reference: Annotated[
        list[Path] | None,
        typer.Option(
            help="Reference points (repeatable): sweep records or `dind eval --out` "
            "files; together they make the curve."
        ),  # fmt: skip
    ] = None,
    candidate: Annotated[
        list[Path] | None,
        typer.Option(help="Points to place against the reference curve (repeatable)."),
    ] = None,
    reference_series: Annotated[
        str, typer.Option(help="Series of a sweep record that makes the curve.")
    ] = "stage 1",
    candidate_series: Annotated[
        str | None,
        typer.Option(
            help="Series of a sweep record to compare (default: all but the reference series)."
        ),  # fmt: skip
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the gaps as JSON here.")] = None,
) -> None:
    """The matched-entropy gap: each candidate's Gen PPL against the reference curve (stage 1
    across top-p) interpolated at the candidate's entropy, paired by seed."""
    from dind import frontier as fr

    if not sweeps and not (reference and candidate):
        raise DindError("give sweep records, or both --reference and --candidate")
    if sweeps and (reference or candidate):
        raise DindError("give sweep records or --reference/--candidate, not both")
    if out is not None:
        check_writable_file(out)
    if sweeps:
        result, ref = [], []
        for path in sweeps:
            r, c = fr.split_record(path, reference_series, candidate_series)
            for s in fr.compare(r, c):
                result.append({**s, "setting": f"{path}: {s['setting']}"} if len(sweeps) > 1
                              else s)  # fmt: skip
            ref += r
    else:
        ref = fr.select(reference, reference_series)
        cands = fr.select(candidate, candidate_series, exclude=reference_series)
        result = fr.compare(ref, cands)
    typer.echo(fr.format_gaps(result, ref))
    if out is not None:
        write_json(out, {"reference": [str(p) for p in (reference or sweeps)],
                          "reference_series": reference_series, "gaps": result})  # fmt: skip


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run folder for the demo.")] = Path("runs/demo"),
    max_steps: Annotated[int | None, typer.Option(help="Training steps (short mode).")] = None,
    num_samples: Annotated[int, typer.Option(help="Samples per setting and seed.")] = 8,
    seeds: Annotated[str, typer.Option(help="Seed list (spread reported).")] = "0,1",
    judge: Annotated[str, typer.Option(help="Judge of the comparison.")] = "smollm2",
) -> None:
    """Train the tiny preset on the embedded corpus, draft and refine, judge, compare, and
    write an HTML report."""
    from dind.demo import run_demo

    run_demo(out, max_steps, num_samples, judge, _parse_list(seeds, int, "--seeds"))


def _os_error(e: OSError) -> str:
    """``PATH: reason`` (or ``PATH -> PATH2: reason`` for a rename), on one line."""
    if e.filename is None:
        return str(e.strerror or e)
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{where}: {e.strerror or e}"


def _was_interrupted(e: BaseException) -> bool:
    """Whether ``e`` comes from a Ctrl-C: Typer turns the KeyboardInterrupt into a silent
    exit 130, so it is found in the exception's chain."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def main() -> None:
    try:
        app()
    except DindError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        typer.echo(f"error: {_os_error(e)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit as e:
        if _was_interrupted(e):
            typer.echo("interrupted", err=True)
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
