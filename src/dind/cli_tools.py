"""``dind data`` (the data sets dind builds) and ``dind bench`` (timings)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from dind.cli_options import parse_list
from dind.config import SAMPLE_SETTINGS, AttnBackend, Dtype, PresetName, Recompute
from dind.errors import DindError
from dind.utils import check_writable_dir, check_writable_file, write_json

data_app = typer.Typer(no_args_is_help=True, help="Data sets dind builds.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (figures go to dev/LOG.md).")


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
    typer.echo(
        f"wrote {out}: {meta['n_tokens']['train']} training and "
        f"{meta['n_tokens']['val']} held-out tokens; train with --corpus {out} "
        "--tokenizer gpt2"
    )


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
    length: Annotated[int, typer.Option(help="L.")] = 1024,
    preset: Annotated[PresetName, typer.Option(help="Model size.")] = "tiny",
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,16",
    repeats: Annotated[int, typer.Option(help="Timed batches per figure.")] = 1,
    gamma: Annotated[float, typer.Option(help="Remask ratio of the two-stage settings.")] = 0.5,
    parallel: Annotated[
        str, typer.Option(help="Refinement rule of two_stages_parallel: K, top:K or tau:X.")
    ] = "16",  # fmt: skip
    refresh: Annotated[
        int | None,
        typer.Option(
            help="two_stages_parallel with Fast-dLLM's approximate cache: a full pass "
            "every R calls (default: exact)."
        ),
    ] = None,  # fmt: skip
    recompute: Annotated[
        Recompute,
        typer.Option(help="With --refresh, what the calls between full passes recompute."),
    ] = "masked",
    settings: Annotated[
        str,
        typer.Option(help="Which to time, comma-separated: " + ", ".join(SAMPLE_SETTINGS) + "."),
    ] = ",".join(SAMPLE_SETTINGS),  # fmt: skip
    dtype: Annotated[Dtype, typer.Option(help="As dind sample's.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Also write JSON.")] = None,
) -> None:
    """Seconds per sample and tokens/s: AR, stage 1 with/without cache, two stages."""
    from dind.bench import bench_sample as run_bench

    batches = parse_list(batch_sizes, int, "--batch-sizes")
    names = parse_list(settings, str, "--settings")
    for flag, values in (("--batch-sizes", batches), ("--settings", names)):
        if not values:
            raise DindError(f"{flag}: give at least one")
    _check_positive(
        ("--length", length), ("--repeats", repeats), ("--refresh", refresh),
        *(("--batch-sizes", b) for b in batches),
    )  # fmt: skip
    if not 0.0 <= gamma <= 1.0:
        raise DindError(f"--gamma must be in [0, 1], got {gamma}")
    if out is not None:
        check_writable_file(out)
    result = run_bench(preset, length, batches, repeats, dtype, gamma, parallel, names, refresh,
                       recompute)  # fmt: skip
    typer.echo(json.dumps(result, indent=2))
    if out is not None:
        write_json(out, result)


@bench_app.command("train")
def bench_train(
    preset: Annotated[PresetName, typer.Option(help="Model size to time.")] = "tiny",
    steps: Annotated[int, typer.Option(help="Timed steps per objective.")] = 10,
    batch_size: Annotated[int | None, typer.Option()] = None,
    block_sizes: Annotated[str, typer.Option(help="P_B of the BD3 objective.")] = "4,L",
    block_probs: Annotated[str, typer.Option()] = "0.9,0.1",
    attn_backend: Annotated[AttnBackend, typer.Option(help="Attention kernels.")] = "sdpa",
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
