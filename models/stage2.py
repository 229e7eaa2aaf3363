"""The Stage 2 module: the denoiser around the video DiT, plus the REPA / VideoREPA projector of a baseline.

`Stage2ModelSpec` is everything that rebuilds it (a checkpoint's `model` section); `stage2_model_spec` derives it
from the config and the cache's meta.json; `Stage2Model.forward` returns the training loss so that a multi-process
wrapper (DDP) sees the whole computation. The trainer is train/stage2.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from configs.schema import Config, ConfigError, DiffusionConfig, DiTConfig
from models.alignment import Projector, feature_tokens, grid_tokens, repa_loss, trd_loss
from models.diffusion import Denoiser, diffusion_loss
from models.dit import VideoDiT

# The DiffusionConfig fields that change what is trained; the sampler fields are inference settings.
TRAINING_DIFFUSION_FIELDS = (
    "p_mean", "p_std", "high_sigma_prob", "high_sigma_min", "high_sigma_max", "scale_sigma_by_frames", "context_c_noise",
)
ALIGNMENTS = ("none", "repa", "videorepa")


@dataclasses.dataclass
class Stage2ModelSpec:
    """Everything that rebuilds the trained module; stored as the checkpoint's `model` section."""

    dit: DiTConfig
    diffusion: dict[str, Any]  # TRAINING_DIFFUSION_FIELDS only
    alignment: str = "none"
    align_block: int = 4
    align_weight: float = 0.5
    projector_dim: int = 2048
    align_target_dim: int = 0  # PCA components (the alignment target width)
    trd_margin: float = 0.1

    def diffusion_config(self) -> DiffusionConfig:
        return DiffusionConfig(**self.diffusion)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_spec(spec: Stage2ModelSpec) -> None:
    if spec.alignment not in ALIGNMENTS:
        raise ConfigError(f"stage2.alignment={spec.alignment!r}: choose one of {ALIGNMENTS}")
    if spec.alignment != "none":
        if not 1 <= spec.align_block <= spec.dit.depth:
            raise ConfigError(
                f"stage2.align_block={spec.align_block} must be in 1..stage2.model.depth={spec.dit.depth} (1-indexed block)"
            )
        if spec.align_target_dim <= 0 or spec.projector_dim <= 0:
            raise ConfigError(
                f"alignment {spec.alignment!r} needs projector_dim > 0 and a target width > 0; got "
                f"stage2.projector_dim={spec.projector_dim}, target width (PCA components)={spec.align_target_dim}"
            )


class Stage2Model(nn.Module):
    """The Denoiser around the VideoDiT, plus the REPA / VideoREPA projector when a baseline uses one.

    `forward` computes the training loss, so that a multi-process wrapper (DDP) sees the whole computation;
    inference uses `.denoiser` (an x0-predictor, see models/diffusion.Denoiser).
    """

    def __init__(self, spec: Stage2ModelSpec):
        super().__init__()
        _check_spec(spec)
        self.spec = spec
        self.diffusion = spec.diffusion_config()
        self.denoiser = Denoiser(VideoDiT(spec.dit), self.diffusion)
        self.projector = (
            Projector(spec.dit.width, spec.projector_dim, spec.align_target_dim) if spec.alignment != "none" else None
        )

    @property
    def net(self) -> VideoDiT:
        return self.denoiser.net

    @property
    def feature_channels(self) -> int:
        """Feature channels the DiT takes: 0 for a model without feature conditioning (DiTConfig.feature_conditioned)."""
        return int(self.spec.dit.feature_channels) if self.spec.dit.feature_conditioned else 0

    @property
    def activation_checkpointing(self) -> bool:
        return self.net.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        self.net.set_activation_checkpointing(enabled)

    def compile_blocks(self, **options) -> None:
        self.net.compile_blocks(**options)

    def forward(
        self,
        x0: torch.Tensor,
        cond_mask: torch.Tensor,
        features: torch.Tensor | None = None,
        align_target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x0 [B, Cz, T, H, W] clean latents, cond_mask [B, T], features [B, C, T, h, w] (conditioning, after mixing
        and dropout; ignored by an unconditioned DiT), align_target [B, C, T, h, w] (clean features; alignment only).
        Returns (total loss, details: diffusion_loss, sigma [B], per_sample [B] and align_loss when aligning)."""
        spec = self.spec
        aligning = spec.alignment != "none"
        if aligning and align_target is None:
            raise ValueError(f"alignment {spec.alignment!r} needs align_target (the cached features of the window)")
        result = diffusion_loss(self.denoiser, x0, cond_mask, features, self.diffusion, generator,
                                return_block=spec.align_block if aligning else None)
        loss = result.mean()
        details = {"diffusion_loss": loss.detach(), "sigma": result.sigma.detach(), "per_sample": result.per_sample.detach()}
        if not aligning:
            return loss, details
        hidden = result.hidden  # [B, T, gh, gw, D]
        student = self.projector(grid_tokens(hidden))
        teacher = feature_tokens(align_target.to(student.dtype), tuple(hidden.shape[2:4])).detach()
        if spec.alignment == "repa":
            align = repa_loss(student, teacher)
        else:
            align = trd_loss(student, teacher, margin=spec.trd_margin)
        details["align_loss"] = align.detach()
        return loss + spec.align_weight * align, details


def stage2_model_spec(cfg: Config, meta: dict[str, Any]) -> Stage2ModelSpec:
    """The config's Stage 2 model with latent and feature channels taken from the cache's meta.json."""
    s2 = cfg.stage2
    components = int(meta["pca"]["components"])
    dit = dataclasses.replace(s2.model, latent_channels=int(meta["codec"]["channels"]), feature_channels=components)
    diffusion = {k: getattr(s2.diffusion, k) for k in TRAINING_DIFFUSION_FIELDS}
    spec = Stage2ModelSpec(
        dit=dit, diffusion=diffusion, alignment=s2.alignment, align_block=s2.align_block, align_weight=s2.align_weight,
        projector_dim=s2.projector_dim, align_target_dim=components, trd_margin=s2.trd_margin,
    )
    _check_spec(spec)
    return spec


def build_stage2_model(model_config: dict[str, Any]) -> Stage2Model:
    """Model factory for `load_model_for_inference`: the checkpoint's `model` section -> Stage2Model."""
    known = {f.name for f in dataclasses.fields(Stage2ModelSpec)}
    unknown = sorted(set(model_config) - known)
    if unknown or "dit" not in model_config or "diffusion" not in model_config:
        raise ConfigError(
            f"Stage 2 checkpoint model config has keys {sorted(model_config)}; expected {sorted(known)}. "
            "It was not written by train/stage2.py"
        )
    dit_known = {f.name for f in dataclasses.fields(DiTConfig)}
    bad = sorted(set(model_config["dit"]) - dit_known) + sorted(set(model_config["diffusion"]) - set(TRAINING_DIFFUSION_FIELDS))
    if bad:
        raise ConfigError(f"Stage 2 checkpoint model config has unknown keys {bad}; it was written by other code")
    fields = {**model_config, "dit": DiTConfig(**model_config["dit"])}
    return Stage2Model(Stage2ModelSpec(**fields))
