"""DPT head (Ranftl et al. 2021) on four ViT layers, as DINO-Foresight trains it for segmentation and depth.

Follows the Depth-Anything `DPTHead` that DINO-Foresight uses (reference §4), with its module names so that a
released head checkpoint (`head.*` keys, prefix stripped) loads directly:

    per level i: tokens [B, D, h, w] -> 1x1 conv to out_channels[i] -> resize
                 (ConvTranspose 4x4/s4: x4, ConvTranspose 2x2/s2: x2, identity, conv 3x3/s2: x0.5)
                 -> 3x3 conv (no bias) to `features`
    RefineNet fusion, coarsest to finest; each block: ResidualConvUnit on the skip, add, ResidualConvUnit,
    bilinear x2 (align_corners=True) to the next level's size, 1x1 conv
    output: conv 3x3 (no bias) - BN - ReLU - Dropout(0.1) - conv 1x1 to num_outputs

The logits come out at 8x the token grid (4x from the finest level, x2 in the last fusion block); the caller
upsamples them bicubically to the label size (`upsample_logits`).

Tasks: segmentation = 19 Cityscapes train ids, cross-entropy with ignore 255. Depth = 256-way classification of
the 8-bit pseudo-disparity (Depth-Anything-V2, per-image min-max to 0..255, larger = nearer), cross-entropy with
ignore 0 (0 marks invalid pixels); the prediction is the argmax bin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SEGMENTATION_IGNORE_INDEX = 255
DEPTH_IGNORE_INDEX = 0
LEVEL_SCALES = (4.0, 2.0, 1.0, 0.5)  # resize factor of each of the four levels, finest first


def split_layers(features: torch.Tensor, layers: int = 4) -> list[torch.Tensor]:
    """[B, layers*D, h, w] (the concatenated VFM layers) -> `layers` tensors [B, D, h, w]; slice i is layer i."""
    if features.ndim != 4:
        raise ValueError(f"split_layers: expected features [B, {layers}*D, h, w], got shape {tuple(features.shape)}")
    channels = features.shape[1]
    if channels % layers:
        raise ValueError(f"split_layers: {channels} channels do not split into {layers} equal layers")
    return list(features.split(channels // layers, dim=1))


class ResidualConvUnit(nn.Module):
    """x + BN(conv(ReLU(BN(conv(ReLU(x))))))."""

    def __init__(self, features: int, use_bn: bool):
        super().__init__()
        self.use_bn = use_bn
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)
        if use_bn:
            self.norm1 = nn.BatchNorm2d(features)
            self.norm2 = nn.BatchNorm2d(features)
        self.activation = nn.ReLU(inplace=False)  # not in place: x is reused by the skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.activation(x))
        if self.use_bn:
            out = self.norm1(out)
        out = self.conv2(self.activation(out))
        if self.use_bn:
            out = self.norm2(out)
        return out + x


class FeatureFusionBlock(nn.Module):
    """RefineNet fusion: (coarser path [+ RCU(skip)]) -> RCU -> bilinear upsample -> 1x1 conv."""

    def __init__(self, features: int, use_bn: bool):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features, use_bn)  # noqa: N815 (checkpoint key name)
        self.resConfUnit2 = ResidualConvUnit(features, use_bn)  # noqa: N815
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, bias=True)

    def forward(
        self, path: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            path = path + self.resConfUnit1(skip)
        path = self.resConfUnit2(path)
        if size is None:
            path = F.interpolate(path, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            path = F.interpolate(path, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(path)


class DPTHead(nn.Module):
    """Four token maps [B, in_channels, h, w] -> logits [B, num_outputs, 8h, 8w]."""

    def __init__(
        self,
        in_channels: int = 768,
        layers: int = 4,
        features: int = 256,
        out_channels: list[int] | tuple[int, ...] = (128, 256, 512, 512),
        num_outputs: int = 19,
        use_bn: bool = True,
        dropout: float = 0.1,
    ):
        super().__init__()
        if layers != len(LEVEL_SCALES):
            raise ValueError(f"DPTHead: the DPT decoder fuses exactly {len(LEVEL_SCALES)} layers, got layers={layers}")
        if len(out_channels) != layers:
            raise ValueError(f"DPTHead: out_channels needs {layers} entries, got {list(out_channels)}")
        self.in_channels, self.layers, self.num_outputs = in_channels, layers, num_outputs
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, kernel_size=1) for c in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False))
        for i in range(1, layers + 1):
            setattr(self.scratch, f"refinenet{i}", FeatureFusionBlock(features, use_bn))
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(features, features, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(features),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(features, num_outputs, kernel_size=1),
        )
        # The coarsest fusion block has no skip input, so its first RCU never runs. It is kept for checkpoint
        # compatibility and frozen so that DDP does not wait for gradients that never come (as DINO-Foresight).
        self.scratch.refinenet4.resConfUnit1.requires_grad_(False)

    def forward(self, tokens: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(tokens) != self.layers:
            raise ValueError(f"DPTHead: expected {self.layers} token maps, got {len(tokens)}")
        shape = tuple(tokens[0].shape)
        for t in tokens:
            if t.ndim != 4 or t.shape[1] != self.in_channels or tuple(t.shape) != shape:
                raise ValueError(
                    f"DPTHead: every token map must be [B, {self.in_channels}, h, w] with the same shape, "
                    f"got {[tuple(x.shape) for x in tokens]}"
                )
        levels = [resize(project(t)) for t, project, resize in zip(tokens, self.projects, self.resize_layers)]
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(levels[0]), s.layer2_rn(levels[1]), s.layer3_rn(levels[2]), s.layer4_rn(levels[3])
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        return s.output_conv(path)

    @staticmethod
    def output_size(h: int, w: int) -> tuple[int, int]:
        """Spatial size of the logits for an h x w token grid (8x)."""
        return 8 * h, 8 * w


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic upsampling of logits [B, C, h, w] to the label size (align_corners=False, as DINO-Foresight)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bicubic", align_corners=False)


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{what}: expected logits [B, C, H, W] and labels [B, H, W], "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = SEGMENTATION_IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy over train ids; logits are upsampled to the label size first."""
    _check_logits_labels(logits, labels, "segmentation_loss")
    logits = upsample_logits(logits, labels.shape[-2:])
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)


