"""The matched-entropy gap between two sets of runs (`dind frontier`), against brute force."""

import json
import math
import subprocess
import sys

import pytest

from dind import frontier
from dind.errors import DindError


def _row(setting, series, seed, ppl, entropy):
    return {"setting": setting, "series": series, "x": None, "seed": seed, "gen_ppl": ppl,
            "entropy": entropy, "nfe": 1, "seconds": 0.1}  # fmt: skip


def _sweep_record(path, rows):
    path.write_text(json.dumps({"kind": "topp", "judge": "toy", "rows": rows, "summary": []}))
    return path


def _eval_record(path, ppl, entropy, seed):
    samples = [{"index": i, "seed": seed} for i in range(2)] if seed is not None else []
    aggregate = {"gen_ppl_mean": ppl, "entropy_mean": entropy}
    path.write_text(json.dumps({"judge": "toy", "samples": samples, "aggregate": aggregate}))
    return path


def _brute_gap(ppl, entropy, curve):
    """log ppl minus the log-linear interpolation between the two curve points around it."""
    (e0, p0), (e1, p1) = (
        max(c for c in curve if c[0] <= entropy),
        min(c for c in curve if c[0] >= entropy),
    )
    w = (entropy - e0) / (e1 - e0)
    return math.log(ppl) - ((1 - w) * math.log(p0) + w * math.log(p1))


def test_gaps_pair_seeds_across_two_sweep_records(tmp_path):
    ref = _sweep_record(tmp_path / "a.json", [
        _row("s1 0.9", "stage 1", 0, 100.0, 4.0), _row("s1 0.5", "stage 1", 0, 10.0, 3.0),
        _row("s1 0.9", "stage 1", 1, 300.0, 4.4), _row("s1 0.5", "stage 1", 1, 30.0, 3.4),
        _row("two", "two stages", 0, 1.0, 3.5),  # never a candidate: not in --candidate
    ])  # fmt: skip
    cand = _sweep_record(tmp_path / "b.json", [
        _row("s1 0.9", "stage 1", 0, 5.0, 3.9),  # the candidate file's own stage 1: left out
        _row("two", "two stages", 0, 20.0, 3.5), _row("two", "two stages", 1, 50.0, 3.9),
        _row("far", "two stages", 0, 20.0, 2.0), _row("far", "two stages", 1, 20.0, 2.0),
    ])  # fmt: skip
    r = frontier.select([ref], "stage 1")
    c = frontier.select([cand], None, exclude="stage 1")
    assert {x["setting"] for x in c} == {"two", "far"}
    out = {s["setting"]: s for s in frontier.compare(r, c)}
    g0 = _brute_gap(20.0, 3.5, [(4.0, 100.0), (3.0, 10.0)])
    g1 = _brute_gap(50.0, 3.9, [(4.4, 300.0), (3.4, 30.0)])
    assert out["two"]["matched_gap_log_mean"] == pytest.approx((g0 + g1) / 2)
    assert out["two"]["matched_gap_log_std"] == pytest.approx(abs(g0 - g1) / math.sqrt(2))
    assert out["two"]["paired"] and out["two"]["matched_gap_seeds"] == "2/2"
    assert out["far"]["matched_gap_log_mean"] is None and out["far"]["matched_gap_seeds"] == "0/2"
    assert out["two"]["gen_ppl_mean"] == 35.0 and out["two"]["entropy_mean"] == pytest.approx(3.7)


def test_eval_files_make_a_pooled_curve_when_seeds_do_not_pair(tmp_path):
    refs = [_eval_record(tmp_path / f"s1_{p}.json", ppl, ent, None)
            for p, ppl, ent in ((9, 400.0, 4.2), (7, 100.0, 3.8), (5, 25.0, 3.4))]  # fmt: skip
    cand = _eval_record(tmp_path / "two.json", 120.0, 3.9, seed=3)
    r = frontier.select(refs, "stage 1")  # an evaluation is one point whatever the series
    out = frontier.compare(r, frontier.select([cand], None, exclude="stage 1"))
    assert [s["setting"] for s in out] == ["two"] and not out[0]["paired"]
    expect = _brute_gap(120.0, 3.9, [(4.2, 400.0), (3.8, 100.0), (3.4, 25.0)])
    assert out[0]["matched_gap_log_mean"] == pytest.approx(expect)
    assert "two" in frontier.format_gaps(out, r)


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(DindError, match="no such file"):
        frontier.load_points(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DindError, match="not a JSON record"):
        frontier.load_points(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(DindError, match="neither a sweep record"):
        frontier.load_points(tmp_path / "other.json")
    rec = _sweep_record(tmp_path / "a.json", [_row("s1", "stage 1", 0, 10.0, 3.0)])
    with pytest.raises(DindError, match="no rows of series"):
        frontier.select([rec], "two stages")
    res = subprocess.run([sys.executable, "-m", "dind.cli", "frontier", str(tmp_path / "x")],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_cli_on_one_sweep_record_matches_the_sweep_summary(tmp_path):
    rows = [_row("s1 0.9", "stage 1", s, 100.0 + 10 * s, 4.0) for s in (0, 1)]
    rows += [_row("s1 0.5", "stage 1", s, 10.0 + s, 3.0) for s in (0, 1)]
    rows += [_row("two 0.9", "two stages", s, 30.0 + 5 * s, 3.6 + 0.1 * s) for s in (0, 1)]
    rec = _sweep_record(tmp_path / "topp.json", rows)
    out = tmp_path / "gaps.json"
    res = subprocess.run([sys.executable, "-m", "dind.cli", "frontier", str(tmp_path),
                          "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    gaps = json.loads(out.read_text())["gaps"]
    expect = frontier.matched_entropy_gaps(json.loads(rec.read_text())["rows"])["two 0.9"]
    assert gaps[0]["matched_gap_log_mean"] == pytest.approx(sum(expect) / 2)
    assert f"{math.expm1(sum(expect) / 2):+.1%}" in res.stdout
