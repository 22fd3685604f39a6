"""``dind sweep``: the ablations end to end on a tiny model, their statistics, bad grids."""

import csv
import json
import math
import os
import statistics
import struct
import subprocess
import sys

import pytest
import torch

from dind import frontier, grid, results, sweep
from dind.errors import DindError
from dind.grid import SweepOptions
from helpers import tiny_run, write_corpus

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from dind.train import train

    tmp = tmp_path_factory.mktemp("sweep")
    corpus = write_corpus(tmp / "corpus")
    train(tiny_run(corpus, max_steps=30, eval_every=0), tmp / "run", progress=False)
    return tmp


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dind.cli", *args], capture_output=True,
                          text=True, env={**os.environ}, timeout=600)  # fmt: skip


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return width, height


@pytest.mark.slow
def test_gamma_sweep_end_to_end(trained_run):
    out = trained_run / "gamma"
    res = _cli("sweep", "gamma", "--checkpoint", str(trained_run / "run"), "--out", str(out),
               "--gammas", "0.25,0.5", "--block-sizes", "L", "--seeds", "0,1",
               "--num-samples", "2", "--batch-size", "2", "--no-progress")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    seeds, summary = _csv(out / "gamma_seeds.csv"), _csv(out / "gamma.csv")
    assert len(seeds) == 3 * 2 and len(summary) == 3  # stage 1 + two gammas, two seeds each
    names = [r["setting"] for r in summary]
    assert names == ["stage 1 (block 4)", "block 32, gamma 0.25", "block 32, gamma 0.5"]
    record = json.loads((out / "gamma.json").read_text())
    for s, full in zip(summary, record["summary"], strict=True):
        # the summary is the statistics of the per-seed rows, and the CSVs carry every digit
        ppl = [float(r["gen_ppl"]) for r in seeds if r["setting"] == s["setting"]]
        assert len(ppl) == 2 and all(math.isfinite(p) and p > 1 for p in ppl)
        assert float(s["gen_ppl_mean"]) == statistics.fmean(ppl) == full["gen_ppl_mean"]
        assert float(s["gen_ppl_std"]) == statistics.stdev(ppl) == full["gen_ppl_std"]
    w, h = _png_size(out / "gamma.png")
    assert w > 100 and h > 100 and (out / "gamma.png").stat().st_size > 5000
    # every two-stage setting refines the very drafts the stage-1 row was judged on
    folder = out / "samples" / "gamma"
    for seed in (0, 1):
        drafts = [json.loads(x) for x in (folder / f"stage_1_block_4_seed{seed}.jsonl").open()]
        refined = [json.loads(x) for x in (folder / f"block_32_gamma_0_5_seed{seed}.jsonl").open()]
        assert [r["stage_tokens"][0] for r in refined] == [d["stage_tokens"][0] for d in drafts]
        assert all(len(r["remasked"][1]) == 16 for r in refined)  # floor(0.5 * 32)
    assert record["judge"] == "smollm2" and record["seeds"] == [0, 1]
    assert "gen_ppl_mean" in record["summary"][0]
    assert "Gen PPL under smollm2" in res.stdout
    # the sweep folder feeds `dind report`: its table and plot, the refined samples
    page = trained_run / "report.html"
    res = _cli("report", str(folder / "block_32_gamma_0_5_seed0.jsonl"), "--checkpoint",
               str(trained_run / "run"), "--sweep", str(out), "--out", str(page))  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    html = page.read_text()
    assert "Figure 2" in html and "block 32, gamma 0.25" in html
    assert html.count("data:image/png;base64,") == 1 and html.count('class="remasked"') >= 16


def _check_paired_with(res, reference: str) -> None:
    """Each summary row's comparison with ``reference`` recomputed from the per-seed rows: the
    differences seed by seed, their mean, the count of seeds that beat it."""
    assert reference == res.summary[0]["setting"] and "delta_vs_stage1" not in res.summary[0]
    ref = {r["seed"]: r["gen_ppl"] for r in res.rows if r["setting"] == reference}
    assert sorted(ref) == [3, 4]
    for s in res.summary[1:]:
        group = [r for r in res.rows if r["setting"] == s["setting"]]
        assert sorted(r["seed"] for r in group) == [3, 4]
        assert s["gen_ppl_mean"] == pytest.approx(statistics.fmean(r["gen_ppl"] for r in group))
        diffs = [r["gen_ppl"] - ref[r["seed"]] for r in group]
        assert s["delta_vs_stage1"] == pytest.approx(statistics.fmean(diffs))
        assert s["better_than_stage1_seeds"] == f"{sum(d < 0 for d in diffs)}/2"


