"""The paper-size models, built on the meta device from configs/paper.toml: parameter counts, token grid, RoPE tables,
activation-checkpointing flags and output shapes of a meta forward pass, without allocating any weight memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from configs.schema import load_config
from models.foresight import FeatureForesight
from models.rope import rope_axis_dims
from models.stage2 import Stage2Model, stage2_model_spec


@pytest.fixture(scope="module")
def paper():
    return load_config("paper")


def _meta_only(model: torch.nn.Module) -> bool:
    return all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])


def test_paper_stage1_on_the_meta_device(paper):
    grid = (paper.vfm.input_height // 14, paper.vfm.input_width // 14)  # DINOv2 patch 14: 378x672 -> 27x48
    assert grid == paper.token_grid == (27, 48)
    cfg = dataclasses.replace(paper.stage1.model, in_channels=paper.pca.components, grid_h=grid[0], grid_w=grid[1])
    with torch.device("meta"):
        model = FeatureForesight(cfg)
    assert _meta_only(model)
    # 257.8 M: width 1152, 12 blocks, 8 heads, MLP x4, 1152 PCA channels in and out (DINO-Foresight's size).
    assert sum(p.numel() for p in model.parameters()) == 257_755_008
    assert model.pos_time.shape == (paper.stage1.model.context_frames + 1, 384)
    assert model.pos_row.shape == (27, 384) and model.pos_col.shape == (48, 384)
    assert paper.stage1.train.activation_checkpointing is False and model.activation_checkpointing is False
    # (No meta forward: the float32 head uses torch.autocast(device_type=x.device.type), which refuses "meta".)


def test_paper_stage2_on_the_meta_device(paper):
    meta = {"pca": {"components": paper.pca.components}, "codec": {"channels": paper.codec.channels}}
    with torch.device("meta"):
        model = Stage2Model(stage2_model_spec(paper, meta))
    assert _meta_only(model)
    # 784.3 M: width 2048, 14 blocks, 16 heads, AdaLN-LoRA 256, 16 latent + 1152 feature channels in.
    assert sum(p.numel() for p in model.parameters()) == 784_348_672
    net = model.denoiser.net
    assert paper.latent_hw == (54, 96) and paper.token_grid == (27, 48) and paper.latent_frames == 7
    # RoPE: head dim 2048 / 16 = 128 split 44 (time) / 42 (rows) / 42 (columns); tables [7 * 27 * 48, 128].
    assert rope_axis_dims(net.rope.head_dim) == (44, 42, 42)
    cos, sin = net.rope(7, 27, 48, device="meta")
    assert cos.shape == sin.shape == (9072, 128) and cos.dtype == torch.float32
    assert net.rope.ntk == (1.0, 3.0, 3.0)
    # The loop switches checkpointing on from the config (train.activation_checkpointing = true in paper.toml).
    assert paper.stage2.train.activation_checkpointing is True and net.activation_checkpointing is False
    model.activation_checkpointing = True
    assert net.activation_checkpointing is True
    with torch.device("meta"):
        x = torch.empty(1, 16, 7, 54, 96)
        out = net(x, torch.empty(1, 7), torch.empty(1, 7), features=torch.empty(1, 1152, 7, 27, 48))
    assert out.shape == (1, 16, 7, 54, 96) and out.device.type == "meta"
