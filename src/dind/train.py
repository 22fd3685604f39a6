"""The training loop: mixed-scale block diffusion (or AR) on one device or many via torchrun.

Design choices:
- Exact resume without saving RNG state: every optimizer step reseeds torch from
  (seed, step, rank) and draws its rows from ``data.batch_indices`` (a pure function of the
  step), so steps k.. of a resumed run repeat those of an uninterrupted one.
- Saved and evaluated weights are the EMA weights; the raw weights and optimizer state go
  into ``training_state.pt`` beside them.
- Validation reports the NELBO with the unclipped bounds (1e-3, 1) at every block size of
  P_B, then (``clip_search``) picks, for each block size on its own (unless its interval is
  given), the clipped bounds [beta, omega] under which that size's loss has the least
  variance; the next steps train every row with its own size's interval. Before the first
  search (and with the search off) whole-sequence rows are unclipped and smaller blocks use
  the configured [eps_min, eps_max].
- Data parallel: torchrun sets the environment; gloo on CPU, NCCL on CUDA; each rank takes
  its own slice of the global batch and draws its own block sizes and noise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from dind import checkpoint as ckpt
from dind import noise
from dind.config import RunConfig
from dind.data import TokenRows, batch_indices, load_corpus, prepare_data, tokenized_folder
from dind.devices import to_device
from dind.errors import DindError
from dind.loss import LossOutput, ar_loss, bd3_loss
from dind.mixed_scale import sample_block_sizes
from dind.model import DiT
from dind.tokenizer import Tokenizer, get_tokenizer

RUN_CONFIG = "run.json"
METRICS = "metrics.jsonl"


class EMA:
    """Exponential moving average of parameters with BD3-LM's warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for s, p in zip(self.shadow, model.parameters(), strict=True):
            s.lerp_(p.detach(), 1.0 - decay)

    @torch.no_grad()
    def swap(self, model: torch.nn.Module) -> None:
        """Exchange the model's weights with the shadow (call twice to restore)."""
        for s, p in zip(self.shadow, model.parameters(), strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
        for s, v in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(v)


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _seed_step(seed: int, step: int, rank: int) -> None:
    torch.manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63))


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and list(va) == list(vb or [])):
            diffs.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return diffs


# Fields a resumed run may change: how long it runs and how often it reports.
RESUMABLE_CHANGES = {"max_steps", "eval_every", "log_every", "compile"}


def compute_loss(
    model, run: RunConfig, x0: torch.Tensor, block_sizes, intervals: noise.Intervals,
    eval_mode=False,
) -> LossOutput:  # fmt: skip
    """The run's objective on ``x0``; each row trains with its block size's noise interval."""
    cfg, noise_cfg = run.model, run.train.noise
    if run.train.objective == "ar":
        return ar_loss(model, cfg, x0)
    eps_min, eps_max = noise.row_bounds(block_sizes, intervals)
    return bd3_loss(
        model, cfg, x0, block_sizes, eps_min, eps_max, noise_cfg.antithetic,
        noise_cfg.resample, eval_mode=eval_mode,
    )  # fmt: skip


def start_intervals(run: RunConfig, source: noise.Intervals | None = None) -> noise.Intervals:
    """Each block size's interval before the first search: given in the config, else the
    checkpoint fine-tuned from, else ``noise.default_interval``."""
    n, L = run.train.noise, run.model.seq_len
    out = {}
    for b in run.train.block_dist.block_sizes:
        given = n.intervals.get(b) or (source or {}).get(b)
        out[b] = given or noise.default_interval(b, L, n.eps_min, n.eps_max)
    return out


def format_intervals(intervals: noise.Intervals) -> str:
    return ", ".join(f"B={b} [{lo:g}, {hi:g}]" for b, (lo, hi) in sorted(intervals.items()))


@torch.no_grad()
def evaluate(
    model: DiT,
    run: RunConfig,
    val: TokenRows,
    device: torch.device,
    autocast,
) -> dict[str, Any]:
    """Held-out NELBO (unclipped bounds) at each block size of P_B, and the clip search."""
    tc = run.train
    torch.manual_seed(tc.seed + 12_345)  # the same noise at every evaluation
    n = min(len(val), tc.batch_size)
    batches = [
        val.batch([(i * n + j) % len(val) for j in range(n)]).to(device)
        for i in range(tc.eval_batches)
    ]
    out: dict[str, float] = {}
    sizes = [1] if tc.objective == "ar" else list(tc.block_dist.block_sizes)
    for bs in sizes:
        total, count = 0.0, 0
        for x0 in batches:
            with autocast:
                res = compute_loss(
                    model,
                    run,
                    x0,
                    torch.full((len(x0),), bs),  # on the CPU: read there without a sync
                    {bs: (noise.DEFAULT_EPS_MIN, noise.DEFAULT_EPS_MAX)},
                    eval_mode=True,
                )
            total += res.nll[res.token_mask].sum().item()
            count += int(res.token_mask.sum().item())
        key = "val_nll" if tc.objective == "ar" else f"val_nelbo_bs{bs}"
        out[key] = total / count
    draft = tc.block_dist.draft
    primary = out["val_nll"] if tc.objective == "ar" else out[f"val_nelbo_bs{draft}"]
    out["val_nelbo"] = primary
    out["val_ppl"] = math.exp(min(primary, 50.0))
    searched = [bs for bs in tc.block_dist.block_sizes if bs not in tc.noise.intervals]
    if tc.objective == "bd3" and tc.noise.clip_search and searched:
        out["intervals"] = {  # a size whose interval is given keeps it
            str(bs): list(tc.noise.intervals.get(bs) or
                          clip_search(model, run, batches, bs, device, autocast))
            for bs in tc.block_dist.block_sizes
        }  # fmt: skip
    return out


