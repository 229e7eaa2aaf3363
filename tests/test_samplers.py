"""Karras schedule, Euler / multistep ODE solvers on closed-form denoisers, representation guidance."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from configs.schema import DiffusionConfig
from models.conditioning import truncate_features
from models.diffusion import Denoiser
from models.samplers import (
    euler_step,
    integrate,
    karras_sigmas,
    make_x0_predictor,
    multistep_step,
    sample,
)

MU, S = 0.7, 0.5  # data x0 ~ N(MU, S²) per element


def gaussian_posterior_mean(x: torch.Tensor, sigma) -> torch.Tensor:
    """E[x0 | x_σ] for x0 ~ N(MU, S²): the exact denoiser."""
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


class GaussianVelocityNet(nn.Module):
    """The velocity net whose Denoiser output is exactly the Gaussian posterior mean.

    The net sees c_in·x_σ = x_σ/(1+σ) and c_noise = t; x̂0 = x − t·F, so F = (x − D(x_σ, σ))/t.
    """

    def forward(self, x, c_noise, cond_mask, features):
        x, t = x.double(), c_noise.double()[:, None, :, None, None]
        sigma = t / (1 - t)
        x_sigma = x * (1 + sigma)
        return ((x - gaussian_posterior_mean(x_sigma, sigma)) / t).float()


class CountingNet(nn.Module):
    """Linear stand-in that depends on x, c_noise and the features; records every call."""

    def __init__(self, channels: int, feature_channels: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mix = nn.Parameter(torch.randn(channels, feature_channels, generator=g) * 0.1)
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward(self, x, c_noise, cond_mask, features):
        self.calls.append(dict(batch=x.shape[0], features=features.clone()))
        pooled = features.mean(dim=(3, 4))  # [B, Cf, T]
        bias = torch.einsum("cf,bft->bct", self.mix, pooled)[..., None, None]
        return 0.5 * x + c_noise[:, None, :, None, None] + bias


# ------------------------------------------------------------------------------------------ schedule


def test_karras_schedule_endpoints_monotonicity_and_closed_form():
    steps, smax, smin, rho = 35, 80.0, 0.002, 7.0
    sig = karras_sigmas(steps, smax, smin, rho)
    assert sig.dtype == torch.float64 and sig.shape == (steps + 1,)
    assert sig[0].item() == smax and sig[-1].item() == smin
    assert (sig[1:] < sig[:-1]).all()
    for i in (1, 10, 17, 34):
        expected = (smax ** (1 / rho) + i / steps * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        assert math.isclose(sig[i].item(), expected, rel_tol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        karras_sigmas(0, smax, smin, rho)
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(10, smax, 0.0, rho)


# ----------------------------------------------------------------------------------------- ODE core


def _exact_flow(x, sigma_from, sigma_to, a, b):
    """Exact probability-flow ODE dx/dσ = (x − D)/σ for D = a + b·λ, λ = −ln σ:
    x/σ is advanced by ∫ D(u)·e^u du = (a + b(u − 1))·e^u over λ."""
    antiderivative = lambda u: (a + b * (u - 1)) * math.exp(u)
    lam0, lam1 = -math.log(sigma_from), -math.log(sigma_to)
    return sigma_to * (x / sigma_from + antiderivative(lam1) - antiderivative(lam0))


@pytest.mark.parametrize("method", ["euler", "multistep"])
def test_solvers_are_exact_when_the_x0_prediction_is_constant(method):
    a = 0.4
    sigmas = karras_sigmas(12, 80.0, 0.002, 7.0)
    seen = []

    def predict(x, sigma):
        seen.append((x.clone(), sigma))
        return torch.full_like(x, a)

    x = torch.linspace(-100, 100, 9, dtype=torch.float64)
    out = integrate(predict, x.clone(), sigmas, method)
    assert len(seen) == len(sigmas)  # N steps + the final x0 evaluation
    assert [s for _, s in seen] == sigmas.tolist()
    expected = torch.tensor([_exact_flow(v, 80.0, 0.002, a, 0.0) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(seen[-1][0], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, torch.full_like(x, a))


@pytest.mark.parametrize("sigma_prev,sigma,sigma_next", [(80.0, 57.0, 40.0), (5.0, 2.0, 0.7), (0.01, 0.004, 0.002)])
def test_multistep_step_is_exact_when_x0_is_linear_in_log_sigma(sigma_prev, sigma, sigma_next):
    a, b = 0.4, 0.3
    x0_at = lambda s: torch.full((5,), a + b * -math.log(s), dtype=torch.float64)
    x = torch.linspace(-3, 3, 5, dtype=torch.float64) * sigma
    out = multistep_step(x, x0_at(sigma), x0_at(sigma_prev), sigma_prev, sigma, sigma_next)
    expected = torch.tensor([_exact_flow(v, sigma, sigma_next, a, b) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    # Euler is only first order here.
    euler = euler_step(x, x0_at(sigma), sigma, sigma_next)
    assert (euler - expected).abs().max() > 1e3 * (out - expected).abs().max()


def _solver_error(method: str, steps: int) -> float:
    """Max error against the exact Gaussian flow, started from the same σ_max noise."""
    z = torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = 80.0 * z
    smin = 0.002
    exact_x = MU + (x - MU) * math.sqrt(S**2 + smin**2) / math.sqrt(S**2 + 80.0**2)
    out = integrate(gaussian_posterior_mean, x, karras_sigmas(steps, 80.0, smin, 7.0), method)
    return (out - gaussian_posterior_mean(exact_x, smin)).abs().max().item()


def test_multistep_is_second_order_and_beats_euler_at_equal_steps():
    euler = {n: _solver_error("euler", n) for n in (10, 20, 35, 70)}
    multi = {n: _solver_error("multistep", n) for n in (10, 20, 35, 70)}
    for n in (20, 35, 70):
        assert multi[n] < 0.6 * euler[n], (n, multi[n], euler[n])
    # At 10 Karras steps the first steps are huge and AB2 overshoots: comparable, not better.
    assert multi[10] < 1.5 * euler[10]
    # Doubling the steps: Euler's error halves (order 1), multistep's drops ~4x (order 2).
    assert 1.6 < euler[35] / euler[70] < 2.4
    assert multi[35] / multi[70] > 3.0


# -------------------------------------------------------------------------------- full sampler loop


def _gaussian_problem(batch=2, hw=100):
    shape = (batch, 1, 2, hw, hw)  # frame 0 is context, frame 1 is sampled: batch·hw² future scalars
    context = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    mask = torch.tensor([[True, False]] * batch)
    return shape, context, mask


@pytest.mark.parametrize("sampler,steps", [("euler", 100), ("multistep", 35)])
def test_sampling_the_exact_gaussian_denoiser_recovers_the_data_distribution(sampler, steps):
    cfg = DiffusionConfig(sampler=sampler, steps=steps)
    shape, context, mask = _gaussian_problem()
    den = Denoiser(GaussianVelocityNet(), cfg)
    x0 = sample(den, shape, context, mask, None, cfg, torch.Generator().manual_seed(1))
    assert x0.shape == shape and x0.dtype == torch.float32
    assert torch.equal(x0[:, :, 0], context[:, :, 0])  # context frames exactly as given
    future = x0[:, :, 1].double()
    # 20k samples: the standard error of the mean is S/√20000 ≈ 0.0035; starting at σ_max·N(0, I) instead of the
    # exact N(MU, S² + σ_max²) shifts the mean by ≈ MU·S/σ_max ≈ 0.004.
    assert abs(future.mean().item() - MU) < 0.03
    assert abs(future.std().item() / S - 1) < 0.04


def test_sampling_is_deterministic_with_a_seeded_generator():
    cfg = DiffusionConfig(steps=6)
    shape, context, mask = _gaussian_problem(batch=1, hw=8)
    den = Denoiser(GaussianVelocityNet(), cfg)
    a = sample(den, shape, context, mask, None, cfg, torch.Generator().manual_seed(5))
    b = sample(den, shape, context, mask, None, cfg, torch.Generator().manual_seed(5))
    c = sample(den, shape, context, mask, None, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------------------ guidance

B, C, T, H, W, CF = 2, 3, 3, 4, 4, 16


def _guidance_problem():
    g = torch.Generator().manual_seed(3)
    context = torch.randn(B, C, T, H, W, generator=g)
    features = torch.randn(B, CF, T, 2, 2, generator=g)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    return context, features, mask


def test_guided_sampling_runs_one_double_batch_with_the_coarse_half_truncated():
    cfg = DiffusionConfig(steps=4, guidance_weight=0.4, guidance_components=5)
    context, features, mask = _guidance_problem()
    net = CountingNet(C, CF)
    x0 = sample(Denoiser(net, cfg), context.shape, context, mask, features, cfg, torch.Generator().manual_seed(0))
    assert len(net.calls) == cfg.steps + 1  # one net call per evaluation
    for call in net.calls:
        assert call["batch"] == 2 * B
        full, coarse = call["features"].chunk(2)
        assert torch.equal(full, features)
        assert torch.equal(coarse[:, :5], features[:, :5]) and (coarse[:, 5:] == 0).all()
    frame = mask[:, None, :, None, None].expand_as(context)
    assert torch.equal(x0[frame], context[frame])


def test_guided_prediction_is_full_plus_w_times_full_minus_coarse():
    w, c = 0.7, 6
    context, features, mask = _guidance_problem()
    den = Denoiser(CountingNet(C, CF), DiffusionConfig())
    coarse = truncate_features(features, c)
    predict = make_x0_predictor(den, context, mask, features, w, coarse)
    x = torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(8)) * 3
    sigma = torch.full((B,), 3.0)
    full_pred = den(x, sigma, context, mask, features)
    coarse_pred = den(x, sigma, context, mask, coarse)
    assert not torch.allclose(full_pred, coarse_pred)
    torch.testing.assert_close(predict(x, 3.0), full_pred + w * (full_pred - coarse_pred))


def test_zero_guidance_weight_is_the_unguided_sampler():
    context, features, mask = _guidance_problem()
    cfg = DiffusionConfig(steps=3, guidance_weight=0.0)
    net = CountingNet(C, CF)
    den = Denoiser(net, cfg)
    plain = sample(den, context.shape, context, mask, features, cfg, torch.Generator().manual_seed(2))
    assert all(call["batch"] == B for call in net.calls)  # no coarse pass at w = 0
    with_coarse = sample(
        den, context.shape, context, mask, features, cfg, torch.Generator().manual_seed(2),
        guidance_features=truncate_features(features, 4),
    )
    assert torch.equal(plain, with_coarse)
    guided = sample(
        den, context.shape, context, mask, features, dataclasses.replace(cfg, guidance_weight=0.5, guidance_components=4),
        torch.Generator().manual_seed(2),
    )
    assert not torch.allclose(plain, guided)


def test_inference_components_zero_the_trailing_channels_before_guidance():
    cfg = DiffusionConfig(steps=2, inference_components=8, guidance_weight=1.0, guidance_components=3)
    context, features, mask = _guidance_problem()
    net = CountingNet(C, CF)
    sample(Denoiser(net, cfg), context.shape, context, mask, features, cfg, torch.Generator().manual_seed(0))
    full, coarse = net.calls[0]["features"].chunk(2)
    assert torch.equal(full[:, :8], features[:, :8]) and (full[:, 8:] == 0).all()
    assert torch.equal(coarse[:, :3], features[:, :3]) and (coarse[:, 3:] == 0).all()


def test_bad_guidance_and_sampler_settings_raise_clear_errors():
    context, features, mask = _guidance_problem()
    den = Denoiser(CountingNet(C, CF), DiffusionConfig())
    run = lambda cfg, feats=features: sample(den, context.shape, context, mask, feats, cfg)
    with pytest.raises(ValueError, match="needs a feature-conditioned"):
        run(DiffusionConfig(steps=2, guidance_weight=0.5), None)
    with pytest.raises(ValueError, match="guidance_components"):
        run(DiffusionConfig(steps=2, guidance_weight=0.5, guidance_components=CF))
    with pytest.raises(ValueError, match="guidance_weight"):
        run(DiffusionConfig(steps=2, guidance_weight=-0.5, guidance_components=4))
    with pytest.raises(ValueError, match="inference_components"):
        run(DiffusionConfig(steps=2, inference_components=CF + 1))
    with pytest.raises(ValueError, match="sampler"):
        run(DiffusionConfig(steps=2, sampler="heun"))
    with pytest.raises(ValueError, match="context"):
        sample(den, (B, C, T, H, W + 1), context, mask, features, DiffusionConfig(steps=2))


def test_sampling_settings_is_the_one_owner_of_the_rules():
    from models.samplers import sampling_settings

    base = DiffusionConfig(steps=4, guidance_weight=0.5, guidance_components=4, inference_components=8)
    assert sampling_settings(base, CF) == base
    assert sampling_settings(base, CF, steps=None, sampler="euler") == dataclasses.replace(base, sampler="euler")
    # A model without features: the base's feature options are defaults that do not apply ...
    plain = sampling_settings(base, 0)
    assert plain.guidance_weight == 0 and plain.inference_components == 0 and plain.steps == 4
    # ... but asking for guidance is refused, with the same rule sample() applies.
    with pytest.raises(ValueError, match="needs a feature-conditioned"):
        sampling_settings(base, 0, guidance_weight=0.5)
    with pytest.raises(ValueError, match=r"inference_components=9 must be in \[0, 8\]"):
        sampling_settings(DiffusionConfig(), 8, inference_components=9)
    with pytest.raises(ValueError, match=r"guidance_components=8 must be in \[1, 7\]"):
        sampling_settings(DiffusionConfig(), 8, guidance_weight=1.0, guidance_components=8)
    with pytest.raises(ValueError, match="steps=0"):
        sampling_settings(DiffusionConfig(), 8, steps=0)
    with pytest.raises(ValueError, match="unknown sampling options"):
        sampling_settings(DiffusionConfig(), 8, guidance=1.0)
