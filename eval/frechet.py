"""Fréchet distance between two feature distributions (FID on Inception features, FVD on I3D features).

Each side is summarised by streaming float64 sums, so features never need to be held in memory and partial
statistics from several workers (or GPUs, or Ray tasks) merge exactly:

    n,  s = Σ x,  S = Σ x xᵀ   ->   μ = s / n,   Σ = (S − n μ μᵀ) / (n − 1)

The covariance uses the unbiased N − 1 denominator, as `np.cov`, pytorch-fid, torch-fidelity and torchmetrics
do (StyleGAN-V divides by N; the difference is O(1/N) and negligible at the usual 2048+ samples).

    FD = |μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)

The trace of the matrix square root is computed from symmetric eigendecompositions (`trace_sqrt_product`), which
equals pytorch-fid's `scipy.linalg.sqrtm` route in exact arithmetic, is several times faster at 2048-d, and cannot
produce the complex round-off that route has to discard; singular covariances (fewer samples than dimensions) are
handled without a retry.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class FeatureStats:
    """Streaming mean / covariance of feature vectors of dimension `dim`, accumulated in float64."""

    def __init__(self, dim: int):
        if dim <= 0:
            raise ValueError(f"FeatureStats: dim must be positive, got {dim}")
        self.dim = dim
        self.count = 0
        self.total = np.zeros(dim, dtype=np.float64)
        self.outer_total = np.zeros((dim, dim), dtype=np.float64)

    def update(self, feats: torch.Tensor | np.ndarray) -> "FeatureStats":
        """Add a batch of feature vectors [N, dim]."""
        if isinstance(feats, torch.Tensor):
            feats = feats.detach().to("cpu", torch.float64).numpy()
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"FeatureStats.update: expected features [N, {self.dim}], got shape {feats.shape}")
        if not np.isfinite(feats).all():
            raise ValueError("FeatureStats.update: features contain NaN or inf (check the inputs of the feature net)")
        self.count += feats.shape[0]
        self.total += feats.sum(axis=0)
        self.outer_total += feats.T @ feats
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Add another accumulator's samples into this one (exact: the sums simply add)."""
        if other.dim != self.dim:
            raise ValueError(f"FeatureStats.merge: dimensions differ ({self.dim} vs {other.dim})")
        self.count += other.count
        self.total += other.total
        self.outer_total += other.outer_total
        return self

    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise ValueError("FeatureStats.mean: no samples were added")
        return self.total / self.count

    def cov(self) -> np.ndarray:
        """Unbiased covariance (denominator N − 1)."""
        if self.count < 2:
            raise ValueError(f"FeatureStats.cov: need at least 2 samples, have {self.count}")
        mu = self.mean()
        cov = (self.outer_total - self.count * np.outer(mu, mu)) / (self.count - 1)
        return (cov + cov.T) / 2  # exact symmetry despite round-off

    def state_dict(self) -> dict[str, Any]:
        """Plain arrays, e.g. to save reference statistics of the real set with np.savez."""
        return {"dim": self.dim, "count": self.count, "total": self.total.copy(), "outer_total": self.outer_total.copy()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "FeatureStats":
        stats = cls(int(state["dim"]))
        total = np.asarray(state["total"], dtype=np.float64)
        outer = np.asarray(state["outer_total"], dtype=np.float64)
        if total.shape != (stats.dim,) or outer.shape != (stats.dim, stats.dim):
            raise ValueError(f"FeatureStats.from_state_dict: arrays do not match dim {stats.dim}")
        stats.count, stats.total, stats.outer_total = int(state["count"]), total.copy(), outer.copy()
        return stats


def frechet_distance_from_moments(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"frechet_distance: shapes do not match (mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape})"
        )
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr(sqrt(Σ₁Σ₂)) for covariance (symmetric PSD) matrices.

    Σ₁Σ₂ is similar to A Σ₂ A with A = Σ₁^½, which is symmetric PSD, so the trace is the sum of the square roots of
    its (real, non-negative) eigenvalues. Two `eigh` calls instead of scipy's `sqrtm` of a non-symmetric product:
    several times faster at 2048-d, never complex, and exact up to rounding (tiny negative eigenvalues from rounding
    are clipped to 0)."""
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root @ sigma2 @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())


def frechet_distance(stats_a: FeatureStats, stats_b: FeatureStats) -> float:
    """FD between the Gaussians fitted to two feature sets (e.g. predicted vs real clips)."""
    if stats_a.dim != stats_b.dim:
        raise ValueError(f"frechet_distance: feature dimensions differ ({stats_a.dim} vs {stats_b.dim})")
    return frechet_distance_from_moments(stats_a.mean(), stats_a.cov(), stats_b.mean(), stats_b.cov())