@pytest.mark.slow
def test_policy_and_nfe_sweeps(trained_run):
    opts = SweepOptions(seeds=(3, 4), num_samples=2, batch_size=2, progress=False)
    run = str(trained_run / "run")

    def build_policy(L):
        return grid.policy_settings(L, 0.5, L, ("snapshot", "random"), opts)

    res = sweep.run_sampling_sweep("policy", run, trained_run / "policy", opts, build_policy)
    assert [s["series"] for s in res.summary] == ["stage 1", "snapshot", "random"]
    _check_paired_with(res, "stage 1 (block 4)")
    assert _png_size(res.files["png"])[0] > 100

    def build_nfe(L):
        return grid.nfe_settings(L, (1,), (0.25, 1.0), L, opts)

    res = sweep.run_sampling_sweep("nfe", run, trained_run / "nfe", opts, build_nfe)
    nfe = {s["setting"]: s["nfe_mean"] for s in res.summary}
    assert nfe["stage 1, first-hitting (block 4)"] == 31  # one call per token after BOS
    assert nfe["stage 1, ancestral T=1 (block 4)"] == 8  # one call per block
    assert nfe["two stages, block 32, gamma 0.25"] == 31 + 8
    assert nfe["two stages, block 32, gamma 1"] == 31 + 31  # BOS is never remasked
    assert _png_size(res.files["png"])[0] > 100
    # compared with one-stage first-hitting, seed by seed
    _check_paired_with(res, "stage 1, first-hitting (block 4)")


