"""Checkpoints on disk: a complete copy survives a kill (or a Ctrl-C) at any instant of a save,
stale temporaries are cleaned, files are 0644, and broken folders fail on one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat

import pytest
import torch

from dind import checkpoint as ckpt
from dind.config import ModelConfig, RunConfig, TrainConfig
from dind.errors import DindError
from dind.model import DiT
from dind.tokenizer import train_bpe

TEXT = ["the king and queen walk to the castle by night while a ghost speaks of old wars"] * 4


@pytest.fixture(scope="module")
def parts():
    tokenizer = train_bpe(TEXT, 300)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, seq_len=16,
                      hidden_dim=32, cond_dim=16, n_blocks=1, n_heads=2, dropout=0.0)  # fmt: skip
    run = RunConfig(model=cfg, train=TrainConfig(tokenizer="bpe"))
    models = []
    for seed in range(3):  # three different copies: the old one, the new one, one after that
        torch.manual_seed(seed)
        model = DiT(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.1)
        models.append(model)
    return run, tokenizer, models


def save(path, parts, version: int):
    run, tokenizer, models = parts
    state = {"step": version, "model": models[version].state_dict()}
    return ckpt.save_checkpoint(path, models[version], run, tokenizer, {4: (1e-3, 1.0)}, state)


def version_of(path, parts) -> int:
    """Which of the fixture's models the checkpoint at ``path`` holds (loaded the user's way)."""
    _, _, models = parts
    loaded = ckpt.load_checkpoint(path).model.state_dict()
    matches = [i for i, m in enumerate(models)
               if all(torch.equal(loaded[k], v) for k, v in m.state_dict().items())]  # fmt: skip
    assert len(matches) == 1
    assert ckpt.load_training_state(path)["step"] == matches[0]  # the same copy's state
    return matches[0]


class Killed(BaseException):
    """The process died: no handler of ours may run any file operation after it."""


FILE_OPS = [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "remove"), (os, "rmdir"),
            (shutil, "rmtree")]  # fmt: skip


def kill_at(monkeypatch, k: int | None) -> list[tuple[str, tuple]]:
    """From the ``k``-th file operation on (1-based; None: never), every file operation raises
    ``Killed`` instead of running: what a SIGKILL at that instant leaves on disk, handlers and
    all. Returns the log of the operations that ran."""
    log: list[tuple[str, tuple]] = []
    dead = [False]
    for module, name in FILE_OPS:
        real = getattr(module, name)

        def op(*args, _real=real, _name=name, **kwargs):
            if dead[0] or (k is not None and len(log) + 1 == k):
                dead[0] = True
                raise Killed(_name)
            log.append((_name, args))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, op)
    return log


def interrupt_at(k: int, real):
    """``real`` (os.replace), raising KeyboardInterrupt instead at its ``k``-th call."""
    calls = [0]

    def replace(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return replace


def hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_kill_at_any_instant_of_a_save_leaves_the_newest_complete_copy(
    tmp_path, parts, monkeypatch
):
    """Kill the save of copy 1 over copy 0 at each of its file operations in turn: the run
    still loads (weights and training state of one copy), the new copy as soon as it was
    complete, and the next save puts everything in order. (The old code: killed between its
    two renames, it left no ``checkpoint/`` at all and both copies hidden.)"""
    run_dir = tmp_path / "dry"
    save(run_dir / "checkpoint", parts, 0)
    with monkeypatch.context() as m:
        log = kill_at(m, None)
        save(run_dir / "checkpoint", parts, 1)
    n_ops = len(log)
    assert n_ops >= 3
    versions = []
    for k in range(1, n_ops + 1):
        run_dir = tmp_path / f"run{k}"
        save(run_dir / "checkpoint", parts, 0)
        with monkeypatch.context() as m:
            kill_at(m, k)
            with pytest.raises(Killed):
                save(run_dir / "checkpoint", parts, 1)
        versions.append(version_of(run_dir, parts))
        assert ckpt.load_tokenizer(run_dir).vocab_size == parts[1].vocab_size
        # the next save (a resumed run's) leaves exactly one copy, in place, nothing hidden
        save(run_dir / "checkpoint", parts, 2)
        assert version_of(run_dir, parts) == 2
        assert hidden(run_dir) == [], k
        assert ckpt.resolve(run_dir) == run_dir / "checkpoint"
    # never back to the old copy once the new one was complete; complete before the last op
    assert versions == sorted(versions) and versions[-1] == 1, versions


def test_a_ctrl_c_at_any_instant_of_a_save_leaves_a_visible_complete_checkpoint(
    tmp_path, parts, monkeypatch
):
    """A KeyboardInterrupt at each file operation: the handlers run, and ``checkpoint/`` is
    there, whole (the old code hid the old copy and deleted the new one)."""
    run_dir = tmp_path / "dry"
    save(run_dir / "checkpoint", parts, 0)
    with monkeypatch.context() as m:
        log = kill_at(m, None)
        save(run_dir / "checkpoint", parts, 1)
    n_ops = sum(name == "replace" for name, _ in log)
    assert n_ops >= 2
    for k in range(1, n_ops + 1):
        run_dir = tmp_path / f"run{k}"
        save(run_dir / "checkpoint", parts, 0)
        with monkeypatch.context() as m:
            m.setattr(os, "replace", interrupt_at(k, os.replace))
            with contextlib.suppress(KeyboardInterrupt):
                save(run_dir / "checkpoint", parts, 1)
        assert (run_dir / "checkpoint" / ckpt.CONFIG).is_file(), (k, hidden(run_dir))
        assert ckpt.resolve(run_dir) == run_dir / "checkpoint"
        assert version_of(run_dir, parts) in (0, 1)
        assert not [n for n in hidden(run_dir) if ".tmp-" in n or ".new-" in n]


def test_a_killed_save_leaves_a_temporary_the_next_save_removes(tmp_path, parts, monkeypatch):
    path = tmp_path / "run" / "checkpoint"
    save(path, parts, 0)

    def dies_mid_write(sd, file):
        with open(file, "wb") as f:
            f.write(b"half a file")
        raise Killed

    with monkeypatch.context() as m:
        kill_at(m, 1)  # no cleanup may run either
        m.setattr(ckpt, "save_file", dies_mid_write)
        with pytest.raises(Killed):
            save(path, parts, 1)
    stale = hidden(path.parent)
    assert len(stale) == 1 and ".tmp-" in stale[0]  # the partial copy: never loaded
    assert version_of(path.parent, parts) == 0
    save(path, parts, 1)
    assert hidden(path.parent) == [] and version_of(path.parent, parts) == 1


def test_every_checkpoint_file_is_0644(tmp_path, parts):
    path = save(tmp_path / "checkpoint", parts, 0)
    umask = os.umask(0o022)
    os.umask(umask)
    files = sorted(p.name for p in path.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "training_state.pt"]  # fmt: skip
    for p in path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644 & ~umask, p.name


def test_export_writes_its_config_once_and_refuses_a_file(tmp_path, parts):
    src = save(tmp_path / "run" / "checkpoint", parts, 0)
    dest = ckpt.export_checkpoint(tmp_path / "run", tmp_path / "export")
    config = json.loads((dest / "config.json").read_text())
    assert config["architectures"] == ["BD3LM"] and "auto_map" in config
    assert config["dind"] == json.loads((src / "config.json").read_text())["dind"]
    assert hidden(tmp_path) == []
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(DindError, match="export destination"):
            ckpt.export_checkpoint(tmp_path / "run", bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path, parts, value):
    run, tokenizer, models = parts
    broken = DiT(run.model)
    broken.load_state_dict(models[0].state_dict())
    with torch.no_grad():
        next(broken.parameters()).fill_(value)
    ckpt.save_checkpoint(tmp_path / "ck", broken, run, tokenizer, {4: (1e-3, 1.0)})
    with pytest.raises(DindError, match="non-finite weights"):
        ckpt.load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize("body", ["[1, 2, 3]", '"text"', '{"dind": [1]}', "\xff\xfe"])
def test_a_config_that_is_not_an_object_is_one_error(tmp_path, parts, body):
    path = save(tmp_path / "ck", parts, 0)
    (path / "config.json").write_bytes(body.encode("latin-1"))
    with pytest.raises(DindError, match="config.json"):
        ckpt.load_checkpoint(path)


def test_a_tokenizer_config_that_is_not_an_object_is_one_error(tmp_path, parts):
    path = save(tmp_path / "ck", parts, 0)
    (path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(DindError, match="not a tokenizer config"):
        ckpt.load_tokenizer(path)
