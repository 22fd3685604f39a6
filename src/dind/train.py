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
- ``train`` never changes the config it is given: the run trains a resolved copy (the
  tokenizer's vocabulary, causal attention for AR), which ``run.json`` records.
- ``metrics.jsonl`` is strict JSON, one record a line (a non-finite number is null). A kill
  can leave a partial last line: ``--resume`` drops it (and says so), with the records after
  the checkpoint it resumes from. A folder killed before its first checkpoint resumes from
  nothing (step 0); a fresh run refuses it and says to pass ``--resume`` or delete it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from dind import checkpoint as ckpt
from dind import metrics, noise
from dind.config import RunConfig
from dind.data import TokenRows, batch_indices, load_corpus, prepare_data, tokenized_folder
from dind.devices import to_device
from dind.distributed import Process, replica_divergence, seed_step
from dind.ema import EMA
from dind.errors import DindError
from dind.evaluate import mean_nelbo
from dind.loss import LossOutput, ar_loss, bd3_loss
from dind.metrics import METRICS
from dind.mixed_scale import sample_block_sizes
from dind.model import DiT
from dind.tokenizer import Tokenizer, get_tokenizer
from dind.utils import atomic_write

RUN_CONFIG = "run.json"


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and list(va) == list(vb or [])):
            diffs.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return diffs


# Fields a resumed run may change: how long it runs, how often and on how many held-out
# batches it reports.
RESUMABLE_CHANGES = {"max_steps", "eval_every", "eval_batches", "log_every", "compile"}


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


def _val_key(run: RunConfig, block_size: int) -> str:
    return "val_nll" if run.model.causal else f"val_nelbo_bs{block_size}"


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
    out: dict[str, Any] = {}
    for bs in [1] if run.model.causal else tc.block_dist.block_sizes:
        out[_val_key(run, bs)], _ = mean_nelbo(
            model, run.model, batches, bs, tc.noise.antithetic, autocast
        )
    primary = out[_val_key(run, ckpt.draft_block_size(run))]
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


# ----------------------------------------------------------------------------- set-up


def _resolved(run: RunConfig, vocab_size: int, mask_id: int) -> RunConfig:
    """A copy of ``run`` completed as it trains: the vocabulary and mask id of its tokenizer,
    causal attention for the AR objective (``run`` itself is left as it is)."""
    model = dataclasses.replace(
        run.model, vocab_size=vocab_size, mask_id=mask_id, causal=run.train.objective == "ar"
    )
    return dataclasses.replace(run, model=model)


