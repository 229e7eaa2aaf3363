"""Stage 2 network: the Cosmos-Predict2 video DiT without cross-attention, plus early fusion of semantic features.

Data flow (B batch, C latent channels, T latent frames, H x W latent grid, p patch size, D width):

    x [B, C, T, H, W] ++ condition-mask channel  --patchify (c m n)-->  Linear(no bias) --+
    features [B, Cf, T, h, w] --(bilinear to H/p x W/p if needed)--> Linear(no bias) -----+--> sum: [B, T, H/p, W/p, D]
    c_noise [B, T] --> cos/sin sinusoid --+--> RMSNorm -----------------------> emb (per frame)
                                         +--> MLP D -> D -> 3D --------------> adaln_lora (shared by every layer)
    depth x Block(self-attention with QK-RMSNorm + 3D RoPE, GELU MLP; AdaLN-LoRA modulation per frame)
    FinalLayer (AdaLN shift/scale, Linear D -> p*p*C) --unpatchify (p1 p2 C)--> F [B, C, T, H, W]

Deviations from Predict2, all deliberate:
- No cross-attention sub-layer (the model is not text-conditioned). Predict2 with an all-zero text context computes
  exactly this network, because its cross-attention has no biases (reference §1.5).
- No padding-mask input channel: our windows are never padded, so the channel would be constantly zero. A Predict2
  checkpoint converted with `state_dict_from_diffusers_cosmos` drops the matching patch-embedding columns.
- The semantic features get their own bias-free Linear(Cf -> D) (Cosmos is bias-free everywhere). Without a bias,
  channels zeroed by nested dropout contribute exactly nothing and all-zero features add exactly zero, so the
  feature path cannot smuggle in a constant offset that the latent path would have to learn around.
- The noise sinusoid is computed in float32 (Predict2 casts c_noise to bf16 first).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from configs.schema import DiTConfig
from models.conditioning import resize_feature_grid
from models.rope import VideoRoPE3D, apply_rope

NORM_EPS = 1e-6


# ------------------------------------------------------------------------------------------ helpers


def trunc_normal_fan_in_(linear: nn.Linear) -> None:
    """Predict2's init: N(0, 1/fan_in) truncated at +-3 sigma."""
    std = 1.0 / math.sqrt(linear.in_features)
    nn.init.trunc_normal_(linear.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)


def noise_sinusoid(c_noise: torch.Tensor, dim: int) -> torch.Tensor:
    """[..., dim] float32 embedding of c_noise in [0, 1]: cos first, dim/2 frequencies exp(-ln(1e4) k/(dim/2)).

    No frequency shift and no x1000 (Predict2 feeds t unscaled), so neighbouring noise levels differ mostly in the
    low-frequency half.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
    args = c_noise.float()[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T, H/p, W/p, C*p*p] as a pure reshape, channel outermost: (c m n), n = column offset."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t, h // patch, w // patch, c * patch * patch)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """[B, T, h, w, p*p*C] -> [B, C, T, h*p, w*p] with Predict2's output order (p1 p2 C): C is innermost here.

    This is NOT the inverse of `patchify` (whose channel is outermost). Predict2 and diffusers share the quirk; keeping
    it lets Predict2 final-layer weights load unchanged.
    """
    b, t, h, w, _ = tokens.shape
    x = tokens.reshape(b, t, h, w, patch, patch, channels)
    return x.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, channels, t, h * patch, w * patch)


# ------------------------------------------------------------------------------------------ layers


class AdaLNLoRA(nn.Module):
    """Per-layer modulation: chunks of W2(W1(SiLU(emb))) + shared adaln_lora term. W2 starts at zero."""

    def __init__(self, width: int, lora_dim: int, chunks: int) -> None:
        super().__init__()
        self.width, self.chunks = width, chunks
        self.linear_1 = nn.Linear(width, lora_dim, bias=False)
        self.linear_2 = nn.Linear(lora_dim, chunks * width, bias=False)

    def forward(self, emb: torch.Tensor, adaln_lora: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """emb [B, T, D] (normalised noise embedding), adaln_lora [B, T, 3D] -> `chunks` tensors [B, T, D]."""
        out = self.linear_2(self.linear_1(F.silu(emb))) + adaln_lora[..., : self.chunks * self.width]
        return out.chunk(self.chunks, dim=-1)


def rms_norm_fp32(x: torch.Tensor, norm: nn.RMSNorm) -> torch.Tensor:
    return F.rms_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, T, S, D]; shift/scale [B, T, D] are per frame, broadcast over the S spatial tokens."""
    x = F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


