"""3D rotary position embedding of the Cosmos-Predict2 DiT (time x rows x columns of the token grid).

The head dimension d is split into three axis bands: dim_h = dim_w = 2*floor(d/6) and dim_t = d - 2*dim_h
(128 -> 44/42/42). Each band rotates with its own integer patch index (t, row, column) at frequencies
theta_axis^(-2j/dim_axis), where theta_axis = 10000 * ntk^(dim_axis/(dim_axis-2)) stretches the band's
wavelengths (NTK-aware extrapolation; Predict2 2B uses ntk_t = 1, ntk_h = ntk_w = 3). The d/2 angles of a token
are ordered [t, h, w] and duplicated, and applied in the rotate-half convention: element i pairs with element
i + d/2. Tables are built in float32 whatever the activation dtype.
"""

from __future__ import annotations

import torch
from torch import nn


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(dim_t, dim_h, dim_w) for one attention head; each is even so it splits into cos/sin pairs."""
    if head_dim % 2 or head_dim < 12:
        raise ValueError(
            f"3D RoPE needs an even head dimension >= 12 (got {head_dim}); choose width/heads accordingly"
        )
    dim_h = 2 * (head_dim // 6)
    return head_dim - 2 * dim_h, dim_h, dim_h


def axis_frequencies(dim: int, ntk: float, base: float = 10000.0) -> torch.Tensor:
    """dim/2 angular frequencies of one axis band, float32, with the NTK-scaled base."""
    theta = base * ntk ** (dim / (dim - 2))
    exponents = torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim
    return (theta ** -exponents).float()


class VideoRoPE3D(nn.Module):
    """Builds cos/sin tables [T*H*W, head_dim] for a (T, H, W) token grid flattened t-major (t, then row, then col).

    It has no parameters or buffers: the same module serves any grid size (a model trained at one resolution runs
    at another), and casting the model to bf16 cannot degrade the float32 tables.
    """

    def __init__(self, head_dim: int, ntk_t: float = 1.0, ntk_h: float = 1.0, ntk_w: float = 1.0,
                 base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.dims = rope_axis_dims(head_dim)
        for name, ntk in (("rope_ntk_t", ntk_t), ("rope_ntk_h", ntk_h), ("rope_ntk_w", ntk_w)):
            if ntk <= 0:
                raise ValueError(f"{name}={ntk} must be positive (1.0 = no extrapolation scaling)")
        self.ntk = (ntk_t, ntk_h, ntk_w)
        self.base = base

    def frequencies(self, device: torch.device | str | None = None) -> list[torch.Tensor]:
        """[freqs_t, freqs_h, freqs_w], float32."""
        return [axis_frequencies(dim, ntk, self.base).to(device) for dim, ntk in zip(self.dims, self.ntk)]

    def angles(self, frames: int, height: int, width: int,
               device: torch.device | str | None = None) -> torch.Tensor:
        """Rotation angles [T*H*W, head_dim] (float32): [t, h, w] bands, duplicated for the rotate-half pairs."""
        freqs_t, freqs_h, freqs_w = self.frequencies(device)
        pos_t, pos_h, pos_w = (torch.arange(n, device=device, dtype=torch.float32) for n in (frames, height, width))
        grid = (frames, height, width)
        ang_t = torch.outer(pos_t, freqs_t)[:, None, None, :].expand(*grid, -1)
        ang_h = torch.outer(pos_h, freqs_h)[None, :, None, :].expand(*grid, -1)
        ang_w = torch.outer(pos_w, freqs_w)[None, None, :, :].expand(*grid, -1)
        half = torch.cat([ang_t, ang_h, ang_w], dim=-1).reshape(frames * height * width, self.head_dim // 2)
        return torch.cat([half, half], dim=-1)

    def forward(self, frames: int, height: int, width: int,
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        angles = self.angles(frames, height, width, device)
        return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., L, head_dim] by tables [L, head_dim]; computed in float32, returned in x's dtype."""
    if x.shape[-2:] != cos.shape:
        raise ValueError(f"RoPE tables {tuple(cos.shape)} do not match tokens x head_dim {tuple(x.shape[-2:])}")
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)
