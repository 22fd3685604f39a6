"""``dind.samples``: the one samples schema, read back as written; the trajectory diff."""

import json
import random

import pytest

from dind.config import SamplerConfig
from dind.errors import DindError
from dind.samples import (
    Sample,
    file_name,
    from_record,
    read_samples,
    revisions,
    to_record,
    write_samples,
)


class Chars:
    """A tokenizer of single characters: id i is chr(97 + i % 26)."""

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def random_sample(rng: random.Random, index: int, L: int = 24, stages: int = 3) -> Sample:
    s = Sample(index, rng.randrange(1 << 30))
    tokens = [0] + [rng.randrange(50) for _ in range(L - 1)]
    for k in range(stages):
        remasked = [] if k == 0 else sorted(rng.sample(range(1, L), L // 3))
        if k:
            tokens = [rng.randrange(50) if p in remasked else t for p, t in enumerate(tokens)]
        s.stage_tokens.append(list(tokens))
        s.snapshot_confidence.append([rng.random() for _ in range(L)])
        s.remasked.append(remasked)
        s.nfe.append(rng.randrange(1, 30))
        s.seconds.append(rng.random())
    return s


def test_a_written_file_reads_back_as_the_samples(tmp_path):
    rng = random.Random(0)
    drawn = [random_sample(rng, i) for i in range(4)]
    cfg = SamplerConfig(stages=(4, 8, 24), remask=(0.5, 0.25), length=24)
    path = tmp_path / "out" / "s.jsonl"
    records = write_samples(path, drawn, Chars(), cfg)
    assert read_samples(path) == records == [json.loads(x) for x in path.read_text().splitlines()]
    for s, r in zip(drawn, records, strict=True):
        assert r["text"] == Chars().decode(s.tokens[1:])
        assert (r["stages"], r["remask_ratios"], r["top_p"]) == ([4, 8, 24], [0.5, 0.25], 0.9)
        back = from_record(r)
        assert back == s  # every field of the trajectory survives the file
    with pytest.raises(DindError, match="without its trajectory"):
        from_record({"text": "a", "index": 0, "seed": 1})


def test_revisions_match_a_brute_force_diff():
    rng = random.Random(1)
    for i in range(20):
        s = random_sample(rng, i, stages=rng.randrange(1, 5))
        revs = revisions(s)
        assert revisions(to_record(s, Chars(), SamplerConfig())) == revs
        assert [r.stage for r in revs] == list(range(2, len(s.stage_tokens) + 1))
        for r in revs:
            before, after = s.stage_tokens[r.stage - 2], s.stage_tokens[r.stage - 1]
            assert (r.before, r.after, r.nfe) == (before, after, s.nfe[r.stage - 1])
            assert r.remasked == s.remasked[r.stage - 1]
            assert r.changed == {p for p in range(len(after)) if after[p] != before[p]}


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(DindError, match="not found"):
        read_samples(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DindError, match="holds no samples"):
        read_samples(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(DindError, match="line 2 has no 'text'"):
        read_samples(tmp_path / "bad.jsonl")


def test_file_names_of_settings():
    assert file_name("two stages (block 128, gamma 0.5), top-p 0.9", 2) == (
        "two_stages_block_128_gamma_0_5_top_p_0_9_seed2.jsonl"
    )