def depth_loss(logits: torch.Tensor, depth_bins: torch.Tensor, ignore_index: int = DEPTH_IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over the 8-bit pseudo-disparity bins (bin 0 = invalid, ignored)."""
    _check_logits_labels(logits, depth_bins, "depth_loss")
    if int(depth_bins.max()) >= logits.shape[1]:
        raise ValueError(f"depth_loss: a depth bin {int(depth_bins.max())} is >= the head's {logits.shape[1]} outputs")
    logits = upsample_logits(logits, depth_bins.shape[-2:])
    return F.cross_entropy(logits, depth_bins.long(), ignore_index=ignore_index)


# Channels upsampled at once by `upsampled_argmax`: 32 x 1024 x 2048 float32 = 256 MB, whatever the number of bins.
ARGMAX_CHANNEL_CHUNK = 32


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int], chunk: int = ARGMAX_CHANNEL_CHUNK) -> torch.Tensor:
    """argmax over channels of `upsample_logits(logits, size)` -> [B, H, W] long, upsampling `chunk` channels at a
    time. Bicubic interpolation acts on each channel alone, so this equals the one-shot argmax (ties go to the first
    channel, as torch.argmax), while the 256 depth bins at 1024x2048 never exist as one 2 GB tensor."""
    if logits.shape[1] <= chunk:
        return upsample_logits(logits, size).argmax(dim=1)
    best_value = best_index = None
    for start in range(0, logits.shape[1], chunk):
        value, index = upsample_logits(logits[:, start : start + chunk], size).max(dim=1)
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value  # strict: an equal later channel does not replace the first maximum
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + start, best_index)
    return best_index


def depth_from_logits(logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Predicted depth bin per pixel: argmax of the (optionally upsampled) logits -> [B, H, W] long."""
    return logits.argmax(dim=1) if size is None else upsampled_argmax(logits, size)


def segmentation_from_logits(logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Predicted train id per pixel -> [B, H, W] long."""
    return logits.argmax(dim=1) if size is None else upsampled_argmax(logits, size)
