"""MAUVE (Pillutla et al., 2021): how far the distribution of samples is from that of held-out
corpus text, measured on a judge's features; a distributional metric beside Gen PPL.

The algorithm, on features P (reference texts) and Q (samples):
1. Each feature vector scaled to unit length, then PCA of the pooled features keeping the
   fewest components that explain 90% of the variance, not whitened (the defaults of the
   authors' ``mauve-text``).
2. Joint k-means of the pooled features into k clusters, k = max(2, round(min(|P|, |Q|) / 10))
   (the paper's n/10); k-means++ starts, 5 restarts, at most 500 Lloyd steps, the restart of
   least inertia kept. P and Q become histograms p, q over the clusters.
3. The divergence curve over the mixtures R = lam * p + (1 - lam) * q for 25 values of lam
   evenly spaced in [1e-6, 1 - 1e-6]: the points (exp(-c KL(q || R)), exp(-c KL(p || R))),
   c = 5, closed by (0, 1) and (1, 0). MAUVE is the area under it (trapezoids): 1 for equal
   histograms, c!c!/(2c)! ~ 0.004 in the limit for disjoint ones; symmetric in P and Q.

Design choices:
- Written here on torch rather than taken from PyPI's ``mauve-text`` (0.4.0): that package
  installs cleanly, but pulls faiss-cpu, scikit-learn and scipy (about 60 MB of wheels) into
  every install, tests included, for a k-means and a PCA; the rest of it is a GPT-2-large
  featurizer that needs the hub. The steps above are its defaults, so the two agree up to
  k-means' own randomness on the same features.
- Features: the judge's final-layer hidden state (after its final norm) at the LAST token of
  BOS + the text's first ``context - 1`` judge tokens (the paper's choice of token; GPT-2 large
  there, the judge here, so the numbers are not comparable with published MAUVE). With
  ``--judge-max-tokens`` N, the first N - 1 tokens, the cut Gen PPL scores. The synthetic
  oracle has no hidden states: MAUVE is refused with it.
- Reference texts: the held-out documents of the corpus (``dind.data``'s split; for a folder
  from ``dind data openwebtext``, its ``val.bin``), each tokenized by the judge and followed by
  the judge's EOS, concatenated in order as training rows are built. For sample i of n_i judge
  tokens (after the cut above), reference i is n_i consecutive tokens of that stream: as many
  reference texts as samples, each as long as its sample. Chunks start in distinct slots of
  the longest length, so they never overlap, unless the held-out text is too short for that
  (then random starts, flagged in the result).
- Spread: each MAUVE seed draws its own reference texts and seeds its own k-means; reported
  are the mean and the sample standard deviation over the seeds (with the per-seed values).
  It does not cover the spread from the finite set of samples, which are fixed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dind.errors import DindError

DEFAULT_SEEDS = (0, 1, 2)
SCALING = 5.0
GRID = 25
EXPLAINED_VARIANCE = 0.9
KMEANS_RESTARTS = 5
KMEANS_MAX_ITER = 500
FEATURES = "final hidden state (after the final norm) at the last token"


# ----------------------------------------------------------------------------- the metric


def divergence_curve(
    p: torch.Tensor, q: torch.Tensor, grid: int = GRID, scaling: float = SCALING
) -> torch.Tensor:
    """(grid + 2, 2) points (x, y), x ascending: (exp(-c KL(q||R)), exp(-c KL(p||R))) for
    R = lam p + (1 - lam) q over ``grid`` values of lam, with (0, 1) and (1, 0) at the ends."""
    p, q = _histogram(p), _histogram(q)
    lam = torch.linspace(1e-6, 1 - 1e-6, grid, dtype=torch.float64)[:, None]
    r = lam * p + (1 - lam) * q  # (grid, k); r > 0 wherever p or q is

    def kl(a: torch.Tensor) -> torch.Tensor:  # KL(a || r) for every row of r
        return torch.where(a > 0, a * (a / r).log(), torch.zeros(())).sum(-1)

    x, y = torch.exp(-scaling * kl(q)), torch.exp(-scaling * kl(p))
    # lam rising moves R towards p: y rises and x falls; reversed, x ascends
    pts = torch.stack([x, y], -1).flip(0)
    first, last = torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.tensor([[1.0, 0.0]])
    return torch.cat([first, pts, last.double()])


def area(curve: torch.Tensor) -> float:
    """Trapezoid area under a polyline, its points taken in order of x (the curve's x ascends
    already, but rounding can swap two points a hair apart, as when p = q)."""
    curve = curve[curve[:, 0].argsort(stable=True)]
    x, y = curve[:, 0], curve[:, 1]
    return float(((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2).sum())


def mauve_of_histograms(
    p: torch.Tensor, q: torch.Tensor, grid: int = GRID, scaling: float = SCALING
) -> float:
    return area(divergence_curve(p, q, grid, scaling))


def _histogram(h) -> torch.Tensor:
    h = torch.as_tensor(h, dtype=torch.float64).flatten()
    if h.numel() == 0 or (h < 0).any() or h.sum() <= 0:
        raise DindError("a MAUVE histogram needs nonnegative counts with a positive total")
    return h / h.sum()


def default_clusters(n_p: int, n_q: int) -> int:
    return max(2, round(min(n_p, n_q) / 10))


def reduce(x: torch.Tensor, explained: float = EXPLAINED_VARIANCE) -> torch.Tensor:
    """Rows scaled to unit length, centered, and projected onto their leading principal axes:
    the fewest that explain ``explained`` of the variance (not whitened)."""
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    x = x - x.mean(0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    var = s**2
    if var.sum() <= 0:  # all features point the same way: nothing to tell apart
        return torch.zeros(len(x), 1, dtype=x.dtype)
    share = var.cumsum(0) / var.sum()
    m = int((share < explained - 1e-12).sum()) + 1
    return u[:, :m] * s[:m]


def kmeans(
    x: torch.Tensor,
    k: int,
    seed: int,
    restarts: int = KMEANS_RESTARTS,
    max_iter: int = KMEANS_MAX_ITER,
) -> torch.Tensor:
    """Cluster labels (n,) of the restart with the least inertia: k-means++ starts, Lloyd steps
    until the labels stop changing; an emptied cluster takes the point farthest from its
    center."""
    n = len(x)
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    best, best_inertia = None, math.inf
    for _ in range(restarts):
        centers = _kmeans_pp(x, k, gen)
        labels = None
        for _ in range(max_iter):
            d2 = torch.cdist(x, centers).square()
            new = d2.argmin(1)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(centers).index_add_(0, labels, x)
            centers = sums / counts.clamp(min=1)[:, None]
            own = d2.gather(1, labels[:, None])[:, 0]
            for j in (counts == 0).nonzero().flatten().tolist():
                far = int(own.argmax())
                centers[j] = x[far]
                own[far] = -1.0  # the next empty cluster takes another point
        d2 = torch.cdist(x, centers).square()
        labels = d2.argmin(1)
        inertia = float(d2.gather(1, labels[:, None]).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    n = len(x)
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    d2 = torch.cdist(x, x[chosen]).square()[:, 0]
    for _ in range(1, k):
        if d2.sum() > 0:
            nxt = int(torch.multinomial(d2 / d2.sum(), 1, generator=gen))
        else:  # every point sits on a center already
            nxt = int(torch.randint(n, (1,), generator=gen))
        chosen.append(nxt)
        d2 = torch.minimum(d2, torch.cdist(x, x[nxt : nxt + 1]).square()[:, 0])
    return x[chosen].clone()


def quantize(
    p_features: torch.Tensor, q_features: torch.Tensor, n_clusters: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histograms (counts) of P and Q over joint k-means clusters of their reduced features."""
    p_features = torch.as_tensor(p_features, dtype=torch.float64)
    q_features = torch.as_tensor(q_features, dtype=torch.float64)
    if len(p_features) < 1 or len(q_features) < 1:
        raise DindError("MAUVE needs at least one text on each side")
    labels = kmeans(reduce(torch.cat([p_features, q_features])), n_clusters, seed)
    k = int(labels.max()) + 1
    n_p = len(p_features)
    p = torch.bincount(labels[:n_p], minlength=k).double()
    q = torch.bincount(labels[n_p:], minlength=k).double()
    return p, q