class SelfAttention(nn.Module):
    """Bias-free multi-head self-attention over every token, with per-head QK-RMSNorm followed by 3D RoPE."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(width, width, bias=False)
        self.to_v = nn.Linear(width, width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=NORM_EPS)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=NORM_EPS)

    def forward(self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        shape = (b, n, self.heads, self.head_dim)
        v = self.to_v(x).view(shape).transpose(1, 2)
        # QK-norm and RoPE in float32 (also under autocast, where q/k are bf16 and the norm weights fp32).
        q = apply_rope(rms_norm_fp32(self.to_q(x).view(shape), self.q_norm).transpose(1, 2), rope_cos, rope_sin)
        k = apply_rope(rms_norm_fp32(self.to_k(x).view(shape), self.k_norm).transpose(1, 2), rope_cos, rope_sin)
        out = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact GELU, as Predict2


class DiTBlock(nn.Module):
    """x += gate * SelfAttn(mod(LN(x))); x += gate * MLP(mod(LN(x))), modulated per latent frame."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, lora_dim: int) -> None:
        super().__init__()
        self.adaln_attn = AdaLNLoRA(width, lora_dim, chunks=3)
        self.attn = SelfAttention(width, heads)
        self.adaln_mlp = AdaLNLoRA(width, lora_dim, chunks=3)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, adaln_lora: torch.Tensor,
                rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, S, D] tokens grouped by frame; emb [B, T, D]; adaln_lora [B, T, 3D]."""
        b, t, s, d = x.shape
        shift, scale, gate = self.adaln_attn(emb, adaln_lora)
        attn = self.attn(modulate(x, shift, scale).reshape(b, t * s, d), rope_cos, rope_sin)
        x = x + gate[:, :, None] * attn.view(b, t, s, d)
        shift, scale, gate = self.adaln_mlp(emb, adaln_lora)
        return x + gate[:, :, None] * self.mlp(modulate(x, shift, scale))


class FinalLayer(nn.Module):
    """LN modulated by [shift, scale] (no gate), then Linear(D -> p*p*C, no bias), NOT zero-initialised."""

    def __init__(self, width: int, lora_dim: int, out_features: int) -> None:
        super().__init__()
        self.adaln = AdaLNLoRA(width, lora_dim, chunks=2)
        self.linear = nn.Linear(width, out_features, bias=False)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, adaln_lora: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaln(emb, adaln_lora)
        return self.linear(modulate(x, shift, scale))


# ------------------------------------------------------------------------------------------ network


class VideoDiT(nn.Module):
    """The Stage 2 denoiser network F of the rectified-flow preconditioning (see models/diffusion)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        if cfg.latent_channels <= 0:
            raise ValueError(
                f"DiTConfig.latent_channels={cfg.latent_channels}: fill it from the cache's codec channels before "
                "building the network"
            )
        if cfg.conditioning not in ("features", "none"):
            raise ValueError(f"DiTConfig.conditioning={cfg.conditioning!r}: choose 'features' or 'none'")
        if cfg.width % cfg.heads:
            raise ValueError(f"DiTConfig.width={cfg.width} must be divisible by heads={cfg.heads}")
        if cfg.depth < 1 or cfg.patch_size < 1 or cfg.adaln_lora_dim < 1:
            raise ValueError(
                f"DiTConfig depth={cfg.depth}, patch_size={cfg.patch_size}, adaln_lora_dim={cfg.adaln_lora_dim} "
                "must all be >= 1"
            )
        self.cfg = cfg
        width, patch, channels = cfg.width, cfg.patch_size, cfg.latent_channels
        if channels * patch * patch > width:
            # The network cannot even represent the identity on such tokens, so the noise it cannot remove stays in
            # every sample however long it trains (a pixel codec with a CPU-sized DiT: 768 numbers through width 96).
            warnings.warn(
                f"VideoDiT: each token carries {channels * patch * patch} numbers ({channels} latent channels x "
                f"{patch}x{patch} patch) but the model width is {width}; it cannot denoise tokens wider than itself. "
                "Use a codec with fewer channels (codec.name = linear or wan) or a wider model (stage2.model.width)",
                stacklevel=2,
            )
        self.uses_features = cfg.feature_conditioned
        self.activation_checkpointing = False

        # +1: the condition-mask channel (1 on context frames).
        self.patch_embed = nn.Linear((channels + 1) * patch * patch, width, bias=False)
        self.feature_embed = nn.Linear(cfg.feature_channels, width, bias=False) if self.uses_features else None
        self.rope = VideoRoPE3D(width // cfg.heads, cfg.rope_ntk_t, cfg.rope_ntk_h, cfg.rope_ntk_w)
        self.t_embed_1 = nn.Linear(width, width, bias=False)
        self.t_embed_2 = nn.Linear(width, 3 * width, bias=False)
        self.t_embedding_norm = nn.RMSNorm(width, eps=NORM_EPS)
        self.blocks = nn.ModuleList(
            DiTBlock(width, cfg.heads, cfg.mlp_ratio, cfg.adaln_lora_dim) for _ in range(cfg.depth)
        )
        self.final_layer = FinalLayer(width, cfg.adaln_lora_dim, patch * patch * channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Predict2 from-scratch init: trunc-normal 1/sqrt(fan_in) for every linear, zero AdaLN-LoRA W2, unit norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_fan_in_(module)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
        for module in self.modules():
            if isinstance(module, AdaLNLoRA):
                nn.init.zeros_(module.linear_2.weight)

    def compile_blocks(self, **options) -> None:
        """torch.compile every block in place (nn.Module.compile: parameter names and state dict unchanged). The
        blocks share their code and structure, so dynamo compiles one graph and reuses it for all of them."""
        for block in self.blocks:
            block.compile(**options)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each block in the backward pass (torch.utils.checkpoint, non-reentrant): memory for time."""
        self.activation_checkpointing = bool(enabled)

    # ---- pieces (public so the diffusion wrapper and tests can inspect them) ----

    def noise_embedding(self, c_noise: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """c_noise [B, T] -> (emb [B, T, D] RMS-normalised sinusoid, adaln_lora [B, T, 3D] shared MLP output)."""
        sinusoid = noise_sinusoid(c_noise, self.cfg.width).to(dtype)
        adaln_lora = self.t_embed_2(F.silu(self.t_embed_1(sinusoid)))
        return self.t_embedding_norm(sinusoid), adaln_lora

    def embed_features(self, features: torch.Tensor, frames: int, grid: tuple[int, int]) -> torch.Tensor:
        """features [B, Cf, T, h, w] -> [B, T, grid_h, grid_w, D]: bilinear to the token grid only if it differs."""
        if self.feature_embed is None:
            raise ValueError("this VideoDiT has no feature embedding (conditioning='none' or feature_channels=0)")
        if features.ndim != 5 or features.shape[1] != self.cfg.feature_channels or features.shape[2] != frames:
            raise ValueError(
                f"features must be [B, {self.cfg.feature_channels}, {frames}, h, w] (channels = "
                f"DiTConfig.feature_channels, frames = latent frames); got {tuple(features.shape)}"
            )
        features = resize_feature_grid(features, grid)
        # A 1x1 patchify is a transpose: one token per grid cell.
        return self.feature_embed(features.permute(0, 2, 3, 4, 1))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond_mask: torch.Tensor,
                features: torch.Tensor | None = None, return_block: int | None = None):
        """x [B, C, T, H, W] (c_in-scaled noisy frames, clean context frames); c_noise [B, T] in [0, 1] (a [B]
        tensor is broadcast over frames); cond_mask [B, T] (1 = context frame); features [B, Cf, T, h, w] are
        required iff the model has a feature embedding (conditioning="features", feature_channels > 0) and
        ignored otherwise. Returns F [B, C, T, H, W], or (F, hidden [B, T, H/p, W/p, D] after block
        `return_block`, 1-indexed) when return_block is given."""
        cfg, p = self.cfg, self.cfg.patch_size
        if x.ndim != 5 or x.shape[1] != cfg.latent_channels:
            raise ValueError(f"x must be [B, {cfg.latent_channels}, T, H, W]; got {tuple(x.shape)}")
        b, _, t, h, w = x.shape
        if h % p or w % p:
            raise ValueError(f"latent grid {h}x{w} must be divisible by patch_size={p}")
        if c_noise.ndim == 1:
            c_noise = c_noise[:, None].expand(b, t)
        if c_noise.shape != (b, t) or cond_mask.shape != (b, t):
            raise ValueError(
                f"c_noise {tuple(c_noise.shape)} and cond_mask {tuple(cond_mask.shape)} must both be [B, T] = {(b, t)}"
            )
        if return_block is not None and not 1 <= return_block <= cfg.depth:
            raise ValueError(f"return_block={return_block} must be in 1..{cfg.depth} (1-indexed block)")
        if self.uses_features and features is None:
            raise ValueError("this VideoDiT is feature-conditioned (conditioning='features'): pass `features`")

        dtype = self.patch_embed.weight.dtype  # a bf16-cast model takes fp32 inputs; autocast casts on its own
        mask = cond_mask.to(x.dtype)[:, None, :, None, None].expand(b, 1, t, h, w)
        tokens = self.patch_embed(patchify(torch.cat([x, mask], dim=1).to(dtype), p))
        grid = (h // p, w // p)
        if self.uses_features:
            tokens = tokens + self.embed_features(features.to(dtype), t, grid)

        emb, adaln_lora = self.noise_embedding(c_noise, dtype)
        rope_cos, rope_sin = self.rope(t, *grid, device=x.device)
        hidden = None
        x_tok = tokens.reshape(b, t, grid[0] * grid[1], cfg.width)
        for index, block in enumerate(self.blocks, start=1):
            if self.activation_checkpointing and torch.is_grad_enabled():
                x_tok = checkpoint(block, x_tok, emb, adaln_lora, rope_cos, rope_sin, use_reentrant=False)
            else:
                x_tok = block(x_tok, emb, adaln_lora, rope_cos, rope_sin)
            if index == return_block:
                hidden = x_tok.reshape(b, t, *grid, cfg.width)

        out = self.final_layer(x_tok, emb, adaln_lora).reshape(b, t, *grid, -1)
        out = unpatchify(out, p, cfg.latent_channels)
        return out if return_block is None else (out, hidden)


# ------------------------------------------------------------------------------------------ weights


def state_dict_from_diffusers_cosmos(state_dict: dict[str, torch.Tensor], patch_size: int = 2,
                                     padding_mask_channel: bool = True) -> dict[str, torch.Tensor]:
    """Map a diffusers `CosmosTransformer3DModel` (Predict2) state dict onto VideoDiT names.

    Cross-attention weights (attn2, norm2) are dropped: VideoDiT equals Predict2 run with an all-zero text context.
    With `padding_mask_channel`, the patch-embedding columns of Predict2's last input channel (the padding mask,
    always 0 for unpadded video) are removed. The result has no `feature_embed` (new in Re2Pix); load it with
    `strict=False` and keep that layer's fresh initialisation.
    """
    renames = {
        "patch_embed.proj.weight": "patch_embed.weight",
        "time_embed.t_embedder.linear_1.weight": "t_embed_1.weight",
        "time_embed.t_embedder.linear_2.weight": "t_embed_2.weight",
        "time_embed.norm.weight": "t_embedding_norm.weight",
        "norm_out.linear_1.weight": "final_layer.adaln.linear_1.weight",
        "norm_out.linear_2.weight": "final_layer.adaln.linear_2.weight",
        "proj_out.weight": "final_layer.linear.weight",
    }
    block_renames = {
        "norm1.linear_1": "adaln_attn.linear_1", "norm1.linear_2": "adaln_attn.linear_2",
        "attn1.to_q": "attn.to_q", "attn1.to_k": "attn.to_k", "attn1.to_v": "attn.to_v",
        "attn1.to_out.0": "attn.to_out", "attn1.norm_q": "attn.q_norm", "attn1.norm_k": "attn.k_norm",
        "norm3.linear_1": "adaln_mlp.linear_1", "norm3.linear_2": "adaln_mlp.linear_2",
        "ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in renames:
            out[renames[key]] = value
            continue
        if not key.startswith("transformer_blocks."):
            continue  # learnable_pos_embed and other Predict2-only parts have no counterpart
        _, index, rest = key.split(".", 2)
        module, _, param = rest.rpartition(".")
        if module in block_renames:
            out[f"blocks.{index}.{block_renames[module]}.{param}"] = value
    if padding_mask_channel and "patch_embed.weight" in out:
        out["patch_embed.weight"] = out["patch_embed.weight"][:, : -patch_size * patch_size]
    return out
