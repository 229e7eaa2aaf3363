"""Dataset readers on tiny fixtures in the real layouts (and on the real shared sample data)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from configs.schema import SourceConfig
from pipeline.errors import DatasetLayoutError, InputError
from pipeline.sources import SOURCES, list_clips
from pipeline.sources.base import Clip, hashed_split, read_split_files
from pipeline.sources.nuscenes import official_splits
from tests.fixtures_datasets import (
    DRIVING_CLIPS,
    cityscapes_labels,
    cityscapes_long_recording,
    cityscapes_short_snippets,
    kitti_raw,
    link_clips,
    need,
    noise_image,
    nuscenes_mini,
    write_png,
)

CFG = SourceConfig()


def test_registry_names():
    assert set(SOURCES) == {"cityscapes", "nuscenes", "kitti", "covla", "videos", "synthetic"}


# ------------------------------------------------------------------------------------------ clip


def test_clip_is_hashable_picklable_and_validated():
    clip = Clip("videos", "train", "a", 30.0, 2, frame_paths=["x.png", "y.png"], labels={1: {"depth": "d.png"}})
    assert clip.frame_paths == ("x.png", "y.png") and hash(clip) == hash(pickle.loads(pickle.dumps(clip)))
    assert pickle.loads(pickle.dumps(clip)) == clip
    with pytest.raises(ValueError, match="split"):
        Clip("videos", "training", "a", 30.0, 1, frame_paths=["x.png"])
    with pytest.raises(ValueError, match="exactly one"):
        Clip("videos", "train", "a", 30.0, 1, frame_paths=["x.png"], video="v.mp4")
    with pytest.raises(ValueError, match="num_frames"):
        Clip("videos", "train", "a", 30.0, 3, frame_paths=["x.png"])
    with pytest.raises(ValueError, match="outside"):
        Clip("videos", "train", "a", 30.0, 1, frame_paths=["x.png"], labels={5: {"depth": "d.png"}})
    with pytest.raises(ValueError, match="label kind"):
        Clip("videos", "train", "a", 30.0, 1, frame_paths=["x.png"], labels={0: {"normals": "n.npy"}})


def test_input_error_fields_and_pickle():
    error = InputError("/data/a.png", "empty file (0 bytes)")
    assert (error.path, error.reason, str(error)) == ("/data/a.png", "empty file (0 bytes)", "/data/a.png: empty file (0 bytes)")
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.reason) == (error.path, error.reason)
    assert issubclass(DatasetLayoutError, ValueError)


# ------------------------------------------------------------------------------------------ cityscapes


def test_cityscapes_long_recording_real_frames(tmp_path):
    numbers = cityscapes_long_recording(tmp_path, snippets=2)
    # A gap in the numbering starts a new snippet (3 more frames after a hole).
    for n in range(numbers[-1] + 5, numbers[-1] + 8):
        write_png(tmp_path / "leftImg8bit_sequence/val/frankfurt" / f"frankfurt_000001_{n:06d}_leftImg8bit.png",
                  noise_image(np.random.default_rng(0)))
    labels = cityscapes_labels(tmp_path, "val", "frankfurt", "frankfurt_000001_017101", depth_variant=1)
    clips = list_clips("cityscapes", tmp_path, CFG, splits=("val",))
    assert [c.clip_id for c in clips] == ["frankfurt_000001_017082", "frankfurt_000001_017112", "frankfurt_000001_017146"]
    assert [c.num_frames for c in clips] == [30, 30, 3]
    first = clips[0]
    assert first.fps == 17.0 and first.split == "val" and first.dataset == "cityscapes"
    assert Path(first.frame_paths[19]).name == "frankfurt_000001_017101_leftImg8bit.png"  # the real annotated frame
    assert first.labels == {19: labels}
    assert clips[1].labels == {}  # 017131 has no label files
    assert list_clips("cityscapes", tmp_path, CFG, splits=("train",)) == []


def test_cityscapes_short_snippets_and_label_paths(tmp_path):
    # A parent folder named like the data must not confuse label paths (no string replacement).
    root = tmp_path / "leftImg8bit_data" / "cityscapes"
    cityscapes_short_snippets(root, "train", "aachen", sequences=10, short_sequence=9)
    labels = cityscapes_labels(root, "train", "aachen", "aachen_000003_000019", depth_variant=0)
    clips = list_clips("cityscapes", root, CFG)
    assert [c.clip_id for c in clips] == [f"aachen_{s:06d}_000000" for s in range(10)]
    assert [c.num_frames for c in clips] == [30] * 9 + [29]  # the short snippet is still listed
    assert clips[3].labels == {19: labels}
    assert Path(labels["segmentation"]).parent == root / "gtFine" / "train" / "aachen"
    assert all(c.labels == {} for i, c in enumerate(clips) if i != 3)
    assert all(Path(p).exists() for c in clips for p in c.frame_paths)


def test_cityscapes_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"leftImg8bit_sequence/\{train,val,test\}"):
        list_clips("cityscapes", tmp_path, CFG)
    cityscapes_short_snippets(tmp_path, sequences=1)
    with pytest.raises(DatasetLayoutError, match="pass its parent"):
        list_clips("cityscapes", tmp_path / "leftImg8bit_sequence", CFG)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        list_clips("cityscapes", tmp_path / "missing", CFG)


# ------------------------------------------------------------------------------------------ nuscenes


def test_nuscenes_mini_order_channel_sweeps_and_splits(tmp_path):
    expected = nuscenes_mini(tmp_path)
    clips = list_clips("nuscenes", tmp_path, CFG, splits=("train", "val", "test"))
    assert [(c.split, c.clip_id) for c in clips] == [("train", "scene-0061"), ("val", "scene-0103")]  # scene-9999: no split
    for clip in clips:
        assert clip.fps == 12.0
        assert list(clip.frame_paths) == expected[clip.clip_id]  # timestamp order, CAM_FRONT only, sweeps included
        assert all("CAM_FRONT" in p for p in clip.frame_paths)
        assert sum("/sweeps/" in p for p in clip.frame_paths) == 10 and sum("/samples/" in p for p in clip.frame_paths) == 3


def test_nuscenes_split_file_overrides_official_lists(tmp_path):
    nuscenes_mini(tmp_path)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("scene-9999\n# comment\nscene-0103\n")
    clips = list_clips("nuscenes", tmp_path, CFG)
    assert [(c.split, c.clip_id) for c in clips] == [("train", "scene-0103"), ("train", "scene-9999")]


def test_nuscenes_official_split_lists():
    splits = official_splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 700, "val": 150, "test": 150, "mini_train": 8, "mini_val": 2}
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["val"]) & set(splits["test"])
    assert len(set(splits["train"]) | set(splits["val"]) | set(splits["test"])) == 1000
    assert splits["mini_val"] == ("scene-0103", "scene-0916")
    assert "scene-0061" in splits["mini_train"] and "scene-0061" in splits["train"]


def test_nuscenes_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="v1.0-trainval"):
        list_clips("nuscenes", tmp_path, CFG)
    nuscenes_mini(tmp_path)
    (tmp_path / "v1.0-mini" / "sample.json").unlink()
    with pytest.raises(DatasetLayoutError, match="sample.json"):
        list_clips("nuscenes", tmp_path, CFG)


# ------------------------------------------------------------------------------------------ kitti


def test_kitti_raw_drives_are_val(tmp_path):
    kitti_raw(tmp_path, {"2011_09_26_drive_0001_sync": 12, "2011_09_28_drive_0002_sync": 5})
    (tmp_path / "2011_09_26" / "2011_09_26_drive_0001_sync" / "image_02" / "data" / "0000000007.png").unlink()
    clips = list_clips("kitti", tmp_path, CFG)
    assert [(c.split, c.clip_id, c.num_frames, c.fps) for c in clips] == [
        ("val", "2011_09_26_drive_0001_sync", 12, 10.0),
        ("val", "2011_09_28_drive_0002_sync", 5, 10.0),
    ]
    # The hole at frame 7 is kept as a path, so only windows that need it fail (InputError at read time).
    assert clips[0].frame_paths[7].endswith("image_02/data/0000000007.png")
    assert list_clips("kitti", tmp_path, CFG, splits=("train",)) == []


def test_kitti_split_files(tmp_path):
    kitti_raw(tmp_path, {"2011_09_26_drive_0001_sync": 3, "2011_09_26_drive_0005_sync": 3, "2011_09_29_drive_0004_sync": 3})
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("2011_09_26_drive_0001_sync\n")
    (tmp_path / "splits" / "val.txt").write_text("2011_09_29_drive_0004_sync\n")
    clips = list_clips("kitti", tmp_path, CFG)
    assert [(c.split, c.clip_id) for c in clips] == [
        ("train", "2011_09_26_drive_0001_sync"), ("val", "2011_09_29_drive_0004_sync")]
    (tmp_path / "splits" / "val.txt").write_text("2011_09_26_drive_0001_sync\n")
    with pytest.raises(DatasetLayoutError, match="also listed"):
        list_clips("kitti", tmp_path, CFG)


def test_kitti_layout_error(tmp_path):
    kitti_raw(tmp_path, {"2011_09_26_drive_0001_sync": 2})
    with pytest.raises(DatasetLayoutError, match="image_02/data"):
        list_clips("kitti", tmp_path / "2011_09_26", CFG)


# ------------------------------------------------------------------------------------------ covla, videos


def test_videos_real_clips_split_rule():
    clips = list_clips("videos", need(DRIVING_CLIPS), SourceConfig(val_fraction=0.2))
    assert [c.clip_id for c in clips if c.split == "train"] == [f"clip_{i:02d}" for i in range(8)]
    assert [c.clip_id for c in clips if c.split == "val"] == ["clip_08", "clip_09"]
    assert all(c.fps == 30.0 and c.num_frames == 60 and c.video and c.frame_paths == () for c in clips)
    assert [c.clip_id for c in list_clips("videos", DRIVING_CLIPS, SourceConfig(val_fraction=0.5), splits=("val",))] == [
        "clip_05", "clip_06", "clip_07", "clip_08", "clip_09"]


def test_videos_frame_folders_and_split_folders(tmp_path):
    rng = np.random.default_rng(0)
    for i in (1, 2, 10):  # natural order: frame_2 before frame_10
        write_png(tmp_path / "train" / "drive_a" / f"frame_{i}.png", noise_image(rng))
    link_clips(tmp_path / "val", ["clip_09.mp4"], rename=lambda n: "drive_b.MP4")
    (tmp_path / "train" / "notes.txt").write_text("not a clip")
    clips = list_clips("videos", tmp_path, CFG)
    assert [(c.split, c.clip_id) for c in clips] == [("train", "drive_a"), ("val", "drive_b")]
    folder, video = clips
    assert folder.fps == 30.0 and [Path(p).name for p in folder.frame_paths] == ["frame_1.png", "frame_2.png", "frame_10.png"]
    assert video.num_frames == 60 and video.video.endswith("drive_b.MP4")


def test_videos_unreadable_video_is_reported_and_skipped(tmp_path):
    link_clips(tmp_path, ["clip_00.mp4"])
    (tmp_path / "broken.mp4").write_bytes((DRIVING_CLIPS / "clip_01.mp4").read_bytes()[:20_000])
    (tmp_path / "empty.mp4").write_bytes(b"")
    errors: list[InputError] = []
    clips = list_clips("videos", tmp_path, SourceConfig(val_fraction=0.0), on_error=errors.append)
    assert [c.clip_id for c in clips] == ["clip_00"]
    assert sorted(Path(e.path).name for e in errors) == ["broken.mp4", "empty.mp4"]


def test_videos_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no videos or frame folders"):
        list_clips("videos", tmp_path, CFG)
    link_clips(tmp_path / "train", ["clip_00.mp4"])
    link_clips(tmp_path / "val", ["clip_01.mp4"], rename=lambda n: "clip_00.mp4")
    with pytest.raises(DatasetLayoutError, match="appears twice"):
        list_clips("videos", tmp_path, CFG)


def test_covla_hash_split_and_split_files(tmp_path):
    names = [f"clip_{i:02d}.mp4" for i in range(10)]
    link_clips(tmp_path / "videos", names, rename=lambda n: "scene" + n[5:7] + "abcdef.mp4")
    clips = list_clips("covla", tmp_path, CFG)
    assert len(clips) == 10 and all(c.fps == 30.0 and c.num_frames == 60 for c in clips)  # rate from the container
    for clip in clips:
        assert clip.split == hashed_split(clip.clip_id, 0.2)
    assert list_clips("covla", tmp_path, CFG) == clips  # deterministic
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val.txt").write_text("scene03abcdef\n")
    (tmp_path / "splits" / "train.txt").write_text("scene00abcdef\nscene01abcdef\n")
    clips = list_clips("covla", tmp_path, CFG)
    assert [(c.split, c.clip_id) for c in clips] == [
        ("train", "scene00abcdef"), ("train", "scene01abcdef"), ("val", "scene03abcdef")]
    with pytest.raises(DatasetLayoutError, match="videos/<scene_id>.mp4"):
        list_clips("covla", tmp_path / "videos", CFG)


def test_hashed_split_fraction_and_stability():
    keys = [f"{i:016x}" for i in range(2000)]
    val = sum(hashed_split(k, 0.2) == "val" for k in keys)
    assert 340 < val < 460
    assert hashed_split("scene-a", 0.0) == "train" and hashed_split("scene-a", 1.0) == "val"


def test_read_split_files_absent(tmp_path):
    assert read_split_files(tmp_path) is None


def test_list_clips_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        list_clips("waymo", tmp_path, CFG)
    with pytest.raises(ValueError, match="unknown split"):
        list_clips("videos", tmp_path, CFG, splits=("training",))
