"""How semantic a VFM's features are: a linear segmentation probe on its PCA features, and how much its chosen layers
differ from each other. Run on the tiny VFM before and after pretraining (`pretrain-vfm`) with the same recipe.

The probe is what the issue that introduced the pretrained tiny VFM asks for: a 1x1 convolution on the frozen PCA
features (the cache's own recipe: z-score, exact PCA from streamed sums, `pca.components` kept), its logits upsampled
bilinearly to the label size, trained with cross-entropy on labelled frames and scored by mIoU on held-out frames.
Training samples `probe_pixels` label pixels per image and reads the logits there with `grid_sample`, which equals
full bilinear upsampling at those pixels (tested) at a fraction of the cost. `components` probes use only the first
c PCA channels: the nested-dropout and Table 5 claims assume the leading components carry the semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.metrics import ConfusionMatrix
from pipeline.pca import PCA, PCAAccumulator, fit_pca

IGNORE = 255


@dataclass
class ProbeResult:
    miou: float  # with every PCA component
    miou_by_components: dict[int, float]  # first c components only
    layer_differences: list[float]  # consecutive chosen layers, relative L2
    explained_variance: float  # of the kept components

    @property
    def layer_difference(self) -> float:
        return min(self.layer_differences) if self.layer_differences else float("nan")

    def record(self) -> dict:
        return {"miou": self.miou, "miou_by_components": {str(c): v for c, v in self.miou_by_components.items()},
                "layer_differences": self.layer_differences, "layer_difference": self.layer_difference,
                "explained_variance": self.explained_variance}


@torch.no_grad()
def extract_features(vfm: nn.Module, rgb: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] -> the VFM's concatenated layer features [N, D, h, w] (float32, CPU)."""
    out = []
    for i in range(0, len(rgb), batch_size):
        x = torch.from_numpy(rgb[i : i + batch_size]).permute(0, 3, 1, 2).float() / 255.0
        out.append(vfm(x).float().cpu())
    return torch.cat(out)


def layer_differences(features: torch.Tensor, embed_dim: int) -> list[float]:
    """Relative L2 difference ||f_{l+1} - f_l|| / ||f_l|| between consecutive chosen layers of [N, L*D, h, w]."""
    parts = features.split(embed_dim, dim=1)
    return [float((parts[i + 1] - parts[i]).norm() / parts[i].norm().clamp_min(1e-12)) for i in range(len(parts) - 1)]


def sample_logits(logits: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Logits [B, K, h, w] read at label pixels (ys, xs) [B, P] of a `size` label map, exactly as
    `F.interpolate(logits, size, mode="bilinear", align_corners=False)` would give them: [B, K, P]."""
    height, width = size
    grid = torch.stack([(xs + 0.5) / width * 2 - 1, (ys + 0.5) / height * 2 - 1], dim=-1).unsqueeze(1).to(logits.dtype)
    return F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False).squeeze(2)


def train_linear_probe(z: torch.Tensor, labels: torch.Tensor, num_classes: int, *, steps: int, batch_size: int,
                       pixels: int, lr: float, seed: int) -> nn.Conv2d:
    """A 1x1 conv [C -> num_classes] trained with Adam on PCA features z [N, C, h, w] against labels [N, H, W]."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = nn.Conv2d(z.shape[1], num_classes, 1)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    n, height, width = labels.shape
    for _ in range(steps):
        idx = torch.randint(n, (batch_size,), generator=gen)
        ys = torch.randint(height, (batch_size, pixels), generator=gen)
        xs = torch.randint(width, (batch_size, pixels), generator=gen)
        target = labels[idx[:, None], ys, xs]
        if (target == IGNORE).all():
            continue
        loss = F.cross_entropy(sample_logits(probe(z[idx]), ys, xs, (height, width)), target, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe


@torch.no_grad()
def probe_miou(probe: nn.Conv2d, z: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int = 64) -> float:
    """mIoU (percent) of the probe on z [N, C, h, w] against labels [N, H, W], logits upsampled to the label size."""
    confusion = ConfusionMatrix(num_classes, ignore_index=IGNORE)
    for i in range(0, len(z), batch_size):
        logits = F.interpolate(probe(z[i : i + batch_size]), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        confusion.update(logits.argmax(1), labels[i : i + batch_size])
    return 100.0 * confusion.miou()


def run_probe(vfm: nn.Module, train_rgb: np.ndarray, train_labels: np.ndarray, val_rgb: np.ndarray,
              val_labels: np.ndarray, *, components: int, num_classes: int = 19, steps: int = 300,
              batch_size: int = 64, pixels: int = 2048, lr: float = 1e-2, seed: int = 0,
              fractions: tuple[int, ...] = (8, 4, 2)) -> tuple[ProbeResult, PCA]:
    """Fit the PCA on the training frames' features, train one probe on all `components` and one on each leading
    C/f (f in `fractions`), score each on the val frames. Returns the result and the PCA."""
    train_features = extract_features(vfm, train_rgb)
    val_features = extract_features(vfm, val_rgb)
    if components > train_features.shape[1]:
        raise ValueError(f"probe: {components} PCA components asked, the VFM gives {train_features.shape[1]} channels")
    accumulator = PCAAccumulator(train_features.shape[1])
    accumulator.add_maps(train_features)
    pca = fit_pca(accumulator, components)
    z_train, z_val = pca.project_maps(train_features).float(), pca.project_maps(val_features).float()
    y_train, y_val = torch.from_numpy(train_labels).long(), torch.from_numpy(val_labels).long()
    levels = sorted({max(1, components // f) for f in fractions} | {components})
    scores = {}
    for c in levels:
        probe = train_linear_probe(z_train[:, :c].contiguous(), y_train, num_classes, steps=steps,
                                   batch_size=batch_size, pixels=pixels, lr=lr, seed=seed)
        scores[c] = probe_miou(probe, z_val[:, :c].contiguous(), y_val, num_classes)
    embed_dim = int(getattr(vfm, "embed_dim"))
    result = ProbeResult(miou=scores[components], miou_by_components={c: scores[c] for c in levels if c != components},
                         layer_differences=layer_differences(val_features, embed_dim),
                         explained_variance=float(pca.explained_variance_ratio.sum()))
    return result, pca