@pytest.mark.slow
def test_sweep_draws_at_its_dtype(trained_run, tmp_path, monkeypatch):
    """--dtype bf16: every draw (the drafts too) runs under bfloat16 autocast on the
    model's device, and the JSON says so; auto records nothing (the JSON is unchanged)."""
    import dataclasses

    import dind.sampler

    seen, real = [], dind.sampler.sample

    def spy(model, *args, **kwargs):
        kind = next(model.parameters()).device.type
        seen.append(torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(dind.sampler, "sample", spy)
    opts = SweepOptions(seeds=(0,), num_samples=2, batch_size=2, progress=False)
    run = str(trained_run / "run")

    def build(L):
        return grid.policy_settings(L, 0.5, L, ("snapshot",), opts)

    for dtype in ("auto", "bf16"):
        seen.clear()
        res = sweep.run_sampling_sweep("policy", run, tmp_path / dtype,
                                       dataclasses.replace(opts, dtype=dtype), build)  # fmt: skip
        meta = json.loads(res.files["json"].read_text())
        assert len(seen) == 2  # stage 1 (the two-stage setting's draft too), the refinement
        if dtype == "bf16":
            assert meta["dtype"] == "bf16" and seen == [torch.bfloat16] * 2
        elif not torch.cuda.is_available():
            assert "dtype" not in meta and not any(seen)


@pytest.mark.slow
def test_a_second_judge_scores_the_saved_samples(trained_run, tmp_path, monkeypatch):
    """--samples-from judges the files an earlier sweep saved: the same rows as drawing them
    again (same judge), nothing drawn, and a file of another setting is refused."""
    import dataclasses

    import dind.sampler

    opts = SweepOptions(seeds=(0, 1), num_samples=2, batch_size=2, progress=False)
    run = str(trained_run / "run")

    def build(L):
        return grid.policy_settings(L, 0.5, L, ("snapshot", "random"), opts)

    drawn = sweep.run_sampling_sweep("policy", run, tmp_path / "drawn", opts, build)

    def no_drawing(*args, **kwargs):
        raise AssertionError("a sweep with samples_from drew samples")

    monkeypatch.setattr(dind.sampler, "sample", no_drawing)
    again = dataclasses.replace(opts, samples_from=tmp_path / "drawn")
    read = sweep.run_sampling_sweep("policy", run, tmp_path / "read", again, build)
    assert read.rows == drawn.rows and len(read.rows) == 3 * 2
    assert not (tmp_path / "read" / "samples").exists()
    assert json.loads((tmp_path / "read" / "policy.json").read_text())["samples_from"] == str(
        tmp_path / "drawn"
    )
    # a file drawn at another top-p, a short file, a missing file: one-line errors
    saved = tmp_path / "drawn" / "samples" / "policy" / "random_block_32_gamma_0_5_seed1.jsonl"
    lines = saved.read_text().splitlines()
    saved.write_text("".join(json.dumps({**json.loads(x), "top_p": 0.5}) + "\n" for x in lines))
    with pytest.raises(DindError, match=f"{saved.name} was drawn with top_p 0.5"):
        sweep.run_sampling_sweep("policy", run, tmp_path / "bad", again, build)
    saved.write_text(lines[0] + "\n")
    with pytest.raises(DindError, match="holds 1 samples, the sweep asks for 2"):
        sweep.run_sampling_sweep("policy", run, tmp_path / "bad", again, build)
    saved.unlink()
    with pytest.raises(DindError, match=f"{saved.name} not found"):
        sweep.run_sampling_sweep("policy", run, tmp_path / "bad", again, build)


@pytest.mark.slow
def test_parallel_refinement_sweep(trained_run):
    """Two stages with K per call or a tau threshold: fewer refinement calls, one draft."""
    opts = SweepOptions(seeds=(0, 1), num_samples=2, batch_size=2, progress=False)

    def build(L):
        return grid.parallel_settings(L, (0.5,), (1, 4), (0.9,), ("uniform", "top"), L, opts,
                                      refreshes=(1,), recomputes=("masked", "delayed"))  # fmt: skip

    res = sweep.run_sampling_sweep("parallel", str(trained_run / "run"), trained_run / "par",
                                   opts, build)  # fmt: skip
    nfe = {s["setting"]: s["nfe_mean"] for s in res.summary}
    draft = nfe["stage 1 (block 4)"]
    assert nfe["gamma 0.5, 1 per call"] == draft + 16  # floor(0.5 * 32) tokens, one per call
    assert nfe["gamma 0.5, 4 per call"] == nfe["gamma 0.5, top:4 per call"] == draft + 4
    # refresh 1 is the exact cache: the same samples as the exact setting, so the same scores
    ppl = {s["setting"]: s["gen_ppl_mean"] for s in res.summary}
    assert ppl["gamma 0.5, 4 per call, refresh 1"] == ppl["gamma 0.5, 4 per call"]
    assert nfe["gamma 0.5, 4 per call, refresh 1"] == draft + 4
    assert ppl["gamma 0.5, 4 per call, refresh 1 delayed"] == ppl["gamma 0.5, 4 per call"]
    assert draft + 1 <= nfe["gamma 0.5, tau 0.9"] <= draft + 16
    for s in res.summary[1:]:  # every refinement is compared with stage 1 on the same drafts
        assert s["delta_vs_stage1"] is not None
    assert _png_size(res.files["png"])[0] > 100
    seeds = _csv(res.files["seeds_csv"])
    assert {r["setting"] for r in seeds} == set(nfe) and len(seeds) == 2 * len(nfe)
    assert all(float(r["seconds"]) > 0 for r in seeds)
    res = _cli("sweep", "parallel", "--checkpoint", str(trained_run / "run"), "--out",
               str(trained_run / "par2"), "--picks", "uniform,best")  # fmt: skip
    assert res.returncode != 0 and "'best' is not uniform or top" in res.stderr
    res = _cli("sweep", "parallel", "--checkpoint", str(trained_run / "run"), "--out",
               str(trained_run / "par2"), "--refresh", "0")  # fmt: skip
    assert res.returncode != 0 and "--refresh: calls per full pass must be at least 1" in res.stderr
    res = _cli("sweep", "parallel", "--checkpoint", str(trained_run / "run"), "--out",
               str(trained_run / "par2"), "--refresh", "4",
               "--recompute", "masked,late")  # fmt: skip
    assert res.returncode != 0 and "'late' is not one of masked, delayed, asked" in res.stderr


@pytest.mark.slow
def test_topp_control_sweep(trained_run):
    opts = SweepOptions(seeds=(0,), num_samples=2, batch_size=2, progress=False)

    def build(L):
        return grid.topp_settings(L, (0.9, 0.5), (0.5,), L, opts)

    out = trained_run / "topp"
    res = sweep.run_sampling_sweep("topp", str(trained_run / "run"), out, opts, build)
    assert [(s["series"], s["x"]) for s in res.summary] == [
        ("stage 1", 0.9),
        ("two stages, gamma 0.5", 0.9),
        ("stage 1", 0.5),
        ("two stages, gamma 0.5", 0.5),
    ]
    assert all("delta_vs_stage1" not in s for s in res.summary)  # no single reference here
    # the two-stage rows carry their gap to stage 1's curve at equal entropy, recomputed here
    curve = sorted((r["entropy"], math.log(r["gen_ppl"])) for r in res.rows
                   if r["series"] == "stage 1")  # fmt: skip
    for s in res.summary[1::2]:
        (e0, y0), (e1, y1) = curve
        e = s["entropy_mean"]  # one seed: the summary is that seed's row
        expected = math.log(s["gen_ppl_mean"]) - (y0 + (y1 - y0) * (e - e0) / (e1 - e0))
        if e0 <= e <= e1:
            assert s["matched_gap_log_mean"] == pytest.approx(expected)
            assert s["matched_gap_seeds"] == "1/1"
        else:
            assert s["matched_gap_log_mean"] is None and s["matched_gap_seeds"] == "0/1"
    folder = out / "samples" / "topp"
    for p in ("0_9", "0_5"):  # each two-stage row refines the drafts of its own top-p
        drafts = _jsonl(folder / f"stage_1_top_p_{p}_seed0.jsonl")
        refined = _jsonl(folder / f"two_stages_block_32_gamma_0_5_top_p_{p}_seed0.jsonl")
        assert [r["stage_tokens"][0] for r in refined] == [d["stage_tokens"][0] for d in drafts]
    assert _png_size(res.files["png"])[0] > 100
    # the report's table shows the same gaps beside the raw Gen PPL
    tables, _ = results.report_parts(out)
    _, head, body = tables[0]
    col = head.index("vs stage 1 at equal entropy")
    for line, s in zip(body, res.summary, strict=True):
        gap = s.get("matched_gap_log_mean")
        assert line[col] == ("" if gap is None else
                             f"{math.expm1(gap):+.0%} ({s['matched_gap_seeds']})")  # fmt: skip


@pytest.mark.slow
def test_sampling_sweep_past_the_context(trained_run):
    """--length above the model's context: L and L/k stay relative to the sampled length."""
    opts = SweepOptions(seeds=(0,), num_samples=1, batch_size=1, progress=False,
                        window_stride=16)  # fmt: skip

    def build(L):
        return grid.policy_settings(L, 0.5, grid.parse_size("L", L), ("snapshot",), opts)

    out = trained_run / "long"
    res = sweep.run_sampling_sweep("policy", str(trained_run / "run"), out, opts, build, 64)
    record = json.loads(res.files["json"].read_text())
    assert record["length"] == 64
    assert [s["sampler"]["window_stride"] for s in record["settings"]] == [16, 16]
    (refined,) = _jsonl(out / "samples" / "policy" / "snapshot_block_64_gamma_0_5_seed0.jsonl")
    assert [len(t) for t in refined["stage_tokens"]] == [64, 64] and refined["nfe"] == [63, 32]


@pytest.mark.slow
def test_mix_sweep_end_to_end(trained_run):
    out = trained_run / "mix"
    corpus = trained_run / "corpus"
    base = tiny_run(corpus)
    opts = SweepOptions(seeds=(0, 1), num_samples=2, batch_size=2, progress=False)
    res = sweep.run_mix_sweep(out, base, ["4", "4,L:0.5,0.5"], 4, opts,
                              init_from=str(trained_run / "run"), nelbo_batches=1)  # fmt: skip
    summary = _csv(out / "mix.csv")
    assert [r["series"] for r in summary] == ["fixed 4"] * 2 + ["mix (4, 32)"] * 2
    assert all(math.isfinite(float(r["nelbo_small"])) for r in summary)
    assert summary[1]["delta_vs_stage1"] and summary[1]["better_than_stage1_seeds"].endswith("/2")
    assert len(_csv(out / "mix_seeds.csv")) == 2 * 2 * 2
    assert _png_size(out / "mix.png")[0] > 100
    for name in ("fixed_4", "mix_4_32"):  # each mix trained its own run from the same start
        metrics = [json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").open()]
        assert metrics[-1]["step"] == 4
    assert res.summary[0]["setting"].startswith("fixed 4 / stage 1")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["gamma", "--gammas", "0.5,1.5", "--block-sizes", "L"],
         "setting 'block 32, gamma 1.5': remask ratios must be in [0, 1]"),
        (["gamma", "--block-sizes", "16,5"],
         "setting 'block 5, gamma 0.1': stage block size(s) [5] do not divide the length 32"),
        (["gamma", "--block-sizes", "2"],
         "setting 'block 2, gamma 0.1': stage block sizes must not decrease"),
        (["gamma", "--block-sizes", "L/x"], "block size 'L/x': not an integer"),
        (["policy", "--policies", "snapshot,best"], "setting 'best (block 32, gamma 0.5)'"),
        (["nfe", "--steps", "0"], "setting 'stage 1, ancestral T=0 (block 4)': steps must"),
        (["gamma", "--seeds", "1,1"], "the seed list repeats a seed"),
        (["gamma", "--judge", "no-such-judge!"], "unknown judge"),
        (["gamma", "--length", "0"], "length must be positive, got 0"),
        (["gamma", "--window-stride", "0"], "window stride must be positive, got 0"),
        (["gamma", "--length", "64", "--window-stride", "33"],
         "window stride 33 exceeds the model's context 32"),
        (["policy", "--block-size", "16,32"], "one block size expected, got '16,32'"),
        (["topp", "--top-ps", "0.9,1.5"], "setting 'stage 1, top-p 1.5': top-p must be in (0, 1]"),
        (["gamma", "--nucleus", "topk"], "'topk' is not one of 'bd3lm', 'hf'"),  # a choice
        *([(["gamma", "--dtype", "tf32"], "--dtype tf32 needs a CUDA device")]
          if not torch.cuda.is_available() else []),
    ],
)  # fmt: skip
def test_bad_grid_is_reported_before_any_work(trained_run, tmp_path, args, msg, capsys,
                                              monkeypatch):  # fmt: skip
    out = tmp_path / "out"
    code, err = _main(monkeypatch, capsys, "sweep", *args, "--checkpoint",
                      str(trained_run / "run"), "--out", str(out))  # fmt: skip
    assert code == 2
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing was drawn or written


