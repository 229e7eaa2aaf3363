"""Starting Stage 1 from DINO-Foresight's released checkpoint layout (other grid) or from one of our checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from configs.schema import ConfigError, Stage1ModelConfig
from models.foresight import FeatureForesight
from tests.test_foresight_import import randomised, to_lightning_layout
from train.stage1_init import initial_state_dict

OURS = Stage1ModelConfig(width=24, heads=2, depth=2, dropout=0.0, context_frames=4, in_channels=8, grid_h=4, grid_w=6)


def _dinof_file(tmp_path, grid=(2, 3)):
    source = randomised(FeatureForesight(dataclasses.replace(OURS, grid_h=grid[0], grid_w=grid[1])), seed=1)
    path = tmp_path / "dinof_lowres.ckpt"
    torch.save({"state_dict": to_lightning_layout(source.state_dict(), OURS.depth)}, path)
    return source, path


def test_dino_foresight_checkpoint_is_resized_to_our_grid(tmp_path):
    source, path = _dinof_file(tmp_path)
    state = initial_state_dict(path, OURS)
    model = FeatureForesight(OURS)
    model.load_state_dict(state, strict=True)
    assert model.pos_row.shape[0] == 4 and model.pos_col.shape[0] == 6
    torch.testing.assert_close(model.pos_time, source.pos_time)
    torch.testing.assert_close(model.blocks[1].attn_s.qkv.weight, source.blocks[1].attn_s.qkv.weight)
    resized = FeatureForesight(dataclasses.replace(OURS, grid_h=2, grid_w=3))
    resized.load_state_dict(source.state_dict())
    resized.resize_grid(4, 6)
    torch.testing.assert_close(model.pos_row, resized.pos_row)


def test_a_checkpoint_that_does_not_fit_names_the_fields(tmp_path):
    _, path = _dinof_file(tmp_path)
    with pytest.raises(ConfigError, match="stage1.model.width"):
        initial_state_dict(path, dataclasses.replace(OURS, width=30, heads=2))


def test_our_checkpoint_folder_is_accepted(tmp_path):
    from train.checkpoint import save_checkpoint

    source = randomised(FeatureForesight(OURS), seed=2)
    ckpt = save_checkpoint(tmp_path / "run", 5, model_state=source.state_dict(), config={"model": dataclasses.asdict(OURS)}, train_state={})
    state = initial_state_dict(ckpt.parent.parent, OURS)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(state[k], v)
