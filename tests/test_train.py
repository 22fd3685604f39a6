import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dind import checkpoint as ckpt
from dind.config import BlockSizeDistribution
from dind.errors import DindError
from dind.loss import bd3_loss
from dind.metrics import read_metrics
from dind.model import DiT
from dind.train import train
from helpers import tiny_run, write_corpus

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.mark.slow
def test_tiny_model_drives_loss_down_on_a_small_batch(tiny_cfg):
    model = DiT(tiny_cfg)
    x0 = torch.randint(0, 32, (8, 16))
    sizes = torch.tensor([4, 16] * 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def held_loss() -> float:  # the same noise draws before and after training
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(bd3_loss(model, tiny_cfg, x0, sizes).loss.item() for _ in range(8)) / 8

    before = held_loss()
    for step in range(150):
        torch.manual_seed(step)
        loss = bd3_loss(model, tiny_cfg, x0, sizes).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_loss()
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_resume_gives_the_same_curve(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    full = train(tiny_run(corpus, max_steps=12), tmp_path / "full", progress=False)
    train(tiny_run(corpus, max_steps=6), tmp_path / "part", progress=False)
    resumed = train(tiny_run(corpus, max_steps=12), tmp_path / "part", resume=True, progress=False)
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    losses_a = [(m["step"], m["loss"]) for m in a if "loss" in m]
    losses_b = [(m["step"], m["loss"]) for m in b if "loss" in m]
    assert [s for s, _ in losses_a] == list(range(1, 13))
    assert losses_a == losses_b
    assert full["val_nelbo"] == resumed["val_nelbo"]
    wa = ckpt.read_weights(tmp_path / "full" / "checkpoint")
    wb = ckpt.read_weights(tmp_path / "part" / "checkpoint")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_layout_and_round_trip(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    run = tiny_run(corpus, max_steps=3, eval_every=0)
    train(run, tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "checkpoint"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_state.pt"} <= names
    config = json.loads((folder / "config.json").read_text())
    for field in (
        "block_size",
        "attn_backend",
        "cross_attn",
        "hidden_dim",
        "cond_dim",
        "n_blocks",
        "n_heads",
        "model_length",
        "vocab_size",
        "dropout",
        "time_conditioning",
        "var_min",
    ):
        assert field in config
    sd = ckpt.read_weights(folder)
    assert all(k.startswith("backbone.") for k in sd if not k.startswith("sampling_eps"))
    assert sd["sampling_eps_min"].dim() == 0 and sd["sampling_eps_max"].dim() == 0
    loaded = ckpt.load_checkpoint(tmp_path / "run")
    x = torch.randint(0, loaded.model.config.mask_id, (2, 32))
    again = ckpt.load_checkpoint(folder)
    torch.testing.assert_close(loaded.model(x), again.model(x), rtol=0, atol=0)
    weights = {"backbone." + k: v for k, v in loaded.model.state_dict().items()}
    assert all(torch.equal(weights[k], sd[k]) for k in weights)


def _write(folder: Path, sd: dict) -> None:
    from safetensors.torch import save_file

    save_file(sd, str(folder / "model.safetensors"))


def test_strict_loading_names_the_bad_key(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    train(tiny_run(corpus, max_steps=1, eval_every=0), tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "checkpoint"
    sd = ckpt.read_weights(folder)
    missing = dict(sd)
    del missing["backbone.blocks.1.attn_out.weight"]
    _write(folder, missing)
    with pytest.raises(DindError, match=r"missing: backbone\.blocks\.1\.attn_out\.weight"):
        ckpt.load_checkpoint(folder)
    wrong = dict(sd)
    wrong["backbone.blocks.0.norm1.weight"] = torch.ones(7)
    _write(folder, wrong)
    with pytest.raises(DindError, match=r"shape: backbone\.blocks\.0\.norm1\.weight"):
        ckpt.load_checkpoint(folder)
    extra = dict(sd, **{"backbone.blocks.9.norm1.weight": torch.ones(32)})
    _write(folder, extra)
    with pytest.raises(DindError, match=r"unexpected: backbone\.blocks\.9"):
        ckpt.load_checkpoint(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(DindError, match="corrupt"):
        ckpt.load_checkpoint(folder)
    with pytest.raises(DindError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nowhere")


def test_failed_save_leaves_no_complete_looking_folder(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus")
    train(tiny_run(corpus, max_steps=1, eval_every=0), tmp_path / "run", progress=False)
    loaded = ckpt.load_checkpoint(tmp_path / "run")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(
            tmp_path / "new", loaded.model, loaded.run_config, loaded.tokenizer, loaded.intervals
        )
    assert not (tmp_path / "new").exists()
    assert not any(p.name.startswith(".new") for p in tmp_path.iterdir())


def test_resume_against_a_different_config_fails(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    train(tiny_run(corpus, max_steps=2, eval_every=0), tmp_path / "run", progress=False)
    with pytest.raises(DindError, match="different config"):
        train(tiny_run(corpus, max_steps=4, lr=1e-2), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(DindError, match="already holds a run"):
        train(tiny_run(corpus, max_steps=4), tmp_path / "run", progress=False)


def test_init_from_fine_tunes_with_the_checkpoint_weights(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    train(tiny_run(corpus, max_steps=4, eval_every=0), tmp_path / "pre", progress=False)
    run = tiny_run(
        corpus,
        max_steps=1,
        eval_every=0,
        lr=1e-9,
        warmup_steps=0,
        block_dist=BlockSizeDistribution((4,), (1.0,)),
    )
    train(run, tmp_path / "ft", init_from=tmp_path / "pre", progress=False)
    pre, ft = (
        ckpt.read_weights(tmp_path / "pre" / "checkpoint"),
        ckpt.read_weights(tmp_path / "ft" / "checkpoint"),
    )
    diff = max((pre[k] - ft[k]).abs().max().item() for k in pre if k.startswith("backbone"))
    assert diff < 1e-5  # one step at lr 1e-9 from the same weights


def test_ar_objective_trains(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    last = train(
        tiny_run(corpus, objective="ar", max_steps=30, eval_every=0),
        tmp_path / "ar",
        progress=False,
    )
    metrics = read_metrics(tmp_path / "ar")
    assert metrics[0]["step"] == 0 and last["val_nll"] < metrics[0]["val_nll"]
    assert ckpt.load_checkpoint(tmp_path / "ar").run_config.model.causal


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dind.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,msg",
    [
        (["--block-sizes", "4,24"], "do not divide"),
        (["--block-sizes", "4,32", "--block-probs", "0.5,0.6"], "sum to 1"),
        (["--block-sizes", "-4"], "positive"),
        (["--preset", "huge"], "'huge' is not one of 'tiny', 'base', 'small'"),
        (["--corpus", "/no/such/path"], "/no/such/path"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, args, msg):
    corpus = write_corpus(tmp_path / "corpus")
    base = [
        "train",
        "--out",
        str(tmp_path / "r"),
        "--seq-len",
        "32",
        "--max-steps",
        "1",
        "--corpus",
        str(corpus),
    ]
    res = _cli(*base, *args, env={"DIND_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], res.stderr
    assert not (tmp_path / "r").exists()  # no half-made run folder either


@pytest.mark.slow
def test_cli_corrupt_checkpoint_for_init_from(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    res = _cli("train", "--out", str(tmp_path / "r"), "--init-from", str(bad))
    assert res.returncode == 2 and res.stderr.startswith("error:") and "config.json" in res.stderr


@pytest.mark.slow
def test_two_process_torchrun_keeps_replicas_identical(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on a free local port: no fixed port to collide on
        "--nproc_per_node",
        "2",
        "-m",
        "dind.cli",
        "train",
        "--out",
        str(out),
        "--corpus",
        str(corpus),
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--max-steps",
        "4",
        "--eval-every",
        "0",
        "--block-sizes",
        "4,32",
        "--block-probs",
        "0.5,0.5",
        "--no-progress",
    ]
    env = {**os.environ, "DIND_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    records = read_metrics(out)
    final = [m for m in records if "replica_max_abs_diff" in m]
    assert final and final[-1]["replica_max_abs_diff"] == 0.0
    steps = [m for m in records if "loss" in m]
    # each step consumed 2 rows on each of 2 ranks
    assert steps[-1]["step"] == 4 and steps[-1]["tokens"] == 4 * 2 * 2 * 32


def test_each_block_size_gets_its_own_searched_interval(tmp_path, capsys):
    """The clip search runs per block size of P_B; the intervals are logged, printed at each
    validation, saved in the checkpoint (BD3-LM's buffers hold the draft size's) and round-trip
    through it; resuming trains with them."""
    corpus = write_corpus(tmp_path / "corpus")
    run = tiny_run(corpus, max_steps=4, eval_every=2,
                   block_dist=BlockSizeDistribution((4, 32), (0.75, 0.25)))  # fmt: skip
    train(run, tmp_path / "run", progress=True)
    printed = capsys.readouterr()
    evals = [m for m in read_metrics(tmp_path / "run") if "intervals" in m]
    assert [m["step"] for m in evals] == [0, 2, 4]
    assert all(set(m["intervals"]) == {"4", "32"} for m in evals)
    assert "noise intervals B=4 [" in printed.out and "B=32 [" in printed.out
    searched = {int(b): tuple(v) for b, v in evals[-1]["intervals"].items()}
    loaded = ckpt.load_checkpoint(tmp_path / "run")
    assert loaded.intervals == searched
    assert (loaded.eps_min, loaded.eps_max) == searched[4]  # the draft size's pair
    sd = ckpt.read_weights(tmp_path / "run" / "checkpoint")
    assert float(sd["sampling_eps_min"]) == pytest.approx(searched[4][0])
    # round trip through a save of the loaded checkpoint
    ckpt.save_checkpoint(tmp_path / "copy", loaded.model, loaded.run_config, loaded.tokenizer,
                         {4: (0.25, 0.75), 32: (1e-3, 0.5)})  # fmt: skip
    assert ckpt.load_checkpoint(tmp_path / "copy").intervals == {4: (0.25, 0.75), 32: (1e-3, 0.5)}


def test_start_intervals_given_source_and_defaults(tmp_path):
    from dind.config import NoiseConfig
    from dind.train import start_intervals

    corpus = write_corpus(tmp_path / "corpus")
    dist = BlockSizeDistribution((4, 8, 32), (0.8, 0.1, 0.1))
    noise_cfg = NoiseConfig(eps_min=0.2, eps_max=0.9, intervals={"8": [0.1, 0.6]})
    run = tiny_run(corpus, block_dist=dist, noise=noise_cfg)
    # given > the checkpoint fine-tuned from > default (B = L unclipped, others [eps_min, eps_max])
    assert start_intervals(run) == {4: (0.2, 0.9), 8: (0.1, 0.6), 32: (1e-3, 1.0)}
    assert start_intervals(run, {4: (0.5, 1.0), 8: (0.3, 0.3)}) == {
        4: (0.5, 1.0), 8: (0.1, 0.6), 32: (1e-3, 1.0)}  # fmt: skip
    with pytest.raises(DindError, match="beta <= omega"):
        NoiseConfig(intervals={4: (0.9, 0.1)})


def test_a_given_interval_is_kept_by_the_search(tmp_path):
    from dind.config import NoiseConfig

    corpus = write_corpus(tmp_path / "corpus")
    noise_cfg = NoiseConfig(clip_search_widths=(0.5,), clip_search_delta=0.25,
                            intervals={32: (1e-3, 1.0)})  # fmt: skip
    train(tiny_run(corpus, max_steps=2, eval_every=1, noise=noise_cfg), tmp_path / "run",
          progress=False)  # fmt: skip
    evals = [m["intervals"] for m in read_metrics(tmp_path / "run") if "intervals" in m]
    assert len(evals) == 3 and all(iv["32"] == [1e-3, 1.0] for iv in evals)
    grid = {(1e-3, 1.0), (1e-3, 0.5), (0.25, 0.75), (0.5, 1.0)}
    assert all(tuple(iv["4"]) in grid for iv in evals)  # searched on the grid


def test_cli_noise_intervals_are_given_per_block_size():
    from dind.cli_options import apply_train_options, start_run

    given = ["4:0.5,1.0", "128:0.001,1"]
    no_search = {"noise": {"clip_search": False}}
    run = apply_train_options(start_run(None, "tiny"), {}, no_search, noise_intervals=given)
    assert run.train.noise.intervals == {4: (0.5, 1.0), 128: (0.001, 1.0)}
    assert run.train.noise.clip_search is False
    assert run.train.noise.clip_search_widths == (0.5, 0.7, 0.9)  # the preset's, kept
    with pytest.raises(DindError, match="SIZE:BETA,OMEGA"):
        apply_train_options(run, {}, {}, noise_intervals=["4:0.5"])


# ----------------------------------------------------------------------------- issue 12: the
# caller's config, one held-out NELBO, metrics.jsonl after a kill (helper i12-train's block)


def _records(run_dir: Path) -> list[dict]:
    """metrics.jsonl as strict JSON (NaN or Infinity is an error), timings left out."""

    def reject(name):
        raise ValueError(f"not strict JSON: {name}")

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x, parse_constant=reject) for x in lines]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def _killed_at_first_save(monkeypatch, corpus: Path, out: Path, **overrides) -> None:
    """A run folder as a kill during the first checkpoint's write leaves it: run.json, the
    tokenizer and metrics.jsonl, no checkpoint."""

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ckpt, "save_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_run(corpus, **overrides), out, progress=False)
    assert (out / "run.json").exists() and not (out / "checkpoint").exists()


def test_train_leaves_the_callers_config_as_it_was(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    for objective in ("ar", "bd3"):  # AR sets causal; the tokenizer sets the vocabulary
        run = tiny_run(corpus, objective=objective, max_steps=1, eval_every=0)
        run.model.vocab_size, run.model.mask_id = 999, 998
        before = run.to_dict()
        train(run, tmp_path / objective, progress=False)
        assert run.to_dict() == before
        saved = json.loads((tmp_path / objective / "run.json").read_text())
        assert (saved["model"]["vocab_size"], saved["model"]["causal"]) == (301, objective == "ar")


def test_an_ar_run_resumes(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    train(tiny_run(corpus, objective="ar", max_steps=2, eval_every=0), tmp_path / "ar",
          progress=False)  # fmt: skip
    last = train(tiny_run(corpus, objective="ar", max_steps=3, eval_every=0), tmp_path / "ar",
                 resume=True, progress=False)  # fmt: skip
    assert last["step"] == 3
    assert [r["step"] for r in _records(tmp_path / "ar")] == [0, 1, 2, 2, 3, 3]


def test_validation_and_dind_nelbo_are_the_same_computation(tmp_path):
    """The NELBO training logs at its last validation is, bit for bit, what ``heldout_nelbo``
    computes from the saved (EMA) weights on the same rows with the same seed."""
    from dind.data import prepare_data
    from dind.evaluate import heldout_nelbo

    corpus = write_corpus(tmp_path / "corpus")
    run = tiny_run(corpus, max_steps=3, eval_every=0)
    train(run, tmp_path / "run", progress=False)
    tc = run.train
    _, val = prepare_data(str(corpus), ckpt.load_checkpoint(tmp_path / "run").tokenizer, 32)
    assert len(val) >= tc.eval_batches * tc.batch_size  # validation reads rows 0, 1, ... too
    logged = _records(tmp_path / "run")[-1]
    for b in tc.block_dist.block_sizes[:1]:  # the first size validated draws the seed's noise
        result = heldout_nelbo(tmp_path / "run", b, max_batches=tc.eval_batches,
                               batch_size=tc.batch_size, seed=tc.seed + 12_345)  # fmt: skip
        assert result["nelbo"] == logged[f"val_nelbo_bs{b}"]


def test_metrics_are_strict_json(tmp_path, monkeypatch):
    """A gradient norm that overflowed is logged as null, not as the non-JSON Infinity."""
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(math.inf))
    corpus = write_corpus(tmp_path / "corpus")
    train(tiny_run(corpus, max_steps=2, eval_every=0), tmp_path / "run", progress=False)
    logged = [r for r in _records(tmp_path / "run") if "loss" in r]
    assert [r["grad_norm"] for r in logged] == [None, None]
    assert all(math.isfinite(r["loss"]) for r in logged)


@pytest.mark.slow
def test_resume_drops_a_partial_last_line_of_metrics(tmp_path, capfd):
    """Fault 3: a kill during a metrics write leaves a partial last line; --resume drops it,
    says so, and the curve is the uninterrupted run's."""
    corpus = write_corpus(tmp_path / "corpus")
    train(tiny_run(corpus, max_steps=6, eval_every=3), tmp_path / "full", progress=False)
    train(tiny_run(corpus, max_steps=3, eval_every=3), tmp_path / "part", progress=False)
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 5.12')  # the write a kill cut short
    assert len(read_metrics(tmp_path / "part")) == len(_records(tmp_path / "full")) - 4
    capfd.readouterr()
    train(tiny_run(corpus, max_steps=6, eval_every=3), tmp_path / "part", resume=True,
          progress=False)  # fmt: skip
    err = capfd.readouterr().err
    assert "partial last line" in err and len(err.strip().splitlines()) == 1
    full, part = _records(tmp_path / "full"), _records(tmp_path / "part")
    assert [{k: v for k, v in r.items() if k != "tokens"} for r in part] == [
        {k: v for k, v in r.items() if k != "tokens"} for r in full]  # fmt: skip
    assert not [p.name for p in (tmp_path / "part").iterdir() if p.name.endswith((".tmp", ".part"))]


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_resumes_from_nothing(tmp_path, monkeypatch,
                                                                       capfd):  # fmt: skip
    """Fault 4: a fresh run into the folder says in one line to pass --resume or delete it;
    --resume starts over from step 0 and gives the uninterrupted run's records."""
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    _killed_at_first_save(monkeypatch, corpus, out, max_steps=3, eval_every=2)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    with pytest.raises(DindError, match="pass --resume.*delete the folder") as e:
        train(tiny_run(corpus, max_steps=3, eval_every=2), out, progress=False)
    assert "\n" not in str(e.value)
    capfd.readouterr()
    train(tiny_run(corpus, max_steps=3, eval_every=2), out, resume=True, progress=False)
    assert "starting over from step 0" in capfd.readouterr().err
    train(tiny_run(corpus, max_steps=3, eval_every=2), tmp_path / "full", progress=False)
    assert _records(out) == _records(tmp_path / "full")
    wa = ckpt.read_weights(out / "checkpoint")
    wb = ckpt.read_weights(tmp_path / "full" / "checkpoint")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_folder_with_only_run_json_is_refused_fresh_and_resumed_from_nothing(tmp_path):
    """A kill between writing run.json and the first record: the same two answers."""
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    train(tiny_run(corpus, max_steps=1, eval_every=0), out, progress=False)
    for name in ("checkpoint", "metrics.jsonl"):
        path = out / name
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    with pytest.raises(DindError, match="stopped before its first checkpoint"):
        train(tiny_run(corpus, max_steps=1, eval_every=0), out, progress=False)
    train(tiny_run(corpus, max_steps=1, eval_every=0), out, resume=True, progress=False)
    assert [r["step"] for r in _records(out)] == [0, 1, 1]


@pytest.mark.slow
def test_cli_a_folder_killed_before_its_first_checkpoint(tmp_path):
    """Through the CLI (an AR run, which --resume once refused as a "different config"): a
    fresh run is one line of error, --resume starts over and says so."""
    import shutil

    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "r"
    args = ["train", "--out", str(out), "--corpus", str(corpus), "--seq-len", "32",
            "--batch-size", "2", "--max-steps", "1", "--objective", "ar",
            "--no-progress"]  # fmt: skip
    env = {"DIND_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    assert _cli(*args, env=env).returncode == 0
    shutil.rmtree(out / "checkpoint")  # as if killed before writing it
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    res = _cli(*args, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--resume" in lines[0]
    res = _cli(*args, "--resume", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "starting over from step 0" in res.stderr and "partial last line" in res.stderr
    assert [r["step"] for r in _records(out)] == [0, 1, 1]
