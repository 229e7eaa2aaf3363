"""eval/stats.py: the paired, seed-nested test behind reproduce's verdicts, on simulated data with a known truth.

The study's shape: 3 seeds x 16 windows; each row has its own seed-level random effect (Stage 2 trained per seed),
the windows share a difficulty (cancels when paired) plus per-window noise (sampling). Fixed RNGs throughout.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.stats import (
    frechet_from_moments_batched,
    frechet_from_samples,
    frechet_weighted_samples,
    holm,
    mean_contrast,
    min_detectable,
    paired_contrast,
    set_contrast,
    t_cdf,
    t_ppf,
    trend_weights,
)

ALPHA = 0.05


def _rows(rng: np.random.Generator, seeds: int, windows: int, seed_sd: float, effect: float = 0.0):
    common = rng.normal(0.0, 1.0, (seeds, windows))  # window difficulty, the same for both rows
    a = common + rng.normal(0.0, seed_sd, (seeds, 1)) + rng.normal(0.0, 1.0, (seeds, windows)) + effect
    b = common + rng.normal(0.0, seed_sd, (seeds, 1)) + rng.normal(0.0, 1.0, (seeds, windows))
    return a, b


def _rejections(seed_sd: float, reps: int, windows: int = 16, effect: float = 0.0, rng_seed: int = 0) -> float:
    rng = np.random.default_rng(rng_seed)
    hits = 0
    for _ in range(reps):
        r = paired_contrast(*_rows(rng, 3, windows, seed_sd, effect), higher=True, n_boot=400)
        hits += r["p_value"] < ALPHA and r["difference"] > 0 if effect else r["p_value"] < ALPHA
    return hits / reps


@pytest.mark.parametrize("seed_sd", [0.5, 1.0])
def test_calibration_false_positive_rate_is_nominal_under_the_null(seed_sd):
    # two rows from one distribution, seed effects (sd 0.5 or 1 window-noise unit) plus window noise
    fpr = _rejections(seed_sd, reps=600)
    assert ALPHA - 0.03 <= fpr <= ALPHA + 0.03, fpr


def test_calibration_without_seed_effects_is_valid_and_conservative():
    # rows sharing a checkpoint (Table 5, guidance): the seeds' t interval (2 df) is wider than the windows' noise
    # needs, so the larger-interval rule is conservative here; it must never exceed alpha + 3 points
    fpr = _rejections(0.0, reps=600, rng_seed=1)
    assert fpr <= ALPHA + 0.03, fpr


def test_power_rises_with_the_number_of_windows():
    power = [_rejections(0.05, reps=200, windows=w, effect=0.4, rng_seed=2) for w in (8, 32, 128)]
    assert power[0] < power[1] < power[2], power
    assert power[2] > 0.6 and power[0] < 0.3, power  # 3 seeds: the seeds' 2-df t interval caps it


def test_a_real_effect_in_the_wrong_direction_is_negative():
    rng = np.random.default_rng(3)
    a, b = _rows(rng, 3, 64, 0.0, effect=-1.0)
    r = paired_contrast(a, b, higher=True)
    assert r["difference"] < 0 and r["ci95"][1] < 0 and r["p_value"] < 0.01
    flipped = paired_contrast(a, b, higher=False)  # lower is better: the same numbers now say "A is better"
    assert flipped["difference"] == pytest.approx(-r["difference"]) and flipped["p_value"] == pytest.approx(r["p_value"])


def test_contrast_estimate_is_the_mean_over_seeds_of_the_mean_window_difference():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    b = np.array([[0.0, 2.0, 2.0, 4.0], [1.0, 1.0, 3.0, 1.0]])
    r = paired_contrast(a, b)
    assert r["difference"] == pytest.approx(((0.5) + (0.5)) / 2) and r["n_seeds"] == 2 and r["n_windows"] == 4
    # seed-level interval: both seeds estimate 0.5 -> zero spread; the bootstrap interval is the larger one
    assert r["se_seeds"] == 0.0 and r["interval"] == "window bootstrap" and r["paired"] is True
    # NaN windows (no label) are left out of both rows of that seed
    a2 = np.array([[1.0, np.nan, 3.0]])
    b2 = np.array([[0.0, 5.0, 1.0]])
    assert paired_contrast(a2, b2)["difference"] == pytest.approx(1.5)


def test_seed_interval_is_a_t_interval_on_n_minus_1_df():
    # no window noise at all: the bootstrap variance is 0 and the seed-level t interval decides
    a = np.array([[1.0] * 5, [2.0] * 5, [4.0] * 5])
    b = np.zeros((3, 5))
    r = paired_contrast(a, b)
    se = np.std([1.0, 2.0, 4.0], ddof=1) / math.sqrt(3)
    t = (7 / 3) / se
    assert r["se"] == pytest.approx(se) and r["df"] == 2 and r["interval"] == "seeds (t)"
    assert r["ci95"] == pytest.approx([7 / 3 - 4.302652729749462 * se, 7 / 3 + 4.302652729749462 * se], rel=1e-9)
    assert r["p_value"] == pytest.approx(2 * (1 - t_cdf(t, 2)))
    # hand check of the t distribution: with 2 df, P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_t_distribution_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 30):
        for x in (-4.0, -1.0, 0.3, 2.5):
            assert t_cdf(x, df) == pytest.approx(stats.t.cdf(x, df), abs=1e-10)
        assert t_ppf(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-9)
    assert t_ppf(0.8, math.inf) == pytest.approx(stats.norm.ppf(0.8), abs=1e-9)


def test_holm_on_a_known_vector():
    # sorted 0.005 (x4) 0.01 (x3) 0.03 (x2) 0.04 (x1), made monotone; None is not a comparison
    assert holm([0.01, 0.04, 0.03, 0.005, None]) == pytest.approx([0.03, 0.06, 0.06, 0.02, None])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_min_detectable_closed_form_and_power():
    assert min_detectable(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert min_detectable(2.0, df=2) == pytest.approx(2.0 * (4.302653 + 1.060660), abs=1e-5)
    assert min_detectable(None) is None
    # an effect of that size is detected ~80 % of the time by a z test with that standard error
    rng = np.random.default_rng(4)
    est = rng.normal(min_detectable(1.0), 1.0, 20000)
    assert np.mean(np.abs(est) > 1.959964) == pytest.approx(0.8, abs=0.01)


def test_trend_test_finds_a_monotone_trend_and_not_a_flat_one():
    rng = np.random.default_rng(5)
    levels = [8, 16, 32, 64]
    w = trend_weights(levels)
    assert sum(w) == pytest.approx(0.0) and sum(wi * r for wi, r in zip(w, range(4))) == pytest.approx(1.0)
    common = rng.normal(0, 1, (3, 32))
    rising = [[common[s] + 0.2 * k + rng.normal(0, 0.3, 32) for k in range(4)] for s in range(3)]
    flat = [[common[s] + rng.normal(0, 0.3, 32) for _ in range(4)] for s in range(3)]
    up = mean_contrast(rising, w, higher=True, one_sided=True)
    assert up["difference"] == pytest.approx(0.2, abs=0.05) and up["p_value"] < 0.01
    assert mean_contrast(rising, w, higher=False, one_sided=True)["p_value"] > 0.9  # the wrong direction
    assert mean_contrast(flat, w, higher=True, one_sided=True)["p_value"] > 0.01


def test_set_contrast_of_a_mean_matches_the_per_window_contrast():
    rng = np.random.default_rng(6)
    a, b = _rows(rng, 3, 24, 0.3, effect=0.5)
    per_window = paired_contrast(a, b)
    as_set = set_contrast([[x, y] for x, y in zip(a, b)], [1.0, -1.0], lambda v, counts: (counts @ v) / counts.sum(1),
                          [24] * 3, n_boot=400)
    assert as_set["difference"] == pytest.approx(per_window["difference"])
    assert as_set["se_seeds"] == pytest.approx(per_window["se_seeds"])
    assert as_set["se_bootstrap"] == pytest.approx(per_window["se_bootstrap"], rel=0.2)


def test_frechet_from_samples_matches_the_moment_formula_also_below_full_rank():
    from eval.frechet import frechet_distance_from_moments

    rng = np.random.default_rng(7)
    for n, d in ((60, 6), (10, 40)):  # the d x d route and the n x n (nuclear norm) route
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n + 3, d)) + 0.3
        ref = frechet_distance_from_moments(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T))
        assert frechet_from_samples(x, y) == pytest.approx(ref, rel=1e-6, abs=1e-8)
    assert frechet_from_samples(x, x) == pytest.approx(0.0, abs=1e-6)


def test_batched_frechet_of_a_window_multiset_equals_the_fd_of_the_duplicated_samples():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(12, 30)), rng.normal(size=(12, 30)) + 0.2  # 12 clips, 30-d: below full rank
    draws = rng.integers(0, 12, size=(5, 12))
    counts = np.stack([np.bincount(d, minlength=12) for d in draws]).astype(float)
    expected = [frechet_from_samples(x[d], y[d]) for d in draws]
    assert frechet_weighted_samples(x, y, counts, chunk=2) == pytest.approx(expected, rel=1e-8)
    xs, ys = rng.normal(size=(3, 50, 4)), rng.normal(size=(3, 50, 4))
    mom = [(v.mean(0), np.cov(v.T)) for v in xs], [(v.mean(0), np.cov(v.T)) for v in ys]
    batched = frechet_from_moments_batched(np.stack([m for m, _ in mom[0]]), np.stack([c for _, c in mom[0]]),
                                           np.stack([m for m, _ in mom[1]]), np.stack([c for _, c in mom[1]]))
    assert batched == pytest.approx([frechet_from_samples(a, b) for a, b in zip(xs, ys)], rel=1e-8)


def test_calibration_of_the_set_level_fd_contrast_under_the_null():
    """Two rows' frame features from one distribution (each row with its own seed shift), real frames from another:
    the FD-VFM contrast (set-level, recomputed per bootstrap multiset) must stay valid (at most alpha + 3 points)."""
    from eval.windows import set_statistic

    windows, frames, dim, reps = 16, 4, 8, 120
    stat = set_statistic("fd_vfm")
    rng = np.random.default_rng(10)
    hits = 0
    for _ in range(reps):
        data = []
        for _ in range(3):
            real = rng.normal(0, 1, (windows, frames, dim))
            common = rng.normal(0, 1, (windows, frames, dim))
            rows = [{"features": (0.7 * common + 0.7 * rng.normal(0, 1, common.shape) + rng.normal(0, 0.3, dim) + 0.5)[None]}
                    for _ in range(2)]
            data.append([(r, real) for r in rows])
        hits += set_contrast(data, [1.0, -1.0], stat, [windows] * 3, higher=False, n_boot=100)["p_value"] < ALPHA
    assert hits / reps <= ALPHA + 0.03, hits / reps
