"""The WAN2.1 VAE codec (diffusers `AutoencoderKLWan`), as Cosmos-Predict2 uses it.

Latents are the posterior *mode* (the mean μ, not a sample), normalised per channel with the published
constants, z = (μ - mean_c) / std_c (diffusers config `latents_mean` / `latents_std`); decode un-normalises first.
The VAE is causal: 1 + 4k frames -> 1 + k latent frames, spatial factor 8.

Weights come from a diffusers folder (`config.json` + weights, or a model folder with a `vae/` subfolder) or
from the original `Wan2.1_VAE.pth` (Cosmos-Predict2's `tokenizer.pth` is the same file), whose `WanVAE_` key
names are converted here to diffusers names. Without either: `MissingWeightsError`, or a seeded random VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from torch import nn

from configs.schema import CodecConfig
from pipeline.codec import Codec
from pipeline.weights import (
    COMMON_PREFIXES,
    WeightsFormatError,
    file_weights_tag,
    load_into,
    load_state_dict,
    refuse_or_warn_random,
    require_local_path,
    seeded,
    strip_prefix,
)

CODEC_WEIGHTS_OPTION = "--codec-weights"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# diffusers' AutoencoderKLWan encodes frame 0 and then fixed chunks of 4 frames, so it only supports r = 4.
WAN_TEMPORAL_FACTOR = 4


class WanCodec(Codec):
    """Frozen AutoencoderKLWan with mode latents and per-channel normalisation."""

    def __init__(self, vae: AutoencoderKLWan, weights: str, dtype: torch.dtype = torch.float32):
        super().__init__()
        config = vae.config
        if config.is_residual or config.patch_size:
            raise ValueError("only the WAN2.1 VAE layout is supported (is_residual=False, patch_size=None), not WAN2.2")
        self.name = "wan"
        self.channels = int(config.z_dim)
        self.temporal_factor = 2 ** sum(bool(t) for t in config.temperal_downsample)
        self.spatial_factor = 2 ** (len(config.dim_mult) - 1)
        if self.temporal_factor != WAN_TEMPORAL_FACTOR:
            raise ValueError(
                f"AutoencoderKLWan with temperal_downsample={list(config.temperal_downsample)} has temporal factor "
                f"{self.temporal_factor}; diffusers encodes in chunks of {WAN_TEMPORAL_FACTOR} frames, so it must be "
                f"{WAN_TEMPORAL_FACTOR} (two True entries)"
            )
        mean, std = list(config.latents_mean), list(config.latents_std)
        if len(mean) != self.channels or len(std) != self.channels:
            raise ValueError(
                f"AutoencoderKLWan z_dim={self.channels} but latents_mean/latents_std have {len(mean)}/{len(std)} "
                f"entries; give one per latent channel"
            )
        self.weights = weights
        self.dtype = dtype
        # nn.Module.to skips diffusers' generic cast warning; modules diffusers marks as float32-only stay float32.
        nn.Module.to(vae, dtype=dtype)
        keep_fp32 = getattr(vae, "_keep_in_fp32_modules", None) or []
        for name, module in vae.named_modules():
            if any(part in keep_fp32 for part in name.split(".")):
                module.float()
        self.vae = vae.eval().requires_grad_(False)
        self.register_buffer("latents_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)

    @property
    def tiling(self) -> bool:
        return bool(getattr(self.vae, "use_tiling", False))

    def enable_tiling(self) -> None:
        """diffusers' spatial tiling (256 px tiles every 192, blended): about 4x lower encode/decode peak memory at
        432x768x25 (`bench vae`); the output differs from untiled at the seams (README, "WAN VAE")."""
        self.vae.enable_tiling()

    def meta(self) -> dict:
        record = super().meta()
        if self.tiling:  # only when on, so untiled caches keep their meta.json
            record["tiling"] = {"tile": int(self.vae.tile_sample_min_height), "stride": int(self.vae.tile_sample_stride_height)}
        return record

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents μ -> model-space latents (μ - mean_c) / std_c."""
        return (mu - self.latents_mean) / self.latents_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> raw VAE latents z · std_c + mean_c (inverse of `normalize`)."""
        return z * self.latents_std + self.latents_mean

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.check_video(video)
        x = video.to(device=self.latents_mean.device, dtype=self.dtype)
        mu = self.vae.encode(x).latent_dist.mode()  # the mean: deterministic, as Cosmos uses it
        return self.normalize(mu.float())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        z = self.denormalize(latents.to(device=self.latents_mean.device, dtype=torch.float32))
        return self.vae.decode(z.to(self.dtype)).sample.float()  # diffusers clamps to [-1, 1]


# ----------------------------------------------------------------------------- original key names


def _resnet_pairs(original: str, diffusers: str) -> list[tuple[str, str]]:
    """WanVAE_ ResidualBlock (residual = [norm, SiLU, conv, norm, SiLU, Dropout, conv], shortcut) -> diffusers."""
    return [
        (f"{original}residual.0.", f"{diffusers}norm1."),
        (f"{original}residual.2.", f"{diffusers}conv1."),
        (f"{original}residual.3.", f"{diffusers}norm2."),
        (f"{original}residual.6.", f"{diffusers}conv2."),
        (f"{original}shortcut.", f"{diffusers}conv_shortcut."),
    ]


def wan_key_prefixes(num_res_blocks: int = 2, num_stages: int = 4) -> list[tuple[str, str]]:
    """(original prefix, diffusers prefix) pairs for a WAN2.1 VAE with this many res blocks and stages.

    The original encoder and decoder keep flat `downsamples` / `upsamples` lists. The encoder's list matches
    diffusers' `down_blocks` index by index (per stage: `num_res_blocks` res blocks, then a resample except
    after the last stage). The decoder's list is regrouped: per stage `num_res_blocks + 1` res blocks become
    `up_blocks.i.resnets.j`, and the resample after them becomes `up_blocks.i.upsamplers.0`.
    """
    pairs: list[tuple[str, str]] = [("conv1.", "quant_conv."), ("conv2.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv1.", f"{part}.conv_in."),
            (f"{part}.middle.1.", f"{part}.mid_block.attentions.0."),
            (f"{part}.head.0.", f"{part}.norm_out."),
            (f"{part}.head.2.", f"{part}.conv_out."),
        ]
        pairs += _resnet_pairs(f"{part}.middle.0.", f"{part}.mid_block.resnets.0.")
        pairs += _resnet_pairs(f"{part}.middle.2.", f"{part}.mid_block.resnets.1.")
    flat = 0
    for stage in range(num_stages):
        for _ in range(num_res_blocks):
            pairs += _resnet_pairs(f"encoder.downsamples.{flat}.", f"encoder.down_blocks.{flat}.")
            flat += 1
        if stage != num_stages - 1:
            pairs.append((f"encoder.downsamples.{flat}.", f"encoder.down_blocks.{flat}."))
            flat += 1
    flat = 0
    for stage in range(num_stages):
        for j in range(num_res_blocks + 1):
            pairs += _resnet_pairs(f"decoder.upsamples.{flat}.", f"decoder.up_blocks.{stage}.resnets.{j}.")
            flat += 1
        if stage != num_stages - 1:
            pairs.append((f"decoder.upsamples.{flat}.", f"decoder.up_blocks.{stage}.upsamplers.0."))
            flat += 1
    return pairs


def _rename(state_dict: dict[str, torch.Tensor], pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    ordered = sorted(pairs, key=lambda p: len(p[0]), reverse=True)  # most specific prefix wins
    out = {}
    for key, value in state_dict.items():
        new = next((dst + key[len(src) :] for src, dst in ordered if key.startswith(src)), key)
        out[new] = value
    return out


def original_to_diffusers(
    state_dict: dict[str, torch.Tensor], num_res_blocks: int = 2, num_stages: int = 4
) -> dict[str, torch.Tensor]:
    """Rename original WanVAE_ keys (Wan2.1_VAE.pth) to AutoencoderKLWan keys; unknown keys pass unchanged."""
    return _rename(state_dict, wan_key_prefixes(num_res_blocks, num_stages))


def diffusers_to_original(
    state_dict: dict[str, torch.Tensor], num_res_blocks: int = 2, num_stages: int = 4
) -> dict[str, torch.Tensor]:
    """The inverse of `original_to_diffusers` (export a diffusers VAE in the original layout)."""
    return _rename(state_dict, [(d, o) for o, d in wan_key_prefixes(num_res_blocks, num_stages)])


def is_original_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("encoder.downsamples.", "decoder.upsamples.")) for k in state_dict)


# ------------------------------------------------------------------------------------------- building


def _vae_kwargs(cfg: CodecConfig) -> dict:
    kwargs = dict(cfg.overrides)
    z_dim = kwargs.setdefault("z_dim", cfg.latent_channels)
    if z_dim != cfg.latent_channels:
        raise ValueError(
            f"codec.overrides.z_dim={z_dim} differs from codec.latent_channels={cfg.latent_channels}; make them equal"
        )
    return kwargs


def _diffusers_folder(path: Path) -> Path | None:
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file():
            return folder
    return None


def _from_folder(folder: Path, cfg: CodecConfig) -> AutoencoderKLWan:
    if cfg.overrides:
        raise ValueError(
            f"codec.overrides={cfg.overrides} cannot apply to {folder}: a diffusers folder carries its own "
            f"config.json. Remove the overrides (they are for a random or original-format VAE)."
        )
    try:
        return AutoencoderKLWan.from_pretrained(str(folder), torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsFormatError(
            f"{folder}: not a loadable diffusers AutoencoderKLWan folder ({type(exc).__name__}: {exc})"
        ) from None


def _from_file(path: Path, cfg: CodecConfig) -> AutoencoderKLWan:
    kwargs = _vae_kwargs(cfg)
    if kwargs.get("is_residual"):
        raise ValueError(f"{path}: single-file loading supports the WAN2.1 VAE only (codec.overrides.is_residual is set)")
    state_dict = strip_prefix(load_state_dict(path), (*COMMON_PREFIXES, "vae.", "first_stage_model."))
    with torch.device("meta"):  # no random init: every tensor comes from the file
        vae = AutoencoderKLWan(**kwargs)
    if is_original_layout(state_dict):
        state_dict = original_to_diffusers(state_dict, vae.config.num_res_blocks, len(vae.config.dim_mult))
    load_into(vae, {k: v.float() for k, v in state_dict.items()}, path, "WAN2.1 VAE (AutoencoderKLWan)", assign=True)
    return vae


def build_wan_codec(cfg: CodecConfig, allow_random_weights: bool = False) -> WanCodec:
    """The WAN codec on the CPU (build_codec moves it): weights from `cfg.weights` or seeded random ones."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"codec.dtype={cfg.dtype!r}: choose one of {sorted(DTYPES)}")
    if cfg.weights:
        path = require_local_path(cfg.weights, "WAN2.1 VAE", CODEC_WEIGHTS_OPTION)
        if path.is_dir():
            folder = _diffusers_folder(path)
            if folder is None:
                raise WeightsFormatError(
                    f"{path}: a folder must hold a diffusers VAE (config.json + diffusion_pytorch_model.safetensors) "
                    f"or a model folder with a vae/ subfolder; or pass the original Wan2.1_VAE.pth file"
                )
            vae, weights = _from_folder(folder, cfg), file_weights_tag(folder)
        else:
            vae, weights = _from_file(path, cfg), file_weights_tag(path)
    else:
        fix = (
            f"pass {CODEC_WEIGHTS_OPTION} PATH (a diffusers AutoencoderKLWan folder such as "
            f"Wan2.1-T2V-1.3B-Diffusers/vae, or the original Wan2.1_VAE.pth), or set codec.weights, "
            f"or use the learned linear codec (--codec linear) or the lossless one (--codec pixel)"
        )
        weights = refuse_or_warn_random("WAN2.1 VAE codec", allow_random_weights, fix)
        with seeded(0):
            vae = AutoencoderKLWan(**_vae_kwargs(cfg))
    codec = WanCodec(vae, weights, DTYPES[cfg.dtype])
    if cfg.tiling:
        codec.enable_tiling()
    return codec
