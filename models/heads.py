"""The DPT heads as inference sees them: the factory that rebuilds a head from its checkpoint's model config, and
PCA coefficients -> reconstructed VFM layers -> logits -> per-pixel labels. Pure tensor code, shared by the head
trainer (train/heads.py) and evaluation (eval/protocol.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from configs.schema import ConfigError
from models.dpt import DPTHead, depth_from_logits, segmentation_from_logits, split_layers

if TYPE_CHECKING:
    from pipeline.pca import PCA

HEAD_TASKS = ("segmentation", "depth")


def build_head(model_config: dict[str, Any]) -> DPTHead:
    """Model factory for `load_model_for_inference`: a head checkpoint's `model` section -> DPTHead."""
    known = {"task", "in_channels", "layers", "features", "out_channels", "num_outputs", "use_bn"}
    unknown = sorted(set(model_config) - known)
    if unknown:
        raise ConfigError(f"head checkpoint model config has unknown keys {unknown}; it was written by other code")
    kwargs = {k: v for k, v in model_config.items() if k != "task"}
    return DPTHead(**kwargs)


def head_tokens(pca: PCA, coefficients: torch.Tensor, layers: int) -> list[torch.Tensor]:
    """PCA coefficients [B, K' <= K, h, w] -> the `layers` reconstructed VFM maps [B, D, h, w] the heads read."""
    full = pca.inverse_maps(coefficients.to(pca.components.dtype))
    return split_layers(full.float(), layers)


def head_logits(head: nn.Module, pca: PCA, coefficients: torch.Tensor) -> torch.Tensor:
    """Logits [B, outputs, 8h, 8w] of `head` on PCA coefficients [B, K, h, w] (PCA on the coefficients' device)."""
    return head(head_tokens(pca, coefficients, head.layers))


def predict_labels(head: nn.Module, task: str, pca: PCA, coefficients: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel train id or depth bin [B, H, W] at the label size `size` (bicubic logits, then argmax)."""
    logits = head_logits(head, pca, coefficients)
    if task == "segmentation":
        return segmentation_from_logits(logits.float(), size)
    return depth_from_logits(logits.float(), size)
