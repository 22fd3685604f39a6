"""The command line's faults and bad inputs: each ends in one ``error:`` line (exit 2), before
any expensive work where the input alone shows the problem; Ctrl-C ends in ``interrupted``
(exit 130); metrics are strict JSON; concurrent writers never mix.

Commands run in-process through ``dind.cli.main`` (the real error handling), with the
expensive step replaced by a function that fails the test if it is reached. Tests run as
root here, which a read-only folder does not stop: an unwritable place is a path under a
regular file (``FILE/sub/out.jsonl``), and a folder that refuses new files is simulated in
``test_utils.py``."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from dind import checkpoint as ckpt
from dind.config import ModelConfig, RunConfig, SamplerConfig, TrainConfig
from dind.errors import DindError
from dind.evaluate import heldout_nelbo
from dind.judges import JudgeScore
from dind.model import DiT
from dind.sampler import MAX_SAMPLES
from dind.samples import Sample, read_samples, write_samples
from dind.tokenizer import train_bpe
from dind.utils import write_json
from helpers import dind, one_error

pytestmark = pytest.mark.usefixtures("isolated_cache")

TEXT = ["the king and queen walk to the castle by night while a ghost speaks of old wars"] * 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder holding a random tiny checkpoint (L = 16)."""
    tokenizer = train_bpe(TEXT, 300)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, seq_len=16,
                      hidden_dim=32, cond_dim=16, n_blocks=1, n_heads=2, dropout=0.0)  # fmt: skip
    run = RunConfig(model=cfg, train=TrainConfig(tokenizer="bpe"))
    folder = tmp_path_factory.mktemp("cli") / "run"
    ckpt.save_checkpoint(folder / "checkpoint", DiT(cfg), run, tokenizer, {4: (1e-3, 1.0)})
    return folder


def never(what: str):
    def reached(*a, **k):
        raise AssertionError(f"{what} ran before the output path was checked")

    return reached


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.fixture
def samples_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"text": "the king walks"}) + "\n")
    return path


# ----------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_sample_out_is_checked_before_the_checkpoint_loads(
    run_dir, tmp_path, a_file, monkeypatch, capsys, where
):
    out = tmp_path if where == "folder" else a_file / "sub" / "s.jsonl"
    monkeypatch.setattr(ckpt, "load_checkpoint", never("loading the checkpoint"))
    code, _, err = dind(monkeypatch, capsys, "sample", "--checkpoint", run_dir, "--out", out,
                        "--no-progress")  # fmt: skip
    one_error(code, err, str(out), "is a folder" if where == "folder" else "is a file")


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_eval_out_is_checked_before_the_judge_loads(
    samples_file, tmp_path, a_file, monkeypatch, capsys, where
):
    out = tmp_path / "metrics" if where == "folder" else a_file / "m.json"
    if where == "folder":
        out.mkdir()
    monkeypatch.setattr("dind.judges.load_judge", never("loading the judge"))
    code, _, err = dind(monkeypatch, capsys, "eval", samples_file, "--out", out, "--no-progress")
    one_error(code, err, str(out))
    assert not list(tmp_path.rglob("*.part"))  # no orphan temporary


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_train_out_is_checked_before_training(a_file, monkeypatch, capsys, where):
    out = a_file if where == "file" else a_file / "run"
    monkeypatch.setattr("dind.train.train", never("training"))
    code, _, err = dind(monkeypatch, capsys, "train", "--out", out, "--no-progress")
    one_error(code, err, str(out), "is a file, not a folder")


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_export_destination_is_checked_before_loading(run_dir, a_file, monkeypatch, capsys, where):
    dest = a_file if where == "file" else a_file / "export"
    monkeypatch.setattr(ckpt, "load_checkpoint", never("loading the checkpoint"))
    code, _, err = dind(monkeypatch, capsys, "export", run_dir, dest)
    one_error(code, err, str(dest), "is a file, not a folder")


def test_an_os_error_during_the_work_is_one_line(run_dir, tmp_path, monkeypatch, capsys):
    def disk_full(path, *a, **k):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("dind.samples.write_samples", disk_full)
    out = tmp_path / "s.jsonl"
    code, _, err = dind(monkeypatch, capsys, "sample", "--checkpoint", run_dir, "--out", out,
                        "--num-samples", "1", "--no-progress")  # fmt: skip
    one_error(code, err, f"{out}: No space left on device")


