"""Paired, seed-nested inference for `reproduce`'s verdicts (pure numpy: no I/O, no torch).

Every row of one seed is scored on the same val windows with the same noise, so two rows are compared window by
window. A contrast (row A against reference B, or a linear trend over several rows) is estimated per seed on all of
that seed's windows, sign-oriented so that positive = better; the estimate is the mean over seeds. Its uncertainty
is the LARGER of two intervals:

  (a) a paired window bootstrap: within each seed the window indices are resampled with replacement, the SAME
      indices for every row of the contrast, and the statistic is recomputed (a per-window mean, or a set-level
      metric such as mIoU or a Fréchet distance); the seeds' bootstrap variances combine as var(mean over seeds) =
      sum(var_s) / n_seeds^2; normal interval and p-value. It sees only the windows' noise.
  (b) the seed-level spread: a t interval on the n_seeds per-seed estimates (n_seeds - 1 degrees of freedom), which
      also sees the training noise between seeds. Needs n_seeds >= 2.

The reported p-value is the larger of the two (a comparison is significant only when both intervals exclude 0), so
the test is valid whether the seeds' spread or the windows' noise dominates, and conservative where they are
comparable or the seeds agree by chance (see tests/test_stats.py for the measured false-positive rates).

Also: Holm-Bonferroni, the smallest effect detectable at a given power, and the t / normal distributions (no scipy).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

ALPHA = 0.05
N_BOOT = 2000  # bootstrap resamples for per-window means (vectorised)
N_BOOT_SET = 200  # for set-level statistics (each resample recomputes the metric)

# ------------------------------------------------------------------------------------- distributions


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function; df = inf is the normal."""
    if not math.isfinite(df):
        return normal_cdf(t)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (bisection on t_cdf; df = inf is the normal)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_ppf: q={q} must be in (0, 1)")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _p_value(t: float, df: float, one_sided: bool) -> float:
    if math.isnan(t):
        return 1.0
    if one_sided:  # H1: the contrast is positive (better)
        return 1.0 - t_cdf(t, df)
    return 2.0 * (1.0 - t_cdf(abs(t), df))


# ------------------------------------------------------------------------------------- corrections, power


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and does not count towards m)."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


def min_detectable(se: float | None, alpha: float = ALPHA, power: float = 0.8, df: float = math.inf,
                   one_sided: bool = False) -> float | None:
    """The smallest true effect a test with standard error `se` (and `df` degrees of freedom) detects with
    probability `power` at level `alpha`: (t_{1 - alpha/2} + t_{power}) * se (alpha, not alpha/2, when one-sided)."""
    if se is None or not math.isfinite(se):
        return None
    crit = t_ppf(1.0 - (alpha if one_sided else alpha / 2.0), df)
    return (crit + t_ppf(power, df)) * se


# ------------------------------------------------------------------------------------- the contrast


def _seed_rng(seed: int, s: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(s), 22])


def combine(estimates: Sequence[float], boot_vars: Sequence[float], n_windows: Sequence[int], alpha: float = ALPHA,
            one_sided: bool = False, window_bootstrap: bool = True) -> dict[str, Any]:
    """Per-seed estimates and their window-bootstrap variances -> estimate, the larger of the two intervals, p."""
    est = np.asarray(estimates, dtype=np.float64)
    n = len(est)
    difference = float(est.mean())
    out: dict[str, Any] = {"difference": difference, "paired": True, "n_seeds": n, "n_windows": int(min(n_windows)),
                           "one_sided": one_sided}
    p_values, widths, ses = [], [], []
    q = 1.0 - alpha / 2.0  # the interval is two-sided (95 % at alpha 0.05); the p-value follows `one_sided`
    if window_bootstrap:
        se_b = math.sqrt(float(np.sum(boot_vars))) / n
        t_b = difference / se_b if se_b > 0 else (0.0 if difference == 0 else math.copysign(math.inf, difference))
        p_values.append(_p_value(t_b, math.inf, one_sided))
        widths.append(t_ppf(q, math.inf) * se_b)
        ses.append((se_b, math.inf))
        out["se_bootstrap"] = se_b
    if n >= 2:
        se_s = float(est.std(ddof=1)) / math.sqrt(n)
        t_s = difference / se_s if se_s > 0 else (0.0 if difference == 0 else math.copysign(math.inf, difference))
        p_values.append(_p_value(t_s, n - 1, one_sided))
        widths.append(t_ppf(q, n - 1) * se_s)
        ses.append((se_s, n - 1))
        out["se_seeds"] = se_s
    if not p_values:  # one seed and no window data: nothing to judge
        out.update(ci95=None, p_value=None, se=None, df=None)
        return out
    k = int(np.argmax(widths))
    out.update(ci95=[difference - widths[k], difference + widths[k]], p_value=float(max(p_values)), se=ses[k][0],
               df=None if math.isinf(ses[k][1]) else ses[k][1],
               interval="window bootstrap" if ses[k][1] == math.inf else "seeds (t)")
    return out


