"""The typed config: presets load, sizes are derived, bad values are refused with their name."""

from __future__ import annotations

import pytest

from configs.schema import ConfigError, config_from_dict, load_config


def test_paper_preset_has_the_paper_sizes():
    cfg = load_config("paper")
    assert (cfg.window.frames, cfg.window.context_frames, cfg.window.height, cfg.window.width) == (25, 13, 432, 768)
    assert cfg.latent_frames == 7 and cfg.context_latent_frames == 4
    assert cfg.latent_hw == (54, 96) and cfg.token_grid == (27, 48)
    assert (cfg.vfm.input_height // 14, cfg.vfm.input_width // 14) == cfg.token_grid
    assert cfg.vfm.layers == [2, 5, 8, 11] and cfg.pca.components == 1152
    assert cfg.codec.name == "wan" and cfg.codec.channels == 16
    assert (cfg.stage2.model.width, cfg.stage2.model.depth, cfg.stage2.model.heads) == (2048, 14, 16)
    assert cfg.stage2.optim.lr == pytest.approx(0.6 * 2**-10.5)
    assert (cfg.stage1.model.width, cfg.stage1.model.depth, cfg.stage1.model.heads) == (1152, 12, 8)


def test_tiny_preset_keeps_the_protocol_and_matches_grids():
    cfg = load_config("tiny")
    assert cfg.latent_frames == 7 and cfg.feature_frame_indices == [0, 4, 8, 12, 16, 20, 24]
    assert (cfg.vfm.input_height // 14, cfg.vfm.input_width // 14) == cfg.token_grid
    assert cfg.codec.name == "linear" and cfg.codec.channels == 16  # WAN-shaped: 64 numbers per 2x2 token


def test_overrides_apply_and_round_trip():
    cfg = load_config("tiny", ["stage1.train.steps=7", "codec.name=pixel", "vfm.layers=[1, 2]"])
    assert cfg.stage1.train.steps == 7 and cfg.vfm.layers == [1, 2]
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    assert load_config("tiny", {"stage2.train.steps": 3}).stage2.train.steps == 3


@pytest.mark.parametrize(
    "override, needle",
    [
        ("window.frames=24", "window.frames"),
        ("window.context_frames=30", "M < K"),
        ("stage1.model.widht=3", "widht"),
        ("stage1.train.steps=abc", "stage1.train.steps"),
        ("codec.name=vqgan", "codec.name"),
        ("window.height=70", "divisible"),
        ("stage2.mixed_supervision_prob=2", "mixed_supervision_prob"),
        ("stage1.model.width=100", "stage1.model.width"),
    ],
)
def test_bad_values_are_refused_by_name(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("tiny", [override])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="tiny"):
        load_config("huge")
