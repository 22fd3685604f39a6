"""The ``dind`` command line: ``train``, ``sample``, ``eval``, ``sweep``, ``data``, ``bench``,
``demo``, ``export``, ``report``, ``frontier``.

The options of ``train``, ``sample`` and the sweeps are made from the config dataclasses
(``dind.cli_options``); ``train --config`` and ``sample --config`` start from saved settings,
the options given override them. The sweeps live in ``dind.cli_sweep``, ``data`` and ``bench``
in ``dind.cli_tools``.

Every problem a user can cause surfaces as ``error: <one line>`` on stderr and exit code 2
(a ``DindError``, an ``OSError``: the path and the reason, or a bad option or choice); no
traceback, and nothing half-written that looks whole. Output paths are checked before the
work that fills them. Ctrl-C prints ``interrupted`` and exits 130.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dind.cli_options import Group, apply_train_options, options, parse_list, start_run
from dind.cli_sweep import sweep_app
from dind.cli_tools import bench_app, data_app
from dind.config import Dtype, ModelConfig, PresetName, SamplerConfig, TrainConfig
from dind.errors import DindError
from dind.utils import check_writable_dir, check_writable_file, write_json

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Diffusion in Diffusion: draft with small blocks, revise globally.",
)
app.add_typer(sweep_app, name="sweep")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")

BASE = "default: the preset's, or --config's"
MODEL = Group(
    ModelConfig,
    skip=("vocab_size", "mask_id", "causal"),  # the tokenizer's and the objective's
    overrides=True,
    panel=f"Model ({BASE})",
)
TRAIN = Group(
    TrainConfig,
    skip=("block_dist", "noise.intervals"),  # --block-sizes/--block-probs, --noise-interval
    rename={"warmup_steps": "warmup"},
    overrides=True,
    panel=f"Training ({BASE})",
)


@app.command()
@options(model=MODEL, training=TRAIN)
def train(
    out: Annotated[Path, typer.Option(help="Run folder (metrics, checkpoint, tokenizer).")],
    config: Annotated[
        Path | None,
        typer.Option(
            help="Start from a saved run: its run.json, its folder, or a checkpoint (its "
            "config.json). The options given override it."
        ),
    ] = None,
    preset: Annotated[
        PresetName | None,
        typer.Option(help="Start from a preset (default: tiny; with --resume, the run's)."),
    ] = None,
    block_sizes: Annotated[
        str | None,
        typer.Option(help="Mixed-scale block sizes, e.g. 4,L or 4,1024 (each must divide L)."),
    ] = None,
    block_probs: Annotated[
        str | None, typer.Option(help="Their probabilities, e.g. 0.9,0.1 (default uniform).")
    ] = None,
    noise_interval: Annotated[
        list[str] | None,
        typer.Option(
            help="A block size's clipped noise interval, repeatable: 128:0.001,1. "
            "A given interval is kept; the search picks the others."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out (from its run.json unless --config or --preset).",
        ),
    ] = False,
    init_from: Annotated[
        str | None,
        typer.Option(help="Fine-tune from a checkpoint, run folder, BD3-LM folder or hub id."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    *,
    model: dict,
    training: dict,
) -> None:
    """Train a block diffusion model (mixed-scale) or the AR baseline."""
    from dind.train import train as run_train

    check_writable_dir(out)
    run = start_run(config, preset, resume_in=out if resume else None)
    run = apply_train_options(run, model, training, block_sizes, block_probs, noise_interval)
    last = run_train(run, out, resume=resume, init_from=init_from, progress=progress)
    typer.echo(json.dumps(last))


def _stages(text: str, flag: str) -> tuple[int, ...]:
    if any(v.strip().upper().startswith("L") for v in text.split(",")):
        raise DindError(
            f"{flag} takes block sizes in tokens, e.g. 4,1024, got {text!r}: write the length "
            "itself for L (the sweeps' L and L/k shorthands stand for their --length)"
        )
    return parse_list(text, int, flag)


SAMPLER = Group(
    SamplerConfig,
    overrides=True,
    show_defaults=True,
    panel="Sampler (default: these, or --config's)",
    helps={"length": "L (default: the model's; longer slides a window)."},
    parsers={"stages": _stages},
)


@app.command()
@options(sampler=SAMPLER)
def sample(
    checkpoint: Annotated[
        str, typer.Option(help="Checkpoint or run folder, a BD3-LM folder, or a hub id.")
    ],
    out: Annotated[Path, typer.Option(help="JSONL file, one line per sample.")],
    config: Annotated[
        str | None,
        typer.Option(
            help="Start from saved sampler settings: a JSON object of them, or FILE:NAME, the "
            "setting NAME of a sweep's JSON record. The options given override them."
        ),
    ] = None,
    num_samples: Annotated[int, typer.Option(help="Sequences to draw.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Sequences per batch.")] = 4,
    prompt: Annotated[str | None, typer.Option(help="Fixed prefix text.")] = None,
    show: Annotated[bool, typer.Option("--show", help="Render draft and revision.")] = False,
    dtype: Annotated[
        Dtype,
        typer.Option(
            help="Precision of the model's passes: auto (bf16 on CUDA, fp32 on the CPU), bf16, "
            "tf32 (CUDA) or fp32."
        ),
    ] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    *,
    sampler: dict,
) -> None:
    """Draft-then-refine sampling (Algorithm 1) with snapshot-confidence remasking."""
    from dind.checkpoint import load_checkpoint
    from dind.cli_options import read_sampler_settings
    from dind.devices import default_device, resolve_dtype, sampling_precision
    from dind.diversity import BD3LM_ENTROPY_WINDOW
    from dind.sampler import check_counts
    from dind.sampler import sample as run_sample
    from dind.samples import write_samples

    check_writable_file(out)
    check_counts(num_samples, batch_size)
    settings = {**(read_sampler_settings(config) if config else {}), **sampler}
    if "length" in settings:  # bad settings fail before the checkpoint loads
        SamplerConfig(**settings)
    device = default_device()
    resolve_dtype(dtype, device)  # a bad --dtype fails before the checkpoint loads
    ck = load_checkpoint(checkpoint, device)
    cfg = SamplerConfig(**{"length": ck.run_config.model.seq_len, **settings})
    tok = ck.tokenizer
    ids = {"bos_id": tok.bos_id, "mask_id": tok.mask_id}
    prompt_ids = tok.encode(prompt) if prompt else None
    with sampling_precision(device, dtype):
        samples = run_sample(
            ck.model, cfg, num_samples, batch_size, **ids, prompt=prompt_ids, progress=progress
        )
    write_samples(out, samples, tok, cfg)
    if show:
        from dind.show import render_sample

        for s in samples:
            typer.echo(render_sample(s, tok, cfg.stages) + "\n")
    per_stage = [sum(s.nfe[k] for s in samples) / len(samples) for k in range(len(cfg.stages))]
    redrawn = ""
    if cfg.retry_low_entropy:
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
        raise DindError(
            f"give a samples file to judge or --checkpoint for held-out NELBO, not "
            f"both ({samples} and --checkpoint {checkpoint})"
        )
    if max_batches is not None and max_batches < 1:
        raise DindError(
            f"--max-batches must be at least 1 (leave it out for all), got {max_batches}"
        )
    if out is not None:
        check_writable_file(out)
    if mauve and checkpoint is not None:
        raise DindError("--mauve scores samples: drop --checkpoint")
    if mauve and reference is None:
        raise DindError("--mauve needs --reference: a dind run (its corpus) or a corpus")
    seeds = parse_list(mauve_seeds, int, "--mauve-seeds")
    if checkpoint is not None:
        result = evaluate.heldout_nelbo(
            checkpoint, block_size, data, max_batches, progress=progress
        )
        typer.echo(
            f"held-out {'NLL' if result['objective'] == 'ar' else 'NELBO'} "
            f"{result['nelbo']:.4f} nats/token (ppl <= {result['ppl_bound']:.2f}) over "
            f"{result['tokens']} tokens, block size {result['block_size']}"
        )
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
    path = write_report(
        out,
        title=title,
        samples=records,
        tokenizer=load_tokenizer(checkpoint),
        tables=tables,
        plots=plots,
        max_samples=max_samples,
    )
    typer.echo(f"wrote {path}")


@app.command()
def frontier(
    sweeps: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Sweep records (`topp.json`, or its folder): each file's stage 1 "
            "is the reference curve of its other settings."
        ),
    ] = None,
    reference: Annotated[
        list[Path] | None,
        typer.Option(
            help="Reference points (repeatable): sweep records or `dind eval --out` "
            "files; together they make the curve."
        ),
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
        ),
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
                result.append({**s, "setting": f"{path}: {s['setting']}"} if len(sweeps) > 1 else s)
            ref += r
    else:
        ref = fr.select(reference, reference_series)
        cands = fr.select(candidate, candidate_series, exclude=reference_series)
        result = fr.compare(ref, cands)
    typer.echo(fr.format_gaps(result, ref))
    if out is not None:
        sources = [str(p) for p in (reference or sweeps)]
        gaps = {"reference": sources, "reference_series": reference_series, "gaps": result}
        write_json(out, gaps)


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

    run_demo(out, max_steps, num_samples, judge, parse_list(seeds, int, "--seeds"))


def _os_error(e: OSError) -> str:
    """``PATH: reason`` (or ``PATH -> PATH2: reason`` for a rename), on one line."""
    if e.filename is None:
        return str(e.strerror or e)
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{where}: {e.strerror or e}"


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    sys.exit(code)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except DindError as e:
        _fail(f"error: {e}")
    except OSError as e:
        _fail(f"error: {_os_error(e)}")
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except typer.Abort:
        _fail("Aborted!", 1)
    except typer.TyperException as e:  # a bad option, value or choice
        if type(e).__name__ == "NoArgsIsHelpError":  # the help is printed
            sys.exit(2)
        _fail("error: " + " ".join(e.format_message().split()))
    if code == 130:  # typer's exit code for a KeyboardInterrupt inside a command
        _fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
