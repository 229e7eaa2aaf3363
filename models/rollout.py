"""Autoregressive rollout of the Stage 1 feature predictor (paper Eq. 2, DINO-Foresight's `sample_unroll`).

Each step appends an empty (masked) slot to the last M_f frames, predicts it, and slides the window by one frame with
the prediction in place. Predictions stay in PCA space: they are fed back as they are, never re-extracted or
re-projected. Gradient mode and train/eval mode are left to the caller.
"""

from __future__ import annotations

import torch
from torch import nn


def _context_frames(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "context_frames"):
        raise TypeError(
            f"rollout needs a model with `cfg.context_frames` (e.g. FeatureForesight), got {type(model).__name__}"
        )
    return int(cfg.context_frames)


def rollout(model: nn.Module, context: torch.Tensor, steps: int) -> torch.Tensor:
    """context [B, M_f, C, h, w] (exactly model.cfg.context_frames frames) -> predicted frames [B, steps, C, h, w]."""
    m = _context_frames(model)
    if context.ndim != 5 or context.shape[1] != m:
        raise ValueError(
            f"rollout: context must be [B, M_f={m}, C, h, w], got {list(context.shape)}; "
            "use rollout_from_history() to start from a longer sequence (its last M_f frames are used)"
        )
    if steps < 0:
        raise ValueError(f"rollout: steps={steps} must be >= 0")
    window = context
    predictions = []
    for _ in range(steps):
        target_slot = torch.zeros_like(window[:, :1])  # its values are never read: the model masks this frame
        prediction = model(torch.cat([window, target_slot], dim=1))
        predictions.append(prediction)
        window = torch.cat([window[:, 1:], prediction[:, None].to(window.dtype)], dim=1)
    if not predictions:
        return context.new_zeros((context.shape[0], 0, *context.shape[2:]))
    return torch.stack(predictions, dim=1)


def rollout_from_history(model: nn.Module, history: torch.Tensor, steps: int) -> torch.Tensor:
    """history [B, N >= M_f, C, h, w]: roll out from its last M_f frames -> [B, steps, C, h, w]."""
    m = _context_frames(model)
    if history.ndim != 5 or history.shape[1] < m:
        raise ValueError(
            f"rollout_from_history: history must be [B, N >= {m}, C, h, w] (N at least model.cfg.context_frames), "
            f"got {list(history.shape)}"
        )
    return rollout(model, history[:, -m:], steps)
