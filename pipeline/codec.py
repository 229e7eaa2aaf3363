"""The codec interface: video <-> latents with WAN's causal frame rule (`build_codec`, which picks one, is in
pipeline/codec_factory.py, above the implementations).

Every codec compresses time by `temporal_factor` r and space by `spatial_factor` s with the causal rule of the
WAN2.1 VAE: pixel frame 0 is encoded alone, then every group of r frames becomes one latent frame, so a video of
T = 1 + r·k frames has 1 + k latent frames and latent frame j >= 1 covers pixel frames r(j-1)+1 .. rj.

    encode: video   [B, 3, 1 + r·k, H, W] in [-1, 1]  ->  latents [B, C, 1 + k, H/s, W/s]  (float32)
    decode: latents [B, C, 1 + k, h, w]               ->  video   [B, 3, 1 + r·k, h·s, w·s] in [-1, 1]

Implementations: `pipeline.codec_wan.WanCodec` (the WAN2.1 VAE), `pipeline.codec_linear.LinearCodec` (PCA of
space-time pixel blocks, fitted by the cache) and `pipeline.codec_pixel.PixelCodec` (lossless).
"""

from __future__ import annotations

import abc

import numpy as np
import torch
from torch import nn


class Codec(nn.Module, abc.ABC):
    """Frozen video codec. Subclasses set the attributes below and implement `encode` / `decode`."""

    name: str
    channels: int
    temporal_factor: int
    spatial_factor: int
    weights: str  # "random" | "file:<sha16>" (wan) | "fit:<sha16>" (linear) | "lossless" (pixel)

    @abc.abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video float [B, 3, T, H, W] in [-1, 1], T = 1 + r·k -> latents [B, C, 1 + k, H/s, W/s] (float32)."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, 1 + k, h, w] -> video [B, 3, 1 + r·k, h·s, w·s] in [-1, 1]."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Round trip decode(encode(video)); handy for reconstruction checks."""
        return self.decode(self.encode(video))

    def train(self, mode: bool = True) -> "Codec":
        return super().train(False)  # frozen: always in eval mode

    # ---- the causal frame rule ----
    def latent_frames(self, frames: int) -> int:
        """1 + (frames - 1) // r; raises ValueError unless frames == 1 + r·k."""
        r = self.temporal_factor
        if frames < 1 or (frames - 1) % r:
            k = max(0, round((frames - 1) / r))
            raise ValueError(
                f"the {self.name} codec needs 1 + {r}·k frames (causal rule, temporal factor {r}); got {frames}. "
                f"Use {1 + r * k} or {1 + r * (k + 1)} frames."
            )
        return 1 + (frames - 1) // r

    def pixel_frames(self, latent_frames: int) -> int:
        """1 + r·(latent_frames - 1): the inverse of `latent_frames`."""
        if latent_frames < 1:
            raise ValueError(f"latent frame count must be >= 1, got {latent_frames}")
        return 1 + self.temporal_factor * (latent_frames - 1)

    # ---- input checks shared by every codec ----
    def check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"{self.name} codec: video must be [B, 3, T, H, W], got shape {tuple(video.shape)}")
        self.latent_frames(video.shape[2])
        s = self.spatial_factor
        h, w = video.shape[-2:]
        if h % s or w % s:
            raise ValueError(
                f"{self.name} codec: frame size {h}x{w} must be divisible by the spatial factor {s}; "
                f"resize or crop to {h // s * s}x{w // s * s}"
            )

    def check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.channels:
            raise ValueError(
                f"{self.name} codec: latents must be [B, {self.channels}, T, h, w], got shape {tuple(latents.shape)}"
            )

    @property
    def tiling(self) -> bool:
        """Whether encode/decode run in spatial tiles (only the WAN VAE can: `WanCodec.enable_tiling`)."""
        return False

    def enable_tiling(self) -> None:
        """Encode/decode in spatial tiles to bound activation memory; only a convolutional VAE has such activations."""
        raise ValueError(
            f"VAE tiling applies to the WAN codec only; this one is the {self.name} codec, whose encode/decode is one "
            f"linear map per space-time block with nothing to tile. Drop --vae-tiling (vae_tiling=True)."
        )

    def meta(self) -> dict:
        """What meta.json records about the codec."""
        return {
            "name": self.name,
            "temporal_factor": self.temporal_factor,
            "spatial_factor": self.spatial_factor,
            "channels": self.channels,
            "weights": self.weights,
        }


def frame_psnr(decoded: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8-range frames [K, H, W, 3] (data range 255): a codec's reconstruction check.
    Exact frames get 100 dB (a finite stand-in for infinity, so sums and means stay finite)."""
    err = (decoded.astype(np.float64) - frames.astype(np.float64)) ** 2
    mse = err.reshape(err.shape[0], -1).mean(axis=1)
    return np.where(mse > 0, 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 100.0)
