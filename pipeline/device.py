"""Which device a command runs on and how inference autocasts there: one answer for every command.

`auto` (or nothing) means CUDA when present, else CPU; asking for CUDA on a machine without it is refused by name.
Inference runs in bf16 autocast on CUDA (as the trainers' mixed precision does) and in float32 on CPU, where bf16
kernels are slow and buy nothing. Trainers get their device and precision from Accelerate instead (train/loop.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto`/None/"" -> cuda if available else cpu; anything else as given (cuda refused when there is none)."""
    if device is None or str(device) in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but this machine has no CUDA device; use --device cpu or auto")
    return resolved


def inference_autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA, nothing (float32) elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timer reads the work and not its launch (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