def _check_folder(run: RunConfig, out: Path, resume: bool) -> bool:
    """Whether ``out`` holds a checkpoint to resume from. A fresh run needs a folder holding
    no run; ``--resume`` one whose ``run.json`` matches ``run`` except in
    ``RESUMABLE_CHANGES`` (without a checkpoint yet it starts over from step 0)."""
    # a save killed between its renames leaves a complete hidden copy: that counts
    has_checkpoint = ckpt.latest_complete(out / "checkpoint") is not None
    if not resume:
        if has_checkpoint:
            raise DindError(f"{out} already holds a run; pass --resume or choose another --out")
        if (out / RUN_CONFIG).exists() or (out / METRICS).exists():
            raise DindError(
                f"{out} holds a run stopped before its first checkpoint: pass --resume to "
                "start it over from step 0, or delete the folder"
            )
        return False
    if not (out / RUN_CONFIG).exists():
        raise DindError(f"--resume: {out} holds no run to resume")
    try:
        saved = RunConfig.from_dict(json.loads((out / RUN_CONFIG).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DindError(f"--resume: {out / RUN_CONFIG} is not JSON; delete the folder") from None
    given = _resolved(run, saved.model.vocab_size, saved.model.mask_id)
    diffs = [
        d
        for d in _config_diff(saved.to_dict(), given.to_dict())
        if d.split(":")[0].split(".")[-1] not in RESUMABLE_CHANGES
    ]
    if diffs:
        raise DindError(f"--resume with a different config ({'; '.join(diffs[:3])})")
    return has_checkpoint


def _prepare(
    run: RunConfig, out: Path, proc: Process, init_from: str | Path | None
) -> tuple[RunConfig, ckpt.Checkpoint | None, Tokenizer, TokenRows, TokenRows]:
    """The resolved run, the checkpoint fine-tuned from (or None), the tokenizer and the train
    and held-out rows; writes ``tokenizer/`` and ``run.json``. A failure leaves no run folder
    that this call created."""
    created = not out.exists()
    try:
        if init_from is not None:
            source = ckpt.load_checkpoint(init_from)
            tokenizer = source.tokenizer
            if proc.rank == 0:
                tokenizer.save(out / "tokenizer")
        else:
            source = None
            if proc.rank == 0:
                out.mkdir(parents=True, exist_ok=True)
            proc.barrier()
            tokenizer = _build_tokenizer(run, out, proc.rank, proc.world)
        run = _resolved(run, tokenizer.vocab_size, tokenizer.mask_id)
        if run.model.attn_backend == "flex" and proc.device.type != "cuda":
            raise DindError("attn_backend 'flex' needs a CUDA device; use 'sdpa' on CPU")
        if run.train.objective == "bd3":
            run.train.block_dist.check_divides(run.model.seq_len)
        rows = prepare_data(run.train.corpus, tokenizer, run.model.seq_len)
    except BaseException:
        if created and proc.rank == 0:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if proc.rank == 0:
        atomic_write(out / RUN_CONFIG, json.dumps(run.to_dict(), indent=2))
    return run, source, tokenizer, *rows


def _set_up(
    run: RunConfig, out: Path, proc: Process, resume: bool, init_from: str | Path | None
) -> _Trainer:
    """Everything the loop needs, from scratch, a checkpoint fine-tuned from or the training
    state resumed from."""
    state = ckpt.load_training_state(out) if _check_folder(run, out, resume) else None
    run, source, tokenizer, train_rows, val_rows = _prepare(run, out, proc, init_from)
    tc = run.train
    torch.manual_seed(tc.seed)
    model = DiT(run.model).to(proc.device)
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
        start, intervals = _restore(state, model, opt, sched, ema, intervals)
    if resume and proc.rank == 0:  # records after the state resumed from are redone
        if state is None:
            print(f"{out} has no checkpoint yet: starting over from step 0", file=sys.stderr)
        metrics.truncate(out / METRICS, start if state is not None else None)
    net = torch.compile(model) if tc.compile else model
    if proc.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[proc.local_rank] if proc.device.type == "cuda" else None
        )
    use_bf16 = tc.bf16 and proc.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    return _Trainer(run, out, proc, tokenizer, train_rows, val_rows, model, net, opt, sched, ema,
                    intervals, start, autocast)  # fmt: skip


def _restore(state, model, opt, sched, ema, intervals) -> tuple[int, noise.Intervals]:
    """Load a training state into the model, optimizer, scheduler and EMA; its step and noise
    intervals."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    if "intervals" in state:
        intervals = ckpt.intervals_from_json(state["intervals"])
    else:  # a state saved before intervals were per block size: one pair for all
        intervals = dict.fromkeys(intervals, (float(state["eps_min"]), float(state["eps_max"])))
    return int(state["step"]), intervals


# ----------------------------------------------------------------------------- the loop


@dataclass
class _Trainer:
    """One process's share of a run: its data, model (``net``: compiled and/or DDP-wrapped),
    optimizer, EMA and the current noise intervals, from step ``start`` on."""

    run: RunConfig
    out: Path
    proc: Process
    tokenizer: Tokenizer
    train_rows: TokenRows
    val_rows: TokenRows
    model: DiT
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    intervals: noise.Intervals
    start: int
    autocast: Any

    def fit(self, progress: bool) -> dict[str, Any]:
        """Train to ``max_steps``: log every ``log_every`` steps, validate and save every
        ``eval_every`` and at the end (validate first when starting at step 0); returns the
        last record."""
        tc = self.run.train
        last = self.validate(0) if self.start == 0 else {}
        self.model.train()
        bar = tqdm(
            total=tc.max_steps,
            initial=self.start,
            disable=not progress or self.proc.rank != 0,
            desc="train",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        t0, tokens = time.time(), 0
        for step in range(self.start, tc.max_steps):
            loss, grad_norm, step_tokens = self.step(step)
            tokens += step_tokens
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if done % tc.log_every == 0 or done == tc.max_steps:
                last = {
                    "step": done,
                    "loss": loss,
                    "lr": self.sched.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "tokens": tokens,
                    "tokens_per_s": tokens / max(time.time() - t0, 1e-9),
                }
                self.log(last)
            if (tc.eval_every and done % tc.eval_every == 0) or done == tc.max_steps:
                last = self.validate(done)
                if self.proc.rank == 0 and progress:
                    bar.write(self.summary(last))
                self.save(done)
                self.proc.barrier()
        bar.close()
        return last

    def step(self, step: int) -> tuple[float, torch.Tensor, int]:
        """One optimizer step: its loss, the gradient norm before clipping, the tokens seen."""
        tc, proc = self.run.train, self.proc
        seed_step(tc.seed, step, proc.rank)
        # A micro-step never waits for the device: the batch goes over pinned and asynchronous,
        # the block sizes stay on the CPU (the host plans the noise and the mask from them), and
        # the loss adds up on the device in float64 (the sum Python's floats gave), read once
        # per optimizer step.
        loss_sum = torch.zeros((), dtype=torch.float64, device=proc.device)
        tokens = 0
        for micro in range(tc.grad_accum):
            at = step * tc.grad_accum + micro
            idx = batch_indices(
                len(self.train_rows), tc.batch_size, at, tc.seed, proc.rank, proc.world
            )
            x0 = to_device(self.train_rows.batch(idx), proc.device)
            sizes = sample_block_sizes(tc.block_dist, len(x0))
            sync = proc.world == 1 or micro == tc.grad_accum - 1
            with nullcontext() if sync else self.net.no_sync(), self.autocast:
                res = compute_loss(self.net, self.run, x0, sizes, self.intervals)
            (res.loss / tc.grad_accum).backward()
            loss_sum += res.loss.detach().double() / tc.grad_accum
            tokens += x0.numel() * proc.world
        total = loss_sum.item()
        if not math.isfinite(total):
            raise DindError(f"loss became {total} at step {step + 1}; lower --lr")
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            if tc.grad_clip > 0
            else torch.tensor(0.0)
        )
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        return total, grad_norm, tokens

    def validate(self, step: int) -> dict[str, Any]:
        """``evaluate`` the EMA weights; the search's intervals train the next steps."""
        if self.ema is not None:
            self.ema.swap(self.model)
        self.model.eval()
        metrics = evaluate(self.model, self.run, self.val_rows, self.proc.device, self.autocast)
        self.model.train()
        if self.ema is not None:
            self.ema.swap(self.model)
        if "intervals" in metrics:
            self.intervals = ckpt.intervals_from_json(metrics["intervals"])
        record = {"step": step, **metrics}
        self.log(record)
        return record

    def save(self, step: int) -> None:
        """Rank 0 writes the checkpoint: the EMA weights, and the raw ones and the optimizer
        in ``training_state.pt``."""
        if self.proc.rank != 0:
            return
        model, ema = self.model, self.ema
        # Cloned: the EMA swap below overwrites the parameters these would alias.
        training_state = {
            "step": step,
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "ema": ({"num_updates": ema.num_updates, "shadow": [s.clone() for s in ema.shadow]}
                    if ema else {}),
            "intervals": ckpt.intervals_to_json(self.intervals),
        }  # fmt: skip
        if ema is not None:
            ema.swap(model)
        try:
            ckpt.save_checkpoint(self.out / "checkpoint", model, self.run, self.tokenizer,
                                 self.intervals, training_state)  # fmt: skip
        finally:
            if ema is not None:
                ema.swap(model)

    def summary(self, record: dict[str, Any]) -> str:
        """A validation record as the progress bar prints it."""
        line = f"step {record['step']}: val NELBO {record['val_nelbo']:.4f} (ppl <= "
        line += f"{record['val_ppl']:.2f})"
        if self.run.train.objective == "bd3":
            line += f"; noise intervals {format_intervals(self.intervals)}"
        return line

    def log(self, record: dict[str, Any]) -> None:
        if self.proc.rank == 0:
            metrics.append(self.out / METRICS, record)


# ----------------------------------------------------------------------------- the run


def train(
    run: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``run`` into ``out_dir`` (on every rank under torchrun); returns the last metrics
    record. ``run`` is not changed: the run folder's ``run.json`` holds it as trained."""
    proc = Process.join()
    trainer = _set_up(run, Path(out_dir), proc, resume, init_from)
    last = trainer.fit(progress)
    if proc.world > 1:
        diff = replica_divergence(trainer.model)
        last = {**last, "replica_max_abs_diff": diff}
        trainer.log({"step": trainer.run.train.max_steps, "replica_max_abs_diff": diff})
        dist.destroy_process_group()
    return last