def _main(monkeypatch, capsys, *args) -> tuple[int, str]:
    """The console entry point in-process: (exit code, stderr)."""
    from dind import cli

    monkeypatch.setattr(sys, "argv", ["dind", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err


def test_bad_mix_is_reported_before_training(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, err = _main(monkeypatch, capsys, "sweep", "mix", "--out", str(out), "--mix", "4",
                      "--mix", "4,7:0.5,0.5")  # fmt: skip
    assert code == 2 and "mix '4,7:0.5,0.5': block size(s) [7]" in err
    assert not out.exists()
    with pytest.raises(DindError, match="probabilit"):
        grid.parse_mix("4,L:0.9,0.2", 128)
    assert grid.parse_mix("pow2", 128).dist.block_sizes == (4, 8, 16, 32, 64, 128)
    # pow4 is the paper's list {4, 16, 64, ..., 1024}; L is added where it is no power of 4
    assert grid.parse_mix("pow4", 1024).dist.block_sizes == (4, 16, 64, 256, 1024)
    assert grid.parse_mix("pow4", 128).dist.block_sizes == (4, 16, 64, 128)
    assert grid.parse_mix("pow4", 128).dist.probs == (0.25,) * 4
    assert grid.parse_mix("pow2", 16, small=16).dist.block_sizes == (16,)
    assert grid.parse_mix("4,L/2:0.9,0.1", 128).dist.block_sizes == (4, 64)


def test_every_setting_takes_the_sweeps_nucleus_rule():
    opts = SweepOptions(nucleus="hf", top_p=0.8)
    grids = (grid.gamma_settings(64, (0.5,), (16, 64), opts)
             + grid.nfe_settings(64, (1,), (0.5,), 64, opts)
             + grid.topp_settings(64, (0.9, 0.5), (0.5,), 64, opts))  # fmt: skip
    assert {s.sampler.nucleus for s in grids} == {"hf"}
    assert {s.sampler.top_p for s in grids} == {0.8, 0.9, 0.5}  # topp sets its own masses
    assert SweepOptions().nucleus == "bd3lm"


def test_matched_entropy_gap_interpolates_each_seeds_stage1_curve():
    def row(setting, series, seed, ppl, entropy):
        return {"setting": setting, "series": series, "x": None, "seed": seed, "gen_ppl": ppl,
                "entropy": entropy, "nfe": 1, "seconds": 0.1}  # fmt: skip

    rows = [row("s1 p=0.9", "stage 1", 0, 100.0, 4.0), row("s1 p=0.5", "stage 1", 0, 10.0, 3.0),
            row("s1 p=0.9", "stage 1", 1, 200.0, 4.2), row("s1 p=0.5", "stage 1", 1, 20.0, 3.2),
            row("two", "two stages", 0, 20.0, 3.5), row("two", "two stages", 1, 50.0, 3.7),
            row("far", "two stages", 0, 5.0, 2.0), row("far", "two stages", 1, 100.0, 4.2),
            ]  # fmt: skip
    gaps = frontier.matched_entropy_gaps(rows)
    # seed 0: the curve at entropy 3.5 is exp(midway between log 10 and log 100) = 31.6
    assert gaps["two"][0] == pytest.approx(math.log(20.0) - math.log(math.sqrt(1000.0)))
    assert gaps["two"][1] == pytest.approx(math.log(50.0) - math.log(math.sqrt(4000.0)))
    assert gaps["far"] == [None, pytest.approx(math.log(100.0) - math.log(200.0))]
    summary = results.summarize(rows)
    frontier.add_matched_gaps(summary, rows)
    two = next(s for s in summary if s["setting"] == "two")
    assert two["matched_gap_log_mean"] == pytest.approx(statistics.fmean(gaps["two"]))
    assert two["matched_gap_seeds"] == "2/2"
    assert next(s for s in summary if s["setting"] == "far")["matched_gap_seeds"] == "1/2"
    assert frontier.curve_at([(1.0, 2.0)], 1.5) is None and frontier.curve_at([], 1.0) is None


def test_summary_statistics_by_brute_force():
    rows = [{"setting": name, "series": name, "x": None, "seed": seed, "gen_ppl": ppl,
             "entropy": 3.0, "nfe": nfe, "seconds": 0.1}
            for name, nfe, ppls in (("s1", 31, (10.0, 20.0, 30.0)), ("two", 40, (8.0, 25.0, 20.0)))
            for seed, ppl in enumerate(ppls)]  # fmt: skip
    s1, two = results.summarize(rows, reference="s1")
    assert s1["gen_ppl_mean"] == 20.0 and s1["gen_ppl_std"] == pytest.approx(10.0)
    assert "delta_vs_stage1" not in s1
    assert two["gen_ppl_min"] == 8.0 and two["gen_ppl_max"] == 25.0
    assert two["delta_vs_stage1"] == pytest.approx(((8 - 10) + (25 - 20) + (20 - 30)) / 3)
    assert two["better_than_stage1_seeds"] == "2/3" and two["nfe_mean"] == 40


class CountJudge:
    """Each word costs one nat: a judge with a known answer and no model."""

    name = "count"

    def score(self, text: str):
        from dind.judges import JudgeScore

        words = text.split()
        return JudgeScore(float(len(words)), len(words), [hash(w) % 1000 for w in words])


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_sweep_retry_low_entropy_redraws_the_shared_drafts(tmp_path):
    from types import SimpleNamespace

    from helpers import SwitchDenoiser as SW

    tok = SimpleNamespace(bos_id=SW.BOS, mask_id=SW.MASK,
                          decode=lambda ids: " ".join(map(str, ids)))  # fmt: skip
    model = SW(264)
    rows_by = {}
    for retry in (False, True):
        opts = SweepOptions(seeds=(2,), num_samples=4, batch_size=4, progress=False,
                            retry_low_entropy=retry)  # fmt: skip
        settings = grid.gamma_settings(264, (0.5,), (264,), opts)
        folder = tmp_path / f"retry_{retry}"
        rows_by[retry] = sweep.draw_and_judge(model, tok, settings, opts, CountJudge(), folder)
        drafts = _jsonl(folder / "stage_1_block_4_seed2.jsonl")
        refined = _jsonl(folder / "block_264_gamma_0_5_seed2.jsonl")
        assert [r["stage_tokens"][0] for r in refined] == [d["stage_tokens"][0] for d in drafts]
        if retry:
            assert [r["redraws"] for r in refined] == [d["redraws"] for d in drafts]
            assert sum(d["redraws"] for d in drafts) > 0  # the mock degenerates often
            assert all(r["redraws"] == sum(d["redraws"] for d in drafts)
                       for r in rows_by[retry])  # fmt: skip
            from dind.diversity import bd3lm_rejects

            assert not any(bd3lm_rejects(d["stage_tokens"][0], 4) for d in drafts)
        else:
            assert all("redraws" not in d for d in drafts + refined)
            assert all("redraws" not in r for r in rows_by[retry])
    assert [r["setting"] for r in rows_by[True]] == [r["setting"] for r in rows_by[False]]
