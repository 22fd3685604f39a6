"""Running sweeps: the paper's ablations as one command each, over any checkpoint
(``dind sweep``). The grids are built in ``dind.grid``, the summaries, files and tables are
``dind.results``'s, the plots ``dind.plots``'s.

- ``gamma`` (Figure 2): generative perplexity against the remask ratio gamma for several
  stage-2 block sizes, with stage 1 alone as the reference line.
- ``policy`` (Table 2): the remasking policies (snapshot, post-hoc, random) at one setting.
- ``nfe`` (Table 1's frontier): quality against NFEs, two stages against one stage given
  comparable NFEs.
- ``topp``: the diversity control, stage 1 and two stages across top-p.
- ``mix`` (Table 3): training mixes of block sizes, each trained briefly from the same start
  and evaluated through the same pipeline (stage 1 and two stages).

Design choices:
- Every setting is drawn under every seed of the seed list, and its samples go through the
  one samples schema (``dind.samples``): written as ``dind sample`` writes them, judged as
  ``dind eval`` judges a samples file.
- Settings that share a stage 1 share its drafts: the refinement goes on from them, which is
  exactly what one multi-stage call would have drawn (``dind.sampler.sample_batch``), so a
  gamma sweep pays for one draft per seed plus the refinement passes. Two settings with the
  same sampler (under different names) are drawn and judged once.
- ``SweepOptions.retry_low_entropy`` (BD3-LM's redraws, ``dind.sampler``) applies to every
  setting's stage 1; the shared drafts are the accepted ones, so every setting refines the
  same drafts and the sample files carry their ``redraws``. ``judge_max_tokens`` cuts what the
  judge scores (``dind.judges``).
- Sampling runs at ``dind sample``'s default precision (``dind.devices``): bfloat16 autocast
  on CUDA, float32 on the CPU; the judge scores at its own.
- Outputs (``dind.results``): ``<kind>_seeds.csv``, ``<kind>.csv``, ``<kind>.png`` and
  ``<kind>.json`` in the output folder, and the samples of each (setting, seed) under
  ``samples/``. ``SweepOptions.samples_from`` judges the samples an earlier sweep saved (each
  file checked against its setting) instead of drawing: one draw, several judges.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dind.config import BlockSizeDistribution, RunConfig, SamplerConfig
from dind.errors import DindError
from dind.frontier import STAGE1
from dind.grid import Setting, SweepOptions, check_unique, make_setting, parse_mix, stage1_setting
from dind.results import SweepResult, write_sweep
from dind.samples import file_name, slug, write_records


def _stage1_key(cfg: SamplerConfig) -> tuple:
    """What a stage-1 draft depends on: settings that share it share their drafts."""
    return (cfg.stages[0], cfg.length, cfg.top_p, cfg.nucleus, cfg.sampler, cfg.steps,
            cfg.confidence, cfg.kv_cache, cfg.seed, cfg.retry_low_entropy,
            cfg.window_stride, str(cfg.parallel_rule(0)))  # fmt: skip


def draw_and_judge(
    model,
    tokenizer,
    settings: list[Setting],
    opts: SweepOptions,
    judge,
    samples_dir: Path | None = None,
    label: str = "",
    samples_from: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per (setting, seed): the judge's aggregate of that setting's samples, drawn
    (and saved in ``samples_dir`` as ``dind.samples.file_name``) or read from the files an
    earlier sweep saved in ``samples_from``."""
    from dind.devices import sampling_precision
    from dind.evaluate import evaluate_samples
    from dind.sampler import sample
    from dind.samples import to_record, write_samples

    device = next(model.parameters()).device
    rows, drafts_by_key, judged = [], {}, {}
    pairs = [(seed, s) for seed in opts.seeds for s in settings]
    bar = tqdm(pairs, disable=not opts.progress, desc=f"sweep {label}".strip(), unit="setting")
    for seed, setting in bar:
        bar.set_postfix_str(f"seed {seed}: {setting.name}")
        cfg = dataclasses.replace(setting.sampler, seed=seed)
        name, same = file_name(setting.name, seed), dataclasses.astuple(cfg)
        if samples_from is not None:
            records = saved_samples(samples_from / name, cfg, opts.num_samples)
        elif same in judged:  # the same sampler under another name: the same samples
            records = judged[same][0]
            if samples_dir is not None:
                write_records(samples_dir / name, records)
        else:
            key, drafts = _stage1_key(cfg), None
            if len(cfg.stages) > 1:
                if key not in drafts_by_key:
                    first = dataclasses.replace(
                        cfg, stages=cfg.stages[:1], remask=(), parallel=cfg.parallel[:1]
                    )
                    with sampling_precision(device, opts.dtype):
                        drafts_by_key[key] = sample(
                            model, first, opts.num_samples, opts.batch_size, tokenizer.bos_id,
                            tokenizer.mask_id,
                        )  # fmt: skip
                drafts = drafts_by_key[key]
            with sampling_precision(device, opts.dtype):
                drawn = sample(model, cfg, opts.num_samples, opts.batch_size, tokenizer.bos_id,
                               tokenizer.mask_id, drafts=drafts)  # fmt: skip
            if len(cfg.stages) == 1:
                drafts_by_key[key] = drawn
            if samples_dir is not None:
                records = write_samples(samples_dir / name, drawn, tokenizer, cfg)
            else:
                records = [to_record(s, tokenizer, cfg) for s in drawn]
        if same not in judged:
            judged[same] = records, evaluate_samples(records, judge)["aggregate"]
        a = judged[same][1]
        rows.append({
            "setting": setting.name, "series": setting.series, "x": setting.x, "seed": seed,
            "gen_ppl": a["gen_ppl_mean"], "gen_ppl_token_weighted": a["gen_ppl_token_weighted"],
            "entropy": a["entropy_mean"], "nfe": a["nfe_mean"], "seconds": a["seconds_mean"],
            "n_samples": a["n_samples"],
        })  # fmt: skip
        if opts.retry_low_entropy:  # a column only when asked for: default CSVs are unchanged
            rows[-1]["redraws"] = sum(r.get("redraws") or 0 for r in records)
    return rows


