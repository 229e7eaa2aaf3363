"""windows.npz: every row's metrics split by val window, in one fixed window order (the same for every row of an
evaluation, so rows pair window by window), and each metric as a function of a set of windows.

Written by `evaluate` next to metrics.json; read by `reproduce`, which hands the arrays to eval/claims.py (pure).

Per row r (rows named in `rows`, arrays under `r<i>.<key>`, the sample axis first):
  psnr, ssim       [samples, W]        per-window mean over the predicted frames (the metric is their mean);
  abs_rel, delta1  [samples, W]        per-window (per-image) depth metrics, NaN where the window has no depth label
                                       (the metric is their mean over the labelled windows: the 'per_image' reduction);
  confusion        [samples, W, K, K]  per-window confusion matrices (mIoU and mIoU-MO come from their sum);
  features         [samples, W, T, D]  the frame features of the distribution net (fd_vfm), only when D is small;
and `windows` [W] (cache rows), `real_features` [W, T, D] (the real future frames, same net).

So every metric of metrics.json is recomputed exactly from these arrays over all windows (tests/test_evaluate.py),
and over any resampled set of windows (the paired bootstrap, eval/stats.py). fd_vfm_clip: the same features, one
vector per window (its T frames concatenated), against the real clips: a clip-level Fréchet distance on VFM
features, an FVD stand-in, NOT FVD (no I3D network).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from eval.stats import frechet_from_moments_batched, frechet_weighted_samples
from models.metrics import MOVING_CLASSES
from pipeline import atomic

PER_WINDOW = ("psnr", "ssim", "abs_rel", "delta1")  # the metric is the mean of per-window values
SET_LEVEL = ("miou", "miou_moving", "fd_vfm", "fd_vfm_clip")  # recomputed from the windows' sums / features
FILENAME = "windows.npz"


# --------------------------------------------------------------------------------------------- write / read


def row_arrays(scores: Sequence[Any], order: Sequence[int], num_classes: int) -> dict[str, np.ndarray]:
    """One row's RowMetrics (one per sample) -> its arrays in window `order` (missing windows: NaN / zeros)."""
    out: dict[str, np.ndarray] = {}
    if any(s.window_psnr for s in scores):
        out["psnr"] = np.array([[s.window_psnr.get(int(w), np.nan) for w in order] for s in scores])
        out["ssim"] = np.array([[s.window_ssim.get(int(w), np.nan) for w in order] for s in scores])
    if any(s.has_semantics for s in scores):
        for key in ("abs_rel", "delta1"):
            out[key] = np.array([[s.window_depth.get(int(w), {}).get(key, np.nan) for w in order] for s in scores])
        zero = np.zeros((num_classes, num_classes), dtype=np.int64)
        out["confusion"] = np.stack([np.stack([s.window_confusion.get(int(w), zero) for w in order]) for s in scores])
    if all(s.window_features for s in scores) and scores:
        out["features"] = np.stack([np.stack([s.window_features[int(w)] for w in order]) for s in scores]).astype(np.float32)
    return out


def write_windows(path: Path, order: Sequence[int], rows: dict[str, Sequence[Any]], num_classes: int,
                  real_features: dict[int, np.ndarray] | None) -> None:
    """rows: {row name: its RowMetrics per sample}. Written atomically."""
    arrays: dict[str, np.ndarray] = {"windows": np.asarray(order, dtype=np.int64), "rows": np.asarray(list(rows), dtype=str)}
    for i, scores in enumerate(rows.values()):
        arrays.update({f"r{i}.{k}": v for k, v in row_arrays(scores, order, num_classes).items()})
    if real_features and all(int(w) in real_features for w in order):
        arrays["real_features"] = np.stack([real_features[int(w)] for w in order]).astype(np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic.write_bytes(path, buffer.getvalue())


def read_windows(path: Path | str) -> dict[str, Any]:
    """{"windows": [W], "real_features": [W, T, D] or None, "rows": {name: {key: array}}}."""
    with np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data["rows"]]
        rows: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
        for key in data.files:
            if key.startswith("r") and "." in key:
                i, _, metric = key[1:].partition(".")
                rows[names[int(i)]][metric] = data[key]
        return {"windows": data["windows"], "rows": rows,
                "real_features": data["real_features"] if "real_features" in data.files else None}


