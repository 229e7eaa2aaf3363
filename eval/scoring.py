"""What evaluation measures per method: the metric names, the FID/FVD feature networks, and `RowMetrics`, the running
totals of one method (one sample of it) over the val windows (confusion matrix, depth errors, PSNR/SSIM sums, Fréchet
feature statistics)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from configs.schema import Config
from eval.feature_nets import build_fid_extractor, build_fvd_extractor
from eval.frechet import FeatureStats, frechet_distance
from models.metrics import ConfusionMatrix, DepthMetrics, psnr, ssim

# The protocol's metrics, in the paper's column order (eval/report.py lays its tables out in this order).
METRICS = ("miou", "miou_moving", "abs_rel", "delta1", "fid", "fvd", "psnr", "ssim")
SEMANTIC_METRICS = ("miou", "miou_moving", "abs_rel", "delta1")
PIXEL_METRICS = ("fid", "fvd", "psnr", "ssim")
EXTRA_DEPTH_METRICS = ("sq_rel", "rmse", "rmse_log", "delta2", "delta3")
SSIM_BORDER = "reflect"
# Per-window frame features are kept for windows.npz (paired bootstrap of the Fréchet distances) only up to this
# dimension: the VFM's PCA features (fd_vfm) yes, a 2048-d Inception (real FID) no (judged on the seeds alone).
WINDOW_FEATURE_MAX_DIM = 256


# ------------------------------------------------------------------------------------------ metric nets


@dataclass
class MetricNets:
    """The FID and FVD feature networks (each with `.dim` and `.weights`: "file:<sha16>" or "random"); None when
    FID/FVD are switched off (`fid_fvd=False`: with random networks they cost most of an evaluation and mean nothing)."""

    fid: nn.Module | None
    fvd: nn.Module | None


def build_metric_nets(cfg: Config, allow_random: bool, device: torch.device | str = "cpu") -> MetricNets:
    """FID Inception and FVD I3D from `eval.fid_weights` / `eval.fvd_weights`; without a file this raises
    MissingMetricWeightsError (what to download, and `--allow-random-metric-weights`) unless `allow_random`."""
    allow = allow_random or cfg.eval.allow_random_metric_weights
    return MetricNets(
        fid=build_fid_extractor(cfg.eval.fid_weights, allow_random=allow, device=device, seed=cfg.seed),
        fvd=build_fvd_extractor(cfg.eval.fvd_weights, allow_random=allow, device=device, seed=cfg.seed),
    )


# ------------------------------------------------------------------------------------------- accumulators


class RowMetrics:
    """Everything one method (one sample of it) accumulates over the val windows."""

    def __init__(self, num_classes: int, fid_dim: int, fvd_dim: int):
        self.confusion = ConfusionMatrix(num_classes)
        self.depth = DepthMetrics()
        self.fid = FeatureStats(fid_dim) if fid_dim else None
        self.fvd = FeatureStats(fvd_dim) if fvd_dim else None
        self.psnr_sum, self.ssim_sum, self.frames = 0.0, 0.0, 0
        self.has_semantics = self.has_pixels = False
        # per window (keyed by cache row) for windows.npz: the same sums, split by window
        self.window_psnr: dict[int, float] = {}
        self.window_ssim: dict[int, float] = {}
        self.window_features: dict[int, np.ndarray] = {}  # [T, D] frame features of the FID net (small D only)
        self.window_confusion: dict[int, np.ndarray] = {}  # [K, K]
        self.window_depth: dict[int, dict[str, float]] = {}  # per-image depth metrics (the 'per_image' reduction)

    def add_semantics(self, segmentation: torch.Tensor | None, seg_labels: torch.Tensor | None,
                      depth: torch.Tensor | None, depth_labels: torch.Tensor | None,
                      seg_windows: Sequence[int] | None = None, depth_windows: Sequence[int] | None = None) -> None:
        """Predicted train ids / depth bins [B, H, W] against the labels of the windows that have them;
        `seg_windows` / `depth_windows` name each item's window (cache row) for the per-window record."""
        self.has_semantics = True
        for items, names in ((segmentation, seg_windows), (depth, depth_windows)):
            if items is not None and names is not None and len(items) != len(names):
                raise ValueError(f"RowMetrics.add_semantics: {len(items)} predictions but {len(names)} window names")
        # With the windows named, each item is scored on its own and merged (the sums add exactly), so the set-level
        # and the per-window figures come from one pass.
        if segmentation is not None and len(segmentation):
            if seg_windows is None:
                self.confusion.update(segmentation.cpu(), seg_labels.cpu())
            for i, w in enumerate(seg_windows or ()):
                one = ConfusionMatrix(self.confusion.num_classes, self.confusion.ignore_index)
                self.confusion.merge(one.update(segmentation[i : i + 1].cpu(), seg_labels[i : i + 1].cpu()))
                self.window_confusion[int(w)] = one.matrix.numpy()
        if depth is not None and len(depth):
            if depth_windows is None:
                self.depth.update(depth.cpu(), depth_labels.cpu())
            for i, w in enumerate(depth_windows or ()):
                one = DepthMetrics(self.depth.reduction, self.depth.min_pred).update(depth[i : i + 1].cpu(), depth_labels[i : i + 1].cpu())
                self.depth.merge(one)
                if one.images:
                    self.window_depth[int(w)] = one.compute()

    def add_frames(self, predicted: torch.Tensor, real: torch.Tensor, nets: MetricNets, fvd_clips: bool,
                   windows: Sequence[int] | None = None) -> None:
        """uint8 clips [B, 3, T, H, W] of predicted and real future frames; `windows`: their cache rows."""
        self.has_pixels = True
        b, _, t, h, w = predicted.shape
        frames = predicted.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
        truth = real.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
        if nets.fid is not None:
            feats = nets.fid(frames)
            self.fid.update(feats)
            if windows is not None and self.fid.dim <= WINDOW_FEATURE_MAX_DIM:
                per = feats.detach().to("cpu", torch.float64).numpy().reshape(b, t, -1)
                self.window_features.update({int(win): per[i] for i, win in enumerate(windows)})
        if fvd_clips and nets.fvd is not None:
            self.fvd.update(nets.fvd(predicted))
        x, y = frames.double() / 255.0, truth.double() / 255.0
        p_frames = psnr(x, y, data_range=1.0)
        s_frames = ssim(x, y, data_range=1.0, border=SSIM_BORDER)
        self.psnr_sum += float(p_frames.sum())
        self.ssim_sum += float(s_frames.sum())
        self.frames += b * t
        for i, win in enumerate(windows or ()):
            self.window_psnr[int(win)] = float(p_frames.reshape(b, t)[i].mean())
            self.window_ssim[int(win)] = float(s_frames.reshape(b, t)[i].mean())

    def compute(self, real_fid: FeatureStats, real_fvd: FeatureStats, notes: list[str]) -> dict[str, float | None]:
        out: dict[str, float | None] = dict.fromkeys(METRICS)
        if self.has_semantics:
            out["miou"] = self.confusion.miou()
            out["miou_moving"] = self.confusion.moving_miou() if self.confusion.num_classes == 19 else None
            depth = self.depth.compute()
            out["abs_rel"], out["delta1"] = depth["abs_rel"], depth["delta1"]
            out.update({k: depth[k] for k in EXTRA_DEPTH_METRICS})
        if self.has_pixels and self.frames:
            out["psnr"] = self.psnr_sum / self.frames
            out["ssim"] = self.ssim_sum / self.frames
            out["fid"] = frechet_or_none(self.fid, real_fid, "FID", notes) if self.fid is not None else None
            out["fvd"] = frechet_or_none(self.fvd, real_fvd, "FVD", notes) if self.fvd is not None and self.fvd.count else None
        return out


def frechet_or_none(pred: FeatureStats, real: FeatureStats, what: str, notes: list[str]) -> float | None:
    if pred.count < 2 or real.count < 2:
        add_note(notes, f"{what} needs at least 2 samples per side (have {pred.count} predicted, {real.count} real): reported as n/a")
        return None
    try:
        return frechet_distance(pred, real)
    except ValueError as exc:  # badly conditioned covariances (far fewer samples than dimensions)
        add_note(notes, f"{what}: {exc}")
        return None


def add_note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """{"mean", "std", "values"} over samples (std with ddof 0, as over a handful of sampling runs; None when n/a)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "std": None, "values": [None if v is None else float(v) for v in values]}
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)) if len(finite) > 1 else 0.0,
            "values": [None if v is None else float(v) for v in values]}


def quantize(video: torch.Tensor) -> torch.Tensor:
    """Codec output [B, 3, T, H, W] in [-1, 1] -> uint8 (rounded, as a saved frame would be)."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
