"""Cutting clips into samples: a window is K frames of one clip, taken every `frame_step` native frames.

Window starts, in native frame indices, are `start, start + stride*frame_step, start + 2*stride*frame_step, ...`
(`stride` counts frames *after* subsampling, as configs/schema.py documents, so `stride == K` gives back-to-back
windows whatever the frame step). A window is kept only if all its K frames exist; at most
`max_windows_per_clip` are taken per clip (0 = all). Clips too short for a single window yield nothing;
`skipped_clips` lists them so a command can report how many were dropped.

With the Cityscapes preset (frame_step 1, stride 30, start 3, one window per clip) a 30-frame snippet gives
exactly frames 3..27, and its annotated frame 19 is window index 16.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from configs.schema import ConfigError, SourceConfig
from pipeline.sources.base import Clip


@dataclass(frozen=True)
class Window:
    clip: Clip
    indices: tuple[int, ...]  # native frame indices of the K frames

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        if not self.indices:
            raise ValueError(f"window of clip {self.clip.dataset}/{self.clip.clip_id} has no frames")

    @property
    def sample_id(self) -> str:
        return f"{self.clip.dataset}/{self.clip.clip_id}/{self.indices[0]:06d}"

    @property
    def label_index(self) -> int:
        """Window index of the first labelled frame, -1 if none."""
        for position, native in enumerate(self.indices):
            if native in self.clip.labels:
                return position
        return -1

    @property
    def label_paths(self) -> dict[str, str]:
        """{"segmentation": path, "depth": path} of the labelled frame (only the kinds present); {} if none."""
        position = self.label_index
        return dict(self.clip.labels[self.indices[position]]) if position >= 0 else {}


def check_source_config(cfg: SourceConfig, frames: int) -> None:
    """Raise ConfigError naming the bad `sources.*` value."""
    if frames < 1:
        raise ConfigError(f"window.frames={frames} must be >= 1")
    if cfg.frame_step < 1:
        raise ConfigError(f"sources.*.frame_step={cfg.frame_step} must be >= 1 (1 = every native frame)")
    if cfg.stride < 1:
        raise ConfigError(f"sources.*.stride={cfg.stride} must be >= 1 (frames between window starts)")
    if cfg.start < 0:
        raise ConfigError(f"sources.*.start={cfg.start} must be >= 0 (native frame of the first window)")
    if cfg.max_windows_per_clip < 0:
        raise ConfigError(f"sources.*.max_windows_per_clip={cfg.max_windows_per_clip} must be >= 0 (0 = no limit)")


def window_starts(num_frames: int, frames: int, cfg: SourceConfig) -> list[int]:
    """Native start frames of the windows that fit in a clip of `num_frames` frames."""
    check_source_config(cfg, frames)
    span = (frames - 1) * cfg.frame_step  # native frames from the first to the last frame of a window
    last_start = num_frames - 1 - span
    if last_start < cfg.start:
        return []
    starts = list(range(cfg.start, last_start + 1, cfg.stride * cfg.frame_step))
    return starts[: cfg.max_windows_per_clip] if cfg.max_windows_per_clip else starts


def clip_windows(clip: Clip, frames: int, cfg: SourceConfig) -> list[Window]:
    return [
        Window(clip, tuple(range(s, s + frames * cfg.frame_step, cfg.frame_step)))
        for s in window_starts(clip.num_frames, frames, cfg)
    ]


def make_windows(clips: Sequence[Clip], frames: int, cfg: SourceConfig) -> list[Window]:
    """Every window of every clip, in clip order then start order (deterministic if `clips` is)."""
    return [window for clip in clips for window in clip_windows(clip, frames, cfg)]


def skipped_clips(clips: Sequence[Clip], frames: int, cfg: SourceConfig) -> list[Clip]:
    """The clips that yield no window (too short for K frames at this frame step and start)."""
    return [clip for clip in clips if not window_starts(clip.num_frames, frames, cfg)]
