"""How the semantic features reach Stage 2 during training and inference, as pure tensor functions.

- Nested dropout (paper §3.4, eq. 9): per sample, keep the first c channels of every feature frame and zero the
  rest, c drawn uniformly from a list of levels. PCA orders channels by explained variance, so the first channels
  carry coarse semantics and the tail fine detail.
- Truncation (paper Table 5): inference with only the first c channels, i.e. nested dropout with one fixed c.
- Mixed supervision (paper §3.4): per sample, with a small probability the future feature frames come from the
  Stage 1 prediction pool instead of the ground-truth encoder.

Features are laid out as the DiT consumes them: [B, C, T, h, w].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_features(features: torch.Tensor, name: str = "features") -> None:
    if features.ndim != 5:
        raise ValueError(f"{name} must be [B, C, T, h, w]; got shape {tuple(features.shape)}")


def nested_dropout(features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero channels keep[b]..C-1 of sample b (all frames); keep [B] integers in 0..C."""
    _check_features(features)
    b, c = features.shape[:2]
    if keep.shape != (b,) or keep.is_floating_point():
        raise ValueError(
            f"keep must be an integer tensor of shape [{b}] (one count per sample); got {keep.dtype} {tuple(keep.shape)}"
        )
    if bool((keep < 0).any()) or bool((keep > c).any()):
        raise ValueError(f"keep values must lie in 0..{c} (the feature channels); got {keep.tolist()}")
    kept = torch.arange(c, device=features.device)[None, :] < keep.to(features.device)[:, None]
    # where() rather than a multiply so that non-finite values in dropped channels cannot leak as NaN.
    zero = torch.zeros((), dtype=features.dtype, device=features.device)
    return torch.where(kept[:, :, None, None, None], features, zero)


def truncate_features(features: torch.Tensor, keep: int) -> torch.Tensor:
    """Truncation (paper Table 5) and the coarse pass of representation guidance: nested dropout with one fixed c =
    `keep` for every sample. `keep` >= C keeps every channel (the features are returned as they are)."""
    _check_features(features)
    if keep >= features.shape[1]:
        return features
    return nested_dropout(features, torch.full((features.shape[0],), int(keep), dtype=torch.long))


def nested_levels(levels: list[int], channels: int) -> list[int]:
    """The usable levels for `channels` feature channels: those below it, sorted, plus `channels` itself last."""
    if channels <= 0:
        raise ValueError(f"channels={channels} must be positive")
    if any(level <= 0 for level in levels):
        raise ValueError(f"nested dropout levels must be positive; got {levels} (stage2.nested_dropout_levels)")
    return sorted({level for level in levels if level < channels}) + [channels]


def sample_nested_keep(batch: int, levels: list[int], channels: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """LongTensor [batch] of kept channel counts, uniform over `nested_levels(levels, channels)`.

    Drawn on the generator's device (CPU when no generator is given).
    """
    usable = torch.tensor(nested_levels(levels, channels), dtype=torch.long)
    device = generator.device if generator is not None else torch.device("cpu")
    index = torch.randint(len(usable), (batch,), generator=generator, device=device)
    return usable.to(device)[index]


def sample_mixed(batch: int, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """BoolTensor [batch]: True where a sample's future features come from the Stage 1 prediction pool."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mixed-supervision probability {prob} must be in [0, 1] (stage2.mixed_supervision_prob)")
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(batch, generator=generator, device=device) < prob


def mix_future_features(true: torch.Tensor, predicted: torch.Tensor, use_pred: torch.Tensor,
                        context_frames: int) -> torch.Tensor:
    """Features whose frames >= context_frames come from `predicted` [B, C, T - context, h, w] where use_pred.

    Context frames always stay the ground truth: the observed frames are encoded, never predicted.
    """
    _check_features(true, "true features")
    _check_features(predicted, "predicted features")
    b, c, t, h, w = true.shape
    if not 0 < context_frames < t:
        raise ValueError(f"context_frames={context_frames} must be in 1..{t - 1} for {t} feature frames")
    expected = (b, c, t - context_frames, h, w)
    if tuple(predicted.shape) != expected:
        raise ValueError(
            f"predicted features have shape {tuple(predicted.shape)}; expected {expected} "
            "(the future frames of the same samples, same channels and grid)"
        )
    if use_pred.shape != (b,) or use_pred.dtype != torch.bool:
        raise ValueError(f"use_pred must be a bool tensor of shape [{b}]; got {use_pred.dtype} {tuple(use_pred.shape)}")
    future = torch.where(use_pred.to(true.device)[:, None, None, None, None], predicted.to(true.dtype),
                         true[:, :, context_frames:])
    return torch.cat([true[:, :, :context_frames], future], dim=2)


def resize_feature_grid(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Features [B, C, T, h, w] -> [B, C, T, grid_h, grid_w], bilinear per frame; returned as is when already on the
    grid. The DiT's feature embedding and the alignment targets both meet the token grid this way."""
    b, c, t, h, w = features.shape
    if (h, w) == tuple(grid):
        return features
    flat = features.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    flat = F.interpolate(flat, size=tuple(grid), mode="bilinear", align_corners=False)
    return flat.reshape(b, t, c, *grid).permute(0, 2, 1, 3, 4)