def compute_mauve(
    p_features: torch.Tensor,
    q_features: torch.Tensor,
    seed: int = 0,
    n_clusters: int | None = None,
    grid: int = GRID,
    scaling: float = SCALING,
) -> float:
    """MAUVE of two sets of features (rows), one k-means seed."""
    k = n_clusters or default_clusters(len(p_features), len(q_features))
    p, q = quantize(p_features, q_features, k, seed)
    return mauve_of_histograms(p, q, grid, scaling)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


# ----------------------------------------------------------------------------- reference text


class HeldOutText:
    """Held-out text of a corpus, cut into chunks of given lengths in a judge's tokens."""

    def __init__(
        self, name: str, judge, docs: list[str] | None = None, val_bin: Path | None = None
    ):
        self.name = name
        self.judge = judge
        if docs is not None:
            eos = [judge.eos_id] if getattr(judge, "eos_id", None) is not None else []
            stream: list[int] = []
            for doc in docs:
                stream += judge.encode(doc) + eos
            self.stream = np.asarray(stream, dtype=np.int64)
            self.gpt2 = None
        else:  # GPT-2 ids of a tokenized folder: decoded per chunk, re-tokenized by the judge
            from dind.tokenizer import gpt2_tokenizer

            self.stream = np.memmap(val_bin, dtype=np.uint16, mode="r")
            self.gpt2 = gpt2_tokenizer()

    def _span(self, n: int) -> int:
        """Stream positions one chunk of n judge tokens takes."""
        return max(n, 1) if self.gpt2 is None else 2 * max(n, 1) + 16

    def chunks(self, lengths: Sequence[int], seed: int) -> tuple[list[list[int]], bool]:
        """One chunk of judge tokens per length; whether any two of them may overlap."""
        span = self._span(max(lengths))
        total = len(self.stream)
        if total < span:
            raise DindError(
                f"the held-out text of {self.name} is shorter than one reference text "
                f"({total} tokens, {span} needed)"
            )
        rng = np.random.default_rng(seed)
        slots = total // span
        overlap = slots < len(lengths)
        if overlap:
            starts = rng.integers(0, total - span + 1, size=len(lengths))
        else:
            starts = rng.choice(slots, size=len(lengths), replace=False) * span
        out = []
        for start, n in zip(starts.tolist(), lengths, strict=True):
            if self.gpt2 is None:
                out.append(self.stream[start : start + n].tolist())
                continue
            text = self.gpt2.decode(self.stream[start : start + self._span(n)].tolist())
            ids = self.judge.encode(text)[1:]  # the first piece may be a cut word
            if len(ids) < n:
                raise DindError(f"the held-out text of {self.name} ran out at {start}")
            out.append(ids[:n])
        return out, overlap


