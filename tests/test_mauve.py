"""MAUVE: the divergence-curve area against a brute-force loop on hand-made histograms, the
k-means quantization, the held-out reference chunks, judge features, and the issue's check:
corpus text against held-out corpus text scores near 1, shuffled-word text near 0."""

from __future__ import annotations

import json
import math
import random
import sys
from itertools import pairwise

import numpy as np
import pytest
import torch

from dind.attention import causal_mask
from dind.checkpoint import save_checkpoint
from dind.config import ModelConfig, RunConfig, TrainConfig
from dind.data import load_corpus
from dind.errors import DindError
from dind.judges import feature_tokens, load_judge
from dind.mauve import (
    HeldOutText,
    compute_mauve,
    default_clusters,
    divergence_curve,
    evaluate_mauve,
    held_out_text,
    kmeans,
    mauve_of_histograms,
    mean_std,
    reference_corpus,
)
from dind.model import DiT
from dind.tokenizer import train_bpe
from helpers import write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the curve


def brute_force_mauve(p, q, grid=25, c=5.0):
    """The definition, one mixture at a time in plain floats: the points
    (exp(-c KL(q||R)), exp(-c KL(p||R))) for R = lam p + (1 - lam) q, lam evenly spaced in
    [1e-6, 1 - 1e-6], from (0, 1) to (1, 0); trapezoid area."""
    sp, sq = sum(p), sum(q)
    p, q = [v / sp for v in p], [v / sq for v in q]

    def kl(a, r):
        return sum(ai * math.log(ai / ri) for ai, ri in zip(a, r, strict=True) if ai > 0)

    points = [(0.0, 1.0)]
    for i in reversed(range(grid)):  # lam falling: R moves from p to q, x rises
        lam = 1e-6 + (1 - 2e-6) * i / (grid - 1)
        r = [lam * pi + (1 - lam) * qi for pi, qi in zip(p, q, strict=True)]
        points.append((math.exp(-c * kl(q, r)), math.exp(-c * kl(p, r))))
    points.append((1.0, 0.0))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in pairwise(points))


HISTOGRAMS = [
    ([1, 1], [9, 1]),
    ([3, 0, 2, 5], [1, 4, 0, 5]),
    ([10, 0, 0], [0, 5, 5]),
    ([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]),
    ([0, 7, 1, 0, 2], [0, 7, 1, 0, 2]),
]


@pytest.mark.parametrize("p,q", HISTOGRAMS)
@pytest.mark.parametrize("grid,c", [(25, 5.0), (7, 2.0), (400, 5.0)])
def test_area_matches_the_brute_force_definition(p, q, grid, c):
    got = mauve_of_histograms(torch.tensor(p), torch.tensor(q), grid, c)
    assert got == pytest.approx(brute_force_mauve(p, q, grid, c), rel=1e-12, abs=1e-14)
    assert mauve_of_histograms(torch.tensor(q), torch.tensor(p), grid, c) == pytest.approx(got)
    x = divergence_curve(torch.tensor(p), torch.tensor(q), grid, c)[:, 0]
    assert bool((x[1:] >= x[:-1] - 1e-12).all())  # ascending, up to rounding


def test_random_histograms_match_brute_force():
    rng = random.Random(0)
    for _ in range(20):
        k = rng.randint(2, 12)
        p = [rng.choice([0, 0, 1, 2, 5, 9]) for _ in range(k)]
        q = [rng.choice([0, 1, 3, 4]) for _ in range(k)]
        p[0] += 1
        q[-1] += 1  # no empty histogram
        assert mauve_of_histograms(torch.tensor(p), torch.tensor(q)) == pytest.approx(
            brute_force_mauve(p, q), rel=1e-12, abs=1e-14
        )


