"""Checkpoints as Hugging Face-style folders in BD3-LM's layout, written atomically.

A checkpoint folder holds:
- ``config.json``: BD3-LM's hub fields (``block_size``, ``model_length``, ``hidden_dim``, ...)
  plus the full resolved dind config under ``"dind"``;
- ``model.safetensors``: the EMA weights under BD3-LM's keys (``backbone.*``) and the 0-d
  buffers ``sampling_eps_min`` / ``sampling_eps_max`` (the draft block size's noise interval;
  the interval of every block size trained on is under ``"dind_noise_intervals"`` in
  ``config.json``);
- ``tokenizer.json`` / ``tokenizer_config.json``: the tokenizer travels with the weights;
- ``training_state.pt`` (training runs only): raw weights, optimizer, step; plain tensors,
  loaded with ``weights_only=True``.

BD3-LM's own folders (hub ids such as ``kuleshov-group/bd3lm-owt-block_size4``, or a local
folder with their ``config.json`` and ``model.safetensors`` or legacy ``pytorch_model.bin``)
load the same way: their config fields map onto ``ModelConfig``, and since they carry no
tokenizer, vocabulary 50258 means GPT-2's with mask id 50257.

Writes are crash-safe at every instant (``save_checkpoint``): the new copy is built in a hidden
sibling ``.NAME.tmp-*`` and fsynced; renamed ``.NAME.new-<time>-*`` once complete; the old copy
is renamed aside to ``.NAME.old-<time>-*``; the new one is renamed to ``NAME``; the old one is
deleted. A kill between two renames leaves no ``NAME`` for a moment, so the loader
(``resolve``, used by ``load_checkpoint``, ``load_training_state`` and ``load_tokenizer``)
takes the newest complete copy among ``NAME`` and its ``.new``/``.old`` siblings, and the
next save puts everything back in order (stale temporaries included). Only ``.tmp`` folders
can be incomplete, and nothing ever loads them. One writer per checkpoint folder (in a
distributed run, rank 0 saves).

Loading is strict: a missing, unexpected or mis-shaped key is named in the error, never
silently left at its initial value, and non-finite weights (a diverged run) are refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dind.config import BlockSizeDistribution, ModelConfig, RunConfig, TrainConfig
from dind.errors import DindError
from dind.model import DiT
from dind.noise import DEFAULT_EPS_MAX, DEFAULT_EPS_MIN, Intervals
from dind.tokenizer import Tokenizer
from dind.utils import (
    atomic_write,
    check_writable_dir,
    fsync_dir,
    fsync_tree,
    make_staging,
    set_file_mode,
)

PREFIX = "backbone."
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING_STATE = "training_state.pt"
INTERVALS_KEY = "dind_noise_intervals"


@dataclass
class Checkpoint:
    model: DiT
    run_config: RunConfig
    tokenizer: Tokenizer
    intervals: Intervals
    """The clipped noise interval of each block size the model was trained with."""
    path: Path

    @property
    def eps_min(self) -> float:
        """BD3-LM's ``sampling_eps_min``: the draft block size's beta."""
        return draft_interval(self.run_config, self.intervals)[0]

    @property
    def eps_max(self) -> float:
        return draft_interval(self.run_config, self.intervals)[1]


def draft_block_size(run: RunConfig) -> int:
    """The block size a model drafts with, which its ``config.json`` names and its training
    run reports as ``val_nelbo``: P_B's draft size, 1 for an AR model."""
    return 1 if run.model.causal else run.train.block_dist.draft


def draft_interval(run: RunConfig, intervals: Intervals) -> tuple[float, float]:
    """The interval BD3-LM's single pair of buffers holds: the draft block size's."""
    return intervals.get(run.train.block_dist.draft, (DEFAULT_EPS_MIN, DEFAULT_EPS_MAX))


def intervals_to_json(intervals: Intervals) -> dict[str, list[float]]:
    return {str(b): [lo, hi] for b, (lo, hi) in sorted(intervals.items())}


def intervals_from_json(obj: dict) -> Intervals:
    return {int(b): (float(lo), float(hi)) for b, (lo, hi) in obj.items()}


