"""``dind sweep``: the paper's ablations over any checkpoint. Every sweep takes the options of
``dind.grid.SweepOptions`` (seeds, samples, judge, sampler defaults: ``SWEEP``), and its grid's
own lists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer

from dind.cli_options import Group, apply, options, parse_list, start_run
from dind.config import PresetName, Recompute, RemaskPolicy, TokenizerName
from dind.grid import SweepOptions
from dind.utils import check_writable_dir

sweep_app = typer.Typer(
    no_args_is_help=True,
    help="The paper's ablations over any checkpoint: CSV (per seed and summary), PNG, JSON.",
)

SWEEP = Group(SweepOptions, skip=("save_samples",), panel="Shared by every sweep")
"""The options every sweep shares (a sweep always keeps its samples)."""

CheckpointOpt = Annotated[str, typer.Option(help="Checkpoint, run folder, BD3-LM folder/id.")]
OutOpt = Annotated[Path, typer.Option(help="Folder for the CSVs, PNG, JSON and samples.")]
LengthOpt = Annotated[
    int | None, typer.Option(help="L (default: the model's; longer slides a window).")
]
BlockOpt = Annotated[str, typer.Option(help="Stage-2 block size (L allowed).")]


def _report(result) -> None:
    from dind.results import format_summary

    typer.echo(format_summary(result.summary, result.judge))
    typer.echo("wrote " + ", ".join(str(p) for p in result.files.values()))


def _run(kind: str, checkpoint: str, out: Path, opts: SweepOptions, build, length) -> None:
    from dind import sweep

    _report(sweep.run_sampling_sweep(kind, checkpoint, out, opts, build, length))


@sweep_app.command("gamma")
@options(opts=SWEEP)
def sweep_gamma(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    gammas: Annotated[str, typer.Option(help="Remask ratios.")] = "0.1,0.25,0.5,0.75,1.0",
    block_sizes: Annotated[
        str, typer.Option(help="Stage-2 block sizes; L and L/k allowed.")
    ] = "16,L/4,L",
    policy: Annotated[RemaskPolicy, typer.Option(help="Remasking policy.")] = "snapshot",
    length: LengthOpt = None,
    *,
    opts: SweepOptions,
) -> None:
    """Figure 2: Gen PPL against gamma for several stage-2 block sizes, stage 1 as reference."""
    from dind import grid
    from dind.config import parse_block_sizes

    check_writable_dir(out)
    ratios = parse_list(gammas, float, "--gammas")

    def build(L):
        return grid.gamma_settings(L, ratios, parse_block_sizes(block_sizes, L), opts, policy)

    _run("gamma", checkpoint, out, opts, build, length)


@sweep_app.command("policy")
@options(opts=SWEEP)
def sweep_policy(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    gamma: Annotated[float, typer.Option(help="Remask ratio.")] = 0.5,
    block_size: BlockOpt = "L",
    policies: Annotated[
        str, typer.Option(help="Remasking policies, each a series.")
    ] = "snapshot,posthoc,random",
    length: LengthOpt = None,
    *,
    opts: SweepOptions,
) -> None:
    """Table 2: snapshot, post-hoc and random remasking at one (block size, gamma)."""
    from dind import grid

    check_writable_dir(out)
    names = parse_list(policies, str, "--policies")

    def build(L):
        return grid.policy_settings(L, gamma, grid.parse_size(block_size, L), names, opts)

    _run("policy", checkpoint, out, opts, build, length)


@sweep_app.command("nfe")
@options(opts=SWEEP)
def sweep_nfe(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    steps: Annotated[
        str, typer.Option(help="One-stage ancestral steps T per block (fewer NFEs).")
    ] = "1,2,3",
    gammas: Annotated[str, typer.Option(help="Two-stage remask ratios.")] = "0.1,0.25,0.5,1.0",
    block_size: BlockOpt = "L",
    length: LengthOpt = None,
    *,
    opts: SweepOptions,
) -> None:
    """The quality-against-NFE frontier: one stage against two stages."""
    from dind import grid

    check_writable_dir(out)
    ts = parse_list(steps, int, "--steps")
    ratios = parse_list(gammas, float, "--gammas")

    def build(L):
        return grid.nfe_settings(L, ts, ratios, grid.parse_size(block_size, L), opts)

    _run("nfe", checkpoint, out, opts, build, length)


@sweep_app.command("parallel")
@options(opts=SWEEP)
def sweep_parallel(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    gammas: Annotated[str, typer.Option(help="Two-stage remask ratios.")] = "0.25,0.5",
    ks: Annotated[str, typer.Option(help="Positions committed per refinement call.")] = (
        "1,2,4,8,16"
    ),
    taus: Annotated[str, typer.Option(help="Thresholds of the tau rule.")] = "0.7,0.9,0.99",
    picks: Annotated[
        str, typer.Option(help="How K positions are chosen: uniform, top (most confident).")
    ] = "uniform,top",
    refresh: Annotated[
        str,
        typer.Option(
            help="Also the uniform-K settings with Fast-dLLM's approximate cache, a full pass "
            "every R calls (comma-separated R; none by default)."
        ),
    ] = "",
    recompute: Annotated[
        str,
        typer.Option(
            help="With --refresh, what the calls between full passes recompute, one series "
            "each: masked (what the full pass left masked), delayed (what the last call did), "
            "asked (what the last call committed and what this call asks)."
        ),
    ] = "masked",
    block_size: BlockOpt = "L",
    length: LengthOpt = None,
    *,
    opts: SweepOptions,
) -> None:
    """Fast refinement: stage 1, and two stages committing K positions per call (uniform or
    most confident) or every token that reaches tau; Gen PPL (with entropy) against seconds."""
    from dind import grid
    from dind.errors import DindError

    check_writable_dir(out)
    ratios = parse_list(gammas, float, "--gammas")
    k_list, tau_list = parse_list(ks, int, "--ks"), parse_list(taus, float, "--taus")
    pick_list = parse_list(picks, str, "--picks")
    bad = [p for p in pick_list if p not in ("uniform", "top")]
    if bad:
        raise DindError(f"--picks: {bad[0]!r} is not uniform or top")
    refreshes = parse_list(refresh, int, "--refresh") if refresh else ()
    if any(r < 1 for r in refreshes):
        raise DindError(f"--refresh: calls per full pass must be at least 1, got {refresh}")
    rules = parse_list(recompute, str, "--recompute")
    bad = [r for r in rules if r not in get_args(Recompute)] or ([] if rules else [""])
    if bad:
        raise DindError(f"--recompute: {bad[0]!r} is not one of {', '.join(get_args(Recompute))}")

    def build(L):
        size = grid.parse_size(block_size, L)
        return grid.parallel_settings(L, ratios, k_list, tau_list, pick_list, size, opts,
                                      refreshes, rules)  # fmt: skip

    _run("parallel", checkpoint, out, opts, build, length)


@sweep_app.command("topp")
@options(opts=SWEEP.without("top_p"))  # each setting has its own
def sweep_topp(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    top_ps: Annotated[str, typer.Option(help="Nucleus masses.")] = "0.9,0.8,0.7,0.5",
    gammas: Annotated[
        str, typer.Option(help="Two-stage remask ratios, a series each.")
    ] = "0.25,0.5",
    block_size: BlockOpt = "L",
    length: LengthOpt = None,
    *,
    opts: SweepOptions,
) -> None:
    """The diversity control: stage 1 and two stages at each top-p, Gen PPL against entropy, and
    the gap to stage 1's curve at equal entropy."""
    from dind import grid

    check_writable_dir(out)
    ps = parse_list(top_ps, float, "--top-ps")
    ratios = parse_list(gammas, float, "--gammas")

    def build(L):
        return grid.topp_settings(L, ps, ratios, grid.parse_size(block_size, L), opts)

    _run("topp", checkpoint, out, opts, build, length)


@sweep_app.command("mix")
@options(opts=SWEEP.without("window_stride", "samples_from"))  # at the model's L; it draws
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
    preset: Annotated[PresetName, typer.Option(help="Model and training recipe.")] = "tiny",
    corpus: Annotated[str | None, typer.Option(help="Corpus (default: the preset's).")] = None,
    tokenizer: Annotated[
        TokenizerName | None, typer.Option(help="Tokenizer (default: the preset's).")
    ] = None,
    gamma: Annotated[float, typer.Option(help="Stage-2 remask ratio (block L).")] = 0.5,
    *,
    opts: SweepOptions,
) -> None:
    """Table 3: train each block-size mix briefly from one start, judge stage 1 and two stages."""
    from dind import grid, sweep

    check_writable_dir(out)
    given = {"corpus": corpus, "tokenizer": tokenizer}
    base = start_run(None, preset)
    base.train = apply(base.train, {k: v for k, v in given.items() if v is not None})
    mixes = list(mix or grid.DEFAULT_MIXES)
    _report(sweep.run_mix_sweep(out, base, mixes, steps, opts, gamma, init_from, pretrain_steps))
