"""Frame and label decoding: exact frame indices, antialiased resize, and InputError on every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.decode import probe_video, read_frame_groups, read_frames, read_label
from pipeline.errors import InputError
from pipeline.sources.base import Clip
from tests.fixtures_datasets import (
    CITYSCAPES_SAMPLE,
    DRIVING_CLIPS,
    need,
    noise_image,
    write_png,
)

H, W = 40, 72  # not the clips' aspect ratio: frames are resized straight to H x W


def video_clip(path: Path, frames: int = 60) -> Clip:
    return Clip("videos", "train", path.stem, 30.0, frames, video=str(path))


def image_clip(paths: list[Path]) -> Clip:
    return Clip("videos", "train", "frames", 30.0, len(paths), frame_paths=[str(p) for p in paths])


def test_probe_real_clip():
    assert probe_video(str(need(DRIVING_CLIPS) / "clip_03.mp4")) == (30.0, 60)


def test_video_subset_matches_full_decode_and_reference_order():
    clip = video_clip(need(DRIVING_CLIPS) / "clip_02.mp4")
    every = read_frames(clip, range(60), H, W)
    assert every.shape == (60, H, W, 3) and every.dtype == np.uint8
    picked = [41, 3, 59, 3, 0]
    np.testing.assert_array_equal(read_frames(clip, picked, H, W), every[picked])
    # Frame i is the i-th frame PyAV decodes in order (reference decode, then the same resize).
    with av.open(clip.video) as container:
        reference = [f.to_image() for i, f in zip(range(38), container.decode(video=0))][37]
    expected = np.asarray(reference.resize((W, H), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(every[37], expected)
    assert np.abs(every[1:].astype(int) - every[:-1].astype(int)).mean() > 0.5  # real motion, not one repeated frame


def test_frame_groups_decode_once_and_agree():
    clip = video_clip(need(DRIVING_CLIPS) / "clip_05.mp4")
    groups = [[0, 4, 8], [8, 12], []]
    out = read_frame_groups(clip, groups, H, W)
    assert [g.shape[0] for g in out] == [3, 2, 0]
    np.testing.assert_array_equal(out[0][2], out[1][0])
    np.testing.assert_array_equal(out[1], read_frames(clip, [8, 12], H, W))


def test_image_and_video_paths_agree(tmp_path):
    """The same pixels read from a video or from a folder of its frames give identical arrays."""
    clip = video_clip(need(DRIVING_CLIPS) / "clip_07.mp4")
    paths = []
    with av.open(clip.video) as container:
        for i, frame in zip(range(3), container.decode(video=0)):
            paths.append(tmp_path / f"{i:03d}.png")
            frame.to_image().save(paths[-1])
    np.testing.assert_array_equal(read_frames(image_clip(paths), [0, 1, 2], H, W), read_frames(clip, [0, 1, 2], H, W))


def test_resize_is_antialiased_bilinear_like_torch():
    frame = need(CITYSCAPES_SAMPLE) / "leftImg8bit_sequence/val/frankfurt/frankfurt_000001_017101_leftImg8bit.png"
    ours = read_frames(image_clip([frame]), [0], 108, 192)[0].astype(np.float32)
    full = torch.from_numpy(np.array(Image.open(frame).convert("RGB"))).permute(2, 0, 1)[None].float()
    reference = torch.nn.functional.interpolate(full, size=(108, 192), mode="bilinear", antialias=True, align_corners=False)
    reference = reference[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
    assert np.abs(ours - reference).max() <= 1.0
    aliased = torch.nn.functional.interpolate(full, size=(108, 192), mode="bilinear", antialias=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - aliased).mean() > 2.0  # plain bilinear would alias on a 10x shrink


def test_grey_and_rgba_images_become_rgb(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(grey)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8)).save(rgba)
    out = read_frames(image_clip([grey, rgba]), [0, 1], 8, 8)
    assert (out[0] == 77).all() and (out[1] == 200).all()


# ------------------------------------------------------------------------------------------ bad input


def test_truncated_video_raises_input_error(tmp_path):
    broken = tmp_path / "truncated.mp4"
    broken.write_bytes((need(DRIVING_CLIPS) / "clip_00.mp4").read_bytes()[:20_000])
    with pytest.raises(InputError) as info:
        read_frames(video_clip(broken), [0, 30], H, W)
    assert info.value.path == str(broken)
    with pytest.raises(InputError):
        probe_video(str(broken))


def test_video_shorter_than_listed_raises_input_error():
    clip = video_clip(need(DRIVING_CLIPS) / "clip_01.mp4", frames=80)
    with pytest.raises(InputError, match="ended after 60 frames"):
        read_frames(clip, [10, 70], H, W)


def test_zero_byte_missing_and_truncated_images(tmp_path):
    rng = np.random.default_rng(0)
    good = write_png(tmp_path / "good.png", noise_image(rng, 32, 32))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-200])
    text = tmp_path / "text.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.png"
    clip = image_clip([good, empty, truncated, text, missing])
    assert read_frames(clip, [0], 16, 16).shape == (1, 16, 16, 3)
    for index, reason in ((1, "empty file"), (2, "cannot read image"), (3, "cannot read image"), (4, "missing file")):
        with pytest.raises(InputError, match=reason) as info:
            read_frames(clip, [0, index], 16, 16)
        assert info.value.path == clip.frame_paths[index]


def test_index_outside_clip_is_a_caller_error(tmp_path):
    clip = image_clip([write_png(tmp_path / "a.png", noise_image(np.random.default_rng(0)))])
    with pytest.raises(ValueError, match="outside"):
        read_frames(clip, [1], 8, 8)
    with pytest.raises(ValueError, match="positive"):
        read_frames(clip, [0], 0, 8)


# ------------------------------------------------------------------------------------------ labels


def test_label_nearest_resize_keeps_values(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.choice(np.array([0, 1, 2, 8, 10, 11, 13, 255], np.uint8), (64, 128))
    path = write_png(tmp_path / "x_gtFine_labelTrainIds.png", ids)
    out = read_label(str(path), 16, 40, "segmentation")
    assert out.shape == (16, 40) and out.dtype == np.uint8
    assert set(np.unique(out)) <= set(np.unique(ids))
    np.testing.assert_array_equal(read_label(str(path), 64, 128, "segmentation"), ids)
    blocks = np.kron(np.arange(8, dtype=np.uint8).reshape(2, 4), np.ones((4, 4), np.uint8))  # 8x16 of 4x4 blocks
    np.testing.assert_array_equal(read_label(str(write_png(tmp_path / "b.png", blocks)), 2, 4, "depth"),
                                  np.arange(8, dtype=np.uint8).reshape(2, 4))


def test_palette_label_uses_indices(tmp_path):
    ids = np.array([[0, 13], [255, 2]], np.uint8)
    image = Image.fromarray(ids, mode="L").convert("P")
    image.putpalette([v for i in range(256) for v in (i * 7 % 256, 0, 255 - i)])  # colours unrelated to the ids
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label(str(tmp_path / "p.png"), 2, 2, "segmentation"), ids)


def test_bad_labels_raise_input_error(tmp_path):
    colour = write_png(tmp_path / "x_gtFine_color.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="single-channel") as info:
        read_label(str(colour), 4, 4, "segmentation")
    assert info.value.path == str(colour)
    deep = tmp_path / "depth16.png"
    Image.fromarray(np.full((4, 4), 4000, np.uint16)).save(deep)
    with pytest.raises(InputError, match="single-channel"):
        read_label(str(deep), 4, 4, "depth")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(InputError, match="cannot read image"):
        read_label(str(broken), 4, 4, "depth")
    with pytest.raises(InputError, match="missing file"):
        read_label(str(tmp_path / "none.png"), 4, 4, "depth")
    with pytest.raises(ValueError, match="label kind"):
        read_label(str(colour), 4, 4, "normals")