def bd3lm_config_fields(run: RunConfig, eps_min: float, eps_max: float) -> dict[str, Any]:
    """BD3-LM's ``config.json`` fields for this model."""
    m = run.model
    return {
        "model_type": "bd3lm",
        "block_size": draft_block_size(run),
        "vocab_size": m.vocab_size,
        "model_length": m.seq_len,
        "cross_attn": not m.causal,
        "adaln": True,
        "attn_backend": m.attn_backend,
        "causal": m.causal,
        "hidden_dim": m.hidden_dim,
        "cond_dim": m.cond_dim,
        "n_blocks": m.n_blocks,
        "n_heads": m.n_heads,
        "dropout": m.dropout,
        "time_conditioning": m.time_conditioning,
        "var_min": True,
        "sampling_eps_min": eps_min,
        "sampling_eps_max": eps_max,
    }


def state_dict_for_save(model: DiT, eps_min: float, eps_max: float) -> dict[str, torch.Tensor]:
    sd = {PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd["sampling_eps_min"] = torch.tensor(float(eps_min))
    sd["sampling_eps_max"] = torch.tensor(float(eps_max))
    return sd


def save_checkpoint(
    path: str | Path,
    model: DiT,
    run: RunConfig,
    tokenizer: Tokenizer,
    intervals: Intervals,
    training_state: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder at ``path``, replacing any old one, so that a
    complete copy survives a kill at any instant (module docstring). ``extra_config``: more
    ``config.json`` fields."""
    path = Path(path)
    for stale in _copies(path, STAGING):  # a killed save's partial folder
        shutil.rmtree(stale, ignore_errors=True)
    tmp = make_staging(path, STAGING)
    staged = None
    try:
        eps_min, eps_max = draft_interval(run, intervals)
        save_file(state_dict_for_save(model, eps_min, eps_max), str(tmp / WEIGHTS))
        set_file_mode(tmp / WEIGHTS)  # safetensors writes it owner-only
        config = bd3lm_config_fields(run, eps_min, eps_max)
        config["dind"] = run.to_dict()
        config[INTERVALS_KEY] = intervals_to_json(intervals)
        config.update(extra_config or {})
        atomic_write(tmp / CONFIG, json.dumps(config, indent=2))
        tokenizer.save(tmp)
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE)
        fsync_tree(tmp)
        staged = _copy_name(path, COMPLETE)
        os.replace(tmp, staged)  # complete from here on: the loader may take it
        if path.exists():
            os.replace(path, _copy_name(path, ASIDE))
        os.replace(staged, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if staged is not None and staged.exists():
            if path.exists():  # stopped before the switch: the old copy stays, whole
                shutil.rmtree(staged, ignore_errors=True)
            else:  # stopped between the two renames: the new copy is complete, put it in place
                with contextlib.suppress(OSError):  # else the loader still finds it
                    os.replace(staged, path)
        raise
    for tag in (COMPLETE, ASIDE, STAGING):  # older copies, now superseded
        for p in _copies(path, tag):
            shutil.rmtree(p, ignore_errors=True)
    return path


STAGING, COMPLETE, ASIDE = "tmp", "new", "old"
"""Tags of a checkpoint folder's hidden siblings: being written (possibly incomplete), complete
but not yet in place, and the previous copy moved aside."""


def _copy_name(path: Path, tag: str) -> Path:
    # The time first: names sort in the order the copies were made.
    return path.with_name(f".{path.name}.{tag}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}")


def _copies(path: Path, tag: str) -> list[Path]:
    """The hidden ``.NAME.TAG-*`` siblings of ``path``, newest first."""
    prefix = f".{path.name}.{tag}-"
    try:
        found = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:  # no parent folder, or not a folder
        return []
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_complete(path: str | Path) -> Path | None:
    """The newest complete copy of the checkpoint folder ``path``: ``path`` itself, or the
    hidden copy a save had made or moved aside when it was killed (module docstring); None
    when there is none. A complete copy has its ``config.json``; the newest has the newest
    one."""
    path = Path(path)
    candidates = [p for p in [path, *_copies(path, COMPLETE), *_copies(path, ASIDE)]
                  if (p / CONFIG).is_file()]  # fmt: skip
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    return max(candidates, key=lambda p: (p / CONFIG).stat().st_mtime_ns)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LEGACY_WEIGHTS = "pytorch_model.bin"
# BD3-LM's modelling code lives in its hub repositories; exports point there for users who
# load them with transformers (trust_remote_code=True).
BD3LM_CODE_REPO = "kuleshov-group/bd3lm-owt-block_size4"


def download(repo_id: str) -> Path:
    """A hub checkpoint (e.g. ``kuleshov-group/bd3lm-owt-block_size4``) in the local HF cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            repo_id, allow_patterns=["config.json", "*.safetensors", "*.bin", "tokenizer*"]
        ))  # fmt: skip
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DindError(f"cannot download {repo_id} from the Hugging Face hub: {reason}") from None