def saved_samples(path: Path, cfg: SamplerConfig, num_samples: int) -> list[dict[str, Any]]:
    """The records an earlier sweep saved for ``cfg``; a file that is missing, short or drawn
    with another sampler is a one-line error (never silently judged as this setting)."""
    from dind.sampler import sample_seed
    from dind.samples import read_samples

    if not path.is_file():
        raise DindError(f"--samples-from: {path} not found (was the earlier sweep the same grid,"
                        " seeds included, and are its samples still there?)")  # fmt: skip
    records = read_samples(path)
    for i, r in enumerate(records):
        want = {"index": i, "seed": sample_seed(cfg.seed, i), "stages": list(cfg.stages),
                "remask_ratios": list(cfg.remask), "remask_policy": cfg.remask_policy,
                "top_p": cfg.top_p, "nucleus": cfg.nucleus,
                "parallel": list(cfg.parallel) or None, "refresh": cfg.refresh,
                "recompute": None if cfg.recompute == "masked" else cfg.recompute}  # fmt: skip
        got = {k: r.get(k) for k in want}
        if got != want:
            diff = next(k for k in want if got[k] != want[k])
            raise DindError(f"--samples-from: {path} was drawn with {diff} {got[diff]!r}, this "
                            f"setting has {want[diff]!r}")  # fmt: skip
    if len(records) != num_samples:
        raise DindError(f"--samples-from: {path} holds {len(records)} samples, the sweep asks "
                        f"for {num_samples}")  # fmt: skip
    return records


def run_sampling_sweep(
    kind: str, checkpoint: str, out: Path, opts: SweepOptions,
    build: Callable[[int], list[Setting]], length: int | None = None,
) -> SweepResult:  # fmt: skip
    """Build and check the grid, load the judge, then draw, judge and write (gamma, policy,
    nfe). ``build`` makes the settings for the sequence length L (past the model's context
    the sampler slides a window); the first one is the reference the others are compared
    with, seed by seed (stage 1 alone)."""
    from dind.checkpoint import load_checkpoint, read_config, resolve
    from dind.judges import load_judge
    from dind.sampler import check_window_stride

    opts.check()
    model_len = read_config(resolve(checkpoint)).model.seq_len
    L = model_len if length is None else length
    if L <= 0:
        raise DindError(f"length must be positive, got {L}")
    check_window_stride(opts.window_stride, model_len)
    settings = build(L)
    check_unique(settings)
    judge = load_judge(opts.judge, _device(), opts.judge_max_tokens)
    ck = load_checkpoint(checkpoint, _device())
    saved = None if opts.samples_from is None else opts.samples_from / "samples" / kind
    samples_dir = out / "samples" / kind if opts.save_samples and saved is None else None
    rows = draw_and_judge(ck.model, ck.tokenizer, settings, opts, judge, samples_dir, kind,
                          saved)  # fmt: skip
    # every grid starts with its stage-1 setting; top-p's stage-1 rows differ in top-p
    reference = None if kind == "topp" else settings[0].name
    meta = {"checkpoint": str(checkpoint), "length": L, "judge": judge.name,
            "seeds": list(opts.seeds), "num_samples": opts.num_samples, **_protocol(opts),
            "settings": [{"name": s.name, "series": s.series, "x": s.x,
                          "sampler": dataclasses.asdict(s.sampler)} for s in settings]}  # fmt: skip
    return write_sweep(kind, out, rows, meta, reference)


def _protocol(opts: SweepOptions) -> dict[str, Any]:
    """The evaluation options a sweep's JSON records beside its settings."""
    out = {"retry_low_entropy": opts.retry_low_entropy,
           "judge_max_tokens": opts.judge_max_tokens}  # fmt: skip
    if opts.samples_from is not None:  # only then: the JSON of a drawing sweep is unchanged
        out["samples_from"] = str(opts.samples_from)
    if opts.dtype != "auto":
        out["dtype"] = opts.dtype
    return out


