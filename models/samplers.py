"""Stage 2 samplers: Karras σ schedule, x0-form Euler, Cosmos' second-order multistep, representation guidance.

The ODE core (`integrate`) only needs an x0-predictor `predict_x0(x, sigma) -> x̂0`, so it can be checked against a
closed-form denoiser. `sample` builds that predictor from a `Denoiser` (context frames re-injected at every
evaluation) and optionally from two feature sets at once (representation guidance, paper appendix 6.2).

Schedule and loop follow Cosmos-Predict2 (reference §3.4): σ_0 = σ_max > … > σ_N = σ_min (N+1 values), one model
evaluation at each σ_0 … σ_{N−1} followed by a step to the next σ, then one final x̂0 evaluation at σ_min whose
result is the sample: N + 1 evaluations in all.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch

from configs.schema import SAMPLERS, check_sampler  # noqa: F401  (SAMPLERS re-exported: the list samplers implement)
from models.conditioning import truncate_features

if TYPE_CHECKING:
    from configs.schema import DiffusionConfig

X0Predictor = Callable[[torch.Tensor, float], torch.Tensor]


def karras_sigmas(steps: int, sigma_max: float, sigma_min: float, rho: float) -> torch.Tensor:
    """σ_i = (σ_max^{1/ρ} + i/N·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for i = 0..N: float64 [steps + 1], σ_max first, σ_min last."""
    if steps < 1:
        raise ValueError(f"stage2.diffusion.steps={steps} must be >= 1")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if rho <= 0:
        raise ValueError(f"stage2.diffusion.rho={rho} must be > 0")
    ramp = torch.arange(steps + 1, dtype=torch.float64) / steps
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact endpoints despite the power round trip
    return sigmas


def euler_step(x: torch.Tensor, x0_hat: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """First-order step of the probability-flow ODE in x0 form: x' = (σ'/σ)·x + (1 − σ'/σ)·x̂0."""
    ratio = sigma_next / sigma
    return ratio * x + (1 - ratio) * x0_hat


def _phi1(z: float) -> float:
    return math.expm1(z) / z


def _phi2(z: float) -> float:
    return (_phi1(z) - 1) / z


def multistep_step(
    x: torch.Tensor, x0_hat: torch.Tensor, x0_hat_prev: torch.Tensor, sigma_prev: float, sigma: float, sigma_next: float
) -> torch.Tensor:
    """Cosmos' 2-step exponential multistep ("AB2", res_x0_rk2_step), exact for x̂0 linear in λ = −ln σ.

    h = ln(σ/σ'), c₂ = ln(σ/σ_prev)/h and x' = (σ'/σ)·x + h·[(φ₁(−h) − φ₂(−h)/c₂)·x̂0 + (φ₂(−h)/c₂)·x̂0_prev],
    with φ₁(z) = (eᶻ − 1)/z and φ₂(z) = (φ₁(z) − 1)/z. Coefficients in float64.
    """
    h = math.log(sigma / sigma_next)
    c2 = math.log(sigma / sigma_prev) / h
    phi1, phi2 = _phi1(-h), _phi2(-h)
    b_prev = h * phi2 / c2
    b_now = h * phi1 - b_prev
    return (sigma_next / sigma) * x + b_now * x0_hat + b_prev * x0_hat_prev


def integrate(predict_x0: X0Predictor, x: torch.Tensor, sigmas: torch.Tensor, method: str) -> torch.Tensor:
    """Solve the probability-flow ODE from x at sigmas[0] down to sigmas[-1]; return the final x̂0 there.

    method "euler": x0-form Euler at every step. "multistep": Euler for the first step (no history yet), then the
    second-order multistep using the previous evaluation. len(sigmas) evaluations of `predict_x0` in all.
    """
    check_sampler(method)
    levels = [float(s) for s in sigmas]
    x0_prev = None
    for i in range(len(levels) - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        x0_hat = predict_x0(x, sigma)
        if method == "euler" or x0_prev is None:
            x = euler_step(x, x0_hat, sigma, sigma_next)
        else:
            x = multistep_step(x, x0_hat, x0_prev, levels[i - 1], sigma, sigma_next)
        x0_prev = x0_hat
    return predict_x0(x, levels[-1])


def check_sampling(cfg: DiffusionConfig, feature_channels: int, coarse_given: bool = False) -> None:
    """The one owner of the sampling options' rules, for a model that takes `feature_channels` feature channels
    (0: a model without feature conditioning). Refuses, naming the option: an unknown sampler, steps < 1, a negative
    guidance weight, inference components outside [0, C], guidance components not in [1, in use - 1], and guidance
    for a model without features ("guidance needs a feature-conditioned model", raised here and nowhere else).
    `coarse_given`: the guidance pass gets its own features, so the guidance-components rule does not apply."""
    check_sampler(cfg.sampler)
    if cfg.steps < 1:
        raise ValueError(f"stage2.diffusion.steps={cfg.steps} must be >= 1 (sampling steps)")
    if cfg.guidance_weight < 0:
        raise ValueError(f"stage2.diffusion.guidance_weight={cfg.guidance_weight} must be >= 0 (0 = no guidance)")
    if feature_channels <= 0:
        if cfg.guidance_weight > 0:
            raise ValueError(
                f"stage2.diffusion.guidance_weight={cfg.guidance_weight}: representation guidance needs a "
                "feature-conditioned Stage 2 model, and this one takes no features; use guidance_weight = 0"
            )
        return
    if cfg.inference_components < 0 or cfg.inference_components > feature_channels:
        raise ValueError(
            f"stage2.diffusion.inference_components={cfg.inference_components} must be in [0, {feature_channels}] "
            f"(the features have {feature_channels} channels; 0 = all)"
        )
    in_use = cfg.inference_components or feature_channels
    if cfg.guidance_weight > 0 and not coarse_given and not 0 < cfg.guidance_components < in_use:
        raise ValueError(
            f"stage2.diffusion.guidance_components={cfg.guidance_components} must be in [1, {in_use - 1}]: the coarse "
            f"pass must keep fewer channels than the {in_use} in use, or guidance does nothing"
        )


def sampling_settings(base: DiffusionConfig, feature_channels: int, **overrides: object) -> DiffusionConfig:
    """`base` (a checkpoint's `stage2.diffusion`) with the caller's overrides (None = keep), checked once by
    `check_sampling`. For a model without features the base's own feature options are defaults that do not apply
    and are reset; an explicit override of them is still checked (and guidance refused)."""
    import dataclasses

    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(base)})
    if unknown:
        raise ValueError(f"unknown sampling options {unknown}; the options are the fields of stage2.diffusion")
    if feature_channels <= 0:
        base = dataclasses.replace(base, guidance_weight=0.0, inference_components=0)
    cfg = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    check_sampling(cfg, feature_channels)
    return cfg


