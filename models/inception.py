"""The FID Inception-v3: TensorFlow's "inception-2015-12-05" graph ported to PyTorch, 2048-d pool features.

Why here and not from a package: torch-fidelity 0.4.0 (and torchmetrics, which wraps it) builds this network only
by loading a weights file or downloading one, so it cannot give the same architecture with random weights for
tests and `--allow-random-metric-weights`; pytorch-fid has no local-path option at all. This module is
pytorch-fid's `FIDInceptionV3`: torchvision's Inception-v3 blocks with the TF graph's differences —
  * Mixed_5b/c/d (A), Mixed_6b..e (C), Mixed_7b (E_1): the pooling branch averages without counting padding;
  * Mixed_7c (E_2): the pooling branch is a 3x3/s1 max pool;
  * the classifier has 1008 outputs (unused here).
Its parameter names are torchvision's, so `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's release, the same
file torch-fidelity re-uploads as `weights-inception-2015-12-05-6726825d.pth`) loads strictly.

Input convention (torch-fidelity's, i.e. TF FID's): RGB in 0..255 (uint8, or float holding uint8 values), any
size; resized to 299x299 with TF1's bilinear kernel (align_corners=False, no half-pixel offset, no antialias),
then mapped to [-1, 1] by (x − 128) / 128.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.inception import (
    BasicConv2d,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
)

INPUT_SIZE = 299
FEATURE_DIM = 2048
TF_NUM_CLASSES = 1008


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF 1.x `resize_bilinear(align_corners=False)`: source = dest * (in / out), no half-pixel shift.

    torch's `interpolate(mode="bilinear")` uses half-pixel centres, which shifts the image by up to half a pixel
    and changes FID slightly; this matches the kernel the TF FID reference used (torch-fidelity's "slow" path).
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"resize_bilinear_tf1: expected a float [B, C, H, W] tensor, got {x.dtype} {tuple(x.shape)}")
    out_h, out_w = size
    in_h, in_w = x.shape[-2:]

    def axis(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_size / out_size, dtype=torch.float32)  # float32 coordinates, as TF computes them
        src = torch.arange(out_size, dtype=torch.float32, device=x.device) * scale
        lo = src.long()
        hi = (lo + 1).clamp_max(in_size - 1)
        return lo, hi, (src - lo.float()).to(x.dtype)

    y_lo, y_hi, dy = axis(in_h, out_h)
    x_lo, x_hi, dx = axis(in_w, out_w)
    top, bottom = x[:, :, y_lo], x[:, :, y_hi]
    top = top[..., x_lo] + (top[..., x_hi] - top[..., x_lo]) * dx
    bottom = bottom[..., x_lo] + (bottom[..., x_hi] - bottom[..., x_lo]) * dx
    return top + (bottom - top) * dy.view(-1, 1)


class FIDInceptionA(InceptionA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        # TF's average pool does not count the zero padding.
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(InceptionC):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class FIDInceptionE(InceptionE):
    """Mixed_7b pools by average (padding not counted), Mixed_7c by max: `pool` selects which."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__(in_channels)
        if pool not in ("avg", "max"):
            raise ValueError(f"FIDInceptionE: pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.pool == "avg":
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Images [B, 3, H, W] in 0..255 -> 2048-d pool features [B, 2048] (float32)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, TF_NUM_CLASSES)  # part of the checkpoint; FID does not use it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FIDInceptionV3: expected RGB images [B, 3, H, W] in 0..255, got {tuple(images.shape)}")
        x = images.float()
        x = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))
        x = (x - 128.0) / 128.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
