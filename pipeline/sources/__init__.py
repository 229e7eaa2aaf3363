"""Dataset readers: each turns a dataset root into `Clip`s (ordered frames, fps, split, label paths).

    list_clips("cityscapes", "/data/cityscapes", cfg.sources["cityscapes"])

A reader only lists files; frames are read later by `pipeline.decode`. A root that does not look like the
dataset raises `DatasetLayoutError` naming the expected layout; one unreadable video found while listing is
passed to `on_error` (or printed) and skipped, so one bad file never stops a listing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from configs.schema import SourceConfig
from pipeline.errors import DatasetLayoutError
from pipeline.sources.base import SPLITS, Clip, OnError
from pipeline.sources.cityscapes import list_cityscapes
from pipeline.sources.covla import list_covla
from pipeline.sources.kitti import list_kitti
from pipeline.sources.nuscenes import list_nuscenes
from pipeline.sources.synthetic import list_synthetic
from pipeline.sources.videos import list_videos

SOURCES: dict[str, Callable[[Path, SourceConfig], list[Clip]]] = {
    "cityscapes": list_cityscapes,
    "nuscenes": list_nuscenes,
    "kitti": list_kitti,
    "covla": list_covla,
    "videos": list_videos,
    "synthetic": list_synthetic,
}

__all__ = ["SOURCES", "Clip", "DatasetLayoutError", "list_clips"]


def list_clips(
    dataset: str,
    root: str | Path,
    cfg: SourceConfig,
    splits: Sequence[str] = ("train", "val"),
    *,
    on_error: OnError | None = None,
) -> list[Clip]:
    """The clips of `splits`, sorted by (split, clip_id). An empty list means the layout is right but the
    requested splits hold nothing (e.g. KITTI, all `val`, asked for `train`)."""
    if dataset not in SOURCES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(SOURCES)}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {SPLITS}")
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetLayoutError(f"{root}: dataset root does not exist (dataset {dataset!r})")
    clips = [clip for clip in SOURCES[dataset](root, cfg, on_error=on_error) if clip.split in splits]
    clips.sort(key=lambda clip: (clip.split, clip.clip_id))
    seen: dict[str, Clip] = {}
    for clip in clips:
        if clip.clip_id in seen:
            other = seen[clip.clip_id]
            raise DatasetLayoutError(
                f"{root}: clip id {clip.clip_id!r} appears twice ({other.split} and {clip.split}: "
                f"{other.video or other.frame_paths[0]} and {clip.video or clip.frame_paths[0]}); rename one"
            )
        seen[clip.clip_id] = clip
    return clips
