"""The views of DINOv2-style pretraining, batched on tensors: random resized crops (global and local), horizontal
flips and colour jitter, and iBOT's block masks. Every draw comes from the caller's generator, so a step's views are
a pure function of (seed, step).

Driving frames are wide, so crops keep the frame's aspect ratio (jittered by `aspect_jitter`) instead of DINOv2's
square crops; the output sizes are multiples of the patch size (global: the VFM's input size, local: half of it), so
every view is a whole patch grid. Colour jitter is milder than DINOv2's: in this world colour is part of what a
class is (sky, vegetation, road markings), and the jitter only has to stop two views from matching by histogram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import roi_align


@dataclass(frozen=True)
class ViewSpec:
    size: tuple[int, int]  # output (height, width)
    count: int  # views per image
    scale: tuple[float, float]  # fraction of the frame's area


def random_resized_crops(images: torch.Tensor, spec: ViewSpec, generator: torch.Generator,
                         aspect_jitter: float = 1.25) -> torch.Tensor:
    """images float [B, 3, H, W] in [0, 1] -> spec.count crops of each, [count * B, 3, *spec.size], view-major
    (crop v of image b is row v * B + b), flipped horizontally with p = 0.5. Bilinear (roi_align, aligned)."""
    b, _, height, width = images.shape
    n = spec.count * b
    out_h, out_w = spec.size
    area = torch.empty(n).uniform_(*spec.scale, generator=generator) * height * width
    ratio = torch.exp(torch.empty(n).uniform_(-math.log(aspect_jitter), math.log(aspect_jitter), generator=generator))
    aspect = ratio * out_w / out_h  # width / height of the crop
    crop_w = torch.sqrt(area * aspect).clamp(max=width)
    crop_h = (crop_w / aspect).clamp(max=height)
    x0 = torch.rand(n, generator=generator) * (width - crop_w)
    y0 = torch.rand(n, generator=generator) * (height - crop_h)
    image_index = torch.arange(n).remainder(b).to(images.dtype)
    boxes = torch.stack([image_index, x0, y0, x0 + crop_w, y0 + crop_h], dim=1).to(images.dtype)
    crops = roi_align(images, boxes, (out_h, out_w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), crops.flip(-1), crops)


def colour_jitter(views: torch.Tensor, generator: torch.Generator, strength: float = 0.3,
                  grayscale_prob: float = 0.1) -> torch.Tensor:
    """Per-view brightness, contrast and saturation factors in [1 - strength, 1 + strength]; grayscale with
    `grayscale_prob`. Output clamped to [0, 1]."""
    n = views.shape[0]

    def factor() -> torch.Tensor:
        return torch.empty(n, 1, 1, 1).uniform_(1 - strength, 1 + strength, generator=generator).to(views.dtype)

    x = views * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = x.mean(dim=1, keepdim=True)
    saturation = torch.where(torch.rand(n, 1, 1, 1, generator=generator) < grayscale_prob, 0.0, factor())
    return ((x - gray) * saturation + gray).clamp(0, 1)


def block_masks(count: int, grid: tuple[int, int], ratio: tuple[float, float], probability: float,
                generator: torch.Generator, max_tries: int = 20) -> torch.Tensor:
    """iBOT's masks: each of `count` views is masked with `probability`; a masked view hides a fraction drawn from
    `ratio` of its patches, as rectangles of random area and aspect ratio (aspect in [0.3, 3.3]) until it is reached.
    Returns bool [count, grid_h * grid_w]; an unmasked view is all False."""
    grid_h, grid_w = grid
    masks = torch.zeros(count, grid_h, grid_w, dtype=torch.bool)
    for i in range(count):
        if float(torch.rand(1, generator=generator)) >= probability:
            continue
        target = int(float(torch.empty(1).uniform_(*ratio, generator=generator)) * grid_h * grid_w)
        for _ in range(max_tries):
            if int(masks[i].sum()) >= target:
                break
            area = float(torch.empty(1).uniform_(2, max(2.0, target / 2), generator=generator))
            aspect = math.exp(float(torch.empty(1).uniform_(math.log(0.3), math.log(3.3), generator=generator)))
            h = max(1, min(grid_h, round(math.sqrt(area * aspect))))
            w = max(1, min(grid_w, round(math.sqrt(area / aspect))))
            top = int(torch.randint(0, grid_h - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, grid_w - w + 1, (1,), generator=generator))
            masks[i, top : top + h, left : left + w] = True
    return masks.flatten(1)
