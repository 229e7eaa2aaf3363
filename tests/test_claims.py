"""The pure part of `reproduce`: aggregation over seeds and the `holds` rule on constructed numbers."""

from __future__ import annotations

import math

from eval.claims import HOLDS_RULE, Comparison, aggregate, aggregate_rows, compare, judge, speedup


def _rows(a: list[float], b: list[float], metric: str = "psnr") -> dict:
    return aggregate_rows([{"A": {metric: x}, "B": {metric: y}} for x, y in zip(a, b)])


def test_aggregate_mean_std_values():
    agg = aggregate([1.0, 2.0, None, 3.0])
    assert agg["mean"] == 2.0 and math.isclose(agg["std"], 1.0) and agg["n"] == 3
    assert agg["values"] == [1.0, 2.0, None, 3.0]
    assert aggregate([None])["mean"] is None and aggregate([5.0])["std"] == 0.0


def test_holds_needs_direction_and_difference_above_pooled_std():
    # A better by 1.0, stds 0.5 and 0.5 -> pooled 0.5 < 1.0: holds
    rows = _rows([19.5, 20.0, 20.5], [18.5, 19.0, 19.5])
    r = compare(rows["A"]["psnr"], rows["B"]["psnr"], "psnr")
    assert r["direction_seen"] and math.isclose(r["pooled_std"], 0.5) and r["holds"] is True
    # same direction, but the spread is larger than the difference: does not hold
    rows = _rows([18.0, 20.0, 22.0], [18.5, 19.0, 19.5])
    r = compare(rows["A"]["psnr"], rows["B"]["psnr"], "psnr")
    assert r["direction_seen"] and r["pooled_std"] > abs(r["difference"]) and r["holds"] is False
    # a large difference in the wrong direction never holds
    rows = _rows([10.0, 10.1, 10.2], [20.0, 20.1, 20.2])
    assert compare(rows["A"]["psnr"], rows["B"]["psnr"], "psnr")["holds"] is False


def test_lower_is_better_metrics_and_single_seed():
    rows = _rows([0.10, 0.11, 0.12], [0.20, 0.21, 0.22], "abs_rel")
    assert compare(rows["A"]["abs_rel"], rows["B"]["abs_rel"], "abs_rel")["holds"] is True
    one = _rows([0.10], [0.20], "abs_rel")
    r = compare(one["A"]["abs_rel"], one["B"]["abs_rel"], "abs_rel")
    assert r["direction_seen"] is True and r["holds"] is None  # no spread with one seed
    assert "2 seeds" in HOLDS_RULE


def test_judge_all_or_any():
    rows = aggregate_rows([{"A": {"psnr": 20.0 + d, "miou": 0.5 + d}, "B": {"psnr": 18.0, "miou": 0.6}} for d in (0.0, 0.1, 0.2)])
    claim = judge(rows, [Comparison("A", "B", ("psnr", "miou", "fvd"))])
    assert claim["judged"] == 2 and claim["held"] == 1 and claim["holds"] is False  # fvd has no value: left out
    assert judge(rows, [Comparison("A", "B", ("psnr", "miou"))], any_of=True)["holds"] is True


def test_speedup_first_step_and_lower_bound():
    ours = [(100, 18.0), (200, 19.0)]
    assert speedup(ours, [(100, 12.0), (200, 15.0), (300, 18.2), (400, 19.0)], "psnr")["speedup"] == 3.0
    never = speedup(ours, [(100, 12.0), (400, 17.0)], "psnr")
    assert never["lower_bound"] and never["speedup"] == 4.0 and never["baseline_step"] is None
    assert speedup([(100, 30.0)], [(100, 40.0), (200, 25.0)], "fd_vfm")["baseline_step"] == 200
