"""Autoregressive rollout: feeds its own predictions back, slides the window, respects the caller's modes."""

from __future__ import annotations

import pytest
import torch

from configs.schema import Stage1ModelConfig
from models.foresight import FeatureForesight
from models.rollout import rollout, rollout_from_history

CFG = Stage1ModelConfig(width=24, heads=2, depth=1, dropout=0.0, context_frames=3, in_channels=5, grid_h=3, grid_w=4)


def make_model(seed: int = 0) -> FeatureForesight:
    torch.manual_seed(seed)
    model = FeatureForesight(CFG).eval()
    with torch.no_grad():  # non-zero head so predictions differ from frame to frame
        model.head.weight.normal_(std=0.3)
    return model


def frames(n: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, CFG.in_channels, CFG.grid_h, CFG.grid_w, generator=g)


def test_output_shape():
    out = rollout(make_model(), frames(CFG.context_frames), steps=4)
    assert out.shape == (2, 4, CFG.in_channels, CFG.grid_h, CFG.grid_w)


def test_one_step_equals_a_direct_forward():
    model = make_model()
    context = frames(CFG.context_frames)
    slot = torch.randn_like(context[:, :1])  # any values: the model masks the target slot
    direct = model(torch.cat([context, slot], dim=1))
    assert torch.equal(rollout(model, context, steps=1)[:, 0], direct)


def test_each_step_consumes_the_previous_predictions(monkeypatch):
    model = make_model()
    original_forward = model.forward
    inputs, outputs = [], []

    def recording_forward(feats):
        inputs.append(feats.clone())
        out = original_forward(feats)
        outputs.append(out.clone())
        return out

    monkeypatch.setattr(model, "forward", recording_forward)
    m = CFG.context_frames
    context = frames(m)
    steps = 5
    result = rollout(model, context, steps)
    assert len(inputs) == steps
    sequence = torch.cat([context, result], dim=1)  # observed frames then predictions
    for k in range(steps):
        assert inputs[k].shape[1] == m + 1
        # Step k sees the M_f frames before its target: observed ones first, then its own earlier predictions.
        assert torch.equal(inputs[k][:, :m], sequence[:, k : k + m])
        assert torch.equal(result[:, k], outputs[k])
        if k > 0:
            assert torch.equal(inputs[k][:, m - 1], outputs[k - 1])


def test_history_variant_uses_the_last_context_frames():
    model = make_model()
    history = frames(CFG.context_frames + 4)
    expected = rollout(model, history[:, -CFG.context_frames :], steps=3)
    assert torch.equal(rollout_from_history(model, history, steps=3), expected)
    exact = frames(CFG.context_frames)
    assert torch.equal(rollout_from_history(model, exact, 2), rollout(model, exact, 2))


def test_leaves_grad_mode_and_train_mode_to_the_caller():
    model = make_model().train()
    out = rollout(model, frames(CFG.context_frames), steps=2)
    assert out.requires_grad and torch.is_grad_enabled() and model.training
    with torch.no_grad():
        assert not rollout(model, frames(CFG.context_frames), steps=2).requires_grad
    assert torch.is_grad_enabled()


def test_zero_steps_and_bad_input():
    model = make_model()
    assert rollout(model, frames(CFG.context_frames), 0).shape == (2, 0, CFG.in_channels, CFG.grid_h, CFG.grid_w)
    with pytest.raises(ValueError, match="rollout_from_history"):
        rollout(model, frames(CFG.context_frames + 1), 1)
    with pytest.raises(ValueError, match="N >= 3"):
        rollout_from_history(model, frames(CFG.context_frames - 1), 1)
    with pytest.raises(ValueError, match="steps=-1"):
        rollout(model, frames(CFG.context_frames), -1)
    with pytest.raises(TypeError, match="cfg.context_frames"):
        rollout(torch.nn.Identity(), frames(CFG.context_frames), 1)