def test_known_values():
    # equal histograms: every curve point is (1, 1), the area is the unit square
    assert mauve_of_histograms(torch.tensor([2, 3, 5]), torch.tensor([4, 6, 10])) == 1.0
    # disjoint supports: KL(p||R) = -log lam, KL(q||R) = -log(1 - lam), so the curve is
    # x = (1 - lam)^c, y = lam^c, whose area is c! c! / (2c)!: 1/2 for c = 1 (a straight line,
    # exact on any grid), 1/252 for c = 5 (reached as the grid grows)
    disjoint = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert mauve_of_histograms(*disjoint, grid=25, scaling=1.0) == pytest.approx(0.5, abs=1e-12)
    assert mauve_of_histograms(*disjoint, grid=20_001) == pytest.approx(1 / 252, rel=1e-3)
    assert 0 < mauve_of_histograms(*disjoint) < 0.01
    # a hand-checkable mixture point: p = (1/2, 1/2), q = (1, 0) at lam = 1/2 is R = (3/4, 1/4)
    p, q = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])
    pts = divergence_curve(p, q, grid=3)
    kl_p = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_q = math.log(1 / 0.75)
    assert pts[2].tolist() == pytest.approx([math.exp(-5 * kl_q), math.exp(-5 * kl_p)])


def test_bad_histograms_fail_cleanly():
    with pytest.raises(DindError, match="nonnegative"):
        mauve_of_histograms(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    with pytest.raises(DindError, match="nonnegative"):
        mauve_of_histograms(torch.tensor([-1.0, 2.0]), torch.tensor([1.0, 1.0]))


def test_mean_std():
    assert mean_std([0.5]) == (0.5, None)
    mean, std = mean_std([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5) and std == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))


# ----------------------------------------------------------------------------- quantization