def reference_corpus(spec: str) -> str:
    """The corpus behind ``spec``: a dind run or checkpoint folder (its recorded corpus) or a
    corpus itself."""
    from dind.checkpoint import latest_complete, read_config, resolve

    path = Path(spec).expanduser()
    if path.is_dir() and (latest_complete(path / "checkpoint") or (path / "config.json").is_file()):
        run = read_config(resolve(path))
        if run.preset == "bd3lm":
            raise DindError(f"{spec} is a BD3-LM folder and records no corpus: name the corpus")
        return run.train.corpus
    return spec


def held_out_text(spec: str, judge) -> HeldOutText:
    """The held-out text of the corpus named by ``spec`` (see ``reference_corpus``)."""
    from dind.data import load_corpus, tokenized_folder

    corpus = reference_corpus(spec)
    folder = tokenized_folder(corpus)
    if folder is not None:
        val = folder / "val.bin"
        if not val.is_file():
            raise DindError(f"{val} not found: {folder} holds no held-out tokens")
        return HeldOutText(str(folder), judge, val_bin=val)
    c = load_corpus(corpus)
    return HeldOutText(c.name, judge, docs=c.val_docs)


# ----------------------------------------------------------------------------- evaluation


def check_judge(judge) -> None:
    if not callable(getattr(judge, "features", None)):
        raise DindError(
            f"MAUVE needs a judge with hidden states (smollm2, a dind AR run or a Hugging Face "
            f"model); {judge.name} has none"
        )


def features_of(judge, token_lists: list[list[int]], progress: bool = False, desc: str = ""):
    return torch.stack([judge.features(t) for t in tqdm(token_lists, disable=not progress,
                                                        desc=desc)])  # fmt: skip


def evaluate_mauve(
    texts: list[str],
    judge,
    reference: HeldOutText,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    progress: bool = False,
) -> dict[str, Any]:
    """MAUVE of ``texts`` against as many held-out chunks of the same judge-token lengths, once
    per seed (its own reference draw and k-means); mean and sample std over the seeds."""
    from dind.judges import feature_tokens

    check_judge(judge)
    if not seeds:
        raise DindError("--mauve-seeds names no seed")
    if len(texts) < 2:
        raise DindError(f"MAUVE needs at least 2 samples, got {len(texts)}")
    cap = feature_tokens(judge)
    samples = [judge.encode(t)[:cap] for t in texts]
    lengths = [len(s) for s in samples]
    q = features_of(judge, samples, progress, "MAUVE features (samples)")
    k = default_clusters(len(samples), len(samples))
    per_seed, overlap = [], False
    for seed in seeds:
        chunks, overlaps = reference.chunks(lengths, seed)
        overlap |= overlaps
        p = features_of(judge, chunks, progress, f"MAUVE features (reference, seed {seed})")
        per_seed.append(compute_mauve(p, q, seed=seed, n_clusters=k))
    mean, std = mean_std(per_seed)
    return {
        "mauve": mean,
        "mauve_std": std,
        "per_seed": per_seed,
        "seeds": list(seeds),
        "n_clusters": k,
        "n_texts": len(texts),
        "reference": reference.name,
        "reference_overlap": overlap,
        "feature_tokens": cap,
        "features": f"{judge.name}: {FEATURES}",
        "length_mean": sum(lengths) / len(lengths),
    }
