"""3D RoPE: axis split, frequencies, rotate-half layout, relativity, and agreement with diffusers' Cosmos RoPE."""

from __future__ import annotations

import math

import pytest
import torch

from models.rope import VideoRoPE3D, apply_rope, axis_frequencies, rope_axis_dims


def test_axis_split_at_head_dim_128():
    assert rope_axis_dims(128) == (44, 42, 42)
    assert rope_axis_dims(24) == (8, 8, 8)
    for d in (12, 24, 64, 96, 128):
        dim_t, dim_h, dim_w = rope_axis_dims(d)
        assert dim_t + dim_h + dim_w == d and dim_t % 2 == dim_h % 2 == 0


@pytest.mark.parametrize("bad", [6, 10, 13, 127])
def test_bad_head_dim_is_rejected(bad):
    with pytest.raises(ValueError, match="head dimension"):
        rope_axis_dims(bad)


def test_ntk_scaled_frequencies_closed_form():
    # Predict2 2B: theta_h = 10000 * 3^(42/40) ~ 31 694.
    freqs = axis_frequencies(42, ntk=3.0)
    theta = 10000.0 * 3.0 ** (42 / 40)
    assert abs(theta - 31694) < 1
    expected = torch.tensor([theta ** (-2 * j / 42) for j in range(21)], dtype=torch.float32)
    torch.testing.assert_close(freqs, expected)
    assert freqs[0] == 1.0 and freqs.dtype == torch.float32


def test_angle_layout_is_t_h_w_then_duplicated():
    rope = VideoRoPE3D(24, ntk_t=1.0, ntk_h=3.0, ntk_w=3.0)
    angles = rope.angles(2, 3, 4).view(2, 3, 4, 24)
    half_t, half_h = 4, 4  # dim_t/2, dim_h/2 at head_dim 24
    # Token (t=1, h=0, w=0): only the temporal band rotates.
    freqs_t, freqs_h, freqs_w = rope.frequencies()
    a = angles[1, 0, 0]
    torch.testing.assert_close(a[:half_t], freqs_t)
    assert torch.all(a[half_t:12] == 0)
    torch.testing.assert_close(a[:12], a[12:])
    # Token (t=0, h=2, w=3): temporal band still, h and w bands at their own positions.
    a = angles[0, 2, 3]
    assert torch.all(a[:half_t] == 0)
    torch.testing.assert_close(a[half_t:half_t + half_h], 2 * freqs_h)
    torch.testing.assert_close(a[half_t + half_h:12], 3 * freqs_w)


def test_rotate_half_pairs_i_with_i_plus_half():
    d = 24
    rope = VideoRoPE3D(d)
    cos, sin = rope(3, 2, 2)
    x = torch.zeros(1, cos.shape[0], d)
    x[..., 5] = 1.0
    y = apply_rope(x, cos, sin)
    nonzero = (y.abs() > 0).any(dim=(0, 1)).nonzero().flatten().tolist()
    assert set(nonzero) <= {5, 5 + d // 2}
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_scores_depend_only_on_relative_positions():
    g = torch.Generator().manual_seed(0)
    d, (t, h, w), shift = 24, (3, 4, 5), (2, 1, 3)
    rope = VideoRoPE3D(d, ntk_t=1.0, ntk_h=3.0, ntk_w=3.0)
    q = torch.randn(2, t * h * w, d, generator=g)
    k = torch.randn(2, t * h * w, d, generator=g)

    cos, sin = rope(t, h, w)
    scores = apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(1, 2)

    # The same tokens placed at positions shifted by a constant in every axis of a larger grid.
    big = (t + shift[0], h + shift[1], w + shift[2])
    cos_b, sin_b = rope(*big)
    idx = torch.arange(big[0] * big[1] * big[2]).view(big)
    idx = idx[shift[0]:, shift[1]:, shift[2]:].reshape(-1)
    shifted = apply_rope(q, cos_b[idx], sin_b[idx]) @ apply_rope(k, cos_b[idx], sin_b[idx]).transpose(1, 2)
    torch.testing.assert_close(shifted, scores, atol=1e-4, rtol=1e-4)
    # ...while absolute content does change (the embedding is not the identity).
    assert not torch.allclose(apply_rope(q, cos_b[idx], sin_b[idx]), apply_rope(q, cos, sin))


def test_keeps_dtype_and_rejects_mismatched_tables():
    rope = VideoRoPE3D(24)
    cos, sin = rope(2, 2, 2)
    assert cos.dtype == torch.float32
    x = torch.randn(1, 2, 8, 24, dtype=torch.bfloat16)
    assert apply_rope(x, cos, sin).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="RoPE tables"):
        apply_rope(torch.randn(1, 9, 24), cos, sin)


def test_matches_diffusers_cosmos_rope():
    from diffusers.models.transformers.transformer_cosmos import CosmosRotaryPosEmbed

    head_dim, (t, h, w), patch = 36, (3, 4, 6), 2
    ref = CosmosRotaryPosEmbed(head_dim, max_size=(16, 32, 32), patch_size=(1, patch, patch),
                               rope_scale=(1.0, 3.0, 3.0))
    cos_ref, sin_ref = ref(torch.zeros(1, 1, t, h * patch, w * patch), fps=None)
    cos, sin = VideoRoPE3D(head_dim, ntk_t=1.0, ntk_h=3.0, ntk_w=3.0)(t, h, w)
    torch.testing.assert_close(cos, cos_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sin, sin_ref, atol=1e-5, rtol=1e-5)
    assert math.isclose(float(cos[0, 0]), 1.0)