def test_kmeans_finds_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(25)
    x = centers[truth] + 0.3 * torch.randn(100, 2, generator=g)
    labels = kmeans(x.double(), 4, seed=0)
    # the same partition up to naming: each true blob maps to one label and vice versa
    pairs = set(zip(truth.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    assert torch.equal(kmeans(x.double(), 4, seed=0), labels)  # seeded


def test_mauve_on_features():
    g = torch.Generator().manual_seed(0)
    p, q, far = (torch.randn(300, 16, generator=g) for _ in range(3))
    far[:, :4] += 2.0
    assert default_clusters(300, 300) == 30
    same = [compute_mauve(p, q, seed=s) for s in range(3)]
    apart = [compute_mauve(p, far, seed=s) for s in range(3)]
    assert min(same) > 0.85 and max(apart) < 0.15
    assert compute_mauve(p, q, seed=1) == same[1]
    # each feature vector is scaled to unit length first: per-row scales change nothing
    scale = torch.rand(300, 1, generator=g) + 0.5
    assert compute_mauve(p * scale, q * 3, seed=1) == pytest.approx(same[1])


# ----------------------------------------------------------------------------- text


class WordJudge:
    """A stand-in feature extractor with no model: whitespace words as tokens, features the
    counts of each word bigram. It sees word order, so shuffled text lands elsewhere."""

    name = "word-bigrams"
    context = 10**6
    max_tokens = None
    eos_id = None
    DIM = 64

    def __init__(self):
        self.index: dict[str, int] = {}
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        for w in text.split():
            if w not in self.index:
                self.index[w] = len(self.words)
                self.words.append(w)
        return [self.index[w] for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)

    def features(self, tokens: list[int]) -> torch.Tensor:
        f = torch.zeros(self.DIM * self.DIM)
        for a, b in pairwise(tokens):
            f[a * self.DIM + b] += 1
        return f


def shuffled(texts: list[str], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for t in texts:
        words = t.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def test_corpus_text_scores_near_one_and_shuffled_words_near_zero(tmp_path):
    """The issue's check: text drawn from the corpus (its training documents) against the
    held-out documents, and the same texts with their words shuffled."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=40, words_per_doc=800)
    judge = WordJudge()
    ref = held_out_text(str(corpus), judge)
    train = HeldOutText("train", judge, docs=load_corpus(str(corpus)).train_docs)
    texts = [judge.decode(c) for c in train.chunks([32] * 100, seed=5)[0]]
    good = evaluate_mauve(texts, judge, ref, seeds=(0, 1, 2))
    bad = evaluate_mauve(shuffled(texts), judge, ref, seeds=(0, 1, 2))
    assert good["mauve"] > 0.9 and bad["mauve"] < 0.05
    assert len(good["per_seed"]) == 3 and good["mauve_std"] is not None
    assert good["n_clusters"] == 10 and good["n_texts"] == 100 and good["length_mean"] == 32
    assert not good["reference_overlap"]  # 3200 held-out words hold 100 chunks of 32


def test_reference_chunks(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for d in range(10):  # words unique to their place; doc09 is held out
        (corpus / f"doc{d}.txt").write_text(" ".join(f"d{d}w{i}" for i in range(80)))
    judge = WordJudge()
    ref = held_out_text(str(corpus), judge)
    assert ref.name == str(corpus) and len(ref.stream) == 80
    doc = load_corpus(str(corpus)).val_docs[0].split()
    assert doc[0] == "d9w0"
    chunks, overlap = ref.chunks([5, 3, 7, 1], seed=0)
    assert [len(c) for c in chunks] == [5, 3, 7, 1] and not overlap
    starts = []
    for c in chunks:  # consecutive words of the held-out document, in distinct slots of 7
        words = judge.decode(c).split()
        s = doc.index(words[0])
        assert doc[s : s + len(words)] == words
        starts.append(s)
    assert all(s % 7 == 0 for s in starts) and len(set(starts)) == 4
    assert ref.chunks([5, 3, 7, 1], seed=0)[0] == chunks  # seeded
    assert ref.chunks([5, 3, 7, 1], seed=1)[0] != chunks
    many, overlap = ref.chunks([10] * 9, seed=0)  # 8 slots of 10 for 9 chunks: they overlap
    assert overlap and all(len(c) == 10 for c in many)
    with pytest.raises(DindError, match="shorter than one reference text"):
        ref.chunks([81], seed=0)


def test_held_out_text_of_a_tokenized_folder(tmp_path):
    from dind.tokenizer import gpt2_tokenizer

    folder = tmp_path / "owt"
    folder.mkdir()
    words = " ".join(f"w{i}" for i in range(300))
    ids = gpt2_tokenizer().encode(words)
    np.asarray(ids, dtype=np.uint16).tofile(folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps({"tokenizer": "gpt2"}))
    judge = WordJudge()
    ref = held_out_text(str(folder), judge)
    chunks, _ = ref.chunks([6, 6, 4], seed=0)
    for c in chunks:
        got = judge.decode(c).split()
        assert len(got) == len(c)
        first = int(got[0][1:])
        assert got == [f"w{i}" for i in range(first, first + len(got))]


def test_reference_from_a_run_records_its_corpus(tmp_path):
    model, tokenizer = tiny_ar(tmp_path / "run", corpus=str(tmp_path / "corpus"))
    assert reference_corpus(str(tmp_path / "run")) == str(tmp_path / "corpus")
    assert reference_corpus("shakespeare") == "shakespeare"


# ----------------------------------------------------------------------------- judge features


def tiny_ar(path, corpus: str = "shakespeare"):
    torch.manual_seed(0)
    tokenizer = train_bpe(["the king and the queen walk to the castle by night"] * 4, 300)
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, seq_len=16, hidden_dim=32,
        cond_dim=16, n_blocks=2, n_heads=2, dropout=0.0, causal=True,
    )  # fmt: skip
    model = DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    run = RunConfig(model=cfg, train=TrainConfig(objective="ar", corpus=corpus))
    save_checkpoint(path, model, run, tokenizer, {4: (1e-3, 1.0)})
    return model.eval(), tokenizer


def test_dind_ar_judge_features_are_the_final_norm_at_the_last_token(tmp_path):
    model, tokenizer = tiny_ar(tmp_path / "ar")
    judge = load_judge(str(tmp_path / "ar"))
    ids = tokenizer.encode("the queen walks to the castle by night and the king " * 3)
    assert feature_tokens(judge) == 15 and len(ids) > 15

    @torch.no_grad()
    def direct(tokens):
        x = torch.tensor([[tokenizer.bos_id, *tokens]])
        h = model.vocab_embed(x)
        c = torch.nn.functional.silu(model.sigma_map(torch.zeros(1)))
        rope = model.rotary_emb(torch.arange(x.shape[1]))
        for i, block in enumerate(model.blocks):
            h = block(h, c, rope, causal_mask(x.shape[1]), None, i)
        return model.output_layer.norm_final(h)[0, -1]

    assert torch.allclose(judge.features(ids[:5]), direct(ids[:5]), atol=1e-5)
    assert torch.allclose(judge.features(ids), direct(ids[:15]), atol=1e-5)  # the first window
    judge.max_tokens = 4  # BOS + 3, as Gen PPL's cut
    assert torch.allclose(judge.features(ids), direct(ids[:3]), atol=1e-5)


def test_hf_judge_features_are_the_last_hidden_state(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from dind.tokenizer import EOT

    torch.manual_seed(0)
    bpe = train_bpe(["the king and the queen walk to the castle by night"] * 4, 300)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe.hf, bos_token=EOT, eos_token=EOT)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=8, vocab_size=len(tok))
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    judge = load_judge(str(tmp_path / "gpt2"))
    model = judge.model
    text = "the queen walks to the castle by night and the king"
    ids = judge.encode(text)
    assert len(ids) > 7 and judge.decode(ids) == text
    with torch.no_grad():
        x = torch.tensor([[judge.bos_id, *ids[:7]]])
        want = model(input_ids=x, output_hidden_states=True).hidden_states[-1][0, -1]
    assert torch.allclose(judge.features(ids), want, atol=1e-5)  # the first window: 7 tokens


# ----------------------------------------------------------------------------- CLI


def _cli(monkeypatch, capsys, *args, cache):
    """``dind ARGS`` in this process (a subprocess spends seconds importing): exit code,
    stdout, stderr."""
    from dind.cli import main

    monkeypatch.setenv("DIND_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["dind", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def write_samples(path, texts):
    path.write_text("".join(json.dumps({"index": i, "text": t}) + "\n" for i, t in
                            enumerate(texts)))  # fmt: skip
    return path


def test_cli_eval_mauve(tmp_path, monkeypatch, capsys):
    corpus = write_corpus(tmp_path / "corpus", n_docs=20, words_per_doc=400)
    tiny_ar(tmp_path / "ar", corpus=str(corpus))
    docs = load_corpus(str(corpus)).train_docs
    texts = [" ".join(d.split()[i * 10 : i * 10 + 10]) for d in docs[:4] for i in range(5)]
    samples = write_samples(tmp_path / "s.jsonl", texts)
    out = tmp_path / "m.json"
    code, stdout, stderr = _cli(
        monkeypatch, capsys, "eval", str(samples), "--judge", str(tmp_path / "ar"), "--mauve",
        "--reference", str(tmp_path / "ar"), "--mauve-seeds", "0,1", "--out", str(out),
        "--no-progress", cache=tmp_path / "cache",
    )  # fmt: skip
    assert code == 0, stderr
    result = json.loads(out.read_text())
    m = result["mauve"]
    assert result["aggregate"]["mauve"] == pytest.approx(sum(m["per_seed"]) / 2)
    assert result["aggregate"]["mauve_std"] == m["mauve_std"] and m["seeds"] == [0, 1]
    assert 0 < m["mauve"] <= 1 and m["n_texts"] == 20 and m["n_clusters"] == 2
    assert m["reference"] == str(corpus) and m["feature_tokens"] == 15
    assert "MAUVE" in stdout and "over seeds 0,1" in stdout


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--mauve"], "--mauve needs --reference"),
        (["--mauve", "--reference", "shakespeare", "--judge", "oracle:SYN"], "hidden states"),
        (["--mauve", "--reference", "x", "--mauve-seeds", "a,b"], "comma-separated"),
    ],
)
def test_cli_mauve_errors(tmp_path, monkeypatch, capsys, extra, msg):
    from dind.synthetic import write_corpus as write_synthetic

    write_synthetic(tmp_path / "syn", n_docs=2, doc_length=8, seed=0)
    samples = write_samples(tmp_path / "s.jsonl", ["a b c", "d e f"])
    extra = [e.replace("SYN", str(tmp_path / "syn")) for e in extra]
    code, _, stderr = _cli(monkeypatch, capsys, "eval", str(samples), *extra,
                           cache=tmp_path / "cache")  # fmt: skip
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and msg in lines[0], stderr
