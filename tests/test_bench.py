"""``dind bench sample``: what it times and the ratios it reports, on a tiny model at a short
length (the figures themselves belong in dev/LOG.md, never in a test)."""

import struct

import pytest

from dind.bench import _sample_ratios, batching_gain, bench_sample
from dind.config import SAMPLE_SETTINGS
from dind.errors import DindError
from dind.plots import plot_gamma, plot_nfe


def test_bench_sample_times_every_setting_at_every_batch_size():
    out = bench_sample("tiny", length=16, batch_sizes=(1, 2), parallel="4")
    assert out["length"] == 16 and out["threads"] >= 1
    assert set(out["figures"]) == {"batch1", "batch2"}
    for per in out["figures"].values():
        assert set(per) == set(SAMPLE_SETTINGS)
        for fig in per.values():
            # tokens per second and seconds per sample describe one timing
            assert fig["seconds_per_sample"] > 0
            assert fig["tokens_per_s"] * fig["seconds_per_sample"] == pytest.approx(16)
    ratios = out["ratios"]
    b2 = out["figures"]["batch2"]
    assert ratios["batch2:two_stages_over_stage1_cache"] == pytest.approx(
        b2["two_stages"]["seconds_per_sample"] / b2["stage1_cache"]["seconds_per_sample"]
    )
    assert ratios["ar_cache:tokens_per_s_batch2_over_batch1"] == pytest.approx(
        b2["ar_cache"]["tokens_per_s"] / out["figures"]["batch1"]["ar_cache"]["tokens_per_s"]
    )
    # the two-stage settings also time their stages within the one run
    for name in ("two_stages", "two_stages_parallel"):
        stages = b2[name]["stage_seconds_per_sample"]
        assert len(stages) == 2 and all(t > 0 for t in stages)
        assert sum(stages) <= b2[name]["seconds_per_sample"]  # the whole run holds both
        assert ratios[f"batch2:{name}_over_its_stage1"] == pytest.approx(sum(stages) / stages[0])
    assert "stage_seconds_per_sample" not in b2["stage1_cache"]  # one stage: nothing to pair


def test_bench_sample_times_the_approximate_cache_when_asked(monkeypatch):
    """--refresh R reaches two_stages_parallel's sampler, and only it."""
    import dind.sampler

    seen, real = [], dind.sampler.sample
    monkeypatch.setattr(
        dind.sampler,
        "sample",
        lambda m, cfg, *a, **k: (
            seen.append((cfg.stages, cfg.parallel, (cfg.refresh, cfg.recompute))),
            real(m, cfg, *a, **k),
        )[1],
    )
    out = bench_sample("tiny", length=16, batch_sizes=(1,), parallel="4", refresh=3,
                       recompute="delayed",
                       settings=("stage1_cache", "two_stages_parallel"))  # fmt: skip
    assert out["refresh"] == 3 and out["recompute"] == "delayed"
    assert {(s, r) for s, _, r in seen} == {((4,), (None, "masked")), ((4, 16), (3, "delayed"))}
    with pytest.raises(DindError, match="recompute 'delayed' is for the approximate cache"):
        bench_sample("tiny", length=16, batch_sizes=(1,), recompute="delayed")


def test_bench_ratios_need_their_baseline():
    figures = {"batch1": {"two_stages": {"seconds_per_sample": 2.0, "tokens_per_s": 8.0}}}
    assert _sample_ratios(figures, (1,)) == {}  # no stage-1 timing, no batch-16 timing
    figures["batch1"]["stage1_cache"] = {"seconds_per_sample": 0.5, "tokens_per_s": 32.0}
    assert _sample_ratios(figures, (1,)) == {"batch1:two_stages_over_stage1_cache": 4.0}
    figures["batch1"]["two_stages"]["stage_seconds_per_sample"] = [0.5, 0.25]
    assert _sample_ratios(figures, (1,))["batch1:two_stages_over_its_stage1"] == 1.5


def test_batching_gain_is_throughput_over_the_first_batch_size():
    # batch 1 in 2 s; batch 16 in 8 s: 16 samples in 4x the time, 4x the throughput
    assert batching_gain({1: 2.0, 16: 8.0, 32: 20.0}) == pytest.approx({1: 1.0, 16: 4.0, 32: 3.2})
    assert batching_gain({4: 1.0, 8: 1.0}) == pytest.approx({4: 1.0, 8: 2.0})


def test_bench_ratios_give_every_batch_over_batch_1():
    def fig(tokens_per_s):
        return {"stage1_cache": {"seconds_per_sample": 1.0, "tokens_per_s": tokens_per_s}}

    figures = {"batch1": fig(10.0), "batch16": fig(45.0), "batch32": fig(70.0)}
    ratios = _sample_ratios(figures, (1, 16, 32))
    assert ratios["stage1_cache:tokens_per_s_batch16_over_batch1"] == pytest.approx(4.5)
    assert ratios["stage1_cache:tokens_per_s_batch32_over_batch1"] == pytest.approx(7.0)
    assert not any("over_batch1" in k for k in _sample_ratios({"batch16": fig(1.0)}, (16,)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"settings": ("stage1_cache", "beam")}, "unknown bench setting 'beam'"),
        ({"parallel": "often"}, "often"),
    ],  # fmt: skip
)
def test_bench_sample_rejects_bad_settings_before_any_work(kwargs, message):
    with pytest.raises(DindError, match=message):
        bench_sample("tiny", length=16, **kwargs)


def _png_width(png: bytes) -> int:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", png[16:20])[0]


def test_nfe_plot_draws_quality_against_seconds_beside_nfes():
    rows = [
        {
            "series": series,
            "nfe_mean": nfe,
            "seconds_mean": sec,
            "gen_ppl_mean": ppl,
            "gen_ppl_std": 1.0,
        }  # fmt: skip
        for series, nfe, sec, ppl in [
            ("one stage", 32, 0.2, 40.0),
            ("two stages", 48, 0.3, 35.0),
            ("two stages", 64, 0.4, 33.0),
        ]  # fmt: skip
    ]
    one_panel = _png_width(plot_gamma([dict(r, x=0.5) for r in rows], "smollm2"))
    two_panels = _png_width(plot_nfe(rows, "smollm2"))
    assert two_panels > 1.8 * one_panel
    # summaries written before seconds were recorded still plot (an empty seconds panel)
    untimed = [{k: v for k, v in r.items() if k != "seconds_mean"} for r in rows]
    assert _png_width(plot_nfe(untimed, "smollm2")) == two_panels
