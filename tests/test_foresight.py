"""Stage 1 masked feature transformer: shapes, masking, init, fused attention, grid resize, paper size, overfitting."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from configs.schema import Stage1ModelConfig, load_config
from models.foresight import FeatureForesight


def small_config(**changes) -> Stage1ModelConfig:
    base = Stage1ModelConfig(width=48, heads=4, depth=2, mlp_ratio=4.0, dropout=0.0, context_frames=3,
                             in_channels=8, grid_h=4, grid_w=6)
    return dataclasses.replace(base, **changes)


def randomise_head(model: FeatureForesight, seed: int = 1) -> None:
    """The head starts at zero (constant output); give it weights so the output depends on the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g) * 0.2)


def feats_for(cfg: Stage1ModelConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.context_frames + 1, cfg.in_channels, cfg.grid_h, cfg.grid_w, generator=g)


def test_tiny_preset_shapes_and_loss():
    torch.manual_seed(0)
    cfg = dataclasses.replace(load_config("tiny").stage1.model, in_channels=16, grid_h=8, grid_w=16)
    model = FeatureForesight(cfg)
    feats = feats_for(cfg)
    out = model(feats)
    assert out.shape == (2, cfg.in_channels, cfg.grid_h, cfg.grid_w)
    assert model.pos_time.shape == (cfg.context_frames + 1, cfg.width // 3)
    assert model.pos_row.shape == (cfg.grid_h, cfg.width // 3)
    assert model.pos_col.shape == (cfg.grid_w, cfg.width // 3)
    loss = model.loss(feats)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.allclose(loss, F.smooth_l1_loss(out, feats[:, -1], beta=0.1))


def test_paper_size_on_meta_device():
    cfg = Stage1ModelConfig(in_channels=1152, grid_h=27, grid_w=48)  # dataclass defaults = paper recipe
    with torch.device("meta"):
        model = FeatureForesight(cfg)
    w, r = cfg.width, cfg.mlp_ratio
    per_block = 2 * (4 * w * w + 4 * w) + int(2 * r * w * w + r * w + w) + 6 * w  # 2 attentions, MLP, 3 LayerNorms
    in_blocks = sum(p.numel() for p in model.blocks.parameters())
    total = sum(p.numel() for p in model.parameters())
    print(f"paper-size Stage 1: {in_blocks / 1e6:.1f}M in blocks, {total / 1e6:.1f}M total")
    assert in_blocks == cfg.depth * per_block
    assert 254e6 < in_blocks < 256e6  # reference: about 255.1M in the 12 blocks
    assert 255e6 < total < 260e6  # reference: about 257.7M trainable
    assert model.head.weight.device.type == "meta"


def test_prediction_ignores_target_frame_values():
    torch.manual_seed(0)
    cfg = small_config()
    model = FeatureForesight(cfg).eval()
    randomise_head(model)
    feats = feats_for(cfg)
    changed = feats.clone()
    changed[:, -1] = torch.randn_like(changed[:, -1]) * 100
    assert torch.equal(model(feats), model(changed))
    # ...while every context frame does matter.
    for t in range(cfg.context_frames):
        other = feats.clone()
        other[:, t] += 1.0
        assert not torch.allclose(model(feats), model(other))


def test_output_is_head_bias_at_init():
    torch.manual_seed(0)
    cfg = small_config()
    model = FeatureForesight(cfg)
    out = model(feats_for(cfg))
    assert torch.equal(model.head.weight, torch.zeros_like(model.head.weight))
    assert torch.equal(out, model.head.bias[None, :, None, None].expand_as(out))


def test_batch_elements_are_independent():
    torch.manual_seed(0)
    cfg = small_config()
    model = FeatureForesight(cfg).eval()
    randomise_head(model)
    feats = feats_for(cfg, batch=3)
    together = model(feats)
    alone = torch.cat([model(feats[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_fused_and_unfused_attention_agree():
    torch.manual_seed(0)
    cfg = small_config(dropout=0.1)
    model = FeatureForesight(cfg).eval()
    randomise_head(model)
    feats = feats_for(cfg)
    fused = model(feats)
    model.use_fused_attention(False)
    assert all(not b.attn_t.fused and not b.attn_s.fused for b in model.blocks)
    unfused = model(feats)
    assert torch.allclose(fused, unfused, atol=1e-5)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    cfg = small_config(dropout=0.3)
    model = FeatureForesight(cfg)
    randomise_head(model)
    feats = feats_for(cfg)
    model.train()
    assert not torch.allclose(model(feats), model(feats))
    model.eval()
    assert torch.equal(model(feats), model(feats))


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    cfg = small_config()
    model = FeatureForesight(cfg)
    randomise_head(model)
    feats = feats_for(cfg)
    model.loss(feats).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing = True
    model.loss(feats).backward()
    for a, p in zip(plain, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_resize_grid_interpolates_tables_and_runs():
    torch.manual_seed(0)
    cfg = small_config(grid_h=2, grid_w=3)
    model = FeatureForesight(cfg)
    randomise_head(model)
    row, col, time = model.pos_row.detach().clone(), model.pos_col.detach().clone(), model.pos_time.detach().clone()
    model.resize_grid(4, 6)
    assert model.pos_row.shape == (4, cfg.width // 3) and model.pos_col.shape == (6, cfg.width // 3)
    assert (model.cfg.grid_h, model.cfg.grid_w) == (4, 6)
    assert cfg.grid_h == 2  # the caller's config is not mutated
    assert torch.equal(model.pos_time, time)
    # Linear interpolation with half-pixel centres (align_corners=False) doubling [a, b] -> [a, .75a+.25b, .25a+.75b, b].
    a, b = row[0], row[1]
    expected = torch.stack([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b])
    assert torch.allclose(model.pos_row, expected, atol=1e-6)
    assert torch.allclose(model.pos_col[0], col[0]) and torch.allclose(model.pos_col[-1], col[-1])
    assert model.pos_row.requires_grad
    out = model(feats_for(model.cfg))
    assert out.shape == (2, cfg.in_channels, 4, 6)
    model.resize_grid(4, 6)  # same size: identity
    assert torch.allclose(model.pos_row, expected, atol=1e-6)


def test_bad_input_and_bad_config_raise_clearly():
    cfg = small_config()
    model = FeatureForesight(cfg)
    with pytest.raises(ValueError, match="context_frames \\+ 1"):
        model(torch.zeros(1, cfg.context_frames, cfg.in_channels, cfg.grid_h, cfg.grid_w))
    with pytest.raises(ValueError, match="resize_grid"):
        model(torch.zeros(1, cfg.context_frames + 1, cfg.in_channels, cfg.grid_h + 1, cfg.grid_w))
    with pytest.raises(ValueError, match=r"\[B, T, C, h, w\]"):
        model(torch.zeros(cfg.context_frames + 1, cfg.in_channels, cfg.grid_h, cfg.grid_w))
    with pytest.raises(ValueError, match="in_channels=0"):
        FeatureForesight(small_config(in_channels=0))
    with pytest.raises(ValueError, match="divisible by 3"):
        FeatureForesight(small_config(width=50, heads=5))
    with pytest.raises(ValueError, match="divisible by 3"):
        FeatureForesight(small_config(width=48, heads=5))


def test_tiny_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    cfg = small_config(width=48, heads=4, depth=2, in_channels=6, grid_h=3, grid_w=4)
    model = FeatureForesight(cfg)
    feats = feats_for(cfg, batch=2, seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(feats).item()
    for _ in range(300):
        optimizer.zero_grad()
        loss = model.loss(feats)
        loss.backward()
        optimizer.step()
    final = model.loss(feats).item()
    assert final < first / 10, (first, final)


def test_the_head_returns_float32_under_bf16_autocast():
    cfg = Stage1ModelConfig(width=24, heads=2, depth=1, dropout=0.0, context_frames=2, in_channels=4, grid_h=2, grid_w=3)
    model = FeatureForesight(cfg)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    torch.nn.init.constant_(model.head.bias, 37.777)
    x = torch.randn(2, 3, 4, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.float32
    # Not rounded to bf16's 8-bit mantissa (steps of 0.25 near 37.8): the values keep float32 resolution.
    assert not torch.equal(out, out.to(torch.bfloat16).float())
