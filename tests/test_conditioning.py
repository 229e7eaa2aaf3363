"""Nested dropout, channel truncation and mixed supervision (pure tensor functions)."""

from __future__ import annotations

import pytest
import torch

from models.conditioning import (
    mix_future_features,
    nested_dropout,
    nested_levels,
    sample_mixed,
    sample_nested_keep,
    truncate_features,
)


def features(b=3, c=16, t=4, h=2, w=3, seed=0):
    return torch.randn(b, c, t, h, w, generator=torch.Generator().manual_seed(seed))


def test_nested_dropout_zeroes_exactly_the_tail_channels_of_each_sample():
    f = features()
    keep = torch.tensor([0, 5, 16])
    out = nested_dropout(f, keep)
    assert out.shape == f.shape
    for b, k in enumerate(keep.tolist()):
        assert torch.equal(out[b, :k], f[b, :k])
        assert torch.all(out[b, k:] == 0)


def test_nested_dropout_does_not_leak_non_finite_dropped_channels():
    f = features()
    f[:, -1] = float("nan")
    out = nested_dropout(f, torch.tensor([4, 4, 4]))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("keep", [torch.tensor([1, 2]), torch.tensor([1, 2, 17]), torch.tensor([-1, 0, 1]),
                                  torch.tensor([1.0, 2.0, 3.0])])
def test_nested_dropout_rejects_bad_keep(keep):
    with pytest.raises(ValueError, match="keep"):
        nested_dropout(features(), keep)


def test_levels_drop_those_above_channels_and_end_with_channels():
    paper = [8, 16, 32, 64, 128, 256, 512, 1152]
    assert nested_levels(paper, 1152) == paper
    assert nested_levels(paper, 64) == [8, 16, 32, 64]
    assert nested_levels(paper, 48) == [8, 16, 32, 48]
    assert nested_levels([16, 8, 8], 20) == [8, 16, 20]
    with pytest.raises(ValueError, match="positive"):
        nested_levels([0, 8], 16)


def test_sampled_levels_are_uniform():
    levels, draws = [8, 16, 32, 64], 8000
    keep = sample_nested_keep(draws, levels + [128], 64, torch.Generator().manual_seed(0))
    assert keep.dtype == torch.long and keep.shape == (draws,)
    values, counts = keep.unique(return_counts=True)
    assert values.tolist() == levels
    expected = draws / len(levels)
    chi2 = float(((counts.double() - expected) ** 2 / expected).sum())
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001
    # Reproducible from the generator.
    again = sample_nested_keep(draws, levels + [128], 64, torch.Generator().manual_seed(0))
    assert torch.equal(keep, again)


def test_inference_truncation_equals_training_nested_dropout_at_the_same_level():
    # Table 5's inference truncation (what models.samplers applies) zeroes exactly what training's nested dropout does.
    f = features()
    for keep in (1, 3, 16):
        levels = torch.full((f.shape[0],), keep, dtype=torch.long)
        out = truncate_features(f, keep)
        assert torch.equal(out, nested_dropout(f, levels))
        assert torch.equal(out[:, :keep], f[:, :keep]) and torch.all(out[:, keep:] == 0)
    assert truncate_features(f, f.shape[1]) is f and truncate_features(f, f.shape[1] + 5) is f  # all kept: no copy


def test_mixed_supervision_frequency_matches_probability():
    draws = 20000
    use = sample_mixed(draws, 0.1, torch.Generator().manual_seed(0))
    assert use.dtype == torch.bool
    # Binomial std at p = 0.1: sqrt(0.09 / 20000) ~ 0.0021; allow 5 sigma.
    assert abs(use.float().mean().item() - 0.1) < 0.011
    assert not sample_mixed(100, 0.0, torch.Generator().manual_seed(0)).any()
    assert sample_mixed(100, 1.0, torch.Generator().manual_seed(0)).all()
    with pytest.raises(ValueError, match="probability"):
        sample_mixed(4, 1.5)


def test_mix_future_features_replaces_only_future_frames_of_selected_samples():
    true = features(b=3, t=5)
    predicted = features(b=3, t=3, seed=1)
    use = torch.tensor([True, False, True])
    out = mix_future_features(true, predicted, use, context_frames=2)
    assert out.shape == true.shape
    assert torch.equal(out[:, :, :2], true[:, :, :2])
    assert torch.equal(out[0, :, 2:], predicted[0]) and torch.equal(out[2, :, 2:], predicted[2])
    assert torch.equal(out[1], true[1])


def test_mix_future_features_rejects_mismatched_inputs():
    true = features(b=2, t=5)
    with pytest.raises(ValueError, match="expected"):
        mix_future_features(true, features(b=2, t=2), torch.tensor([True, False]), context_frames=2)
    with pytest.raises(ValueError, match="use_pred"):
        mix_future_features(true, features(b=2, t=3), torch.tensor([1, 0]), context_frames=2)
    with pytest.raises(ValueError, match="context_frames"):
        mix_future_features(true, features(b=2, t=0), torch.tensor([True, False]), context_frames=5)
