"""Fréchet distance: closed forms for known Gaussians, streaming statistics vs numpy, merging, bad input."""

import numpy as np
import pytest
import torch

from eval.frechet import FeatureStats, frechet_distance, frechet_distance_from_moments


def test_diagonal_gaussians_match_closed_form():
    # Diagonal covariances commute, so Tr(S1 + S2 - 2 sqrt(S1 S2)) = Σ (√v1 − √v2)².
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance_from_moments(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_full_covariance_matches_the_definition():
    # Tr((S1 S2)^½) equals the sum of square roots of the eigenvalues of S1 S2 (real, non-negative for SPD S1, S2).
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    tr_sqrt = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance_from_moments(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_identical_statistics_give_zero_and_distance_is_symmetric():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 8)), rng.normal(loc=0.5, size=(150, 8))
    sx, sy = FeatureStats(8).update(x), FeatureStats(8).update(y)
    assert abs(frechet_distance(sx, sx)) < 1e-8
    assert frechet_distance(sx, sy) == pytest.approx(frechet_distance(sy, sx), rel=1e-8)
    assert frechet_distance(sx, sy) > 0.5 * 8 * 0.25  # the mean shift alone contributes 8 * 0.25


def test_streaming_stats_equal_numpy_and_merge_is_exact():
    rng = np.random.default_rng(3)
    feats = rng.normal(loc=2.0, scale=[0.5, 1, 2, 3], size=(97, 4))
    whole = FeatureStats(4).update(torch.from_numpy(feats))
    parts = FeatureStats(4).update(feats[:30])
    parts.merge(FeatureStats(4).update(feats[30:61])).merge(FeatureStats(4).update(feats[61:]))
    for stats in (whole, parts):
        assert stats.count == 97
        np.testing.assert_allclose(stats.mean(), feats.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats.cov(), np.cov(feats, rowvar=False), rtol=1e-10, atol=1e-12)  # N - 1


def test_state_dict_round_trip():
    rng = np.random.default_rng(4)
    stats = FeatureStats(3).update(rng.normal(size=(10, 3)))
    again = FeatureStats.from_state_dict(stats.state_dict())
    assert again.count == 10
    np.testing.assert_array_equal(again.cov(), stats.cov())


def test_singular_covariances_still_give_a_finite_distance():
    # Fewer samples than dimensions: both covariances are singular; the eps retry / real part keeps FD finite.
    rng = np.random.default_rng(5)
    a, b = FeatureStats(16).update(rng.normal(size=(5, 16))), FeatureStats(16).update(rng.normal(size=(5, 16)))
    assert np.isfinite(frechet_distance(a, b))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        FeatureStats(4).update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        FeatureStats(2).update(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(2).update(np.zeros((1, 2))).cov()
    with pytest.raises(ValueError, match="differ"):
        frechet_distance(FeatureStats(2).update(np.eye(2)), FeatureStats(3).update(np.eye(3)))
