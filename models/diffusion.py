"""Stage 2 diffusion formulation: rectified-flow preconditioning, training noise levels, the denoiser, the loss.

The state follows EDM / Cosmos-Predict2: x_σ = x0 + σ·ε with σ_data = 1. The paper's appendix 9.1 preconditioning
(identical to Cosmos' `RectifiedFlowScaling`) uses t = σ/(1+σ):

    c_skip = 1 − t,   c_out = −t,   c_in = 1 − t,   c_noise = t,
    x̂0 = c_skip·x_σ + c_out·F(c_in·x_σ, c_noise).

c_in·x_σ = (1−t)·x0 + t·ε is exactly the rectified-flow interpolant, and F is trained to be the velocity ε − x0
(with that F, x̂0 = x0 exactly). Context frames use Cosmos' frame-replace conditioning: they enter the network clean,
with a fixed small c_noise, and x̂0 is overwritten with them afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from configs.schema import DiffusionConfig

# net(x [B,C,T,H,W], c_noise [B,T], cond_mask [B,T], features [B,Cf,T,h,w] | None) -> F [B,C,T,H,W]
VelocityNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class RFScaling:
    """Rectified-flow preconditioning of the paper's appendix 9.1 (eqs. 12-14); σ_data is 1."""

    def __call__(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for noise levels sigma."""
        t = sigma_to_t(sigma)
        return 1 - t, -t, 1 - t, t


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """The rectified-flow time t = σ/(1+σ) = sigmoid(ln σ)."""
    return sigma / (1 + sigma)


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """λ(σ) = (1+σ)²/σ² (paper eq. 16): turns the x0 error into the plain velocity MSE ‖F − (ε − x0)‖²."""
    return (1 + sigma) ** 2 / sigma**2


def _check_diffusion_config(cfg: DiffusionConfig) -> None:
    if cfg.p_std < 0:
        raise ValueError(f"stage2.diffusion.p_std={cfg.p_std} must be >= 0")
    if not 0.0 <= cfg.high_sigma_prob <= 1.0:
        raise ValueError(f"stage2.diffusion.high_sigma_prob={cfg.high_sigma_prob} must be in [0, 1]")
    if not 0 < cfg.high_sigma_min <= cfg.high_sigma_max:
        raise ValueError(
            f"stage2.diffusion.high_sigma_min={cfg.high_sigma_min}, high_sigma_max={cfg.high_sigma_max}: "
            "need 0 < high_sigma_min <= high_sigma_max"
        )


def sample_training_sigma(
    batch: int,
    latent_frames: int,
    cfg: DiffusionConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One training noise level per sample, shared by all its frames: a float32 tensor [batch].

    ln σ ~ N(p_mean, p_std²). The paper's eq. 11 writes "σ = sigmoid(u), u ~ N(0, 1)"; what is sigmoid(u) is the
    rectified-flow time t = σ/(1+σ) = sigmoid(ln σ), so u = ln σ and σ itself is log-normal (as in Cosmos).
    With `cfg.scale_sigma_by_frames` σ is multiplied by √latent_frames, as Cosmos-Predict2 does for videos
    (ln σ ~ N(p_mean + ½ ln T, p_std²)); the paper does not mention it. Then, with probability
    `cfg.high_sigma_prob`, σ is replaced by exp(U(ln high_sigma_min, ln high_sigma_max)) so that the network also
    learns the very noisy start of sampling (paper appendix 9.1, Cosmos `high_sigma_ratio`).
    """
    if batch < 1 or latent_frames < 1:
        raise ValueError(f"sample_training_sigma: batch={batch} and latent_frames={latent_frames} must be >= 1")
    _check_diffusion_config(cfg)
    # Draw where the generator lives so a seeded generator gives the same σ on any target device.
    draw_device = generator.device if generator is not None else device
    kw = dict(generator=generator, device=draw_device, dtype=torch.float64)
    log_sigma = cfg.p_mean + cfg.p_std * torch.randn(batch, **kw)
    if cfg.scale_sigma_by_frames:
        log_sigma = log_sigma + 0.5 * math.log(latent_frames)
    pick_high = torch.rand(batch, **kw) < cfg.high_sigma_prob
    lo, hi = math.log(cfg.high_sigma_min), math.log(cfg.high_sigma_max)
    log_high = lo + (hi - lo) * torch.rand(batch, **kw)
    log_sigma = torch.where(pick_high, log_high, log_sigma)
    return log_sigma.exp().to(device=device, dtype=torch.float32)


def _module_dtype(net: object, fallback: torch.dtype) -> torch.dtype:
    """The floating dtype of the net's weights (a bf16 net gets bf16 inputs); `fallback` for weightless callables."""
    if isinstance(net, nn.Module):
        for p in net.parameters():
            if p.is_floating_point():
                return p.dtype
    return fallback


class Denoiser(nn.Module):
    """Wraps the velocity network into an x0-predictor with frame-replace context conditioning.

    forward(x_sigma [B,C,T,H,W], sigma [B] or [B,T], context [B,C,T,H,W], cond_mask [B,T], features=None)
        -> x0_hat [B,C,T,H,W] (float32)

    Frames with cond_mask = 1 are context: the net sees them clean (not c_in-scaled) with per-frame
    c_noise = cfg.context_c_noise, and x0_hat on them is overwritten with `context`. Frames with cond_mask = 0 are
    predicted: the net sees c_in·x_σ with c_noise = t(σ) and x0_hat = c_skip·x_σ + c_out·F. Only the context frames of
    `context` are read. x, cond_mask and features are cast to the net's weight dtype; c_noise stays float32; the
    preconditioning is combined in float32. With `return_block` (REPA / VideoREPA baselines) the net is asked for
    the hidden tokens after that block too, and (x0_hat, hidden) is returned.
    """

    def __init__(self, net: nn.Module | VelocityNet, cfg: DiffusionConfig):
        super().__init__()
        self.net = net
        self.scaling = RFScaling()
        self.context_c_noise = float(cfg.context_c_noise)

    def forward(
        self,
        x_sigma: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor | None,
        cond_mask: torch.Tensor,
        features: torch.Tensor | None = None,
        return_block: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x_sigma.ndim != 5:
            raise ValueError(f"Denoiser: x_sigma must be [B, C, T, H, W], got shape {tuple(x_sigma.shape)}")
        B, _, T, _, _ = x_sigma.shape
        if tuple(cond_mask.shape) != (B, T):
            raise ValueError(f"Denoiser: cond_mask must be [B, T] = {(B, T)}, got {tuple(cond_mask.shape)}")
        if context is None:
            context = torch.zeros_like(x_sigma)
        if context.shape != x_sigma.shape:
            raise ValueError(
                f"Denoiser: context {tuple(context.shape)} must have the shape of x_sigma {tuple(x_sigma.shape)}"
            )
        if features is not None and (features.ndim != 5 or features.shape[0] != B or features.shape[2] != T):
            raise ValueError(
                f"Denoiser: features must be [B={B}, Cf, T={T}, h, w], got {tuple(features.shape)}"
            )
        sigma = _per_frame_sigma(sigma, B, T).to(device=x_sigma.device, dtype=torch.float32)

        x = x_sigma.float()
        is_context = cond_mask.to(device=x.device).bool()
        frame_mask = is_context[:, None, :, None, None]
        c_skip, c_out, c_in, t = self.scaling(sigma)  # each [B, T]
        c_skip, c_out, c_in = (c[:, None, :, None, None] for c in (c_skip, c_out, c_in))
        net_input = torch.where(frame_mask, context.float(), c_in * x)
        c_noise = torch.where(is_context, torch.full_like(sigma, self.context_c_noise), t)  # [B, T]

        dtype = _module_dtype(self.net, x.dtype)
        inputs = (
            net_input.to(dtype),
            c_noise,  # float32: the DiT computes its noise sinusoid in float32 (Predict2 rounds it to bf16 first)
            is_context.to(dtype),
            None if features is None else features.to(dtype),
        )
        hidden = None
        if return_block is None:
            velocity = self.net(*inputs)
        else:
            velocity, hidden = self.net(*inputs, return_block=return_block)
        if velocity.shape != x.shape:
            raise ValueError(f"Denoiser: the net returned {tuple(velocity.shape)}, expected {tuple(x.shape)}")
        x0_hat = torch.where(frame_mask, context.float(), c_skip * x + c_out * velocity.float())
        return x0_hat if return_block is None else (x0_hat, hidden)


def _per_frame_sigma(sigma: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """Accept σ as a scalar, [B] (one level per sample) or [B, T] (per frame) and return [B, T]."""
    sigma = torch.as_tensor(sigma)
    if sigma.ndim == 0:
        return sigma.expand(batch, frames)
    if sigma.ndim == 1 and sigma.shape[0] == batch:
        return sigma[:, None].expand(batch, frames)
    if sigma.ndim == 2 and tuple(sigma.shape) == (batch, frames):
        return sigma
    raise ValueError(f"sigma must be a scalar, [B]={batch} or [B, T]={(batch, frames)}, got {tuple(sigma.shape)}")


def context_mask(batch: int, frames: int, context_frames: int, device: torch.device | str | None = None) -> torch.Tensor:
    """cond_mask [batch, frames] (float): 1 on the first `context_frames` latent frames (given clean), 0 on the future."""
    if not 0 < context_frames < frames:
        raise ValueError(f"context_mask: need 0 < context_frames={context_frames} < frames={frames}")
    mask = torch.zeros(batch, frames, device=device)
    mask[:, :context_frames] = 1
    return mask


def context_inputs(context_latents: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler's inputs from the clean context latents [B, C, Tc, H, W]: `context` [B, C, frames, H, W] (the
    context frames, zeros after them; only the context frames are read) and its cond_mask [B, frames]."""
    b, c, tc, h, w = context_latents.shape
    context = context_latents.new_zeros(b, c, frames, h, w)
    context[:, :, :tc] = context_latents
    return context, context_mask(b, frames, tc, context_latents.device)


@dataclass
class DenoisingLoss:
    """The weighted denoising loss of one forward pass, per sample (EDM style: one small unit per idea).

    per_sample [B]: mean over that sample's future elements of λ(σ)·(x̂0 − x0)² (= the velocity MSE);
    future_elements [B]: how many elements that mean ran over; sigma [B]: the noise levels used;
    hidden: the (not detached) hidden tokens after the requested block, for an alignment loss, else None.
    """

    per_sample: torch.Tensor
    future_elements: torch.Tensor
    sigma: torch.Tensor
    hidden: torch.Tensor | None = None

    def mean(self) -> torch.Tensor:
        """The batch loss: the mean over every future element of the batch (paper eq. 7)."""
        return (self.per_sample * self.future_elements).sum() / self.future_elements.sum()


def denoising_loss(
    denoiser: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    cond_mask: torch.Tensor,
    features: torch.Tensor | None,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    return_block: int | None = None,
) -> DenoisingLoss:
    """Weighted denoising loss of paper eq. 7/15 at given noise levels sigma [B] and noise ε [B,C,T,H,W].

    Noises the future frames of the clean latents x0 [B,C,T,H,W] (x_σ = x0 + σ·ε), predicts x̂0 with the context
    frames (cond_mask = 1) given clean, and weighs the squared error by λ(σ) = (1+σ)²/σ². The trainer draws σ and ε
    (`diffusion_loss`); validation passes fixed ones.

    Normalisation: means run over the future-frame elements only. Cosmos-Predict2 takes the mean over every frame
    (the context frames contribute exact zeros) and multiplies by loss_scale = 10; we follow the paper, whose eq. 7
    is an expectation over the future frames z_{M+1:K} alone, so the loss value does not depend on how many context
    frames a window has. Relative to Cosmos the scale differs by 10·T/T_future, which only matters for the
    learning rate.
    """
    if x0.ndim != 5:
        raise ValueError(f"denoising_loss: x0 must be [B, C, T, H, W], got shape {tuple(x0.shape)}")
    B, _, T, _, _ = x0.shape
    if tuple(cond_mask.shape) != (B, T):
        raise ValueError(f"denoising_loss: cond_mask must be [B, T] = {(B, T)}, got {tuple(cond_mask.shape)}")
    if tuple(noise.shape) != tuple(x0.shape) or tuple(sigma.shape) != (B,):
        raise ValueError(f"denoising_loss: noise {tuple(noise.shape)} must be shaped like x0 {tuple(x0.shape)} "
                         f"and sigma {tuple(sigma.shape)} must be [B] = [{B}]")
    is_future = ~cond_mask.to(device=x0.device).bool()
    future_frames = is_future.sum(dim=1)
    if (future_frames == 0).any():
        bad = torch.nonzero(future_frames == 0).flatten().tolist()
        raise ValueError(
            f"denoising_loss: sample(s) {bad} have every frame marked as context in cond_mask; "
            "at least one future frame (cond_mask = 0) is needed per sample"
        )
    x0 = x0.float()
    sigma = sigma.to(device=x0.device, dtype=torch.float32)
    future = is_future[:, None, :, None, None]
    x_sigma = torch.where(future, x0 + sigma[:, None, None, None, None] * noise.to(x0.device).float(), x0)
    hidden = None
    if return_block is None:
        x0_hat = denoiser(x_sigma, sigma, x0, cond_mask, features)
    else:
        x0_hat, hidden = denoiser(x_sigma, sigma, x0, cond_mask, features, return_block=return_block)
    squared_error = ((x0_hat.float() - x0) ** 2 * future).flatten(1).sum(dim=1)  # [B]
    future_elements = future_frames.to(torch.float32) * (x0.shape[1] * x0.shape[3] * x0.shape[4])  # [B]
    per_sample = loss_weight(sigma) * squared_error / future_elements
    return DenoisingLoss(per_sample=per_sample, future_elements=future_elements, sigma=sigma, hidden=hidden)


def diffusion_loss(
    denoiser: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    cond_mask: torch.Tensor,
    features: torch.Tensor | None,
    cfg: DiffusionConfig,
    generator: torch.Generator | None = None,
    return_block: int | None = None,
) -> DenoisingLoss:
    """The training loss: one σ per sample (`sample_training_sigma`) and ε ~ N(0, I), both drawn from `generator`
    (where it lives, so a seeded generator gives the same draws on any device), then `denoising_loss`."""
    if x0.ndim != 5:
        raise ValueError(f"diffusion_loss: x0 must be [B, C, T, H, W], got shape {tuple(x0.shape)}")
    B, _, T, _, _ = x0.shape
    sigma = sample_training_sigma(B, T, cfg, generator=generator, device=x0.device)
    noise_device = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=noise_device, dtype=torch.float32).to(x0.device)
    return denoising_loss(denoiser, x0, cond_mask, features, sigma, noise, return_block=return_block)
