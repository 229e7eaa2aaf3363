"""Exponential moving average of a model's weights (kept in float32 on the model's device), with a warm-up.

After the t-th optimizer step (t = 0, 1, ...) the shadow moves towards the weights with

    decay_t = min(decay, (1 + t) / (10 + t)),      shadow <- decay_t * shadow + (1 - decay_t) * weights

Without the warm-up a fixed decay of 0.9999 (the paper config) would keep 82% of the random initialisation in the
shadow after 2k steps, 37% after 10k and 1.8% after 40k, and every evaluation (each point of a metric-vs-step curve
too) loads the EMA. With it the weight of the initialisation after n steps is prod_{t<n} decay_t (`init_weight`):
0.1 after one step, 1e-5 after 10, 2e-13 after 100. Until (1 + t)/(10 + t) reaches `decay` (t ~ 9/(1 - decay)) the
average spans roughly the last t/9 steps. The rule is the warm-up of timm's ModelEmaV3 / TF's num_updates EMA. Buffers (e.g. BatchNorm statistics) are
copied as they are. Checkpoints store the shadow as `ema.safetensors` and the update count; inference prefers it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

WARMUP_RULE = "min(decay, (1 + t) / (10 + t))"


def decay_at(step: int, decay: float) -> float:
    """The decay used by the update after optimizer step `step` (0-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def init_weight(steps: int, decay: float) -> float:
    """Weight of the initial weights in the shadow after `steps` updates: prod_{t < steps} decay_at(t, decay)."""
    return math.exp(sum(math.log(decay_at(t, decay)) for t in range(steps)))


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay={decay} must be in (0, 1); use 0 in the config to disable EMA")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: value.detach().float().clone() if value.is_floating_point() else value.detach().clone()
            for name, value in model.state_dict().items()
        }
        self._trainable = {name for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = decay_at(self.updates, self.decay)
        for name, value in model.state_dict().items():
            target = self.shadow[name]
            if name in self._trainable and value.is_floating_point():
                target.lerp_(value.detach().float(), 1.0 - decay)
            else:
                target.copy_(value.detach())
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def describe(self) -> dict[str, object]:
        """What checkpoints record about the average."""
        return {"decay": self.decay, "warmup": WARMUP_RULE, "updates": self.updates,
                "init_weight": init_weight(self.updates, self.decay)}

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, value in state.items():
            self.shadow[name].copy_(value)
        self.updates = int(updates)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (cast to each weight's dtype)."""
        current = model.state_dict()
        model.load_state_dict({k: v.to(current[k].dtype) for k, v in self.shadow.items()})
