"""Visualisation: PCA colouring, labelled grids, atomic PNG/MP4 files that read back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eval.visualize import (
    frame_grid,
    mp4_codec,
    pca_rgb,
    read_mp4,
    to_uint8_frames,
    write_mp4,
    write_png,
)


def test_pca_rgb_uses_one_range_per_channel_over_the_clip():
    torch.manual_seed(0)
    feats = torch.randn(4, 8, 3, 5)
    feats[2] *= 10  # one loud frame: the other frames must not be stretched to full range on their own
    rgb = pca_rgb(feats, size=(6, 10))
    assert rgb.shape == (4, 6, 10, 3) and rgb.dtype == np.uint8
    for c in range(3):
        assert rgb[..., c].min() == 0 and rgb[..., c].max() == 255  # extremes over the whole clip
    quiet = rgb[[0, 1, 3]].astype(int)
    assert (quiet.max(axis=(0, 1, 2)) - quiet.min(axis=(0, 1, 2)) < 128).all()  # a narrow band of the shared range
    # nearest upsampling: every feature cell becomes a constant 2x2 block; channels past 3 are ignored
    small = pca_rgb(feats)
    assert small.shape == (4, 3, 5, 3)
    assert np.array_equal(pca_rgb(feats, size=(6, 10)), small.repeat(2, axis=1).repeat(2, axis=2))
    assert np.array_equal(pca_rgb(torch.cat([feats[:, :3], torch.zeros(4, 9, 3, 5)], dim=1)), small)
    # expected values by the formula, for channel 0
    f0 = feats[:, 0]
    expected = ((f0 - f0.min()) / (f0.max() - f0.min()) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(small[..., 0], expected)


def test_pca_rgb_handles_constant_and_few_channels():
    rgb = pca_rgb(np.ones((2, 1, 4, 4), dtype=np.float32))  # one constant channel: black, no division by zero
    assert rgb.shape == (2, 4, 4, 3) and not rgb.any()
    with pytest.raises(ValueError, match=r"\[T, C, h, w\]"):
        pca_rgb(torch.zeros(3, 4, 4))


def test_frame_grid_size_and_blank_cells():
    a = np.full((10, 20, 3), 200, np.uint8)
    grid = frame_grid([[a, None, a], [a]], labels=["context", "prediction"], gap=2)
    rows, cols = 2, 3
    assert grid.dtype == np.uint8 and grid.shape[0] == rows * 10 + (rows + 1) * 2
    label_w = grid.shape[1] - (cols * 20 + (cols + 1) * 2)
    assert label_w > 0  # a label column on the left
    x0 = label_w + 2
    assert np.all(grid[2:12, x0 : x0 + 20] == 200)  # first cell
    assert np.all(grid[2:12, x0 + 22 : x0 + 42] == 32)  # None -> blank
    assert np.all(grid[14:24, x0 + 22 : x0 + 42] == 32)  # short second row is padded with blanks
    assert (grid[:, :label_w] < 128).any()  # some label text was drawn
    assert frame_grid([[a]]).shape == (14, 24, 3)  # no labels: no label column
    with pytest.raises(ValueError, match="2 rows"):
        frame_grid([[a], [a]], labels=["one"])
    with pytest.raises(ValueError, match="uint8 image"):
        frame_grid([[a.astype(np.float32)]])


def test_png_and_mp4_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    write_png(image, tmp_path / "a.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), image)

    # a smooth moving gradient, so lossy coding stays close
    y, x = np.mgrid[0:32, 0:48]
    frames = np.stack([np.stack([(x * 5 + t * 8) % 256, y * 7, np.full_like(x, 128)], -1) for t in range(9)]).astype(np.uint8)
    codec = write_mp4(frames, tmp_path / "v.mp4", fps=17.0)
    assert codec == mp4_codec() and codec in ("libx264", "mpeg4")
    back = read_mp4(tmp_path / "v.mp4")
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "v.mp4"]  # no temporary files left

    odd = write_mp4(frames[:, :31, :47], tmp_path / "odd.mp4", fps=30)  # yuv420p: padded to even sizes
    assert odd and read_mp4(tmp_path / "odd.mp4").shape == (9, 32, 48, 3)
    with pytest.raises(ValueError, match="uint8 frames"):
        write_mp4(frames.astype(np.float32), tmp_path / "bad.mp4", fps=30)
    assert not (tmp_path / "bad.mp4").exists()


def test_codec_video_to_frames_is_exact_for_uint8_values():
    frames = torch.randint(0, 256, (5, 8, 8, 3), dtype=torch.uint8)
    video = frames.permute(3, 0, 1, 2).float() / 127.5 - 1
    assert np.array_equal(to_uint8_frames(video), frames.numpy())
