"""Rectified-flow scaling, training σ, the frame-replace Denoiser and the weighted loss (closed forms)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from configs.schema import DiffusionConfig
from models.diffusion import (
    Denoiser,
    RFScaling,
    diffusion_loss,
    loss_weight,
    sample_training_sigma,
    sigma_to_t,
)

B, C, T, H, W = 2, 3, 4, 5, 6


class RecordingNet(nn.Module):
    """Stand-in velocity net: records what it was given and returns `respond(x, c_noise)`."""

    def __init__(self, respond):
        super().__init__()
        self.respond = respond
        self.calls: list[dict[str, torch.Tensor | None]] = []

    def forward(self, x, c_noise, cond_mask, features):
        self.calls.append(dict(x=x.clone(), c_noise=c_noise.clone(), cond_mask=cond_mask.clone(), features=features))
        return self.respond(x, c_noise)


def _mask(context_frames: list[int]) -> torch.Tensor:
    mask = torch.zeros(len(context_frames), T, dtype=torch.bool)
    for b, m in enumerate(context_frames):
        mask[b, :m] = True
    return mask


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, T, H, W, generator=g), torch.randn(B, C, T, H, W, generator=g)


# ------------------------------------------------------------------------------------------- scaling


def test_scaling_is_the_paper_preconditioning_and_the_rf_interpolant():
    sigma = torch.tensor([1e-3, 0.1, 1.0, 7.5, 80.0, 1e5], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = RFScaling()(sigma)
    t = sigma / (1 + sigma)
    torch.testing.assert_close(c_noise, t)
    torch.testing.assert_close(torch.sigmoid(sigma.log()), t)  # the paper's "sigmoid(u)" is t with u = ln σ
    torch.testing.assert_close(c_skip, 1 - t)
    torch.testing.assert_close(c_in, 1 - t)
    torch.testing.assert_close(c_out, -t)

    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 6, generator=g, dtype=torch.float64)
    x_sigma = x0 + sigma * eps
    torch.testing.assert_close(c_in * x_sigma, (1 - t) * x0 + t * eps)
    # The true velocity F = ε − x0 reconstructs x0 exactly.
    torch.testing.assert_close(c_skip * x_sigma + c_out * (eps - x0), x0)
    # λ(x̂0 − x0)² is the velocity MSE for any F.
    F = torch.randn(6, generator=g, dtype=torch.float64)
    x0_hat = c_skip * x_sigma + c_out * F
    torch.testing.assert_close(loss_weight(sigma) * (x0_hat - x0) ** 2, (F - (eps - x0)) ** 2)


def test_denoiser_with_true_velocity_returns_x0_and_feeds_the_interpolant():
    x0, eps = _data()
    sigma = torch.tensor([0.3, 12.0])
    x_sigma = x0 + sigma[:, None, None, None, None] * eps
    net = RecordingNet(lambda x, c_noise: eps - x0)
    mask = _mask([0, 0])  # no context: every frame is predicted
    x0_hat = Denoiser(net, DiffusionConfig())(x_sigma, sigma, None, mask)
    torch.testing.assert_close(x0_hat, x0, atol=2e-5, rtol=1e-5)
    t = sigma_to_t(sigma)[:, None, None, None, None]
    torch.testing.assert_close(net.calls[0]["x"], (1 - t) * x0 + t * eps, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------- context frames


def test_context_frames_enter_clean_and_come_out_exactly():
    cfg = DiffusionConfig(context_c_noise=0.001)
    x0, eps = _data()
    context = x0 + 0.25
    mask = _mask([1, 2])
    sigma = torch.tensor([[2.0, 3.0, 4.0, 5.0], [0.5, 0.6, 0.7, 0.8]])  # per-frame σ
    x_sigma = x0 + sigma[:, None, :, None, None] * eps
    net = RecordingNet(lambda x, c_noise: torch.randn_like(x) * 100)
    feats = torch.randn(B, 7, T, 2, 3)
    x0_hat = Denoiser(net, cfg)(x_sigma, sigma, context, mask, feats)

    seen = net.calls[0]
    frame = mask[:, None, :, None, None].expand_as(x0)
    assert torch.equal(x0_hat[frame], context[frame])  # bit-exact overwrite
    assert torch.equal(seen["x"][frame], context[frame])  # clean, not c_in-scaled
    t = sigma_to_t(sigma)
    torch.testing.assert_close(seen["x"][~frame], ((1 - t)[:, None, :, None, None] * x_sigma)[~frame])
    expected_c_noise = torch.where(mask, torch.full_like(t, 0.001), t)
    torch.testing.assert_close(seen["c_noise"], expected_c_noise)
    assert torch.equal(seen["cond_mask"], mask.float())
    assert torch.equal(seen["features"], feats)


def test_denoiser_feeds_a_bf16_net_bf16_inputs_and_combines_in_float32():
    class Bf16Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones((), dtype=torch.bfloat16))
            self.dtypes: list[torch.dtype] = []

        def forward(self, x, c_noise, cond_mask, features):
            self.dtypes += [x.dtype, cond_mask.dtype, features.dtype]
            self.c_noise_dtype = c_noise.dtype
            return x * self.gain

    net = Bf16Net()
    x0, _ = _data()
    out = Denoiser(net, DiffusionConfig())(x0, torch.ones(B), x0, _mask([1, 1]), torch.randn(B, 4, T, 2, 2))
    assert set(net.dtypes) == {torch.bfloat16}
    assert net.c_noise_dtype == torch.float32  # kept precise for the noise embedding
    assert out.dtype == torch.float32


def test_denoiser_rejects_bad_shapes():
    den = Denoiser(RecordingNet(lambda x, c: x), DiffusionConfig())
    x0, _ = _data()
    with pytest.raises(ValueError, match="cond_mask"):
        den(x0, torch.ones(B), x0, torch.zeros(B, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="sigma"):
        den(x0, torch.ones(B + 1), x0, _mask([1, 1]))
    with pytest.raises(ValueError, match="context"):
        den(x0, torch.ones(B), x0[:, :, :2], _mask([1, 1]))
    with pytest.raises(ValueError, match="x_sigma"):
        den(x0[0], torch.ones(B), x0, _mask([1, 1]))


# --------------------------------------------------------------------------------------------- loss


def _recover_eps(call, x0, mask):
    """Invert the net's input on future frames: c_in·x_σ = (1−t)x0 + tε."""
    t = call["c_noise"][:, None, :, None, None]
    eps = (call["x"] - (1 - t) * x0) / t
    return torch.where(mask[:, None, :, None, None], torch.zeros_like(eps), eps)