def _device() -> str:
    from dind.devices import default_device

    return default_device()


def run_mix_sweep(
    out: Path, base: RunConfig, mixes: list[str], steps: int, opts: SweepOptions,
    gamma: float = 0.5, init_from: str | None = None, pretrain_steps: int = 0,
    nelbo_batches: int = 8,
) -> SweepResult:  # fmt: skip
    """Table 3: fine-tune one run per mix from the same start (``init_from``, or a run
    pretrained here at the full length for ``pretrain_steps``), then draw stage 1 and two
    stages (block L, ``gamma``) under every seed and judge them; held-out NELBO at block 4 and
    at L beside. Finished runs in ``out/runs`` are reused."""
    from dind.checkpoint import latest_complete, load_checkpoint, read_config, resolve
    from dind.evaluate import heldout_nelbo
    from dind.judges import load_judge
    from dind.train import train

    opts.check()
    if steps <= 0 or pretrain_steps < 0:
        raise DindError("steps must be positive and pretrain-steps non-negative")
    if init_from is not None and pretrain_steps:
        raise DindError("give --init-from or --pretrain-steps, not both")
    if init_from is not None:
        base = dataclasses.replace(base, model=read_config(resolve(init_from)).model)
    L = base.model.seq_len
    parsed = [parse_mix(m, L, opts.stage1) for m in mixes]
    if len({m.name for m in parsed}) != len(parsed):
        raise DindError("two mixes of the grid are the same")
    if not parsed:
        raise DindError("no training mixes given")
    settings = [stage1_setting(L, opts),
                make_setting(f"two stages (block {L}, gamma {gamma:g})", "two stages", None, opts,
                         stages=(opts.stage1, L), remask=(gamma,), length=L)]  # fmt: skip
    judge = load_judge(opts.judge, _device(), opts.judge_max_tokens)

    def run_for(dist: BlockSizeDistribution, n: int) -> RunConfig:
        warmup = min(base.train.warmup_steps, max(n // 10, 1))
        train_cfg = dataclasses.replace(base.train, block_dist=dist, max_steps=n,
                                        eval_every=n, warmup_steps=warmup)  # fmt: skip
        return dataclasses.replace(base, train=train_cfg)

    runs_dir = out / "runs"
    start = init_from
    if pretrain_steps:
        folder = runs_dir / "pretrain_full_length"
        full = BlockSizeDistribution((L,), (1.0,))
        print(f"pretraining at the full length (block {L}) for {pretrain_steps} steps")
        train(run_for(full, pretrain_steps), folder, resume=(folder / "run.json").exists(),
              progress=opts.progress)  # fmt: skip
        start = str(folder)
    rows = []
    for mix in parsed:
        folder = runs_dir / slug(mix.name)
        print(f"training mix {mix.name}: sizes {list(mix.dist.block_sizes)}, "
              f"probabilities {[round(p, 3) for p in mix.dist.probs]}, {steps} steps")  # fmt: skip
        # a finished or killed run resumes (one killed before its first checkpoint starts over)
        done = latest_complete(folder / "checkpoint") is not None
        train(run_for(mix.dist, steps), folder, resume=(folder / "run.json").exists(),
              init_from=None if done else start, progress=opts.progress)  # fmt: skip
        nelbo = {key: heldout_nelbo(folder, b, max_batches=nelbo_batches)["nelbo"]
                 for key, b in (("nelbo_small", opts.stage1), ("nelbo_full", L))}  # fmt: skip
        ck = load_checkpoint(folder, _device())
        samples_dir = out / "samples" / "mix" / slug(mix.name) if opts.save_samples else None
        for r in draw_and_judge(ck.model, ck.tokenizer, settings, opts, judge, samples_dir,
                                mix.name):  # fmt: skip
            # series: the mix; x: 1 for the stage-1 row, 2 for the two-stage row
            rows.append({**r, "setting": f"{mix.name} / {r['setting']}", "series": mix.name,
                         "x": 1 if r["series"] == STAGE1 else 2, **nelbo})  # fmt: skip
    meta = {"init_from": init_from, "pretrain_steps": pretrain_steps, "steps": steps,
            "length": L, "judge": judge.name, "seeds": list(opts.seeds),
            "num_samples": opts.num_samples, "gamma": gamma, **_protocol(opts),
            "mixes": [{"name": m.name, "block_sizes": list(m.dist.block_sizes),
                       "probs": list(m.dist.probs)} for m in parsed]}  # fmt: skip
    # each mix's two-stage row is compared with that mix's own stage-1 row, seed by seed
    references = {m.name: f"{m.name} / {settings[0].name}" for m in parsed}
    return write_sweep("mix", out, rows, meta, references)
