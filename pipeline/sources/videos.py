"""Any folder of driving videos: video files, or sub-folders of images (one sub-folder = one clip).

    <root>/<name>.{mp4,mov,avi,mkv,webm}      a clip decoded in order; fps from the container
    <root>/<name>/<frames>.{png,jpg,...}      a clip of images in natural name order (frame_2 before frame_10), 30 fps
Only the top level is read (no recursion). Split: if `<root>/train/`, `<root>/val/` (or `<root>/test/`) exist, each
is read the same way and gives its split; otherwise clips sorted by name are split so the last
floor(val_fraction * n + 0.5) are val (`sources.videos.val_fraction`, default 0.2: 10 clips -> 8 train, 2 val).
A video whose header cannot be read is reported through `on_error` and skipped.
"""

from __future__ import annotations

import math
from pathlib import Path

from configs.schema import SourceConfig
from pipeline.decode import probe_video
from pipeline.errors import DatasetLayoutError, InputError
from pipeline.sources.base import (
    IMAGE_EXTENSIONS,
    SPLITS,
    VIDEO_EXTENSIONS,
    Clip,
    OnError,
    natural_key,
    report_unreadable,
)

FRAME_FOLDER_FPS = 30.0
LAYOUT = (
    "<root>/<clip>.{mp4,mov,avi,mkv,webm} or <root>/<clip>/<frame>.{png,jpg} "
    "(optionally inside <root>/train/ and <root>/val/)"
)


def list_videos(root: Path, cfg: SourceConfig, *, on_error: OnError | None = None, dataset: str = "videos") -> list[Clip]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: not a folder; expected {LAYOUT}")
    if not 0.0 <= cfg.val_fraction <= 1.0:
        raise ValueError(f"sources.{dataset}.val_fraction={cfg.val_fraction} must be in [0, 1]")
    split_dirs = [(split, root / split) for split in SPLITS if (root / split).is_dir()]
    if split_dirs:
        entries = [(split, entry) for split, folder in split_dirs for entry in _clip_entries(folder)]
    else:
        found = _clip_entries(root)
        n_val = math.floor(len(found) * cfg.val_fraction + 0.5)
        entries = [("val" if i >= len(found) - n_val else "train", entry) for i, entry in enumerate(found)]
    if not entries:
        raise DatasetLayoutError(f"{root}: no videos or frame folders found; expected {LAYOUT}")
    clips = []
    for split, entry in entries:
        clip = _clip(dataset, split, entry, on_error)
        if clip is not None:
            clips.append(clip)
    return clips


def _clip_entries(folder: Path) -> list[Path]:
    """Video files and image folders directly inside `folder`, in natural name order."""
    entries = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.name in SPLITS:
            continue
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            entries.append(path)
        elif path.is_dir() and _images(path):
            entries.append(path)
    return sorted(entries, key=lambda p: natural_key(p.name))


def _images(folder: Path) -> list[Path]:
    images = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    return sorted(images, key=lambda p: natural_key(p.name))


def _clip(dataset: str, split: str, entry: Path, on_error: OnError | None) -> Clip | None:
    clip_id = entry.stem if entry.is_file() else entry.name
    if entry.is_dir():
        frames = tuple(str(p) for p in _images(entry))
        return Clip(
            dataset=dataset, split=split, clip_id=clip_id, fps=FRAME_FOLDER_FPS, num_frames=len(frames), frame_paths=frames
        )
    try:
        fps, count = probe_video(str(entry))
    except InputError as error:
        report_unreadable(error, on_error)
        return None
    return Clip(dataset=dataset, split=split, clip_id=clip_id, fps=fps, num_frames=count, video=str(entry))
