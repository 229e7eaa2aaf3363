"""Inception-v1 I3D (Carreira & Zisserman 2017) for FVD, as ported to PyTorch by piergiaj/pytorch-i3d.

This is the variant used by TATS and `cd-fvd`, with their parameter names, so their `i3d_pretrained_400.pt`
(converted from the Kinetics-400 RGB checkpoint) loads strictly. Every convolution and max pool pads like
TensorFlow's "SAME"; the logits are a 1x1x1 convolution after a [2, 7, 7] average pool, squeezed in space and
averaged over the remaining time steps:

    video [B, 3, T, 224, 224] in [-1, 1]  ->  400-d Kinetics logits (pre-softmax) [B, 400]

The temporal pool needs at least 2 time steps after the three stride-2 reductions, so T >= 9 (common FVD
protocols ask for >= 10 frames). Spatially the pool expects 7x7, i.e. 224x224 input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_FRAMES = 9  # smallest T for which the [2, 7, 7] average pool has a time step to pool over


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (front, back) of one axis: output = ceil(size / stride)."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = x.shape[-3:]
    pt, ph, pw = (same_padding(s, k, st) for s, k, st in zip((t, h, w), kernel, stride))
    return F.pad(x, (*pw, *ph, *pt))


class MaxPool3dSame(nn.Module):
    """Max pool with TF "SAME" zero padding (zeros, as the port does; inputs are post-ReLU so it is harmless)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """SAME-padded Conv3d (+ BatchNorm3d + ReLU)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        # No built-in padding: SAME padding depends on the input size and is applied in forward.
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, stride=self.stride, padding=0, bias=bias)
        # eps / momentum of the port (momentum only matters when training).
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class InceptionModule(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | maxpool 3x3x3 -> 1x1. `c` = the six widths."""

    def __init__(self, in_channels: int, c: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, c[0])
        self.b1a = Unit3D(in_channels, c[1])
        self.b1b = Unit3D(c[1], c[2], kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, c[3])
        self.b2b = Unit3D(c[3], c[4], kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, input channels, branch widths) of the Inception modules, in order.
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """video [B, 3, T, H, W] in [-1, 1] -> time-averaged logits [B, num_classes]."""

    ENDPOINTS = (
        "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
        "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
        "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
    )  # fmt: skip

    def __init__(self, num_classes: int = 400, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name, (cin, widths) in _MIXED.items():
            setattr(self, name, InceptionModule(cin, widths))
        self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(dropout)
        self.logits = Unit3D(
            self.Mixed_5c.out_channels, num_classes, batch_norm=False, activation=False, bias=True
        )

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"InceptionI3d: expected video [B, 3, T, H, W], got {tuple(video.shape)}")
        if video.shape[2] < MIN_FRAMES:
            raise ValueError(f"InceptionI3d: needs at least {MIN_FRAMES} frames, got {video.shape[2]}")
        x = video
        for name in self.ENDPOINTS:
            x = getattr(self, name)(x)
        x = self.logits(self.dropout(self.avg_pool(x)))  # [B, classes, T', 1, 1]
        return x.flatten(3).mean(dim=3).mean(dim=2)

