"""`make demo` runs `dind demo`; here the same path in a short mode (few steps, 2 samples)."""

import json
import os
import subprocess
import sys


def test_demo_short_mode(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "dind.cli", "demo", "--out", str(out), "--max-steps", "5",
         "--num-samples", "2"],
        capture_output=True, text=True, timeout=900, env={**os.environ},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout
    assert "held-out NELBO" in text and "Generative perplexity under smollm2" in text
    assert "stage 1 only" in text and "two stages" in text and "stage 2 (block 128" in text
    for name in ("samples_stage1.jsonl", "samples_two_stage.jsonl"):
        records = [json.loads(x) for x in (out / name).read_text().splitlines()]
        assert len(records) == 2 and all(r["text"] for r in records)
    # a second run reuses the trained model (no retraining) and prints the same NELBO lines
    again = subprocess.run([sys.executable, "-m", "dind.cli", "demo", "--out", str(out),
                            "--max-steps", "5", "--num-samples", "2"],
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert again.returncode == 0
    nelbo = [line for line in text.splitlines() if line.strip().startswith(("0 ", "5 "))]
    assert nelbo and all(line in again.stdout for line in nelbo)