# --------------------------------------------------------------------------------------------- the metrics


def miou_from_confusion(matrix: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """models.metrics.ConfusionMatrix.miou on a numpy matrix (classes absent from prediction and truth ignored)."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    if classes is not None:
        iou = iou[list(classes)]
    present = iou[~np.isnan(iou)]
    return float(present.mean()) if present.size else math.nan


def per_window_values(row: dict[str, np.ndarray], metric: str) -> np.ndarray | None:
    """[W] the row's per-window values of a PER_WINDOW metric (mean over samples), or None."""
    if metric not in row:
        return None
    return np.asarray(row[metric], dtype=np.float64).mean(axis=0)


def set_statistic(metric: str) -> Callable[[tuple[dict[str, np.ndarray], np.ndarray | None], np.ndarray], np.ndarray]:
    """statistic((row arrays, real features), counts [B, W]) -> the SET_LEVEL metric of each of B window multisets
    (window w counted counts[b, w] times), mean over the row's samples: [B]. Vectorised over B for the bootstrap."""

    def miou(data: tuple[dict[str, np.ndarray], Any], counts: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
        conf = data[0]["confusion"].astype(np.float64)  # [S, W, K, K]
        summed = np.einsum("bw,swij->sbij", counts, conf)
        return np.array([[miou_from_confusion(m, classes) for m in per_sample] for per_sample in summed]).mean(0)

    def fd(data: tuple[dict[str, np.ndarray], np.ndarray | None], counts: np.ndarray) -> np.ndarray:
        # frames: each window's sums (n, sum x, sum x x^T) add, so any multiset of windows is a weighted sum of them
        row, real = data
        real_mu, real_cov = _moments(real, counts)
        return np.mean([frechet_from_moments_batched(*_moments(f, counts), real_mu, real_cov) for f in row["features"]], axis=0)

    def fd_clip(data: tuple[dict[str, np.ndarray], np.ndarray | None], counts: np.ndarray) -> np.ndarray:
        row, real = data
        n = real.shape[0]
        return np.mean([frechet_weighted_samples(f.reshape(n, -1), real.reshape(n, -1), counts) for f in row["features"]], axis=0)

    table: dict[str, Callable[..., np.ndarray]] = {
        "miou": miou,
        "miou_moving": lambda data, counts: miou(data, counts, MOVING_CLASSES),
        "fd_vfm": fd,
        "fd_vfm_clip": fd_clip,
    }
    return table[metric]


def _moments(features: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features [W, T, D], counts [B, W] -> mean [B, D] and unbiased covariance [B, D, D] of the frames of each
    multiset of windows."""
    x = np.asarray(features, dtype=np.float64)
    frames = x.shape[1]
    s = x.sum(axis=1)  # [W, D]
    ss = np.einsum("wtd,wte->wde", x, x)  # [W, D, D]
    n = counts.sum(1) * frames  # [B]
    mu = (counts @ s) / n[:, None]
    cov = (np.einsum("bw,wde->bde", counts, ss) - n[:, None, None] * mu[:, :, None] * mu[:, None, :]) / (n - 1)[:, None, None]
    return mu, cov


def has_metric(row: dict[str, np.ndarray], real: np.ndarray | None, metric: str) -> bool:
    if metric in PER_WINDOW:
        return metric in row and bool(np.isfinite(row[metric]).any())
    if metric in ("miou", "miou_moving"):
        return "confusion" in row and (metric == "miou" or row["confusion"].shape[-1] == 19) and row["confusion"].sum() > 0
    if metric in ("fd_vfm", "fd_vfm_clip"):
        return "features" in row and real is not None
    return False


def metric_over_all_windows(row: dict[str, np.ndarray], real: np.ndarray | None, metric: str) -> float | None:
    """The row's metric over every window, as metrics.json reports it (mean over samples)."""
    if not has_metric(row, real, metric):
        return None
    if metric in PER_WINDOW:
        return float(np.mean([np.nanmean(v) for v in np.asarray(row[metric], dtype=np.float64)]))
    n = row["confusion"].shape[1] if metric.startswith("miou") else row["features"].shape[1]
    return float(set_statistic(metric)((row, real), np.ones((1, n)))[0])
