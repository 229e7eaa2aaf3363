"""Exponential moving average of a model's weights (kept in float32 on the model's device).

shadow <- decay * shadow + (1 - decay) * weights after every optimizer step; buffers (e.g. BatchNorm statistics) are
copied as they are. Checkpoints store the shadow as `ema.safetensors`, and inference prefers it.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay={decay} must be in (0, 1); use 0 in the config to disable EMA")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: value.detach().float().clone() if value.is_floating_point() else value.detach().clone()
            for name, value in model.state_dict().items()
        }
        self._trainable = {name for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, value in model.state_dict().items():
            target = self.shadow[name]
            if name in self._trainable and value.is_floating_point():
                target.lerp_(value.detach().float(), 1.0 - self.decay)
            else:
                target.copy_(value.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, value in state.items():
            self.shadow[name].copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (cast to each weight's dtype)."""
        current = model.state_dict()
        model.load_state_dict({k: v.to(current[k].dtype) for k, v in self.shadow.items()})