def test_loss_equals_future_velocity_mse_for_an_arbitrary_net():
    cfg = DiffusionConfig(scale_sigma_by_frames=False, high_sigma_prob=0.0)
    x0, _ = _data(3)
    mask = _mask([1, 2])  # different numbers of future frames per sample
    F = torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(4))
    net = RecordingNet(lambda x, c_noise: F)
    result = diffusion_loss(Denoiser(net, cfg), x0, mask, None, cfg, generator=torch.Generator().manual_seed(5))
    call = net.calls[0]
    sigma = result.sigma
    torch.testing.assert_close(call["c_noise"][~mask], sigma_to_t(sigma)[:, None].expand(B, T)[~mask])
    eps = _recover_eps(call, x0, mask)
    future = (~mask)[:, None, :, None, None].expand_as(x0)
    velocity_err = (F - (eps - x0)) ** 2
    per_sample = torch.stack([velocity_err[b][future[b]].mean() for b in range(B)])
    torch.testing.assert_close(result.per_sample, per_sample, rtol=2e-4, atol=1e-5)
    # Mean over every future element of the batch (sample 0 has 3 future frames, sample 1 has 2).
    torch.testing.assert_close(result.mean(), velocity_err[future].mean(), rtol=2e-4, atol=1e-5)


def test_loss_ignores_context_frames_and_vanishes_for_the_true_velocity():
    cfg = DiffusionConfig(scale_sigma_by_frames=False, high_sigma_prob=0.0)
    x0, _ = _data(6)
    mask = _mask([2, 1])

    def true_velocity(x, c_noise):
        t = c_noise[:, None, :, None, None]
        eps = (x - (1 - t) * x0) / t
        velocity = eps - x0
        return torch.where(mask[:, None, :, None, None], torch.full_like(x, 1e3), velocity)  # garbage on context

    loss = diffusion_loss(Denoiser(RecordingNet(true_velocity), cfg), x0, mask, None, cfg, torch.Generator().manual_seed(0))
    assert loss.mean().item() < 1e-6


def test_loss_is_deterministic_with_a_seeded_generator_and_differentiable():
    cfg = DiffusionConfig()
    x0, _ = _data(7)
    mask = _mask([1, 1])
    net = nn.Conv3d(C, C, 1)
    den = Denoiser(lambda x, c, m, f: net(x), cfg)
    a = diffusion_loss(den, x0, mask, None, cfg, torch.Generator().manual_seed(11)).mean()
    b = diffusion_loss(den, x0, mask, None, cfg, torch.Generator().manual_seed(11)).mean()
    c = diffusion_loss(den, x0, mask, None, cfg, torch.Generator().manual_seed(12)).mean()
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


