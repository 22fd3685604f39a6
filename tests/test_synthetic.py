import itertools
import json
import math

import numpy as np
import pytest

from dind.errors import DindError
from dind.synthetic import (
    EOT,
    HMMMixture,
    default_corpus_dir,
    ensure_default_corpus,
    oracle_score,
    symbols_to_text,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def g() -> HMMMixture:
    return HMMMixture.make(seed=0)


@pytest.fixture(scope="module")
def tiny() -> HMMMixture:
    """Z=2, S=2, W=3: small enough to enumerate every sequence and state path."""
    return HMMMixture.make(seed=3, n_components=2, n_states=2, n_words=3)


def brute_force_prob(m: HMMMixture, x: tuple[int, ...]) -> float:
    total = 0.0
    for z in range(len(m.weights)):
        for path in itertools.product(range(m.init.shape[1]), repeat=len(x)):
            p = m.weights[z] * m.init[z, path[0]] * m.emit[z, path[0], x[0]]
            for t in range(1, len(x)):
                p *= m.trans[z, path[t - 1], path[t]] * m.emit[z, path[t], x[t]]
            total += p
    return total


def test_log_likelihood_equals_brute_force_enumeration(tiny):
    probs = {}
    for x in itertools.product(range(3), repeat=4):
        probs[x] = math.exp(tiny.log_likelihood(x))
        assert probs[x] == pytest.approx(brute_force_prob(tiny, x), rel=1e-10)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-10)
    assert tiny.log_likelihood([]) == 0.0


def test_log_likelihood_is_stable_on_long_documents(g):
    x = g.sample_document(10_000, np.random.default_rng(0))
    ll = g.log_likelihood(x)
    # Per-token loss must be finite and of the entropy rate's order (no under/overflow).
    assert math.isfinite(ll) and 0.5 < -ll / len(x) < 5.0
    with pytest.raises(DindError):
        g.log_likelihood([0, g.n_words])


