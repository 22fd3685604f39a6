"""An exact-likelihood benchmark: a synthetic corpus from a known mixture of hidden Markov models.

Design choices:
- The generator is a MIXTURE of Z HMMs whose component z is drawn ONCE PER DOCUMENT. A text that
  drifts between components mid-document is improbable under every component, so a
  left-to-right drafter that commits to the wrong component early (or switches) is penalized,
  and a global pass that makes the whole text agree with one component can repair it.
- Each component's initial distribution is its transition matrix's STATIONARY distribution, so
  any window cut from the middle of a document has exactly the same law as a document start.
  That lets samples that start/end mid-document (training rows cut documents) be scored as
  independent windows: log sum_z pi_z p_z(window).
- ``make``: sparse-ish transitions (Dirichlet with small concentration plus a self-transition
  bias) and emissions concentrated on a component-specific arc of a random circular order of
  the words. Neighbouring arcs overlap, so a few words rarely reveal z but a dozen usually do.
  A small floor on every transition and emission keeps the chains ergodic (unique stationary
  distribution) and every log-likelihood finite.
- Likelihoods use the scaled forward algorithm (per-step normalization, log of the scales
  summed), vectorized over components and over a batch of sequences; stable at any length.
- Words are two consonant-vowel syllables ("bako", "tiru"): pronounceable, lowercase, distinct,
  and a fixed function of the seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dind.errors import DindError
from dind.paths import cache_dir
from dind.utils import atomic_write, staged_folder

EOT = "<|endoftext|>"
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_FLOOR = 1e-3  # total mass spread uniformly over all states / words, per row
_TRANS_CONCENTRATION = 0.1
_SELF_BIAS = 0.2
_EMIT_CONCENTRATION = 0.1
_ARRAYS = ("weights", "init", "trans", "emit")


def _stationary(trans: np.ndarray) -> np.ndarray:
    """Solve pi P = pi, sum(pi) = 1 (unique because every entry of P is positive)."""
    s = trans.shape[0]
    a = np.vstack([trans.T - np.eye(s), np.ones((1, s))])
    b = np.zeros(s + 1)
    b[-1] = 1.0
    pi = np.linalg.lstsq(a, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def _words(n_words: int, rng: np.random.Generator) -> list[str]:
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    candidates = [a + b for a in syllables for b in syllables]
    if n_words > len(candidates):
        raise DindError(f"n_words must be at most {len(candidates)}, got {n_words}")
    return [candidates[i] for i in rng.permutation(len(candidates))[:n_words]]


def _draw(cum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of a batch of cumulative distributions (..., K)."""
    u = rng.random(cum.shape[:-1])[..., None] * cum[..., -1:]
    return np.minimum((cum <= u).sum(-1), cum.shape[-1] - 1)


