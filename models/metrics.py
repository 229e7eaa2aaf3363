"""Semantic-consistency and pixel metrics: mIoU / moving-object mIoU, depth errors, PSNR, SSIM.

Segmentation (reference §5): one 19x19 confusion matrix accumulated over the whole evaluation set (rows = ground
truth, columns = prediction, ignore label 255 dropped). IoU_c = TP / (TP + FP + FN). mIoU is the mean over
classes; MO mIoU is the mean over the moving-object train ids 11..18 (person, rider, car, truck, bus, train,
motorcycle, bicycle) taken from the *same* matrix (SegmPred, DINO-Foresight). A class absent from both
prediction and ground truth has IoU NaN here and is left out of the means (torchmetrics reports 0 for it; on the
Cityscapes val set every class is present, so the numbers agree).

Depth (DINO-Foresight, reference §4 and §6): there is no metric depth. The ground truth is the 8-bit
pseudo-disparity (Depth-Anything-V2, min-max normalised per image to 0..255, larger = nearer, 0 = invalid) and the
prediction is the head's argmax bin; the two are compared directly in that bin space:
  * valid pixels: gt > 0;
  * alignment: none (no median or least-squares scaling: both sides are already in the same per-image
    normalised space);
  * a predicted bin 0 is clamped to 1 before the ratios. DINO-Foresight divides by it as is (an infinite ratio;
    bin 0 is never a training target, so the head rarely predicts it); clamping keeps the metrics finite and
    changes nothing otherwise;
  * reduction: "per_image" (default) computes every metric on each image's valid pixels and averages over
    images, as monodepth2 and Marigold do and as DINO-Foresight's batch-size-1 MeanMetric does; "pooled" pools
    all valid pixels of the set (RMSE = sqrt of the pooled mean square). Both are accumulated, so either can be
    reported.

PSNR and SSIM compare predicted with real frames [B, 3, H, W] and return one value per image (the caller
averages). SSIM is Wang et al. 2004: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, averaged over
channels and pixels. Borders: "reflect" (default) pads by reflection and averages the full-size map, as
torchmetrics 1.x does; "valid" averages only the windows that fit inside the image, as Wang's MATLAB code,
scikit-image and pytorch-msssim do. The two differ by ~1e-3 on small images; the report names the one used.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

MOVING_CLASSES = range(11, 19)  # Cityscapes train ids of person .. bicycle
DEPTH_THRESHOLDS = (1.25, 1.25**2, 1.25**3)
DEPTH_REDUCTIONS = ("per_image", "pooled")


# --------------------------------------------------------------------------------------- segmentation


class ConfusionMatrix:
    """Streaming confusion matrix for semantic segmentation (int64, rows = ground truth, cols = prediction)."""

    def __init__(self, num_classes: int = 19, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be positive, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ConfusionMatrix: ignore_index {ignore_index} collides with a class id (0..{num_classes - 1})"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> "ConfusionMatrix":
        """Add predictions [B, H, W] (class ids) against targets [B, H, W] (class ids or ignore_index)."""
        if pred.shape != target.shape:
            raise ValueError(f"ConfusionMatrix.update: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError(
                "ConfusionMatrix.update: pred and target must be integer class ids (take argmax of logits first)"
            )
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        c = self.num_classes
        if target.numel():
            if int(target.min()) < 0 or int(target.max()) >= c:
                raise ValueError(
                    f"ConfusionMatrix.update: target ids must be in 0..{c - 1} or {self.ignore_index}, "
                    f"found {int(target.min())}..{int(target.max())} (are the labels train ids, not label ids?)"
                )
            if int(pred.min()) < 0 or int(pred.max()) >= c:
                raise ValueError(
                    f"ConfusionMatrix.update: predicted ids must be in 0..{c - 1}, "
                    f"found {int(pred.min())}..{int(pred.max())}"
                )
        counts = torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        self.matrix += counts.to("cpu", torch.int64)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix (e.g. from another worker) into this one."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError("ConfusionMatrix.merge: the matrices use different classes or ignore labels")
        self.matrix += other.matrix
        return self

    def iou(self) -> torch.Tensor:
        """Per-class IoU [C] (float64); NaN for a class absent from both prediction and ground truth."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def miou(self, classes: Iterable[int] | None = None) -> float:
        """Mean IoU over `classes` (all classes when None), ignoring classes with NaN IoU."""
        iou = self.iou()
        if classes is not None:
            index = list(classes)
            if any(not 0 <= i < self.num_classes for i in index):
                raise ValueError(f"ConfusionMatrix.miou: classes {index} outside 0..{self.num_classes - 1}")
            iou = iou[index]
        present = iou[~iou.isnan()]
        return float(present.mean()) if present.numel() else float("nan")

    def moving_miou(self) -> float:
        """mIoU over the Cityscapes moving-object train ids 11..18, from the same matrix."""
        if self.num_classes != 19:
            raise ValueError(
                f"ConfusionMatrix.moving_miou: defined for the 19 Cityscapes train ids, "
                f"this matrix has {self.num_classes}"
            )
        return self.miou(MOVING_CLASSES)

    def pixel_accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else float("nan")


# -------------------------------------------------------------------------------------------- depth