@torch.no_grad()
def clip_search(model, run: RunConfig, batches, bs: int, device, autocast) -> tuple[float, float]:
    """BD3-LM's var_min for block size ``bs``: the interval under which the per-block loss of
    rows of that size has the least variance, summed over batches."""
    L = run.model.seq_len
    best, best_var = (noise.DEFAULT_EPS_MIN, noise.DEFAULT_EPS_MAX), float("inf")
    for lo, hi in noise.clip_search_grid(
        run.train.noise.clip_search_widths, run.train.noise.clip_search_delta
    ):
        var = 0.0
        for x0 in batches:
            with autocast:
                res = bd3_loss(
                    model,
                    run.model,
                    x0,
                    torch.full((len(x0),), bs),
                    lo,
                    hi,
                    run.train.noise.antithetic,
                    run.train.noise.resample,
                )
            per_block = res.nll.float().view(len(x0), L // bs, bs).mean(-1)  # (B, n_blocks)
            var += per_block.var().item()
        if var < best_var:
            best, best_var = (lo, hi), var
    return best


def _build_tokenizer(run: RunConfig, out: Path, rank: int, world: int) -> Tokenizer:
    tok_dir = out / "tokenizer"
    if rank == 0 and not (tok_dir / "tokenizer.json").exists():
        texts = None
        if run.train.tokenizer == "bpe":
            if tokenized_folder(run.train.corpus):
                raise DindError("a pre-tokenized corpus is GPT-2 tokens: pass --tokenizer gpt2")
            texts = load_corpus(run.train.corpus).train_docs
        tok = get_tokenizer(run.train.tokenizer, texts, run.train.bpe_vocab_size)
        tok_dir.mkdir(parents=True, exist_ok=True)
        tok.save(tok_dir)
    if world > 1:
        dist.barrier()
    return Tokenizer.load(tok_dir)


def train(
    run: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``run`` into ``out_dir``; returns the last metrics record."""
    out = Path(out_dir)
    rank, local_rank, world = _dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tc = run.train

    state = None
    if resume:
        if not (out / RUN_CONFIG).exists():
            raise DindError(f"--resume: {out} holds no run to resume")
        saved = RunConfig.from_dict(json.loads((out / RUN_CONFIG).read_text()))
        run.model = dataclasses.replace(
            run.model, vocab_size=saved.model.vocab_size, mask_id=saved.model.mask_id
        )
        diffs = [
            d
            for d in _config_diff(saved.to_dict(), run.to_dict())
            if d.split(":")[0].split(".")[-1] not in RESUMABLE_CHANGES
        ]
        if diffs:
            raise DindError(f"--resume with a different config ({'; '.join(diffs[:3])})")
        state = ckpt.load_training_state(out)
    elif (out / "checkpoint").exists() or (out / METRICS).exists():
        raise DindError(f"{out} already holds a run; pass --resume or choose another --out")

    created = not out.exists()
    try:  # set-up; a failure here leaves no run folder behind that this call created
        if init_from is not None:
            source = ckpt.load_checkpoint(init_from)
            tokenizer = source.tokenizer
            if rank == 0:
                tokenizer.save(out / "tokenizer")
        else:
            source = None
            if rank == 0:
                out.mkdir(parents=True, exist_ok=True)
            if world > 1:
                dist.barrier()
            tokenizer = _build_tokenizer(run, out, rank, world)
        run.model = dataclasses.replace(
            run.model, vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
            causal=tc.objective == "ar",
        )  # fmt: skip
        if run.model.attn_backend == "flex" and device.type != "cuda":
            raise DindError("attn_backend 'flex' needs a CUDA device; use 'sdpa' on CPU")
        if tc.objective == "bd3":
            tc.block_dist.check_divides(run.model.seq_len)
        train_rows, val_rows = prepare_data(tc.corpus, tokenizer, run.model.seq_len)
    except BaseException:
        if created and rank == 0:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_CONFIG).write_text(json.dumps(run.to_dict(), indent=2))

    torch.manual_seed(tc.seed)
    model = DiT(run.model).to(device)
    intervals = start_intervals(run)
    if source is not None:
        if source.model.config.vocab_size != run.model.vocab_size:
            raise DindError("--init-from checkpoint has a different vocabulary")
        ckpt.load_state_dict_strict(
            model, ckpt.state_dict_for_save(source.model, 0.0, 0.0), str(source.path)
        )
        intervals = start_intervals(run, source.intervals)
    opt = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, eps=1e-8
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / tc.warmup_steps) if tc.warmup_steps else 1.0
    )
    ema = EMA(model, tc.ema) if tc.ema > 0 else None
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start = int(state["step"])
        if "intervals" in state:
            intervals = ckpt.intervals_from_json(state["intervals"])
        else:  # a state saved before intervals were per block size: one pair for all
            intervals = dict.fromkeys(intervals, (float(state["eps_min"]), float(state["eps_max"])))
        _truncate_metrics(out / METRICS, start)

    net = model
    if tc.compile:
        net = torch.compile(net)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[local_rank] if device.type == "cuda" else None
        )
    use_bf16 = tc.bf16 and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    def log(record: dict[str, Any]) -> None:
        if rank == 0:
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def run_eval(step: int) -> dict[str, Any]:
        nonlocal intervals
        if ema is not None:
            ema.swap(model)
        model.eval()
        metrics = evaluate(model, run, val_rows, device, autocast)
        model.train()
        if ema is not None:
            ema.swap(model)
        if "intervals" in metrics:
            intervals = ckpt.intervals_from_json(metrics["intervals"])
        record = {"step": step, **metrics}
        log(record)
        return record

    def save(step: int) -> None:
        if rank != 0:
            return
        # Cloned: the EMA swap below overwrites the parameters these would alias.
        training_state = {
            "step": step,
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "ema": ({"num_updates": ema.num_updates, "shadow": [s.clone() for s in ema.shadow]}
                    if ema else {}),
            "intervals": ckpt.intervals_to_json(intervals),
        }  # fmt: skip
        if ema is not None:
            ema.swap(model)
        try:
            ckpt.save_checkpoint(
                out / "checkpoint", model, run, tokenizer, intervals, training_state
            )
        finally:
            if ema is not None:
                ema.swap(model)

    last: dict[str, Any] = {}
    if start == 0:
        last = run_eval(0)
    model.train()
    bar = tqdm(
        total=tc.max_steps,
        initial=start,
        disable=not progress or rank != 0,
        desc="train",
        dynamic_ncols=True,
        mininterval=1.0,
    )
    t0, tokens = time.time(), 0
    for step in range(start, tc.max_steps):
        _seed_step(tc.seed, step, rank)
        # A micro-step never waits for the device: the batch goes over pinned and asynchronous,
        # the block sizes stay on the CPU (the host plans the noise and the mask from them), and
        # the loss adds up on the device in float64 (the sum Python's floats gave), read once
        # per optimizer step.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for micro in range(tc.grad_accum):
            idx = batch_indices(
                len(train_rows), tc.batch_size, step * tc.grad_accum + micro, tc.seed, rank, world
            )
            x0 = to_device(train_rows.batch(idx), device)
            sizes = sample_block_sizes(tc.block_dist, len(x0))
            sync = world == 1 or micro == tc.grad_accum - 1
            with nullcontext() if sync else net.no_sync(), autocast:
                res = compute_loss(net, run, x0, sizes, intervals)
            (res.loss / tc.grad_accum).backward()
            loss_sum += res.loss.detach().double() / tc.grad_accum
            tokens += x0.numel() * world
        total = loss_sum.item()
        if not math.isfinite(total):
            raise DindError(f"loss became {total} at step {step + 1}; lower --lr")
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if tc.grad_clip > 0
            else torch.tensor(0.0)
        )
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{total:.3f}")
        if done % tc.log_every == 0 or done == tc.max_steps:
            last = {
                "step": done,
                "loss": total,
                "lr": sched.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens": tokens,
                "tokens_per_s": tokens / max(time.time() - t0, 1e-9),
            }
            log(last)
        if (tc.eval_every and done % tc.eval_every == 0) or done == tc.max_steps:
            last = run_eval(done)
            if rank == 0 and progress:
                bar.write(
                    f"step {done}: val NELBO {last['val_nelbo']:.4f} (ppl <= {last['val_ppl']:.2f})"
                    + (f"; noise intervals {format_intervals(intervals)}"
                       if tc.objective == "bd3" else "")
                )  # fmt: skip
            save(done)
            if world > 1:
                dist.barrier()
    bar.close()
    if world > 1:
        last = {**last, "replica_max_abs_diff": _replica_divergence(model)}
        log({"step": tc.max_steps, "replica_max_abs_diff": last["replica_max_abs_diff"]})
        dist.destroy_process_group()
    return last


@torch.no_grad()
def _replica_divergence(model: torch.nn.Module) -> float:
    """Largest |w_rank - w_rank0| over all weights and ranks (0.0 when DDP keeps them equal)."""
    flat = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    diff = (flat - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