@dataclass(eq=False)  # arrays do not compare with ==
class HMMMixture:
    weights: np.ndarray  # (Z,) mixture weights pi_z
    init: np.ndarray  # (Z, S) stationary distribution of each component
    trans: np.ndarray  # (Z, S, S) row-stochastic
    emit: np.ndarray  # (Z, S, W) row-stochastic over W words
    words: list[str]  # (W,) surface word of each symbol
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def n_words(self) -> int:
        return len(self.words)

    @classmethod
    def make(
        cls, seed: int = 0, n_components: int = 4, n_states: int = 8, n_words: int = 64
    ) -> HMMMixture:
        """A generator that is a deterministic function of its arguments (see module docstring)."""
        if n_components < 1 or n_states < 1 or n_words < 2:
            raise DindError("need n_components >= 1, n_states >= 1 and n_words >= 2")
        rng = np.random.default_rng(seed)
        z_, s_, w_ = n_components, n_states, n_words
        weights = rng.dirichlet(np.full(z_, 8.0))
        trans = rng.dirichlet(np.full(s_, _TRANS_CONCENTRATION), size=(z_, s_))
        trans = (1 - _SELF_BIAS) * trans + _SELF_BIAS * np.eye(s_)
        trans = (1 - _FLOOR) * trans + _FLOOR / s_
        # Component z owns an arc of a random circular word order; arcs overlap their neighbours.
        order = rng.permutation(w_)
        arc = min(w_, max(2, (3 * w_) // (2 * z_)))
        emit = np.zeros((z_, s_, w_))
        for z in range(z_):
            own = order[(round(z * w_ / z_) + np.arange(arc)) % w_]
            emit[z][:, own] = rng.dirichlet(np.full(arc, _EMIT_CONCENTRATION), size=s_)
        emit = (1 - _FLOOR) * emit + _FLOOR / w_
        init = np.stack([_stationary(t) for t in trans])
        return cls(weights, init, trans, emit, _words(w_, rng))

    def _sample(
        self, n: int, length: int, rng: np.random.Generator, component: int | None = None
    ) -> np.ndarray:
        """(n, length) symbols: one z per row (or the given component), then an HMM path."""
        if component is None:
            z = rng.choice(len(self.weights), size=n, p=self.weights)
        else:
            z = np.full(n, component)
        cum_t, cum_e = np.cumsum(self.trans, -1)[z], np.cumsum(self.emit, -1)[z]
        rows = np.arange(n)
        out = np.empty((n, length), dtype=np.int64)
        state = _draw(np.cumsum(self.init, -1)[z], rng)
        for t in range(length):
            if t:
                state = _draw(cum_t[rows, state], rng)
            out[:, t] = _draw(cum_e[rows, state], rng)
        return out

    def sample_document(
        self, length: int, rng: np.random.Generator, component: int | None = None
    ) -> list[int]:
        """Draw z ~ pi (or use ``component``), then a length-``length`` path from init[z]."""
        if length < 0:
            raise DindError(f"length must be >= 0, got {length}")
        if component is not None and not 0 <= component < len(self.weights):
            raise DindError(f"component must be in [0, {len(self.weights)}), got {component}")
        return self._sample(1, length, rng, component)[0].tolist()

    def _log_likelihoods(self, x: np.ndarray) -> np.ndarray:
        """log sum_z pi_z p_z(row) for each row of x (n, T), by the scaled forward algorithm."""
        n, length = x.shape
        logp = np.zeros((n, len(self.weights)))  # sum of log scales, per row and component
        alpha = np.broadcast_to(self.init, (n, *self.init.shape))
        emit_t = np.moveaxis(self.emit, -1, 0)  # (W, Z, S): emission column per symbol
        for t in range(length):
            if t:
                alpha = np.einsum("nzs,zsr->nzr", alpha, self.trans)
            alpha = alpha * emit_t[x[:, t]]
            scale = alpha.sum(-1)
            with np.errstate(divide="ignore"):  # an impossible prefix gives -inf, not nan
                logp += np.log(scale)
            alpha = alpha / np.where(scale > 0, scale, 1.0)[..., None]
        with np.errstate(divide="ignore"):
            joint = logp + np.log(self.weights)
            top = np.maximum(joint.max(-1), -1e300)  # keeps joint - top nan-free if all are -inf
            return top + np.log(np.exp(joint - top[:, None]).sum(-1))

    def log_likelihood(self, symbols: Sequence[int]) -> float:
        """Exact log sum_z pi_z p_z(symbols); 0.0 for the empty sequence."""
        x = np.asarray(symbols, dtype=np.int64).reshape(1, -1)
        if not x.size:
            return 0.0  # the empty window has probability exactly 1
        if x.min() < 0 or x.max() >= self.n_words:
            raise DindError(f"symbols must be in [0, {self.n_words})")
        return float(self._log_likelihoods(x)[0])

    def entropy_rate(self, length: int, n_samples: int = 200, seed: int = 0) -> float:
        """Monte Carlo E[-log p(X_1..n)] / n (nats per token) over windows of ``length`` symbols
        drawn from the generator itself: the floor no model can beat at that length. For the
        default generator the standard error at 200 samples is about 0.005 nats."""
        if length < 1 or n_samples < 1:
            raise DindError("entropy_rate needs length >= 1 and n_samples >= 1")
        # Stratified over z (n_samples / Z windows per component, weighted by pi): the components'
        # differing entropies would otherwise dominate the Monte Carlo error at every length.
        rng, per = np.random.default_rng(seed), -(-n_samples // len(self.weights))
        means = [
            self._log_likelihoods(self._sample(per, length, rng, z)).mean()
            for z in range(len(self.weights))
        ]
        return float(-np.dot(self.weights, means) / length)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k).tolist() for k in _ARRAYS}
        return {**d, "words": list(self.words)}

    @classmethod
    def from_dict(cls, d: dict) -> HMMMixture:
        """Inverse of ``to_dict``; DindError when the description is malformed."""
        try:
            g = cls(*(np.asarray(d[k], dtype=np.float64) for k in _ARRAYS), list(d["words"]))
            z, s, w = *g.init.shape, len(g.words)
            ok = (g.weights.shape, g.trans.shape, g.emit.shape) == ((z,), (z, s, s), (z, s, w))
        except (KeyError, TypeError, ValueError) as e:
            raise DindError(f"not a valid HMMMixture description: {e!r}") from None
        ok = ok and len(g.index) == w  # distinct words
        ok = ok and all(isinstance(x, str) and x.isascii() and x.isalpha() for x in g.words)
        if not ok or not all(x.islower() for x in g.words):
            raise DindError("not a valid HMMMixture description: inconsistent shapes or words")
        for name in _ARRAYS:
            a = getattr(g, name)
            if (a < 0).any() or not np.allclose(a.sum(-1), 1.0, atol=1e-6):
                raise DindError(f"not a valid HMMMixture description: {name} is not stochastic")
        return g

    def save(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> HMMMixture:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DindError(f"generator file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DindError(f"cannot read generator file {path}: {e}") from None
        if not isinstance(d, dict):
            raise DindError(f"not a valid HMMMixture description: {path}")
        return cls.from_dict(d)


def symbols_to_text(symbols: Sequence[int], g: HMMMixture) -> str:
    """The text form of a symbol sequence: its words joined by single spaces."""
    return " ".join(g.words[i] for i in symbols)


def write_corpus(
    out_dir: str | Path,
    n_docs: int = 400,
    doc_length: int = 512,
    seed: int = 0,
    generator_seed: int = 0,
) -> Path:
    """Write ``out_dir/generator.json`` and ``out_dir/docs/doc_00000.txt`` ... (one document per
    file, text form, no trailing newline); returns ``out_dir``. Deterministic in the two seeds."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DindError(f"output folder exists and is not empty: {out}")
    if n_docs < 1 or doc_length < 1:
        raise DindError("write_corpus needs n_docs >= 1 and doc_length >= 1")
    g = HMMMixture.make(generator_seed)
    rng = np.random.default_rng(seed)
    # Built next to the target and renamed into place: a crash leaves only a hidden temp folder.
    with staged_folder(out) as tmp:
        g.save(tmp / "generator.json")
        (tmp / "docs").mkdir()
        for i, doc in enumerate(g._sample(n_docs, doc_length, rng)):  # all documents at once
            text = symbols_to_text(doc, g)
            (tmp / "docs" / f"doc_{i:05d}.txt").write_text(text, encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above); os.replace cannot replace a directory on all OSes
    return out


def default_corpus_dir() -> Path:
    return cache_dir() / "corpora" / "synthetic"


def ensure_default_corpus() -> Path:
    """The default corpus's ``docs/`` folder, written on first use (400 documents of 512 words)."""
    out = default_corpus_dir()
    if not (out / "generator.json").is_file():
        try:
            write_corpus(out)
        except OSError:
            # Another process may have renamed its copy into place first; accept it if complete.
            if not (out / "generator.json").is_file():
                raise
    return out / "docs"


@dataclass
class OracleScore:
    log_prob: float  # total natural-log probability of the scored words
    n_tokens: int  # words scored, invalid ones included; EOT excluded
    n_invalid: int  # words not in the generator's vocabulary
    tokens: list[int]  # symbol id of every word, -1 for invalid ones


def oracle_score(text: str, g: HMMMixture, invalid_log_prob: float = math.log(1e-4)) -> OracleScore:
    """Exact log-probability of a sample's text under the generator.

    The text (which may contain ``<|endoftext|>`` separators, since training rows concatenate
    documents with EOS between them, and which may start and end mid-document) is split at EOT
    into segments; each segment is split on whitespace into words; each segment is scored as an
    independent window of the generator: log sum_z pi_z p_z(segment), each HMM starting from its
    stationary distribution (which is why ``init`` is the stationary distribution: a window
    starting mid-document then has exactly that law). EOT tokens themselves are not scored (the
    field's protocol leaves EOS out of generative perplexity). A word that is not in the
    generator's vocabulary is an "invalid" token: it contributes ``invalid_log_prob`` and breaks
    the segment there (the words before and after it are scored as separate windows).
    ``tokens`` lists the symbol id of every word (-1 for invalid ones), e.g. for unigram entropy.
    Empty text gives ``n_tokens == 0`` and ``log_prob == 0.0``.
    """
    log_prob, n_invalid, tokens = 0.0, 0, []
    for segment in text.split(EOT):
        window: list[int] = []
        for word in segment.split():
            sym = g.index.get(word, -1)
            tokens.append(sym)
            if sym >= 0:
                window.append(sym)
                continue
            n_invalid += 1
            log_prob += invalid_log_prob
            log_prob += g.log_likelihood(window)
            window = []
        log_prob += g.log_likelihood(window)
    return OracleScore(log_prob, len(tokens), n_invalid, tokens)