def resolve(path: str | Path) -> Path:
    """A run folder stands for its latest checkpoint (``RUN/checkpoint``), a checkpoint folder
    for its newest complete copy (``latest_complete``); ``owner/name`` that is not a local
    folder is a hub id."""
    path = Path(path)
    found = latest_complete(path / "checkpoint") or latest_complete(path)
    if found is not None:
        return found
    if not path.exists() and HUB_ID.match(str(path)):
        path = download(str(path))
    if not path.exists():
        raise DindError(f"checkpoint not found: {path}")
    if not (path / CONFIG).exists():
        raise DindError(f"{path} is not a checkpoint folder (no {CONFIG})")
    return path


def _read_config_json(path: Path) -> dict[str, Any]:
    """``config.json`` as a dict; anything else is a one-line error."""
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DindError(f"cannot read {path / CONFIG}: {e}") from None
    if not isinstance(config, dict):
        raise DindError(f"{path / CONFIG} is not a checkpoint config (not a JSON object)")
    return config


def read_config(path: Path) -> RunConfig:
    config = _read_config_json(path)
    if "dind" in config:
        if not isinstance(config["dind"], dict):
            raise DindError(f"{path / CONFIG}: its 'dind' entry is not a JSON object")
        return RunConfig.from_dict(config["dind"])
    # A BD3-LM folder: map its fields (its vocabulary is GPT-2's plus the mask token).
    try:
        model = ModelConfig(
            vocab_size=config["vocab_size"],
            mask_id=config["vocab_size"] - 1,
            seq_len=config["model_length"],
            hidden_dim=config["hidden_dim"],
            cond_dim=config["cond_dim"],
            n_blocks=config["n_blocks"],
            n_heads=config["n_heads"],
            dropout=config.get("dropout", 0.1),
            time_conditioning=config.get("time_conditioning", False),
            causal=config.get("causal", False),
        )
    except KeyError as e:
        raise DindError(f"{path / CONFIG} lacks the BD3-LM field {e}") from None
    train = TrainConfig(tokenizer="gpt2")
    block_size = config.get("block_size")
    if isinstance(block_size, int) and block_size > 0 and model.seq_len % block_size == 0:
        # the block size it was trained at: its sampling_eps_min/max belong to that size
        train.block_dist = BlockSizeDistribution((block_size,), (1.0,))
    return RunConfig(model=model, train=train, preset="bd3lm")


