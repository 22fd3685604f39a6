"""Sampler identity check: does a change keep every sample the same?

    .venv/bin/python benchmarks/identity.py dump OUT.json [--length L]
    .venv/bin/python benchmarks/identity.py compare A.json B.json

``dump`` draws 6 samples (batches of 3) of each of 16 sampler settings (stage 1 with and
without the cache, two and three stages, the parallel rules, the approximate cache, the
ancestral sampler, both nucleus rules, three top-p values, post-hoc remasking) and AR
decoding with and without the cache, on a ``tiny`` model with random weights under two
output heads: flat (std 0.02, a wide nucleus) and peaked (std 1.0). It writes their tokens,
snapshot confidences and NFEs. ``compare`` names the settings whose dumps differ (exit 1).
Dump both versions on one thread (``OMP_NUM_THREADS=1``): the thread count moves the
confidences' last digits. Run the old version from a worktree with PYTHONPATH=<it>/src.
"""

import argparse
import json
import sys


def settings(L: int) -> dict[str, dict]:
    two = {"stages": (4, L), "remask": (0.5,)}
    return {
        "stage1": {"stages": (4,)},
        "stage1_no_cache": {"stages": (4,), "kv_cache": False},
        "two": two,
        "two_k8": {**two, "parallel": ("1", "8")},
        "two_top4": {**two, "parallel": ("2", "top:4")},
        "two_tau": {**two, "parallel": ("1", "tau:0.3")},
        "two_k8_refresh4": {**two, "parallel": ("1", "8"), "refresh": 4},
        "three": {"stages": (4, 16, L), "remask": (0.25, 0.5)},
        "ancestral": {**two, "sampler": "ancestral"},
        "confidence_nucleus": {**two, "confidence": "nucleus"},
        "hf": {**two, "nucleus": "hf"},
        "hf_k8": {**two, "nucleus": "hf", "parallel": ("1", "8")},
        "top_p_1": {**two, "top_p": 1.0},
        "top_p_0.5": {**two, "top_p": 0.5},
        "stage1_top_p_0.99": {"stages": (4,), "top_p": 0.99},
        "posthoc": {**two, "remask_policy": "posthoc"},
    }


def dump(path: str, L: int) -> None:
    from dind.bench import random_model
    from dind.config import SamplerConfig
    from dind.sampler import ar_generate, sample

    out = {}
    for head in (0.02, 1.0):
        model = random_model("tiny", head_std=head)
        bos, mask = model.config.mask_id - 1, model.config.mask_id
        for name, kw in settings(L).items():
            res = sample(model, SamplerConfig(length=L, seed=3, **kw), 6, 3, bos, mask)
            out[f"{head}:{name}"] = [[s.stage_tokens, s.snapshot_confidence, s.nfe] for s in res]
        for cache in (True, False):
            x, _ = ar_generate(model, L, 3, bos, mask, seed=5, use_cache=cache)
            out[f"{head}:ar_cache_{cache}"] = x.tolist()
    with open(path, "w") as f:
        json.dump(out, f)
    print(f"{len(out)} settings -> {path}")


def compare(a: str, b: str) -> int:
    with open(a) as f, open(b) as g:
        old, new = json.load(f), json.load(g)
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    print(f"differ: {', '.join(differ)}" if differ else f"identical: {len(old)} settings")
    return 1 if differ else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out")
    d.add_argument("--length", type=int, default=64)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args()
    if args.cmd == "dump":
        dump(args.out, args.length)
    else:
        sys.exit(compare(args.a, args.b))