def _window_mask(values: Sequence[np.ndarray]) -> np.ndarray:
    keep = np.ones(np.asarray(values[0]).shape[-1], dtype=bool)
    for v in values:
        keep &= np.isfinite(np.asarray(v, dtype=np.float64))
    return keep


def mean_contrast(rows: Sequence[Sequence[np.ndarray]], weights: Sequence[float], higher: bool = True,
                  alpha: float = ALPHA, one_sided: bool = False, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """A linear contrast sum_r weights[r] * mean_w(value[r, w]) of per-window values, nested in seeds.

    rows[s][r]: seed s's per-window values [n_windows] of row r (the same window order for every row of a seed; NaN:
    a window without this metric, e.g. no label: left out of every row of that seed). Positive = better."""
    sign = 1.0 if higher else -1.0
    w = np.asarray(weights, dtype=np.float64)
    estimates, boot_vars, counts = [], [], []
    for s, seed_rows in enumerate(rows):
        keep = _window_mask(seed_rows)
        if not keep.any():
            continue
        d = sign * np.tensordot(w, np.stack([np.asarray(v, dtype=np.float64)[keep] for v in seed_rows]), axes=1)
        estimates.append(float(d.mean()))
        idx = _seed_rng(seed, s).integers(0, len(d), size=(n_boot, len(d)))
        boot_vars.append(float(d[idx].mean(axis=1).var(ddof=1)) if len(d) > 1 else 0.0)
        counts.append(len(d))
    if not estimates:
        return {"difference": None, "paired": True, "n_seeds": 0, "n_windows": 0, "ci95": None, "p_value": None, "se": None}
    return combine(estimates, boot_vars, counts, alpha, one_sided)


def paired_contrast(a: np.ndarray, b: np.ndarray, higher: bool = True, **kw: Any) -> dict[str, Any]:
    """Row A against reference B on a per-window metric: a, b [n_seeds, n_windows] (or lists of per-seed arrays)."""
    return mean_contrast([[x, y] for x, y in zip(a, b)], [1.0, -1.0], higher, **kw)


def set_contrast(rows: Sequence[Sequence[Any]], weights: Sequence[float],
                 statistic: Callable[[Any, np.ndarray], np.ndarray], n_windows: Sequence[int], higher: bool = True,
                 alpha: float = ALPHA, one_sided: bool = False, n_boot: int = N_BOOT_SET, seed: int = 0) -> dict[str, Any]:
    """A linear contrast of a SET-LEVEL metric (mIoU from summed confusion matrices, a Fréchet distance, ...).

    rows[s][r]: whatever `statistic(data, counts)` needs for row r of seed s; `counts` [B, n_windows] says how often
    each window is in each of B window multisets (all ones: the full set), and statistic returns the metric of each
    multiset [B] (vectorised over the bootstrap). The bootstrap draws the same multisets for every row of a seed.
    Resampling duplicates windows, which biases a Fréchet distance slightly; the bias is common to the rows of the
    contrast and partly cancels, and the seed-level interval does not resample at all. Conservative by construction
    (the larger interval)."""
    sign = 1.0 if higher else -1.0
    w = np.asarray(weights, dtype=np.float64)
    estimates, boot_vars, sizes = [], [], []
    for s, (seed_rows, n) in enumerate(zip(rows, n_windows)):
        values = np.array([float(np.asarray(statistic(r, np.ones((1, n))))[0]) for r in seed_rows])
        if not np.isfinite(values).all():
            continue
        estimates.append(sign * float(w @ values))
        draws = _seed_rng(seed, s).integers(0, n, size=(n_boot if n > 1 else 0, n))
        counts = np.zeros((len(draws), n))
        np.add.at(counts, (np.repeat(np.arange(len(draws)), n), draws.reshape(-1)), 1.0)
        boot = sign * (w @ np.stack([np.asarray(statistic(r, counts), dtype=np.float64) for r in seed_rows])) if len(draws) else np.zeros(0)
        boot = boot[np.isfinite(boot)]
        boot_vars.append(float(np.var(boot, ddof=1)) if len(boot) > 1 else 0.0)
        sizes.append(n)
    if not estimates:
        return {"difference": None, "paired": True, "n_seeds": 0, "n_windows": 0, "ci95": None, "p_value": None, "se": None}
    return combine(estimates, boot_vars, sizes, alpha, one_sided)


def trend_weights(levels: Sequence[float]) -> list[float]:
    """Least-squares slope weights on the RANKS of `levels` (sum w = 0, sum w * rank = 1): the contrast is the
    slope of the metric per step up the ordered levels."""
    ranks = np.argsort(np.argsort(np.asarray(levels, dtype=np.float64))).astype(np.float64)
    centred = ranks - ranks.mean()
    return list(centred / float(centred @ centred))


# ------------------------------------------------------------------------------------- Fréchet from samples


def frechet_from_samples(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to samples x [n1, d] and y [n2, d] (unbiased covariances), exact
    also when n < d: with A = centred x / sqrt(n1 - 1) and B likewise, Tr sqrt(Σx Σy) is the nuclear norm of A Bᵀ
    (or of the d x d route when d is the smaller), so a clip-level FD on long vectors costs an n x n SVD."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    a = (x - x.mean(0)) / math.sqrt(len(x) - 1)
    b = (y - y.mean(0)) / math.sqrt(len(y) - 1)
    diff = x.mean(0) - y.mean(0)
    if min(len(a), len(b)) <= a.shape[1]:
        cross = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    else:
        sa, sb = a.T @ a, b.T @ b
        wv, v = np.linalg.eigh(sa)
        root = (v * np.sqrt(np.clip(wv, 0.0, None))) @ v.T
        inner = root @ sb @ root
        cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * cross)


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + np.swapaxes(m, -1, -2)) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]) @ np.swapaxes(v, -1, -2)


