"""`make demo` runs `dind demo`; here the same path in a short mode (few steps, 2 samples)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from dind.cli import demo as demo_command
from dind.config import tiny
from dind.demo import DEMO_SAMPLES, DEMO_STEPS, demo_run
from dind.train import RESUMABLE_CHANGES


def _demo(out):
    # ~6 minutes on 2 idle slow cores; a fresh-clone `make test` beside two other jobs took 15+
    return subprocess.run(
        [sys.executable, "-m", "dind.cli", "demo", "--out", str(out), "--max-steps", "5",
         "--num-samples", "2"],
        capture_output=True, text=True, timeout=1800, env={**os.environ},
    )  # fmt: skip


def test_demo_run_differs_from_the_preset_only_where_resume_allows():
    """A demo folder trained by an older version (the preset's own 600 steps and five
    evaluations) is reused, not refused as a different run."""
    preset, run = tiny(), demo_run()
    assert run.train.max_steps == DEMO_STEPS != preset.train.max_steps
    changed = {f for f in vars(run.train) if getattr(run.train, f) != getattr(preset.train, f)}
    assert changed and changed <= RESUMABLE_CHANGES
    assert run.model == preset.model and demo_run(5).train.max_steps == 5
    assert run.train.eval_batches < preset.train.eval_batches


def test_demo_command_draws_the_documented_number_of_samples():
    import inspect

    default = inspect.signature(demo_command).parameters["num_samples"].default
    assert default == DEMO_SAMPLES


@pytest.mark.slow  # trains, samples, judges and reports: the whole demo
def test_demo_short_mode(tmp_path):
    out = tmp_path / "demo"
    res = _demo(out)
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout
    assert "held-out NELBO" in text and "Generative perplexity under smollm2" in text
    assert "stage 1 only" in text and "two stages" in text and "stage 2 (block 128" in text
    for seed in (0, 1):
        for name in ("stage_1_block_4", "block_128_gamma_0_5", "random_block_128_gamma_0_5"):
            lines = (out / "samples" / f"{name}_seed{seed}.jsonl").read_text().splitlines()
            records = [json.loads(x) for x in lines]
            assert len(records) == 2 and all(r["text"] for r in records)
    gamma = list(csv.DictReader((out / "gamma.csv").open()))
    assert len(gamma) == 1 + 2 * 3 and all(r["n_seeds"] == "2" for r in gamma)
    assert (out / "gamma.png").stat().st_size > 5000 and (out / "policy.png").exists()
    # the frontier: stage 1 and two stages at four top-p values, same seeds and drafts, so its
    # two stages at top-p 0.9 are the main comparison's samples exactly
    topp = {r["setting"]: r for r in csv.DictReader((out / "topp.csv").open())}
    assert len(topp) == 8 and (out / "topp.png").exists()
    main = next(r for r in gamma if r["setting"] == "block 128, gamma 0.5")
    same = topp["two stages (block 128, gamma 0.5), top-p 0.9"]
    assert same["gen_ppl_mean"] == main["gen_ppl_mean"]
    # drawn once, not twice: a second draw would have taken other seconds
    assert same["seconds_mean"] == main["seconds_mean"] != ""
    assert "Raw: two stages change Gen PPL" in text and "At matched entropy" in text
    page = (out / "report.html").read_text()
    assert page.count("<section><h2>Sample") == 2  # the two samples of the main setting
    assert "Stage 1 against two stages" in page and 'class="remasked"' in page
    assert page.count("data:image/png;base64,") == 3 and "Quality against diversity" in page
    # a second run reuses the trained model (no retraining) and prints the same NELBO lines
    again = _demo(out)
    assert again.returncode == 0
    nelbo = [line for line in text.splitlines() if line.strip().startswith(("0 ", "5 "))]
    assert nelbo and all(line in again.stdout for line in nelbo)
