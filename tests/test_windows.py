"""Window cutting: starts, frame steps, limits, labels, and the Cityscapes preset (frames 3..27, label index 16)."""

from __future__ import annotations

import pytest

from configs.schema import ConfigError, SourceConfig, load_config
from pipeline.sources.base import Clip
from pipeline.windows import Window, make_windows, skipped_clips, window_starts


def clip(num_frames: int, clip_id: str = "c", labels=None) -> Clip:
    return Clip("videos", "train", clip_id, 30.0, num_frames, frame_paths=[f"{i}.png" for i in range(num_frames)],
                labels=labels or {})


@pytest.mark.parametrize(
    "num_frames, frames, cfg, starts",
    [
        (60, 25, SourceConfig(stride=25), [0, 25]),  # back to back
        (60, 25, SourceConfig(stride=12), [0, 12, 24]),  # overlapping; 36 would need frames up to 60
        (49, 25, SourceConfig(frame_step=2, stride=25), [0]),  # 25 frames every 2nd native frame span 49
        (48, 25, SourceConfig(frame_step=2, stride=25), []),
        (200, 5, SourceConfig(frame_step=3, stride=4, start=2), list(range(2, 188, 12))),  # stride counts subsampled frames
        (60, 25, SourceConfig(stride=5, max_windows_per_clip=3), [0, 5, 10]),
        (30, 25, SourceConfig(stride=30, start=3, max_windows_per_clip=1), [3]),
        (30, 25, SourceConfig(stride=1, start=6), []),
        (25, 25, SourceConfig(stride=100), [0]),
    ],
)
def test_window_starts(num_frames, frames, cfg, starts):
    assert window_starts(num_frames, frames, cfg) == starts
    for s in starts:  # every window fits inside the clip
        assert s + (frames - 1) * cfg.frame_step <= num_frames - 1


def test_windows_indices_and_ids():
    windows = make_windows([clip(50, "a"), clip(9, "b"), clip(10, "c")], 5, SourceConfig(frame_step=2, stride=10, start=1))
    # A window spans 1 + 4 * 2 = 9 native frames: clip b (frames 0..8) is too short from start 1, clip c just fits.
    assert [w.sample_id for w in windows] == ["videos/a/000001", "videos/a/000021", "videos/a/000041", "videos/c/000001"]
    assert windows[1].indices == (21, 23, 25, 27, 29)
    assert all(len(w.indices) == 5 for w in windows)


def test_skipped_clips():
    clips = [clip(50, "a"), clip(10, "b"), clip(25, "c"), clip(24, "d")]
    assert [c.clip_id for c in skipped_clips(clips, 25, SourceConfig())] == ["b", "d"]


def test_cityscapes_preset_gives_frames_3_to_27_and_label_16():
    cfg = load_config("tiny")
    snippet = clip(30, "frankfurt_000001_017082", labels={19: {"segmentation": "s.png", "depth": "d.png"}})
    (window,) = make_windows([snippet], cfg.window.frames, cfg.sources["cityscapes"])
    assert window.indices == tuple(range(3, 28))
    assert window.label_index == 16 == cfg.eval.annotated_index
    assert window.label_paths == {"segmentation": "s.png", "depth": "d.png"}
    assert window.sample_id == "videos/frankfurt_000001_017082/000003"
    # 16 is also the first predicted feature frame: window index 4 * 4 with temporal factor 4.
    assert cfg.feature_frame_indices[cfg.stage1.model.context_frames] == 16


def test_label_index_absent_or_outside_window():
    assert Window(clip(30), tuple(range(3, 28))).label_index == -1
    assert Window(clip(30, labels={1: {"depth": "d.png"}}), tuple(range(3, 28))).label_index == -1
    labelled = Window(clip(30, labels={4: {"depth": "d.png"}, 9: {"depth": "e.png"}}), (2, 4, 6, 8, 9))
    assert labelled.label_index == 1 and labelled.label_paths == {"depth": "d.png"}
    assert Window(clip(30), (0,)).label_paths == {}


def test_bad_source_config_is_named():
    for bad, name in ((SourceConfig(frame_step=0), "frame_step"), (SourceConfig(stride=0), "stride"),
                      (SourceConfig(start=-1), "start"), (SourceConfig(max_windows_per_clip=-2), "max_windows_per_clip")):
        with pytest.raises(ConfigError, match=name):
            make_windows([clip(30)], 5, bad)
    with pytest.raises(ValueError, match="no frames"):
        Window(clip(3), ())


def test_windows_are_hashable_and_deterministic():
    clips = [clip(100, "a", labels={50: {"depth": "d.png"}})]
    first = make_windows(clips, 9, SourceConfig(stride=7))
    assert first == make_windows(clips, 9, SourceConfig(stride=7))
    assert len(set(first)) == len(first)