def load_state_dict_strict(model: DiT, sd: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``backbone.*`` tensors into ``model``, naming every key that does not match."""
    expected = {PREFIX + k: v.shape for k, v in model.state_dict().items()}
    got = {k: v for k, v in sd.items() if k not in ("sampling_eps_min", "sampling_eps_max")}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mis_shaped = [
        f"{k} {tuple(got[k].shape)} != {tuple(expected[k])}"
        for k in sorted(set(got) & set(expected))
        if tuple(got[k].shape) != tuple(expected[k])
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", mis_shaped)):
        if items:
            shown = ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise DindError(f"weights in {source} do not match the model: " + "; ".join(problems))
    model.load_state_dict({k[len(PREFIX) :]: v for k, v in got.items()}, strict=True)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """``model.safetensors``, else a legacy ``pytorch_model.bin`` loaded with
    ``weights_only=True`` (plain tensors only: nothing in the file gets to run code)."""
    file = path / WEIGHTS
    if file.exists():
        try:
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError) as e:
            raise DindError(f"{file} is corrupt or unreadable: {str(e).splitlines()[0]}") from None
    legacy = path / LEGACY_WEIGHTS
    if not legacy.exists():
        raise DindError(f"{path} has no {WEIGHTS} or {LEGACY_WEIGHTS}")
    try:
        sd = torch.load(legacy, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DindError(
            f"{legacy} needs more than plain tensors to load (refused: it could run code)"
        ) from None
    except Exception as e:
        raise DindError(
            f"{legacy} is corrupt or unreadable: {str(e).splitlines()[0][:160]}"
        ) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]  # a Lightning checkpoint
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DindError(f"{legacy} is not a state dict of tensors")
    return sd


def check_finite(sd: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse weights holding NaN or inf (a diverged run): they would sample garbage, or NaN
    probabilities, without a word."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DindError(f"{source} holds non-finite weights (NaN or inf) in {bad[0]}{more}: "
                        "the run diverged; use an earlier checkpoint")  # fmt: skip


def _tokenizer_for(path: Path, run: RunConfig) -> Tokenizer:
    if (path / "tokenizer.json").exists():
        return Tokenizer.load(path)
    if run.model.vocab_size == 50258:  # BD3-LM folders carry none: GPT-2's, mask id 50257
        from dind.tokenizer import gpt2_tokenizer

        return gpt2_tokenizer()
    raise DindError(
        f"{path} has no tokenizer and its vocabulary ({run.model.vocab_size}) is not GPT-2's"
    )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint (or run folder) without loading its weights."""
    path = resolve(path)
    return _tokenizer_for(path, read_config(path))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint (or a run folder's latest) strictly; returns the model in eval mode."""
    path = resolve(path)
    run = read_config(path)
    tokenizer = _tokenizer_for(path, run)
    if tokenizer.vocab_size != run.model.vocab_size:
        raise DindError(
            f"tokenizer in {path} has {tokenizer.vocab_size} ids but the model "
            f"{run.model.vocab_size}"
        )
    sd = read_weights(path)
    check_finite(sd, path / WEIGHTS)
    model = DiT(run.model)
    load_state_dict_strict(model, sd, str(path / WEIGHTS))
    eps = (float(sd.get("sampling_eps_min", torch.tensor(DEFAULT_EPS_MIN))),
           float(sd.get("sampling_eps_max", torch.tensor(DEFAULT_EPS_MAX))))  # fmt: skip
    intervals = _read_intervals(path) or {run.train.block_dist.draft: eps}
    return Checkpoint(model.to(device).eval(), run, tokenizer, intervals, path)


def _read_intervals(path: Path) -> Intervals:
    """The per-block-size intervals a dind checkpoint records; BD3-LM's folders (and dind's
    before they were recorded) have only the draft size's pair of buffers."""
    config = _read_config_json(path)
    try:
        return intervals_from_json(config.get(INTERVALS_KEY) or {})
    except (TypeError, ValueError, AttributeError):
        raise DindError(f"{path / CONFIG}: {INTERVALS_KEY} is not a map of intervals") from None


def export_checkpoint(src: str | Path, dest: str | Path) -> Path:
    """Write ``src`` (a dind run, a checkpoint, a BD3-LM folder or hub id) as a folder BD3-LM's
    own loading code accepts: its ``config.json`` fields (plus an ``auto_map`` to its modelling
    code on the hub), ``model.safetensors`` in its key layout, and the tokenizer."""
    dest = check_writable_dir(dest, "export destination")  # before loading anything
    if dest.exists() and any(dest.iterdir()):
        raise DindError(f"{dest} exists and is not empty")
    ck = load_checkpoint(src)
    extra = {
        "architectures": ["BD3LM"],
        "auto_map": {
            "AutoConfig": f"{BD3LM_CODE_REPO}--configuration_bd3lm.BD3LMConfig",
            "AutoModelForMaskedLM": f"{BD3LM_CODE_REPO}--modeling_bd3lm.BD3LM",
        },
    }
    return save_checkpoint(dest, ck.model, ck.run_config, ck.tokenizer, ck.intervals,
                           extra_config=extra)  # fmt: skip


def load_training_state(path: str | Path) -> dict[str, Any]:
    path = resolve(path)
    file = path / TRAINING_STATE
    if not file.exists():
        raise DindError(f"{path} has no {TRAINING_STATE}: it cannot be resumed")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # any unpickling failure means the file is not usable
        raise DindError(f"{file} is corrupt or not a dind training state") from None