def test_ctrl_c_prints_interrupted_and_exits_130(run_dir, tmp_path, monkeypatch, capsys):
    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("dind.sampler.sample", ctrl_c)
    code, out, err = dind(monkeypatch, capsys, "sample", "--checkpoint", run_dir, "--out",
                          tmp_path / "s.jsonl", "--no-progress")  # fmt: skip
    assert code == 130 and err == "interrupted\n" and out == ""
    assert not (tmp_path / "s.jsonl").exists()


# ----------------------------------------------------------------------------- bad inputs


def test_a_samples_file_that_is_not_utf8_is_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')  # latin-1 on line 2
    with pytest.raises(DindError, match="line 2 is not UTF-8"):
        read_samples(path)
    monkeypatch.setattr("dind.judges.load_judge", never("loading the judge"))
    code, _, err = dind(monkeypatch, capsys, "eval", path, "--no-progress")
    one_error(code, err, "line 2 is not UTF-8")


@pytest.mark.parametrize("body", ["[1, 2, 3]", '{"dind": "tiny"}'])
def test_a_config_json_that_is_not_an_object_is_one_line(run_dir, tmp_path, monkeypatch, capsys,
                                                          body):  # fmt: skip
    import shutil

    broken = tmp_path / "ck"
    shutil.copytree(run_dir / "checkpoint", broken)
    (broken / "config.json").write_text(body)
    code, _, err = dind(monkeypatch, capsys, "sample", "--checkpoint", broken, "--out",
                        tmp_path / "s.jsonl", "--no-progress")  # fmt: skip
    one_error(code, err, "config.json")


def test_non_finite_weights_are_refused_on_one_line(run_dir, tmp_path, monkeypatch, capsys):
    loaded = ckpt.load_checkpoint(run_dir)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.fill_(float("nan"))
    ckpt.save_checkpoint(tmp_path / "nan", loaded.model, loaded.run_config, loaded.tokenizer,
                         loaded.intervals)  # fmt: skip
    code, _, err = dind(monkeypatch, capsys, "sample", "--checkpoint", tmp_path / "nan", "--out",
                        tmp_path / "s.jsonl", "--no-progress")  # fmt: skip
    one_error(code, err, "non-finite weights")
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize("value", ["-1", "0"])
def test_eval_max_batches_below_one_is_one_line(run_dir, monkeypatch, capsys, value):
    monkeypatch.setattr(ckpt, "load_checkpoint", never("loading the checkpoint"))
    code, _, err = dind(monkeypatch, capsys, "eval", "--checkpoint", run_dir, "--max-batches",
                        value, "--no-progress")  # fmt: skip
    one_error(code, err, "--max-batches must be at least 1", value)
    with pytest.raises(DindError, match="at least 1"):  # the library refuses it too
        heldout_nelbo(run_dir, max_batches=int(value))


def test_eval_with_a_samples_file_and_a_checkpoint_is_one_line(
    run_dir, samples_file, monkeypatch, capsys
):
    monkeypatch.setattr("dind.evaluate.heldout_nelbo", never("held-out NELBO"))
    monkeypatch.setattr("dind.judges.load_judge", never("loading the judge"))
    code, _, err = dind(monkeypatch, capsys, "eval", samples_file, "--checkpoint", run_dir)
    one_error(code, err, "not both")


