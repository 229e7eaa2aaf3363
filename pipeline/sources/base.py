"""What every dataset reader yields: `Clip`, one continuous recording at its native frame rate.

A clip is either an image sequence (`frame_paths`, one file per native frame) or one video file decoded in
order (`video`). Labels, where a dataset has them, are attached to native frame indices. Readers list files
only; they never decode images (listing Cityscapes must not open 90,000 PNGs), so a bad frame surfaces later,
in `pipeline.decode`, as an `InputError` for the one sample that needs it.

Also here: the split helpers several readers share (split files and the hash rule).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.console import console
from pipeline.decode import LABEL_KINDS
from pipeline.errors import DatasetLayoutError, InputError

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")

# Called with each unreadable file found while listing (e.g. a video whose header cannot be read);
# the listing skips that file and carries on.
OnError = Callable[[InputError], None]


@dataclass(frozen=True)
class Clip:
    """One recording. `labels` maps a native frame index to {"segmentation": path, "depth": path}.

    `labels` is excluded from the hash (a dict is unhashable) but included in equality, so clips can be
    dict keys and set members; treat it as read-only.
    """

    dataset: str
    split: str
    clip_id: str
    fps: float
    num_frames: int
    frame_paths: tuple[str, ...] = ()
    video: str = ""
    labels: dict[int, dict[str, str]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame_paths", tuple(str(p) for p in self.frame_paths))
        object.__setattr__(self, "video", str(self.video))
        object.__setattr__(self, "labels", {int(i): {str(k): str(v) for k, v in d.items()} for i, d in self.labels.items()})
        where = f"clip {self.dataset}/{self.clip_id}"
        if self.split not in SPLITS:
            raise ValueError(f"{where}: split {self.split!r} must be one of {SPLITS}")
        if bool(self.frame_paths) == bool(self.video):
            raise ValueError(f"{where}: give exactly one of frame_paths (image sequence) or video (one file)")
        if self.frame_paths and self.num_frames != len(self.frame_paths):
            raise ValueError(f"{where}: num_frames={self.num_frames} but {len(self.frame_paths)} frame paths")
        if self.num_frames < 0 or self.fps <= 0:
            raise ValueError(f"{where}: need num_frames >= 0 and fps > 0, got {self.num_frames} and {self.fps}")
        for index, kinds in self.labels.items():
            if not 0 <= index < self.num_frames:
                raise ValueError(f"{where}: label at frame {index} is outside 0..{self.num_frames - 1}")
            unknown = set(kinds) - set(LABEL_KINDS)
            if unknown:
                raise ValueError(f"{where}: unknown label kind(s) {sorted(unknown)}; known: {LABEL_KINDS}")

    @property
    def source(self) -> str:
        """The video file, or "" for an image sequence (the manifest's `source` column)."""
        return self.video

    @property
    def labelled_frames(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels))


def report_unreadable(error: InputError, on_error: OnError | None) -> None:
    """Hand a file that could not be listed to the caller, or say so loudly when nobody collects them."""
    if on_error is not None:
        on_error(error)
    else:
        console.print(f"[bold red]skipped[/bold red] {error}")


# ------------------------------------------------------------------------------------------ splits


def read_split_files(folder: Path) -> dict[str, str] | None:
    """`folder/{train,val,test}.txt` (one name per line, `#` comments) -> {name: split}; None if no file.

    A name listed in two files is a layout error: the split would depend on reading order.
    """
    found = [(split, folder / f"{split}.txt") for split in SPLITS if (folder / f"{split}.txt").is_file()]
    if not found:
        return None
    assignment: dict[str, str] = {}
    for split, path in found:
        for line in path.read_text().splitlines():
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            if name in assignment and assignment[name] != split:
                raise DatasetLayoutError(
                    f"{path}: {name!r} is also listed in {folder / (assignment[name] + '.txt')}; "
                    "each name may appear in one split file only"
                )
            assignment[name] = split
    return assignment


def hashed_split(key: str, val_fraction: float) -> str:
    """'val' for a stable pseudo-random `val_fraction` of keys, else 'train' (sha1 of the key, not Python's hash)."""
    u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


def natural_key(name: str) -> tuple:
    """Sort key that puts frame_2.png before frame_10.png."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))
