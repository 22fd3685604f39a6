import json
import math
import os
import random
import subprocess
import sys
from dataclasses import dataclass

import pytest

from dind.diversity import bd3lm_rejects, unigram_entropy
from dind.errors import DindError
from dind.evaluate import evaluate_samples, format_table
from dind.samples import read_samples


@dataclass
class Score:
    nll_sum: float
    n_tokens: int
    tokens: list


class WordJudge:
    """A stand-in judge with a known answer: each word costs its length in nats; the word
    'eos' is an EOS and not scored."""

    name = "words"

    def score(self, text: str) -> Score:
        words = text.split()
        vocab = {w: i for i, w in enumerate(sorted(set(words)))}
        scored = [w for w in words if w != "eos"]
        return Score(float(sum(len(w) for w in scored)), len(scored), [vocab[w] for w in words])


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_aggregates_on_a_hand_made_file(tmp_path):
    f = write(tmp_path / "s.jsonl", [
        {"index": 0, "text": "aa bb aa", "nfe": [10, 5], "seconds": [1.0, 0.5]},
        {"index": 1, "text": "cccc eos", "nfe": [10, 3], "seconds": [2.0, 1.0]},
        {"index": 2, "text": "x x x x", "nfe": [10, 0], "seconds": [1.0, 0.0]},
    ])  # fmt: skip
    result = evaluate_samples(read_samples(f), WordJudge(), entropy_threshold=0.5)
    rows, agg = result["samples"], result["aggregate"]
    # per sample: exp(nll / n)
    assert rows[0]["gen_ppl"] == pytest.approx(math.exp(6 / 3))
    assert rows[1]["gen_ppl"] == pytest.approx(math.exp(4 / 1))  # eos not scored
    assert rows[2]["gen_ppl"] == pytest.approx(math.e)
    assert agg["gen_ppl_mean"] == pytest.approx((math.exp(2) + math.exp(4) + math.e) / 3)
    assert agg["gen_ppl_token_weighted"] == pytest.approx(math.exp((6 + 4 + 4) / (3 + 1 + 4)))
    # unigram entropy of the judge's tokens, in nats
    assert rows[0]["entropy"] == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert rows[2]["entropy"] == 0.0
    assert agg["low_entropy_share"] == pytest.approx(1 / 3)  # only "x x x x" is below 0.5
    assert [r["nfe"] for r in rows] == [15, 13, 10] and agg["nfe_mean"] == pytest.approx(38 / 3)
    assert agg["seconds_mean"] == pytest.approx(5.5 / 3)
    assert agg["length_mean"] == pytest.approx(3)
    assert agg["n_samples"] == 3


def test_unigram_entropy():
    assert unigram_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
    assert unigram_entropy([]) == 0.0


@pytest.mark.parametrize(
    "content,msg",
    [
        ("", "no samples"),
        ("{not json\n", "not JSON"),
        ('{"tokens": [1]}\n', "no 'text'"),
        ("[1, 2]\n", "no 'text'"),
    ],
)
def test_bad_samples_files(tmp_path, content, msg):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(DindError, match=msg):
        read_samples(f)
    with pytest.raises(DindError, match="not found"):
        read_samples(tmp_path / "missing.jsonl")


