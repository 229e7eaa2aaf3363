"""A learned linear codec: PCA of space-time pixel blocks, WAN-shaped (16 channels, causal 1 + r·k frames).

Why it exists: without VAE weights the only codec was the lossless pixel one, whose 3·r·s² = 192 channels (768
numbers per 2x2 DiT token at r = s = 4) are far wider than a CPU-sized DiT (width ~100-200), so the tiny model can
never even represent the identity on its tokens and its samples stay noise. WAN2.1 gives the paper's DiT 16 channels
(64 numbers per token for width 2048). This codec gives the tiny scale the same shape: it projects every r x s x s
block of the lossless pixel codec (pipeline/codec_pixel.py, same channel layout and frame rule) on the top
`channels` principal components of the training windows' blocks, then normalises each latent channel to zero mean
and unit variance, as WAN's published `latents_mean` / `latents_std` do.

    encode: video -> blocks b [B, D, T, h, w] (D = 3·r·s², pixel codec) -> z_c = ((b - mean) · v_c - m_c) / s_c
    decode: z -> b̂ = mean + Σ_c (z_c·s_c + m_c) v_c -> pixel codec decode

The fit reads the same streamed float64 sums (`PCAAccumulator`) the feature PCA uses, merged across the cache's
workers, and ONE symmetric eigendecomposition of the raw (not z-scored) block covariance: the projection that
minimises the mean squared pixel error. On the fit data the reconstruction error per element is exactly the
discarded variance, Σ_{k > C} λ_k / D (tested). m_c = 0 and s_c = sqrt(λ_c) (population) follow in closed form.

The fitted codec lives in the cache as `codec.safetensors`; `meta.json` records its fingerprint (`fit:<sha16>`) and
its reconstruction PSNR on the val split, and every later stage rebuilds it from that file.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property

import numpy as np
import torch

from pipeline import atomic
from pipeline.codec import Codec
from pipeline.codec_pixel import PixelCodec
from pipeline.pca import PCAAccumulator, fit_pca

FORMAT = "re2pix-linear-codec-v1"
TENSOR_KEYS = ("mean", "components", "latents_mean", "latents_std", "eigenvalues")


class LinearCodecError(ValueError):
    """A linear codec file is missing, corrupt or does not match the configuration."""


def block_dim(temporal_factor: int, spatial_factor: int) -> int:
    """Numbers per space-time block: 3 colours x r frames x s x s pixels."""
    return 3 * temporal_factor * spatial_factor**2


class LinearCodec(Codec):
    """Frozen PCA codec over the pixel codec's blocks; see the module docstring."""

    def __init__(self, temporal_factor: int, spatial_factor: int, mean: torch.Tensor, components: torch.Tensor,
                 latents_mean: torch.Tensor, latents_std: torch.Tensor, eigenvalues: torch.Tensor):
        super().__init__()
        self.blocks = PixelCodec(temporal_factor, spatial_factor)
        d = block_dim(temporal_factor, spatial_factor)
        if components.ndim != 2 or components.shape[1] != d:
            raise LinearCodecError(
                f"linear codec components must be [C, {d}] for temporal factor {temporal_factor} and spatial factor "
                f"{spatial_factor}; got {tuple(components.shape)}"
            )
        c = components.shape[0]
        for name, t, shape in (("mean", mean, (d,)), ("latents_mean", latents_mean, (c,)), ("latents_std", latents_std, (c,)),
                               ("eigenvalues", eigenvalues, (d,))):
            if tuple(t.shape) != shape:
                raise LinearCodecError(f"linear codec {name} must have shape {shape}, got {tuple(t.shape)}")
        if not bool((latents_std > 0).all()):
            raise LinearCodecError("linear codec latents_std must be positive: the fit data had constant blocks")
        self.name = "linear"
        self.temporal_factor = int(temporal_factor)
        self.spatial_factor = int(spatial_factor)
        self.channels = int(c)
        self.register_buffer("mean", mean.float())
        self.register_buffer("components", components.float())
        self.register_buffer("latents_mean", latents_mean.float())
        self.register_buffer("latents_std", latents_std.float())
        self.register_buffer("eigenvalues", eigenvalues.float())
        self._tensors64 = {"mean": mean, "components": components, "latents_mean": latents_mean,
                           "latents_std": latents_std, "eigenvalues": eigenvalues}
        self.weights = f"fit:{self.fingerprint}"

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over name, dtype, shape and bytes of every stored tensor (first 16 hex digits)."""
        h = hashlib.sha256(FORMAT.encode())
        for key in TENSOR_KEYS:
            t = self._tensors64[key].detach().cpu().contiguous()
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        h.update(f"r={self.temporal_factor},s={self.spatial_factor}".encode())
        return h.hexdigest()[:16]

    @property
    def discarded_variance(self) -> float:
        """Mean squared error per block element on the fit data: Σ_{k > C} λ_k / D (video values in [-1, 1])."""
        return float(self._tensors64["eigenvalues"][self.channels :].sum()) / self.components.shape[1]

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        blocks = self.blocks.encode(video)  # checks the frame rule and sizes
        coeff = torch.einsum("bdthw,cd->bcthw", blocks - self.mean.view(1, -1, 1, 1, 1), self.components)
        return (coeff - self.latents_mean.view(1, -1, 1, 1, 1)) / self.latents_std.view(1, -1, 1, 1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        coeff = latents.float() * self.latents_std.view(1, -1, 1, 1, 1) + self.latents_mean.view(1, -1, 1, 1, 1)
        blocks = torch.einsum("bcthw,cd->bdthw", coeff, self.components) + self.mean.view(1, -1, 1, 1, 1)
        return self.blocks.decode(blocks)

    # ---- file format ----
    def save(self, path: str | os.PathLike) -> None:
        """safetensors (atomically; local path or fsspec URL) with the factors and the fingerprint as metadata."""
        from safetensors.torch import save as save_safetensors

        tensors = {k: self._tensors64[k].detach().cpu().contiguous() for k in TENSOR_KEYS}
        metadata = {"format": FORMAT, "temporal_factor": str(self.temporal_factor),
                    "spatial_factor": str(self.spatial_factor), "fingerprint": self.fingerprint}
        atomic.write_bytes(path, save_safetensors(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LinearCodec":
        from safetensors.torch import load as load_safetensors

        from pipeline.pca import _read_bytes, _safetensors_metadata

        if not atomic.is_url(path) and not os.path.exists(path):
            raise LinearCodecError(
                f"linear codec file {path} does not exist; `python cli.py cache` fits it into the cache "
                "(codec.safetensors), or pass an existing one with --codec-weights"
            )
        data = _read_bytes(path)
        try:
            metadata = _safetensors_metadata(data, path)
            tensors = load_safetensors(data)
        except Exception as e:  # safetensors raises its own error type for truncated files
            raise LinearCodecError(f"linear codec file {path} is corrupt ({e}); delete it and rebuild the cache") from e
        if metadata.get("format") != FORMAT or any(k not in tensors for k in TENSOR_KEYS):
            raise LinearCodecError(
                f"{path} is not a Re2Pix linear codec (format {metadata.get('format')!r}, tensors {sorted(tensors)}); "
                f"expected format {FORMAT!r} with {list(TENSOR_KEYS)}"
            )
        try:
            codec = cls(int(metadata["temporal_factor"]), int(metadata["spatial_factor"]), **{k: tensors[k] for k in TENSOR_KEYS})
        except (KeyError, ValueError) as e:
            raise LinearCodecError(f"linear codec file {path} is inconsistent: {e}") from e
        if metadata.get("fingerprint") != codec.fingerprint:
            raise LinearCodecError(
                f"linear codec file {path}: fingerprint {codec.fingerprint} != recorded {metadata.get('fingerprint')}; "
                "the file is corrupt: delete it and rebuild the cache"
            )
        return codec


# ------------------------------------------------------------------------------------------------ fit


def block_accumulator(temporal_factor: int, spatial_factor: int) -> PCAAccumulator:
    return PCAAccumulator(block_dim(temporal_factor, spatial_factor))


def add_video(accumulator: PCAAccumulator, blocks: PixelCodec, video: torch.Tensor) -> None:
    """Accumulate every space-time block of video [B, 3, 1 + r·k, H, W] in [-1, 1]."""
    b = blocks.encode(video)  # [B, D, T, h, w]
    accumulator.add(b.permute(0, 2, 3, 4, 1).reshape(-1, b.shape[1]))


def fit_linear_codec(accumulator: PCAAccumulator, channels: int, temporal_factor: int, spatial_factor: int) -> LinearCodec:
    """The codec from merged block sums: raw-covariance PCA (no z-score), top `channels`, unit-variance latents."""
    d = block_dim(temporal_factor, spatial_factor)
    if accumulator.dim != d:
        raise LinearCodecError(f"block sums have {accumulator.dim} dims, the codec's blocks {d}")
    if not 1 <= channels <= d:
        raise LinearCodecError(f"codec.latent_channels={channels} must be in 1..{d} (3·r·s² for r={temporal_factor}, s={spatial_factor})")
    pca = fit_pca(accumulator, channels, standardize=False)
    n = accumulator.count
    # Population eigenvalues of every direction (for the discarded variance), from the same sums.
    mean = accumulator.sum / n
    cov = accumulator.sum_outer / n - np.outer(mean, mean)
    eigenvalues = np.clip(np.linalg.eigvalsh(0.5 * (cov + cov.T))[::-1], 0.0, None).copy()
    kept = pca.explained_variance.numpy() * (n - 1) / n  # population variance of each kept coefficient
    return LinearCodec(
        temporal_factor, spatial_factor,
        mean=torch.from_numpy(mean), components=pca.components,
        latents_mean=torch.zeros(channels, dtype=torch.float64),
        latents_std=torch.from_numpy(np.sqrt(np.maximum(kept, 1e-12))),
        eigenvalues=torch.from_numpy(eigenvalues),
    )