def frechet_from_moments_batched(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> np.ndarray:
    """FD for stacks of moments: mu [B, d], cov [B, d, d] -> [B] (as eval.frechet, batched eigendecompositions)."""
    root = _sqrtm_psd(cov2)
    inner = root @ cov1 @ root
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + np.swapaxes(inner, -1, -2)) / 2), 0.0, None)).sum(-1)
    diff = mu1 - mu2
    return (diff * diff).sum(-1) + np.trace(cov1, axis1=-2, axis2=-1) + np.trace(cov2, axis1=-2, axis2=-1) - 2.0 * cross


def frechet_weighted_samples(x: np.ndarray, y: np.ndarray, counts: np.ndarray, chunk: int = 25) -> np.ndarray:
    """FD between x [n, d] and y [n, d] (paired samples: both drawn `counts` [B, n] times) for each of B multisets,
    in the samples' space (an n x n SVD per multiset, exact for n < d): the clip-level FD under the bootstrap."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    out = []
    for c in np.split(counts, range(chunk, len(counts), chunk)):
        n = c.sum(1, keepdims=True)  # [b, 1]
        mx, my = (c @ x) / n, (c @ y) / n  # [b, d]
        scale = np.sqrt(c / (n - 1))[..., None]  # [b, n, 1]
        a, b = scale * (x[None] - mx[:, None]), scale * (y[None] - my[:, None])  # [b, n, d]
        cross = np.linalg.svd(a @ np.swapaxes(b, 1, 2), compute_uv=False).sum(-1)
        diff = mx - my
        out.append((diff * diff).sum(-1) + (a * a).sum((1, 2)) + (b * b).sum((1, 2)) - 2.0 * cross)
    return np.concatenate(out) if out else np.zeros(0)