def _cli(*args, cache):
    env = {**os.environ, "DIND_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "dind.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "judge,msg", [("no-such-judge-xyz", "judge"), ("oracle:/no/such/dir", "synthetic")]
)
def test_cli_unknown_or_missing_judge(tmp_path, judge, msg):
    f = write(tmp_path / "s.jsonl", [{"text": "hello there"}])
    res = _cli(
        "eval",
        str(f),
        "--judge",
        judge,
        "--out",
        str(tmp_path / "m.json"),
        cache=tmp_path / "cache",
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and msg in lines[0], res.stderr
    assert not (tmp_path / "m.json").exists()


@pytest.mark.slow
def test_cli_bad_samples_file_fails_before_loading_a_judge(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text("this is not json\n")
    res = _cli("eval", str(f), cache=tmp_path / "cache")
    assert res.returncode == 2 and "not JSON" in res.stderr


def test_oracle_judge_scores_generator_text_at_its_entropy_rate(tmp_path):
    """Documents drawn from the generator, judged exactly: per-word NLL ~ the entropy rate."""
    import numpy as np

    from dind.judges import load_judge
    from dind.synthetic import HMMMixture, symbols_to_text, write_corpus

    folder = tmp_path / "syn"
    write_corpus(folder, n_docs=2, doc_length=16, seed=0)
    g = HMMMixture.load(folder / "generator.json")
    rng = np.random.default_rng(1)
    records = [{"text": symbols_to_text(g.sample_document(128, rng), g)} for _ in range(60)]
    result = evaluate_samples(records, load_judge(f"oracle:{folder}"))
    agg = result["aggregate"]
    rate = g.entropy_rate(128, n_samples=200)
    assert all(r["n_scored"] == 128 and r["n_invalid"] == 0 for r in result["samples"])
    assert math.log(agg["gen_ppl_token_weighted"]) == pytest.approx(rate, abs=0.15)
    # words outside the generator's vocabulary are counted and penalized, never skipped
    garbled = [{"text": r["text"].replace(r["text"].split()[5], "qqqq")} for r in records]
    worse = evaluate_samples(garbled, load_judge(f"oracle:{folder}"))
    assert all(r["n_invalid"] >= 1 for r in worse["samples"])
    assert worse["aggregate"]["invalid_token_share"] > 0
    assert worse["aggregate"]["gen_ppl_token_weighted"] > agg["gen_ppl_token_weighted"]


def test_heldout_nll_of_an_ar_run_matches_a_direct_computation(tmp_path, monkeypatch):
    import torch

    from dind.attention import causal_mask
    from dind.checkpoint import load_checkpoint
    from dind.data import prepare_data
    from dind.evaluate import heldout_nelbo
    from dind.train import train
    from helpers import tiny_run, write_corpus

    monkeypatch.setenv("DIND_CACHE", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path / "corpus")
    train(tiny_run(corpus, objective="ar", max_steps=5, eval_every=0), tmp_path / "ar",
          progress=False)  # fmt: skip
    result = heldout_nelbo(tmp_path / "ar", batch_size=3)
    ck = load_checkpoint(tmp_path / "ar")
    _, val = prepare_data(str(corpus), ck.tokenizer, 32)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(val)):  # one row at a time, independently of the batching
            x = val.batch([i])
            logits = ck.model(x[:, :-1], mask=causal_mask(31)).double()
            logits[..., ck.tokenizer.mask_id] = -1e6
            nll = -logits.log_softmax(-1).gather(-1, x[:, 1:, None])
            total, count = total + nll.sum().item(), count + nll.numel()
    assert result["objective"] == "ar" and result["tokens"] == count
    assert result["nelbo"] == pytest.approx(total / count, rel=1e-5)
    with pytest.raises(DindError):
        heldout_nelbo(tmp_path / "ar", data="/no/such/corpus")


# ----------------------------------------------------------------------------- BD3-LM's rule


def rule_by_hand(tokens: list[int], block_size: int) -> bool:
    """BD3-LM's sampler loop replayed with torch: after each block, once the sequence is
    longer than 256, reject when the entropy of its last 256 tokens is below 4 nats."""
    import torch

    for n_blocks in range(1, len(tokens) // block_size + 1):
        x = torch.tensor(tokens[: n_blocks * block_size])
        if x.numel() > 256:
            _, counts = torch.unique(x[-256:], return_counts=True)
            if float(torch.special.entr(counts.double() / counts.sum()).sum()) < 4:
                return True
    return False


@pytest.mark.slow
def test_bd3lm_rule_against_brute_force():
    rng = random.Random(0)
    outcomes = []
    for _ in range(150):
        block = rng.choice([1, 4, 16, 64])
        length = block * rng.randint(256 // block, 640 // block)
        k = rng.randint(40, 90)  # near the bound: ~55 evenly used symbols give 4 nats
        tokens = [0] + [rng.randrange(k) for _ in range(length - 1)]
        if rng.random() < 0.5:  # a repetitive stretch somewhere
            start = rng.randrange(length)
            for i in range(start, min(length, start + rng.randint(50, 300))):
                tokens[i] = 7
        expected = rule_by_hand(tokens, block)
        assert bd3lm_rejects(tokens, block) == expected, (block, length, k)
        outcomes.append(expected)
    assert 20 < sum(outcomes) < 130  # both outcomes, many times


def test_bd3lm_rule_checks_every_block_end_not_only_the_last_window():
    diverse = [i % 200 for i in range(1, 1024)]  # 200 symbols: 5.3 nats in any window
    assert not bd3lm_rejects([0, *diverse], 4)
    middle = [0, *diverse]
    middle[300:560] = [3] * 260  # the window ending at 560 is one symbol
    assert unigram_entropy(middle[-256:]) > 4  # the final window alone would pass
    assert bd3lm_rejects(middle, 4)
    # nothing is checked at 256 positions or fewer
    assert not bd3lm_rejects([0] * 256, 4) and bd3lm_rejects([0] * 260, 4)
    assert not bd3lm_rejects([0] * 259, 4)  # the first block end past 256 is 260


def test_eval_reports_the_bd3lm_rule_on_model_tokens(tmp_path):
    diverse = [0, *[i % 200 for i in range(1, 300)]]
    flat = [0, *[i % 20 for i in range(1, 300)]]  # 20 symbols: 3.0 nats
    records = [
        {"index": 0, "text": "a b c", "stages": [4], "stage_tokens": [diverse], "redraws": 2},
        {"index": 1, "text": "a b c", "stages": [4, 300], "stage_tokens": [diverse, flat],
         "redraws": 0},
        {"index": 2, "text": "a a a"},
    ]  # fmt: skip
    result = evaluate_samples(records, WordJudge())
    rows, agg = result["samples"], result["aggregate"]
    assert [r["bd3lm_reject"] for r in rows] == [False, True, None]  # the final stage's tokens
    assert agg["bd3lm_reject_share"] == 0.5  # over the records with model tokens
    assert agg["redraws_mean"] == 1.0
    table = format_table(result)
    assert "BD3-LM rule rejects 50%" in table and "redraws per sample: 1.00" in table
    assert "first 1024 ids" in format_table({**result, "judge_max_tokens": 1024})
    assert "ids" not in table.splitlines()[0]
    bare = evaluate_samples(records[2:], WordJudge())
    assert bare["aggregate"]["bd3lm_reject_share"] is None
    assert bare["aggregate"]["redraws_mean"] is None
    assert "BD3-LM rule rejects -" in format_table(bare)
    assert "redraws" not in format_table(bare)


@pytest.mark.slow
def test_cli_bad_judge_max_tokens(tmp_path):
    f = write(tmp_path / "s.jsonl", [{"text": "hello there"}])
    res = _cli("eval", str(f), "--judge-max-tokens", "1", cache=tmp_path / "cache")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--judge-max-tokens must be at least 2" in lines[0], res.stderr