@pytest.mark.slow
def test_sampler_follows_the_likelihood(tiny):
    # Length-2 sequence frequencies must match exp(log_likelihood) within 4 binomial SEs.
    rng = np.random.default_rng(1)
    n = 20_000
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(n):
        x = tuple(tiny.sample_document(2, rng))
        counts[x] = counts.get(x, 0) + 1
    for x in itertools.product(range(3), repeat=2):
        p = math.exp(tiny.log_likelihood(x))
        assert abs(counts.get(x, 0) / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, x


def test_entropy_rate_matches_exact_entropy_of_tiny_generator(tiny):
    logp = np.array([tiny.log_likelihood(x) for x in itertools.product(range(3), repeat=4)])
    p = np.exp(logp)
    exact = float(-(p * logp).sum() / 4)
    std = math.sqrt(float((p * (logp / 4) ** 2).sum()) - exact**2)
    n = 4000
    assert abs(tiny.entropy_rate(4, n_samples=n, seed=5) - exact) < 3 * std / math.sqrt(n)


def test_fresh_samples_score_at_the_entropy_rate(g):
    # Fresh documents (sample_document + log_likelihood) vs entropy_rate: within 3 standard
    # errors of the difference of the two Monte Carlo means.
    length, n_fresh, n_rate = 128, 100, 400
    rng = np.random.default_rng(123)
    losses = np.array(
        [-g.log_likelihood(g.sample_document(length, rng)) / length for _ in range(n_fresh)]
    )
    rate = g.entropy_rate(length, n_samples=n_rate)
    se = losses.std(ddof=1) * math.sqrt(1 / n_fresh + 1 / n_rate)
    assert abs(losses.mean() - rate) < 3 * se
    assert 1.5 < rate < 2.5  # the design target


def test_documents_spliced_from_two_components_score_lower(g):
    rng = np.random.default_rng(7)
    spliced, pure = [], []
    for _ in range(40):
        half = g.sample_document(64, rng, component=0) + g.sample_document(64, rng, component=1)
        spliced.append(g.log_likelihood(half) / 128)
        pure.append(g.log_likelihood(g.sample_document(128, rng, component=0)) / 128)
    assert np.mean(spliced) < np.mean(pure) - 0.5


def test_init_is_stationary(g, tiny):
    for m in (g, tiny):
        for z in range(len(m.weights)):
            np.testing.assert_allclose(m.init[z] @ m.trans[z], m.init[z], atol=1e-12)
        assert np.allclose(m.trans.sum(-1), 1) and np.allclose(m.emit.sum(-1), 1)


def test_make_is_deterministic_with_distinct_pronounceable_words(g):
    again = HMMMixture.make(seed=0)
    assert again.words == g.words and np.array_equal(again.emit, g.emit)
    assert len(set(g.words)) == len(g.words) == 64
    assert all(w.isascii() and w.isalpha() and w.islower() for w in g.words)
    assert HMMMixture.make(seed=1).words != g.words


def test_oracle_score_round_trip(g):
    x = g.sample_document(50, np.random.default_rng(2))
    s = oracle_score(symbols_to_text(x, g), g)
    assert s.log_prob == pytest.approx(g.log_likelihood(x), rel=1e-12)
    assert (s.n_tokens, s.n_invalid, s.tokens) == (50, 0, x)
    assert oracle_score("", g).n_tokens == 0 and oracle_score("", g).log_prob == 0.0


def test_oracle_score_splits_at_eot(g):
    a, b, c, d = g.words[:4]
    s = oracle_score(f"{a} {b} {EOT} {c} {d}", g)
    assert s.log_prob == pytest.approx(g.log_likelihood([0, 1]) + g.log_likelihood([2, 3]))
    assert s.n_tokens == 4 and s.tokens == [0, 1, 2, 3]
    # EOT glued to words still separates them; a joint window would score differently.
    glued = oracle_score(f"{a} {b}{EOT}{c} {d}", g)
    assert glued.log_prob == pytest.approx(s.log_prob)
    assert s.log_prob != pytest.approx(g.log_likelihood([0, 1, 2, 3]))


def test_oracle_score_counts_and_penalizes_invalid_words(g):
    a, b, c = g.words[:3]
    s = oracle_score(f"{a} zzzz {b} {c} Bako", g, invalid_log_prob=-7.0)
    assert (s.n_tokens, s.n_invalid, s.tokens) == (5, 2, [0, -1, 1, 2, -1])
    assert s.log_prob == pytest.approx(g.log_likelihood([0]) + g.log_likelihood([1, 2]) - 14.0)


def test_write_corpus(tmp_path, g):
    out = write_corpus(tmp_path / "c", n_docs=5, doc_length=20, seed=1)
    files = sorted((out / "docs").iterdir())
    assert [f.name for f in files] == [f"doc_{i:05d}.txt" for i in range(5)]
    texts = [f.read_text() for f in files]
    assert all(len(t.split(" ")) == 20 and t == t.strip() for t in texts)
    loaded = HMMMixture.load(out / "generator.json")
    x = [loaded.index[w] for w in texts[0].split()]
    assert loaded.words == g.words and loaded.log_likelihood(x) == g.log_likelihood(x)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temp folder left behind

    (tmp_path / "empty").mkdir()  # an existing empty folder is fine
    same = write_corpus(tmp_path / "empty", n_docs=5, doc_length=20, seed=1)
    assert [f.read_text() for f in sorted((same / "docs").iterdir())] == texts
    other = write_corpus(tmp_path / "o", n_docs=5, doc_length=20, seed=2)
    assert [f.read_text() for f in sorted((other / "docs").iterdir())] != texts
    with pytest.raises(DindError, match="not empty"):
        write_corpus(out, n_docs=5, doc_length=20)


def test_load_rejects_missing_or_corrupt_files(tmp_path, g):
    with pytest.raises(DindError, match="not found"):
        HMMMixture.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DindError):
        HMMMixture.load(bad)
    d = g.to_dict()
    d["emit"] = d["emit"][:1]
    bad.write_text(json.dumps(d))
    with pytest.raises(DindError):
        HMMMixture.load(bad)


def test_ensure_default_corpus(tmp_path):
    docs = ensure_default_corpus()
    assert docs == default_corpus_dir() / "docs" and docs.parent.parent.parent == tmp_path / "cache"
    names = sorted(p.name for p in docs.iterdir())
    assert len(names) == 400 and len((docs / names[0]).read_text().split()) == 512
    assert ensure_default_corpus() == docs  # second call reuses it