def test_hidden_tokens_of_the_same_pass_are_passed_through_for_alignment():
    class HiddenNet(nn.Module):
        def forward(self, x, c_noise, cond_mask, features, return_block=None):
            assert return_block == 2
            return x, x.mean(dim=1) * return_block

    cfg = DiffusionConfig()
    x0, _ = _data(8)
    mask = _mask([1, 1])
    den = Denoiser(HiddenNet(), cfg)
    x0_hat, hidden = den(x0, torch.ones(B), x0, mask, return_block=2)
    assert x0_hat.shape == x0.shape and hidden.shape == (B, T, H, W)
    result = diffusion_loss(den, x0, mask, None, cfg, torch.Generator().manual_seed(0), return_block=2)
    plain = diffusion_loss(Denoiser(lambda x, c, m, f: x, cfg), x0, mask, None, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(result.mean(), plain.mean()) and result.hidden.shape == (B, T, H, W)
    assert plain.hidden is None


def test_loss_rejects_windows_without_future_frames():
    cfg = DiffusionConfig()
    x0, _ = _data()
    den = Denoiser(RecordingNet(lambda x, c: x), cfg)
    with pytest.raises(ValueError, match="future frame"):
        diffusion_loss(den, x0, _mask([T, 1]), None, cfg)
    with pytest.raises(ValueError, match="cond_mask"):
        diffusion_loss(den, x0, torch.zeros(B, T - 1, dtype=torch.bool), None, cfg)


# --------------------------------------------------------------------------------------- σ sampling

DRAWS = 100_000


def test_training_sigma_is_log_normal_with_the_configured_moments():
    cfg = DiffusionConfig(p_mean=-0.4, p_std=1.2, scale_sigma_by_frames=False, high_sigma_prob=0.0)
    log_sigma = sample_training_sigma(DRAWS, 7, cfg, torch.Generator().manual_seed(0)).double().log()
    assert abs(log_sigma.mean().item() - cfg.p_mean) < 0.02
    assert abs(log_sigma.std().item() - cfg.p_std) < 0.02


def test_frame_multiplier_shifts_log_sigma_by_half_log_frames():
    base = DiffusionConfig(high_sigma_prob=0.0, scale_sigma_by_frames=False)
    scaled = dataclasses.replace(base, scale_sigma_by_frames=True)
    frames = 7
    a = sample_training_sigma(DRAWS, frames, base, torch.Generator().manual_seed(1)).double().log()
    b = sample_training_sigma(DRAWS, frames, scaled, torch.Generator().manual_seed(1)).double().log()
    torch.testing.assert_close(b - a, torch.full_like(a, 0.5 * math.log(frames)), atol=1e-5, rtol=0)
    assert abs(b.mean().item() - 0.5 * math.log(frames)) < 0.02


def test_high_sigma_mixture_fraction_and_range():
    cfg = DiffusionConfig(high_sigma_prob=0.05, scale_sigma_by_frames=True)
    sigma = sample_training_sigma(DRAWS, 7, cfg, torch.Generator().manual_seed(2)).double()
    high = sigma >= cfg.high_sigma_min * (1 - 1e-6)
    assert abs(high.double().mean().item() - 0.05) < 0.004
    assert sigma[high].max().item() <= cfg.high_sigma_max * (1 + 1e-6)
    # ln σ of the high draws is uniform on [ln 200, ln 1e5].
    mid = 0.5 * (math.log(cfg.high_sigma_min) + math.log(cfg.high_sigma_max))
    assert abs(sigma[high].log().mean().item() - mid) < 0.1
    assert (sigma > 0).all()


def test_training_sigma_is_seeded_and_validates_config():
    cfg = DiffusionConfig()
    a = sample_training_sigma(16, 4, cfg, torch.Generator().manual_seed(3))
    b = sample_training_sigma(16, 4, cfg, torch.Generator().manual_seed(3))
    assert a.shape == (16,) and a.dtype == torch.float32 and torch.equal(a, b)
    with pytest.raises(ValueError, match="high_sigma_prob"):
        sample_training_sigma(4, 4, DiffusionConfig(high_sigma_prob=1.5))
    with pytest.raises(ValueError, match="high_sigma_min"):
        sample_training_sigma(4, 4, DiffusionConfig(high_sigma_min=0.0))