def _depth_terms(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pixel terms on valid pixels (1-D float64 tensors)."""
    diff = gt - pred
    ratio = torch.maximum(gt / pred, pred / gt)
    terms = {
        "abs_rel": diff.abs() / gt,
        "sq_rel": diff.square() / gt,
        "sq_err": diff.square(),
        "sq_log_err": (gt.log() - pred.log()).square(),
    }
    for k, t in enumerate(DEPTH_THRESHOLDS, start=1):
        terms[f"delta{k}"] = (ratio < t).double()
    return terms


class DepthMetrics:
    """AbsRel, SqRel, RMSE, RMSE-log and δ1/δ2/δ3 of predicted vs ground-truth depth bins (see module docstring)."""

    NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")

    def __init__(self, reduction: str = "per_image", min_pred: float = 1.0):
        if reduction not in DEPTH_REDUCTIONS:
            raise ValueError(f"DepthMetrics: reduction must be one of {DEPTH_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.min_pred = min_pred
        self.images = 0  # images with at least one valid pixel
        self.skipped_images = 0  # images without any valid pixel (no metric defined)
        self.pixels = 0
        self.image_sums = dict.fromkeys(self.NAMES, 0.0)  # sum over images of per-image metrics
        pixel_terms = ("abs_rel", "sq_rel", "sq_err", "sq_log_err", "delta1", "delta2", "delta3")
        self.pixel_sums = dict.fromkeys(pixel_terms, 0.0)  # sums over all valid pixels

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> "DepthMetrics":
        """pred [B, H, W] predicted bins (or [H, W]); gt the same shape with 0 marking invalid pixels."""
        if pred.shape != gt.shape:
            raise ValueError(f"DepthMetrics.update: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")
        if pred.ndim == 2:
            pred, gt = pred[None], gt[None]
        if pred.ndim != 3:
            raise ValueError(f"DepthMetrics.update: expected [B, H, W], got {tuple(pred.shape)}")
        pred = pred.detach().double().clamp_min(self.min_pred)
        gt = gt.detach().double()
        for p, g in zip(pred, gt):
            valid = g > 0
            n = int(valid.sum())
            if n == 0:
                self.skipped_images += 1
                continue
            terms = _depth_terms(p[valid], g[valid])
            self.images += 1
            self.pixels += n
            for name, t in terms.items():
                self.pixel_sums[name] += float(t.sum())
            means = {name: float(t.mean()) for name, t in terms.items()}
            self.image_sums["abs_rel"] += means["abs_rel"]
            self.image_sums["sq_rel"] += means["sq_rel"]
            self.image_sums["rmse"] += math.sqrt(means["sq_err"])
            self.image_sums["rmse_log"] += math.sqrt(means["sq_log_err"])
            for k in range(1, len(DEPTH_THRESHOLDS) + 1):
                self.image_sums[f"delta{k}"] += means[f"delta{k}"]
        return self

    def merge(self, other: "DepthMetrics") -> "DepthMetrics":
        if other.min_pred != self.min_pred:
            raise ValueError("DepthMetrics.merge: the accumulators clamp predictions differently")
        self.images += other.images
        self.skipped_images += other.skipped_images
        self.pixels += other.pixels
        for name in self.image_sums:
            self.image_sums[name] += other.image_sums[name]
        for name in self.pixel_sums:
            self.pixel_sums[name] += other.pixel_sums[name]
        return self

    def compute(self, reduction: str | None = None) -> dict[str, float]:
        """The metrics as floats (δ as fractions in [0, 1]); NaN when no valid pixel was seen."""
        reduction = reduction or self.reduction
        if reduction not in DEPTH_REDUCTIONS:
            raise ValueError(f"DepthMetrics.compute: reduction must be one of {DEPTH_REDUCTIONS}, got {reduction!r}")
        if self.images == 0:
            return dict.fromkeys(self.NAMES, float("nan"))
        if reduction == "per_image":
            return {name: s / self.images for name, s in self.image_sums.items()}
        n, s = self.pixels, self.pixel_sums
        out = {"abs_rel": s["abs_rel"] / n, "sq_rel": s["sq_rel"] / n, "rmse": math.sqrt(s["sq_err"] / n),
               "rmse_log": math.sqrt(s["sq_log_err"] / n)}
        out.update({f"delta{k}": s[f"delta{k}"] / n for k in range(1, len(DEPTH_THRESHOLDS) + 1)})
        return out


# -------------------------------------------------------------------------------------- PSNR / SSIM


def _check_images(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"{what}: expected pred and target [B, C, H, W] of the same shape, "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB [B] = 10 log10(data_range² / MSE); +inf for identical images."""
    _check_images(pred, target, "psnr")
    mse = (pred.double() - target.double()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian of `size` taps centred on the middle tap."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


SSIM_BORDERS = ("reflect", "valid")


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k: Sequence[float] = (0.01, 0.03),
    border: str = "reflect",
) -> torch.Tensor:
    """Per-image SSIM [B] of images [B, C, H, W] (see module docstring for `border`)."""
    _check_images(pred, target, "ssim")
    if border not in SSIM_BORDERS:
        raise ValueError(f"ssim: border must be one of {SSIM_BORDERS}, got {border!r}")
    b, c, h, w = pred.shape
    if h < window_size or w < window_size:
        raise ValueError(f"ssim: images of {h}x{w} are smaller than the {window_size}x{window_size} window")
    x, y = pred.double(), target.double()
    if border == "reflect":
        pad = (window_size - 1) // 2
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    g = gaussian_window(window_size, sigma).to(x.device)
    # Separable Gaussian filter, per channel, over the windows that fit (the padded image for "reflect").
    wx = g.view(1, 1, 1, -1).expand(c, 1, 1, window_size)
    wy = g.view(1, 1, -1, 1).expand(c, 1, window_size, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wx, groups=c), wy, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x**2).clamp_min(0)  # round-off can make a flat patch's variance negative
    var_y = (blur(y * y) - mu_y**2).clamp_min(0)
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k[0] * data_range) ** 2, (k[1] * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)
