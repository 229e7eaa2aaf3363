"""The pure part of `reproduce`: aggregation over seeds, and the paired, Holm-corrected verdicts (DECISION_RULE) on
constructed windows.npz-like arrays with a known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from configs.schema import load_config
from eval.claims import (
    DECISION_RULE,
    GUIDANCE_METRIC,
    Comparison,
    Trend,
    aggregate,
    claim_specs,
    decisive,
    judge,
    speedup,
)
from eval.variants import BASELINE, RE2PIX
from eval.windows import metric_over_all_windows

W, T, D = 24, 3, 4


def _row(rng: np.random.Generator, quality: float, seed_effect: float, real: np.ndarray) -> dict[str, np.ndarray]:
    """One row of one seed: better `quality` -> higher PSNR / delta1 / mIoU, lower AbsRel, features nearer the real."""
    q = quality + seed_effect
    correct = np.clip(0.6 + 0.1 * q + rng.normal(0, 0.05, W), 0.05, 0.95)
    confusion = np.zeros((1, W, 2, 2), dtype=np.int64)
    confusion[0, :, 0, 0] = confusion[0, :, 1, 1] = np.round(1000 * correct)
    confusion[0, :, 0, 1] = confusion[0, :, 1, 0] = np.round(1000 * (1 - correct))
    return {
        "psnr": (20 + q + rng.normal(0, 1, W))[None],
        "ssim": (0.5 + 0.01 * q + rng.normal(0, 0.01, W))[None],
        "abs_rel": (0.3 - 0.02 * q + rng.normal(0, 0.02, W))[None],
        "delta1": (0.6 + 0.02 * q + rng.normal(0, 0.02, W))[None],
        "confusion": confusion,
        "features": (real + (1.0 - 0.3 * q) * rng.normal(0, 1, real.shape))[None],
    }


def _study(effects: dict[str, float], seeds: int = 3, seed_sd: float = 0.0, rng_seed: int = 0):
    """{seed: windows}, {seed: per-seed row values} for rows with the given qualities."""
    rng = np.random.default_rng(rng_seed)
    windows, per_seed = {}, {}
    for s in range(seeds):
        real = rng.normal(0, 1, (W, T, D))
        rows = {name: _row(rng, q, float(rng.normal(0, seed_sd)) if seed_sd else 0.0, real) for name, q in effects.items()}
        windows[s] = {"rows": rows, "real_features": real, "windows": np.arange(W)}
        per_seed[s] = {name: {m: metric_over_all_windows(r, real, m)
                              for m in ("psnr", "ssim", "abs_rel", "delta1", "miou", "fd_vfm", "fd_vfm_clip")}
                       for name, r in rows.items()}
    return windows, per_seed


def test_aggregate_mean_std_values():
    agg = aggregate([1.0, 2.0, None, 3.0])
    assert agg["mean"] == 2.0 and math.isclose(agg["std"], 1.0) and agg["n"] == 3
    assert agg["values"] == [1.0, 2.0, None, 3.0]
    assert aggregate([None])["mean"] is None and aggregate([5.0])["std"] == 0.0


def test_decisive_metrics_are_the_papers_never_psnr_or_ssim():
    everything = ("miou", "miou_moving", "abs_rel", "delta1", "fd_vfm", "fd_vfm_clip", "fid", "fvd", "psnr", "ssim")
    assert decisive(everything, real_nets=False) == ("fd_vfm", "fd_vfm_clip", "miou", "miou_moving", "abs_rel", "delta1")
    assert decisive(everything, real_nets=True) == ("fid", "fvd", "miou", "miou_moving", "abs_rel", "delta1")
    assert decisive(("psnr", "ssim"), real_nets=False) == ()
    assert "Holm" in DECISION_RULE and "NOT FVD" in DECISION_RULE and "PSNR and SSIM" in DECISION_RULE


def test_a_real_effect_holds_on_every_decisive_metric_with_its_interval():
    windows, per_seed = _study({"A": 3.0, "B": 0.0})
    claim = judge(per_seed, windows, [Comparison("A", "B")], real_nets=False)
    by_metric = {c["metric"]: c for c in claim["comparisons"]}
    assert set(by_metric) == {"fd_vfm", "fd_vfm_clip", "miou", "abs_rel", "delta1"}  # no psnr/ssim; no mIoU-MO (2 classes)
    assert claim["decisive_metrics"] == ["fd_vfm", "fd_vfm_clip", "miou", "abs_rel", "delta1"]
    assert claim["holds"] is True and claim["correction"] == "holm" and claim["alpha"] == 0.05
    for c in by_metric.values():
        assert c["paired"] is True and c["n_seeds"] == 3 and c["n_windows"] == W and c["window_bootstrap"] is True
        assert c["difference"] > 0 and c["ci95"][0] > 0 and c["p_holm"] >= c["p_value"] and c["min_detectable"] > 0
    # the difference is oriented: AbsRel is lower-is-better, so A's lower AbsRel is a positive difference
    raw = np.mean([per_seed[s]["A"]["abs_rel"] - per_seed[s]["B"]["abs_rel"] for s in range(3)])
    assert by_metric["abs_rel"]["difference"] == pytest.approx(-raw)


def test_no_effect_does_not_hold_and_the_wrong_direction_never_does():
    windows, per_seed = _study({"A": 0.0, "B": 0.0}, rng_seed=1)
    assert judge(per_seed, windows, [Comparison("A", "B")], real_nets=False)["holds"] is False
    windows, per_seed = _study({"A": -2.0, "B": 0.0}, rng_seed=2)
    claim = judge(per_seed, windows, [Comparison("A", "B")], real_nets=False)
    assert claim["holds"] is False and claim["held"] == 0
    assert all(c["difference"] < 0 and c["p_value"] < 0.05 for c in claim["comparisons"])  # significant, the other way


def test_holm_over_the_claims_comparisons():
    windows, per_seed = _study({"A": 0.4, "B": 0.0, "C": 0.0}, rng_seed=3)
    one = judge(per_seed, windows, [Comparison("A", "B", ("miou",))], real_nets=False)["comparisons"][0]
    two = judge(per_seed, windows, [Comparison("A", "B", ("miou",)), Comparison("A", "C", ("miou",))], real_nets=False)
    first = two["comparisons"][0]
    assert first["p_value"] == pytest.approx(one["p_value"]) and one["p_holm"] == pytest.approx(one["p_value"])
    ps = sorted(c["p_value"] for c in two["comparisons"])
    assert min(c["p_holm"] for c in two["comparisons"]) == pytest.approx(min(1.0, 2 * ps[0]))
    assert first["min_detectable"] > one["min_detectable"]  # alpha / 2: a larger effect is needed


def test_one_seed_reports_p_values_but_no_verdict():
    windows, per_seed = _study({"A": 3.0, "B": 0.0}, seeds=1)
    claim = judge(per_seed, windows, [Comparison("A", "B")], real_nets=False)
    assert claim["holds"] is None and claim["judged"] == 0 and claim["n_seeds"] == 1
    assert all(c["holds"] is None and c["p_value"] is not None for c in claim["comparisons"])


def test_metrics_without_window_data_are_judged_on_the_seeds_alone():
    windows, per_seed = _study({"A": 0.0, "B": 0.0})
    for s, fid in zip(range(3), (10.0, 11.0, 12.5)):  # A's FID lower than B's by 3, 3.5, 4
        per_seed[s]["A"]["fid"], per_seed[s]["B"]["fid"] = fid, fid + 3.0 + 0.5 * s
    c = next(c for c in judge(per_seed, windows, [Comparison("A", "B", ("fid",))], real_nets=True)["comparisons"])
    assert c["window_bootstrap"] is False and c["interval"] == "seeds (t)" and c["difference"] == pytest.approx(3.5)
    assert c["se"] == pytest.approx(0.5 / math.sqrt(3)) and c["df"] == 2


def test_table5_is_a_trend_test():
    levels = (8.0, 16.0, 32.0, 64.0)
    names = ("C8", "C16", "C32", "C64")
    windows, per_seed = _study(dict(zip(names, (-1.5, -0.5, 0.5, 1.5))), rng_seed=4)
    trend = Trend(names, levels)
    up = judge(per_seed, windows, [trend], real_nets=False)
    assert [c["metric"] for c in up["comparisons"]] == ["miou", "abs_rel", "delta1"]
    assert up["holds"] is True and all(c["test"] == "trend" and c["one_sided"] for c in up["comparisons"])
    windows, per_seed = _study(dict(zip(names, (1.5, 0.5, -0.5, -1.5))), rng_seed=5)  # fewer components BETTER
    down = judge(per_seed, windows, [trend], real_nets=False)
    assert down["holds"] is False and all(c["p_value"] > 0.5 for c in down["comparisons"])


def test_guidance_is_one_pre_declared_metric_per_setting_holm_over_the_sweep():
    cfg = load_config("tiny")
    specs = claim_specs([RE2PIX, BASELINE], cfg, sweeps=True)
    shown, tests, rule, _ = specs["guidance"]
    assert rule == "any" and all(t.metrics == (GUIDANCE_METRIC,) and t.reference == RE2PIX for t in tests)
    assert isinstance(specs["components"][1][0], Trend) and specs["components"][1][0].rows[-1] == RE2PIX
    # one setting of four really helps mIoU: the claim holds after Holm; none does: it does not
    settings = {f"g{i}": (1.5 if i == 0 else 0.0) for i in range(4)}
    windows, per_seed = _study({**settings, "R": 0.0}, rng_seed=6)
    claim = judge(per_seed, windows, [Comparison(g, "R", (GUIDANCE_METRIC,)) for g in settings], real_nets=False, rule="any")
    assert claim["holds"] is True and claim["held"] >= 1 and claim["compared"] == 4
    assert [c["holds"] for c in claim["comparisons"]][0] is True
    windows, per_seed = _study({**{g: 0.0 for g in settings}, "R": 0.0}, rng_seed=7)
    assert judge(per_seed, windows, [Comparison(g, "R", (GUIDANCE_METRIC,)) for g in settings], real_nets=False,
                 rule="any")["holds"] is False


def test_speedup_first_step_and_lower_bound():
    ours = [(100, 18.0), (200, 19.0)]
    assert speedup(ours, [(100, 12.0), (200, 15.0), (300, 18.2), (400, 19.0)], "psnr")["speedup"] == 3.0
    never = speedup(ours, [(100, 12.0), (400, 17.0)], "psnr")
    assert never["lower_bound"] and never["speedup"] == 4.0 and never["baseline_step"] is None
    assert speedup([(100, 30.0)], [(100, 40.0), (200, 25.0)], "fd_vfm")["baseline_step"] == 200
