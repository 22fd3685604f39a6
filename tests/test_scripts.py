"""The study scripts under runs/, checked by a dry run (they take hours for real)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _dry_run(*args, **env):
    res = subprocess.run(["bash", str(REPO / "runs" / "scale.sh"), *args], capture_output=True,
                         text=True, env={**os.environ, "DRY_RUN": "1", **env}, cwd=REPO,
                         timeout=60)  # fmt: skip
    return res, [line[2:] for line in res.stdout.splitlines() if line.startswith("+ ")]


def test_scale_study_follows_the_paper_recipe_for_every_model(tmp_path):
    res, commands = _dry_run("base", str(tmp_path / "out"), TRAIN_SEEDS="0 1", PRE="7", FT="3")
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    assert all(c.startswith(".venv/bin/dind ") for c in commands)
    trains = [c for c in commands if " train " in c]
    ar = [c for c in trains if "--objective ar" in c]
    assert len(ar) == 1 and "--max-steps 10" in ar[0]  # the judge gets the same budget
    for seed in (0, 1):
        pre = next(c for c in trains if f"pretrain-s{seed} " in c)
        ft = next(c for c in trains if f"bd3-s{seed} " in c)
        assert "--block-sizes 256 --block-probs 1" in pre and "--max-steps 7" in pre
        assert f"--init-from {tmp_path}/out/models/pretrain-s{seed}" in ft and "--max-steps 3" in ft
        assert trains.index(pre) < trains.index(ft)
        for judge in ("smollm2", f"{tmp_path}/out/models/ar-judge"):
            sweeps = [c for c in commands if " sweep " in c and f"--judge {judge} " in c
                      and f"bd3-s{seed} " in c]  # fmt: skip
            kinds = [re.search(r" sweep (\w+)", c).group(1) for c in sweeps]
            assert kinds == ["policy", "gamma", "topp"]
            assert "--gammas 0.25,0.5,0.75 --block-sizes 16,L" in sweeps[1]
            assert "--top-ps 0.95,0.9,0.8,0.7,0.6,0.5" in sweeps[2]
            # drawn once: the AR judge scores the samples the SmolLM2 sweeps saved
            reuse = f"--samples-from {tmp_path}/out/smollm2-s{seed} "
            assert all((reuse in c) == (judge != "smollm2") for c in sweeps)


def test_scale_study_resumes_a_killed_run_and_restarts_one_without_checkpoint(tmp_path):
    """A pretraining run with a checkpoint resumes; a folder killed before its first checkpoint
    is started over (its removal is not done in a dry run); TRAIN_ONLY stops before sampling."""
    models = tmp_path / "out" / "models"
    (models / "pretrain-s0" / "checkpoint").mkdir(parents=True)
    (models / "bd3-s0").mkdir()
    res, commands = _dry_run("tiny", str(tmp_path / "out"), TRAIN_SEEDS="0", TRAIN_ONLY="1")
    assert res.returncode == 0, res.stderr
    pre = next(c for c in commands if "pretrain-s0 " in c)
    ft = next(c for c in commands if "bd3-s0 " in c)
    assert pre.endswith("--resume --no-progress") and "--resume" not in ft
    assert not any(" sweep " in c or " eval " in c for c in commands)


def test_scale_study_resumes_a_run_whose_save_was_killed_between_its_renames(tmp_path):
    """Such a run has no checkpoint/ but a complete hidden copy (dind.checkpoint): it is
    resumed from it, never deleted as a run killed before its first checkpoint."""
    copy = tmp_path / "out" / "models" / "pretrain-s0" / ".checkpoint.new-00000000000000000001-ab"
    copy.mkdir(parents=True)
    (copy / "config.json").write_text("{}")
    res, commands = _dry_run("tiny", str(tmp_path / "out"), TRAIN_SEEDS="0", TRAIN_ONLY="1")
    assert res.returncode == 0, res.stderr
    assert next(c for c in commands if "pretrain-s0 " in c).endswith("--resume --no-progress")


def test_scale_study_refuses_an_unknown_size(tmp_path):
    res, commands = _dry_run("huge", str(tmp_path))
    assert res.returncode == 2 and not commands
    assert res.stderr.strip() == "error: unknown size 'huge' (tiny | base | small)"


def test_ab_benchmark_times_both_versions_with_the_same_commands(tmp_path):
    """benchmarks/ab.sh: each old/new pair runs one command with its own output; a commit
    that does not exist is a one-line error."""
    script = str(REPO / "benchmarks" / "ab.sh")
    env = {**os.environ, "DRY_RUN": "1"}
    res = subprocess.run(["bash", script, "HEAD", str(tmp_path / "ab"), "8", "32"], env=env,
                         capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [line[2:] for line in res.stdout.splitlines() if line.startswith("+ ")]
    assert len(lines) == 6  # K = 8, K = 32, training: one old and one new each
    for old, new in zip(lines[::2], lines[1::2], strict=True):
        assert old.startswith("old: ") and new.startswith("new: ")
        assert old[5:].replace("/old-", "/new-") == new[5:]
    assert "--parallel 8 " in lines[0] and "--parallel 32 " in lines[2]
    assert "bench train --preset tiny --steps 10" in lines[4]
    assert not (tmp_path / "ab").exists()
    bad = subprocess.run(["bash", script, "no-such-ref", str(tmp_path / "ab")], env=env,
                         capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "unknown commit no-such-ref" in bad.stderr


def test_identity_check_names_the_settings_whose_samples_differ(tmp_path):
    """benchmarks/identity.py compare: identical dumps exit 0; a changed token or a setting
    only one side has is named, exit 1."""
    script = str(REPO / "benchmarks" / "identity.py")
    dump = {"1.0:two": [[[[5, 6]], [[0.5, 0.25]], [3]]], "1.0:ar_cache_True": [[1, 2]]}
    a, b = tmp_path / "a.json", tmp_path / "b.json"

    def compare(new: dict) -> subprocess.CompletedProcess:
        a.write_text(json.dumps(dump))
        b.write_text(json.dumps(new))
        return subprocess.run([sys.executable, script, "compare", str(a), str(b)],
                              capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip

    same = compare(dump)
    assert same.returncode == 0 and same.stdout.strip() == "identical: 2 settings"
    changed = json.loads(json.dumps(dump))
    changed["1.0:two"][0][0][0][1] = 7
    changed["0.02:stage1"] = []
    res = compare(changed)
    assert res.returncode == 1 and res.stdout.strip() == "differ: 0.02:stage1, 1.0:two"


@pytest.mark.slow
def test_call_projection_adds_up_the_calls_it_timed(tmp_path):
    """benchmarks/project_calls.py: the refinement is gamma * L times the timed full pass, and
    stage 1 without the cache is 4 calls per block at each block's prefix length, linear
    between the timed lengths (recomputed here from the call times it wrote)."""
    out = tmp_path / "proj.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "project_calls.py"),
                          "--preset", "tiny", "--length", "32", "--batch", "2", "--points", "2",
                          "--repeats", "1", "--gamma", "0.25", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    fig = json.loads(out.read_text())
    assert fig["projected"] and fig["refinement_calls"] == 8
    assert fig["two_stages_refinement_s_per_sample"] == pytest.approx(
        8 * fig["refinement_call_s"] / 2
    )
    timed = {int(k): v for k, v in fig["stage1_no_cache_call_s"].items()}
    assert sorted(timed) == [4, 16, 32]  # the first block's prefix and the --points lengths
    calls = {end: timed[4] + (timed[16] - timed[4]) * (end - 4) / 12 for end in range(4, 17, 4)}
    calls |= {
        end: timed[16] + (timed[32] - timed[16]) * (end - 16) / 16 for end in (20, 24, 28, 32)
    }
    assert fig["stage1_no_cache_s_per_sample"] == pytest.approx(4 * sum(calls.values()) / 2)


@pytest.mark.slow
def test_matmul_ceiling_sums_the_layers_it_timed(tmp_path):
    """benchmarks/matmul_ceiling.py: a call is each timed layer times its count per call, and
    the gain of batch B is B times batch 1's call over batch B's (recomputed from its JSON)."""
    out = tmp_path / "ceiling.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "matmul_ceiling.py"),
                          "--preset", "tiny", "--batches", "1,4", "--dtypes", "fp32",
                          "--repeats", "2", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    fig = json.loads(out.read_text())
    counts = [layer["per_call"] for layer in fig["layers"]]
    assert counts[-1] == 1 and fig["layers"][-1]["rows_per_sample"] == 1  # the head
    for b in ("1", "4"):
        each = fig["layer_s"]["fp32"][b]
        assert len(each) == len(counts) and min(each) > 0
        assert fig["call_s"]["fp32"][b] == pytest.approx(
            sum(n * t for n, t in zip(counts, each, strict=True))
        )
    call = fig["call_s"]["fp32"]
    assert fig["gain"]["fp32"] == pytest.approx({"1": 1.0, "4": 4 * call["1"] / call["4"]})
    script = str(REPO / "benchmarks" / "matmul_ceiling.py")
    bad = subprocess.run([sys.executable, script, "--dtypes", "fp16"], capture_output=True,
                         text=True, cwd=REPO)  # fmt: skip
    assert bad.returncode != 0 and "--dtypes fp32 and/or bf16" in bad.stderr


@pytest.mark.slow
def test_call_ceiling_sums_every_block_of_the_stage(tmp_path):
    """benchmarks/call_ceiling.py: stage 1 is the block times interpolated over every block's
    start (L / 4 of them), and the gain of batch B is B times batch 1's stage over batch B's."""
    out = tmp_path / "calls.json"
    script = str(REPO / "benchmarks" / "call_ceiling.py")
    res = subprocess.run([sys.executable, script, "--preset", "tiny", "--length", "32",
                          "--batches", "1,2", "--dtypes", "fp32", "--points", "3",
                          "--repeats", "1", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    fig = json.loads(out.read_text())
    assert fig["starts"] == [0, 12, 28] and fig["block"] == 4
    for batch in ("1", "2"):
        t = fig["block_s"]["fp32"][batch]
        assert len(t) == 3 and min(t) > 0
        # blocks at 0, 4, ..., 28: linear between the timed starts
        by_hand = sum(t[0] + (t[1] - t[0]) * s / 12 if s <= 12 else t[1] + (t[2] - t[1])
                      * (s - 12) / 16 for s in range(0, 32, 4))  # fmt: skip
        assert fig["stage_s"]["fp32"][batch] == pytest.approx(by_hand)
    stage = fig["stage_s"]["fp32"]
    assert fig["gain"]["fp32"] == pytest.approx({"1": 1.0, "2": 2 * stage["1"] / stage["2"]})
    bad = subprocess.run([sys.executable, script, "--length", "30"], capture_output=True,
                         text=True, cwd=REPO)  # fmt: skip
    assert bad.returncode != 0 and "--length a multiple of 4" in bad.stderr


@pytest.mark.slow
def test_time_refinement_times_the_stage_it_names(tmp_path):
    """benchmarks/time_refinement.py: one refinement stage at the rule, cache and precision
    asked, its figures per sample; a bad recompute rule fails before any timing."""
    out = tmp_path / "ref.json"
    script = str(REPO / "benchmarks" / "time_refinement.py")
    res = subprocess.run([sys.executable, script, "--preset", "tiny", "--length", "64",
                          "--batch", "2", "--parallel", "8", "--refresh", "4", "--recompute",
                          "asked", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    fig = json.loads(out.read_text())
    assert (fig["recompute"], fig["refresh"], fig["parallel"]) == ("asked", 4, "8")
    assert fig["seconds"] > 0 and fig["seconds_per_sample"] == pytest.approx(fig["seconds"] / 2)
    assert "asked" in res.stdout and "per sample" in res.stdout
    bad = subprocess.run([sys.executable, script, "--preset", "tiny", "--length", "64",
                          "--refresh", "4", "--recompute", "late"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert bad.returncode != 0 and "error: recompute must be one of" in bad.stderr


@pytest.mark.slow
def test_the_gpu_runbook_script_runs_every_step_on_the_cpu(tmp_path):
    """dev/gpu_issue13.sh, the one device call of issue 13's GPU figures, dry-run at a tiny
    size: every step runs and writes its figures, so device minutes are not spent on a typo."""
    out = tmp_path / "g13"
    env = {**os.environ, "PRESET": "tiny", "L": "32", "OUT": str(out), "PY": sys.executable,
           "SKIP_WHEELS": "1"}  # fmt: skip
    res = subprocess.run(["bash", str(REPO / "dev" / "gpu_issue13.sh")], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr
    log = (out / "log.txt").read_text()
    assert "row 1: the GPU-marked tests" in log and log.rstrip().endswith("done")
    bench = json.loads((out / "bench-sample.json").read_text())
    assert set(bench["figures"]) == {"batch1", "batch16", "batch32"}
    assert set(bench["figures"]["batch32"]) == {"ar_cache", "stage1_cache", "two_stages_parallel"}
    assert "stage1_cache:tokens_per_s_batch16_over_batch1" in bench["ratios"]
    assert "batch32:two_stages_parallel_over_its_stage1" in bench["ratios"]
    ceiling = json.loads((out / "call-ceiling.json").read_text())
    assert set(ceiling["gain"]) == {"fp32", "bf16"} and set(ceiling["gain"]["bf16"]) == {
        "1",
        "16",
        "32",
    }