def _prepare_features(
    features: torch.Tensor | None, guidance_features: torch.Tensor | None, cfg: DiffusionConfig
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Apply cfg.inference_components, then build the coarse features of the guidance pass (None when off)."""
    guided = cfg.guidance_weight > 0
    check_sampling(cfg, 0 if features is None else features.shape[1], coarse_given=guidance_features is not None)
    if features is None:
        return None, None
    if cfg.inference_components:
        features = truncate_features(features, cfg.inference_components)
    if not guided:
        return features, None
    if guidance_features is not None:
        if guidance_features.shape != features.shape:
            raise ValueError(
                f"guidance_features {tuple(guidance_features.shape)} must have the shape of features {tuple(features.shape)}"
            )
        return features, guidance_features
    return features, truncate_features(features, cfg.guidance_components)


def make_x0_predictor(
    denoiser: Callable[..., torch.Tensor],
    context: torch.Tensor,
    cond_mask: torch.Tensor,
    features: torch.Tensor | None,
    guidance_weight: float = 0.0,
    coarse_features: torch.Tensor | None = None,
) -> X0Predictor:
    """Turn a Denoiser into predict_x0(x, σ); with guidance, both feature sets run as one batch of 2B.

    Representation guidance (paper eq. 10): x̂0 = x̂0_full + w·(x̂0_full − x̂0_coarse). Eq. 10 as printed starts with
    z^{(C_h)} (no hat); a clean latent is not available at sampling time, so we read it as the full-feature
    prediction ẑ^{(C_h)}, which makes it the usual CFG form. On context frames both passes return `context`, so
    the guided result keeps the context frames exactly.
    """
    batch = context.shape[0]
    if coarse_features is None or guidance_weight == 0:

        def predict(x: torch.Tensor, sigma: float) -> torch.Tensor:
            levels = torch.full((batch,), sigma, dtype=torch.float32, device=x.device)
            return denoiser(x, levels, context, cond_mask, features)

        return predict

    context2 = torch.cat([context, context])
    mask2 = torch.cat([cond_mask, cond_mask])
    features2 = torch.cat([features, coarse_features])

    def predict_guided(x: torch.Tensor, sigma: float) -> torch.Tensor:
        levels = torch.full((2 * batch,), sigma, dtype=torch.float32, device=x.device)
        full, coarse = denoiser(torch.cat([x, x]), levels, context2, mask2, features2).chunk(2)
        return full + guidance_weight * (full - coarse)

    return predict_guided


@torch.no_grad()
def sample(
    denoiser: Callable[..., torch.Tensor],
    shape: tuple[int, ...] | torch.Size,
    context: torch.Tensor,
    cond_mask: torch.Tensor,
    features: torch.Tensor | None,
    cfg: DiffusionConfig,
    generator: torch.Generator | None = None,
    guidance_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate latents [B,C,T,H,W] (float32) whose context frames (cond_mask = 1) equal `context`.

    x starts at σ_max·N(0, I) (noise drawn on the generator's device, so a seeded CPU generator reproduces the
    same sample on any device), then `integrate` runs cfg.sampler over `karras_sigmas(cfg.steps, …)`.
    cfg.inference_components > 0 zeroes feature channels from that index on (paper Table 5). With
    cfg.guidance_weight > 0 each evaluation also runs the coarse pass, on `guidance_features` when given, else on
    the features truncated to cfg.guidance_components channels.
    """
    shape = tuple(shape)
    if len(shape) != 5:
        raise ValueError(f"sample: shape must be (B, C, T, H, W), got {shape}")
    if tuple(context.shape) != shape:
        raise ValueError(f"sample: context {tuple(context.shape)} must have the sampled shape {shape}")
    check_sampler(cfg.sampler)
    features, coarse = _prepare_features(features, guidance_features, cfg)
    sigmas = karras_sigmas(cfg.steps, cfg.sigma_max, cfg.sigma_min, cfg.rho)

    noise_device = generator.device if generator is not None else context.device
    noise = torch.randn(shape, generator=generator, device=noise_device, dtype=torch.float32).to(context.device)
    frame_mask = cond_mask.to(device=context.device).bool()[:, None, :, None, None]
    x = torch.where(frame_mask, context.float(), cfg.sigma_max * noise)

    predict_x0 = make_x0_predictor(denoiser, context, cond_mask, features, cfg.guidance_weight, coarse)
    return integrate(predict_x0, x, sigmas, cfg.sampler)
