"""Stage 1: DINO-Foresight's masked feature transformer (README recipe) with fused attention.

The model reads T = context_frames + 1 frames of PCA-reduced VFM features and predicts the last one, which it never
sees: every token of that frame is replaced by one learned mask token after the input embedding. Positions are
factorised learned tables (time | row | column) added once before the first block. Each pre-LN block attends over
time at every spatial site, then over space within every frame, then applies an MLP. Attention is bidirectional
across all frames, so context tokens also read the (masked) target slot, exactly as in DINO-Foresight.

Parameter names follow the concepts so that DINO-Foresight's Lightning checkpoints map one to one
(`models/foresight_import.py`): each attention stores `qkv` (= `nn.MultiheadAttention.in_proj_*`) and `proj`
(= `out_proj`), and the head dimension is split as (heads, head_dim) like `nn.MultiheadAttention` does.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from configs.schema import Stage1ModelConfig


class Attention(nn.Module):
    """Multi-head self-attention over [N, L, width] sequences, weights laid out like `nn.MultiheadAttention`."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout  # on the attention probabilities, training only
        self.fused = True  # F.scaled_dot_product_attention; False = explicit softmax(QK^T)V (benchmarks, checks)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation, so training from scratch matches DINO-Foresight.
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.heads)
        p = self.dropout if self.training else 0.0
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
            out = F.dropout(weights, p=p, training=self.training) @ v
        return self.proj(rearrange(out, "n h l d -> n l (h d)"))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, width)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class SeparableBlock(nn.Module):
    """Pre-LN block: temporal attention per spatial site, spatial attention per frame, then the MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm_t = nn.LayerNorm(width, eps=1e-5)
        self.attn_t = Attention(width, heads, dropout)
        self.norm_s = nn.LayerNorm(width, eps=1e-5)
        self.attn_s = Attention(width, heads, dropout)
        self.norm_mlp = nn.LayerNorm(width, eps=1e-5)
        self.mlp = FeedForward(width, int(round(mlp_ratio * width)), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, _ = x.shape
        y = rearrange(self.norm_t(x), "b t h w d -> (b h w) t d")
        x = x + rearrange(self.attn_t(y), "(b h w) t d -> b t h w d", b=b, h=h, w=w)
        y = rearrange(self.norm_s(x), "b t h w d -> (b t) (h w) d")
        x = x + rearrange(self.attn_s(y), "(b t) (h w) d -> b t h w d", b=b, t=t, h=h)
        return x + self.mlp(self.norm_mlp(x))


def _check_config(cfg: Stage1ModelConfig) -> None:
    problems = []
    for name in ("in_channels", "grid_h", "grid_w", "width", "heads", "depth", "context_frames"):
        if getattr(cfg, name) <= 0:
            problems.append(f"stage1.model.{name}={getattr(cfg, name)} must be positive")
    if cfg.width % 3 or (cfg.heads > 0 and cfg.width % cfg.heads):
        problems.append(
            f"stage1.model.width={cfg.width} must be divisible by 3 (time|row|column tables) and by heads={cfg.heads}"
        )
    if cfg.mlp_ratio <= 0 or not 0.0 <= cfg.dropout < 1.0:
        problems.append(f"stage1.model.mlp_ratio={cfg.mlp_ratio} must be > 0 and dropout={cfg.dropout} in [0, 1)")
    if problems:
        raise ValueError(
            "FeatureForesight: " + "; ".join(problems) + " (in_channels and grid_h/grid_w come from the feature cache: "
            "PCA components and the feature token grid)"
        )


class FeatureForesight(nn.Module):
    """Masked feature transformer: [B, T, C, h, w] PCA coefficients -> prediction of the last frame [B, C, h, w]."""

    def __init__(self, cfg: Stage1ModelConfig) -> None:
        super().__init__()
        _check_config(cfg)
        self.cfg = dataclasses.replace(cfg)  # own copy: resize_grid updates it without touching the caller's config
        self.frames = cfg.context_frames + 1
        self.activation_checkpointing = False  # recompute each block in backward (memory for compute)
        width, part = cfg.width, cfg.width // 3

        self.embed = nn.Linear(cfg.in_channels, width)
        self.mask_token = nn.Parameter(torch.empty(width))
        self.pos_time = nn.Parameter(torch.empty(self.frames, part))
        self.pos_row = nn.Parameter(torch.empty(cfg.grid_h, part))
        self.pos_col = nn.Parameter(torch.empty(cfg.grid_w, part))
        self.blocks = nn.ModuleList(
            SeparableBlock(width, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.head = nn.Linear(width, cfg.in_channels)

        nn.init.normal_(self.mask_token, std=0.02)
        for table in (self.pos_time, self.pos_row, self.pos_col):
            nn.init.trunc_normal_(table, std=0.02)  # DINO-Foresight's call: mean 0, std 0.02, cut at +-2
        # Zero weight: the initial prediction is the head bias everywhere (DINO-Foresight's fc_out init).
        nn.init.zeros_(self.head.weight)

    # ------------------------------------------------------------------------------------------ switches

    def compile_blocks(self, **options) -> None:
        """torch.compile every block in place (parameter names and state dict unchanged; one shared graph)."""
        for block in self.blocks:
            block.compile(**options)

    def use_fused_attention(self, fused: bool = True) -> None:
        """True: F.scaled_dot_product_attention. False: explicit softmax(QK^T)V, same result (for benchmarks)."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.fused = fused

    # ----------------------------------------------------------------------------------------- forward

    def positions(self) -> torch.Tensor:
        """Factorised positional embedding [T, h, w, width]: time | row | column tables per token."""
        t, h, w = self.pos_time.shape[0], self.pos_row.shape[0], self.pos_col.shape[0]
        return torch.cat(
            [
                self.pos_time[:, None, None, :].expand(t, h, w, -1),
                self.pos_row[None, :, None, :].expand(t, h, w, -1),
                self.pos_col[None, None, :, :].expand(t, h, w, -1),
            ],
            dim=-1,
        )

    def _check_input(self, feats: torch.Tensor) -> None:
        want = (self.frames, self.cfg.in_channels, self.cfg.grid_h, self.cfg.grid_w)
        if feats.ndim != 5 or tuple(feats.shape[1:]) != want:
            raise ValueError(
                f"FeatureForesight expects feats [B, T, C, h, w] = [B, {', '.join(map(str, want))}] "
                f"(T = context_frames + 1, last frame masked), got {list(feats.shape)}; "
                "slice the window to context_frames + 1 feature frames, or call resize_grid() for another token grid"
            )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [B, T, C, h, w] (T = context + 1; the last frame's values are ignored: it is masked)
        -> prediction of the last frame [B, C, h, w]."""
        self._check_input(feats)
        context = self.embed(rearrange(feats[:, :-1], "b t c h w -> b t h w c"))
        # DINO-Foresight embeds every token and then torch.where's the mask token into the last frame; embedding only
        # the context and appending the mask token is the same tensor without embedding values that are thrown away.
        b, _, h, w, width = context.shape
        masked = self.mask_token.to(context.dtype).expand(b, 1, h, w, width)
        x = torch.cat([context, masked], dim=1) + self.positions()
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        # The head runs in float32 even under autocast: bf16 keeps 8 bits of mantissa, so a PCA coefficient of 37.777
        # would come out as 37.75, coarser than SmoothL1's beta = 0.1 for every coefficient above 16.
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = self.head(x[:, -1].float())
        return rearrange(out, "b h w c -> b c h w")

    def loss(self, feats: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
        """SmoothL1(beta) between forward(feats) and feats[:, -1], mean over the masked tokens and channels."""
        prediction = self(feats)
        return F.smooth_l1_loss(prediction.float(), feats[:, -1].float(), beta=beta)

    # ------------------------------------------------------------------------------------- resolution

    @torch.no_grad()
    def resize_grid(self, grid_h: int, grid_w: int) -> None:
        """Interpolate the row/column tables to a new token grid (DINO-Foresight's high-resolution adaptation:
        bilinear along the position axis, align_corners=False; the time table is unchanged). Replaces the two
        parameters, so build the optimizer after calling this."""
        if grid_h <= 0 or grid_w <= 0:
            raise ValueError(f"resize_grid: grid must be positive, got {grid_h}x{grid_w}")

        def resized(table: torch.Tensor, length: int) -> nn.Parameter:
            # [L, D] -> [1, 1, L, D] -> bilinear to [length, D]: linear along L, identity along D.
            out = F.interpolate(table[None, None], size=(length, table.shape[1]), mode="bilinear", align_corners=False)
            return nn.Parameter(out[0, 0].contiguous(), requires_grad=table.requires_grad)

        self.pos_row = resized(self.pos_row, grid_h)
        self.pos_col = resized(self.pos_col, grid_w)
        self.cfg.grid_h, self.cfg.grid_w = grid_h, grid_w
