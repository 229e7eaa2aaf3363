"""Representation-alignment losses of the paper's baselines: REPA and VideoREPA's token-relation distillation.

Both align the hidden tokens after one DiT block (`VideoDiT(..., return_block=k)`, 1-indexed) with the
semantic features of the clean video, on the same token grid.

- REPA (Yu et al. 2024): a 3-layer SiLU MLP projects the DiT tokens to the target width; the loss is the mean
  over tokens and batch of -cos(projection, target). Weighted by `stage2.align_weight` (0.5) by the caller.
- VideoREPA TRD (Zhang et al. 2025): cosine Gram matrices over all frame x space tokens of one sample, for the
  student (projected DiT tokens) and the teacher; the loss is mean_{b,i,j} ReLU(|S_s - S_t| - margin).

Documented deviation: VideoREPA's teacher is VideoMAEv2 ViT-B/16, whose weights are not available offline and
which sees a different token grid (tubelets of 2 frames at 1/3 resolution, matched by a learned strided conv).
Our TRD uses the cached VFM features (the PCA'd DINOv2 features the cache already holds, on the DiT token grid) as
the teacher, so no extra encoder, temporal upsampling or downsampling conv is needed. The loss itself is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.conditioning import resize_feature_grid


class Projector(nn.Module):
    """REPA's build_mlp: Linear(width -> p) SiLU Linear(p -> p) SiLU Linear(p -> target_dim), with biases."""

    def __init__(self, width: int, projector_dim: int, target_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, projector_dim), nn.SiLU(),
            nn.Linear(projector_dim, projector_dim), nn.SiLU(),
            nn.Linear(projector_dim, target_dim),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


def grid_tokens(hidden: torch.Tensor) -> torch.Tensor:
    """DiT hidden state [B, T, h, w, D] -> tokens [B, T*h*w, D] in the network's t-major order."""
    if hidden.ndim != 5:
        raise ValueError(f"hidden must be [B, T, h, w, D]; got {tuple(hidden.shape)}")
    return hidden.flatten(1, 3)


def feature_tokens(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Target features [B, C, T, h, w] -> tokens [B, T*gh*gw, C] on the DiT token grid (bilinear only if needed)."""
    if features.ndim != 5:
        raise ValueError(f"features must be [B, C, T, h, w]; got {tuple(features.shape)}")
    b, c = features.shape[:2]
    return resize_feature_grid(features, grid).permute(0, 2, 3, 4, 1).reshape(b, -1, c)


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str, same_dim: bool) -> None:
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(f"{names} must be [B, N, D] token tensors; got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[:2] != b.shape[:2] or (same_dim and a.shape[2] != b.shape[2]):
        raise ValueError(
            f"{names} disagree: {tuple(a.shape)} vs {tuple(b.shape)}; resample the target to the DiT token grid "
            "and set the projector's target_dim to the feature channels"
        )


def repa_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over batch and tokens of -cos(projected, target); both [B, N, D]. Target gradients are not blocked:
    the caller passes a detached target (frozen encoder)."""
    _check_pair(projected, target, "projected and target", same_dim=True)
    return -F.cosine_similarity(projected.float(), target.float(), dim=-1).mean()


def _trd_block(student: torch.Tensor, teacher: torch.Tensor, rows_s: torch.Tensor, rows_t: torch.Tensor,
               margin: float) -> torch.Tensor:
    """Sum of ReLU(|S_s - S_t| - margin) over one [B, chunk, N] block of the Gram matrices."""
    gram_s = rows_s @ student.transpose(1, 2)
    gram_t = rows_t @ teacher.transpose(1, 2)
    return F.relu((gram_s - gram_t).abs() - margin).sum()


def trd_loss(student: torch.Tensor, teacher: torch.Tensor, margin: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """VideoREPA token-relation distillation: mean_{b,i,j} ReLU(|S_s[b,i,j] - S_t[b,i,j]| - margin).

    student [B, N, Ds], teacher [B, N, Dt] (the widths may differ: only the N x N cosine Gram matrices are
    compared). Computed `chunk` rows at a time; in training each block is recomputed in the backward pass
    (non-reentrant checkpoint), so at most a [B, chunk, N] block of each Gram matrix is alive at any time instead
    of the full N x N (N ~ 9000 tokens at paper size).
    """
    _check_pair(student, teacher, "student and teacher", same_dim=False)
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    b, n, _ = s.shape
    total = s.new_zeros(())
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        if torch.is_grad_enabled() and (s.requires_grad or t.requires_grad):
            total = total + checkpoint(_trd_block, s, t, s[:, rows], t[:, rows], margin, use_reentrant=False)
        else:
            total = total + _trd_block(s, t, s[:, rows], t[:, rows], margin)
    return total / (b * n * n)
