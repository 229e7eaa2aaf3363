"""Optimizer and learning-rate schedule from an `OptimConfig`.

The config gives the learning rate at `reference_batch` samples per optimizer step; when `reference_batch > 0` it is
scaled linearly with the effective batch (per-process batch x processes x accumulation), as DINO-Foresight does
(lr_base x batch / 8, here expressed at the reference batch). Schedules are multiplicative factors on that lr, one
value per optimizer step: optional linear warmup, then cosine to 0, linear to 0, or constant.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from configs.schema import ConfigError, OptimConfig

SCHEDULES = ("cosine", "linear", "constant")


def scaled_lr(cfg: OptimConfig, effective_batch: int) -> float:
    """The peak learning rate for `effective_batch` samples per optimizer step."""
    if effective_batch <= 0:
        raise ConfigError(f"effective batch {effective_batch} must be positive (train.batch_size x processes x grad_accum)")
    if cfg.reference_batch > 0:
        return cfg.lr * effective_batch / cfg.reference_batch
    return cfg.lr


def build_optimizer(params: Iterable[nn.Parameter] | nn.Module, cfg: OptimConfig, effective_batch: int) -> torch.optim.Optimizer:
    """Adam (AdamW when weight_decay > 0) with the config's betas and eps, at the scaled learning rate."""
    if isinstance(params, nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    params = list(params)
    if not params:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise ConfigError(f"optim.betas={cfg.betas}: need two values in [0, 1)")
    if cfg.lr <= 0 or cfg.eps <= 0 or cfg.weight_decay < 0:
        raise ConfigError(f"optim.lr={cfg.lr}, optim.eps={cfg.eps} must be > 0 and optim.weight_decay={cfg.weight_decay} >= 0")
    lr = scaled_lr(cfg, effective_batch)
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.weight_decay > 0:
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=cfg.eps)


def schedule_factor(step: int, total_steps: int, schedule: str, warmup_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based) of `total_steps`."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps  # reaches the peak on the last warmup step, never 0
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per optimizer step; state (the step count) is checkpointed with the optimizer."""
    if total_steps <= 0:
        raise ConfigError(f"train.steps={total_steps} must be positive")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={cfg.warmup_steps} must be >= 0")
    schedule_factor(0, total_steps, cfg.schedule, cfg.warmup_steps)  # validates the name early
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(step, total_steps, cfg.schedule, cfg.warmup_steps)
    )