def test_an_absurd_number_of_samples_is_refused_before_loading(
    run_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(ckpt, "load_checkpoint", never("loading the checkpoint"))
    code, _, err = dind(monkeypatch, capsys, "sample", "--checkpoint", run_dir, "--out",
                        tmp_path / "s.jsonl", "--num-samples", 10**10)  # fmt: skip
    one_error(code, err, "num-samples 10,000,000,000", f"{MAX_SAMPLES:,}")


@pytest.mark.parametrize(
    "args,parts",
    [
        (["--stages", "4,L"], ["--stages takes block sizes in tokens", "'4,L'"]),
        (["--stages", "4,x"], ["--stages must be a comma-separated list of integers", "'x'"]),
        (["--length", "-4"], ["length must be positive, got -4"]),
        (["--length", "0"], ["length must be positive, got 0"]),
    ],
)
def test_bad_stages_and_lengths_say_what_is_wrong(run_dir, tmp_path, monkeypatch, capsys, args,
                                                  parts):  # fmt: skip
    code, _, err = dind(monkeypatch, capsys, "sample", "--checkpoint", run_dir, "--out",
                        tmp_path / "s.jsonl", "--no-progress", *args)  # fmt: skip
    one_error(code, err, *parts)
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["bench", "sample", "--length", "-4"], "--length must be positive, got -4"),
        (["bench", "sample", "--repeats", "0"], "--repeats must be positive, got 0"),
        (["bench", "sample", "--batch-sizes", "1,0"], "--batch-sizes must be positive, got 0"),
        (
            ["bench", "sample", "--batch-sizes", "1,x"],
            "--batch-sizes must be a comma-separated list of integers: 'x' in '1,x' is not one",
        ),
        (["bench", "sample", "--batch-sizes", ","], "--batch-sizes: give at least one"),
        (["bench", "sample", "--settings", ""], "--settings: give at least one"),
        (["bench", "train", "--steps", "0"], "--steps must be positive, got 0"),
    ],
)
def test_bench_counts_below_one_are_one_line(monkeypatch, capsys, args, message):
    """(Were "model.seq_len must be positive", a ZeroDivisionError and a StatisticsError.)"""
    monkeypatch.setattr("dind.bench.bench_sample", never("the benchmark"))
    monkeypatch.setattr("dind.bench.bench_train", never("the benchmark"))
    code, _, err = dind(monkeypatch, capsys, *args)
    one_error(code, err, message)


# ----------------------------------------------------------------------------- metrics files


class EmptyAwareJudge:
    name = "stub"

    def score(self, text: str) -> JudgeScore:
        words = [w for w in text.split() if w != "<eos>"]
        return JudgeScore(2.0 * len(words), len(words), list(range(len(text.split()))))


def test_an_empty_or_eos_only_sample_writes_null_not_nan(tmp_path, monkeypatch, capsys):
    samples = tmp_path / "s.jsonl"
    texts = ["the king walks", "", "<eos> <eos>"]
    samples.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    monkeypatch.setattr("dind.judges.load_judge", lambda *a, **k: EmptyAwareJudge())
    out = tmp_path / "m.json"
    code, stdout, err = dind(monkeypatch, capsys, "eval", samples, "--out", out, "--no-progress")
    assert code == 0, err

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    result = json.loads(out.read_text(), parse_constant=refuse)
    assert [r["gen_ppl"] for r in result["samples"]][1:] == [None, None]
    assert result["samples"][0]["gen_ppl"] == pytest.approx(2.718281828459045**2)
    assert result["aggregate"]["gen_ppl_mean"] == pytest.approx(2.718281828459045**2)


def _fake_samples(marker: int, n: int) -> list[Sample]:
    return [Sample(index=i, seed=marker, stage_tokens=[[marker] * 64]) for i in range(n)]


class _Tok:
    @staticmethod
    def decode(ids):
        return " ".join(map(str, ids))


def _both_at_the_rename(monkeypatch):
    """os.replace waits until both writers reach it: each has written its whole file first."""
    import os

    barrier, real = threading.Barrier(2, timeout=30), os.replace

    def replace(*args, **kwargs):
        barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("writer", ["samples", "metrics"])
def test_two_writers_at_once_never_mix(tmp_path, monkeypatch, writer):
    """Two writers of the same file, both past their writing when either renames (the old
    fixed ``.NAME.part`` temporary: one writer's rename failed, or the file mixed both): the
    file is one writer's whole output and no temporary is left."""
    path = tmp_path / "out.jsonl"
    cfg = SamplerConfig(stages=(4,), length=64)
    bodies = {}
    for marker in (1, 2):
        if writer == "samples":
            bodies[marker] = _fake_samples(marker, 200)
        else:
            bodies[marker] = {"writer": marker, "values": list(range(5000))}
    _both_at_the_rename(monkeypatch)
    errors = []

    def write(marker):
        try:
            if writer == "samples":
                write_samples(path, bodies[marker], _Tok(), cfg)
            else:
                write_json(path, bodies[marker])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(m,)) for m in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    text = path.read_text()
    if writer == "samples":
        records = [json.loads(line) for line in text.splitlines()]
        assert len(records) == 200 and len({r["seed"] for r in records}) == 1
    else:
        assert json.loads(text) in (bodies[1], bodies[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
