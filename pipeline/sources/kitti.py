"""KITTI raw (synced + rectified), left colour camera `image_02` at 10 Hz, one clip per drive.

Layout (pykitti / raw devkit):
    <root>/<date>/<date>_drive_<dddd>_sync/image_02/data/<frame:010d>.png

KITTI has no forecasting split, so every drive is `val` (zero-shot evaluation) unless
`<root>/splits/{train,val,test}.txt` lists drive folder names (e.g. `2011_09_26_drive_0001_sync`); with split
files, drives listed in none of them are skipped. Frame paths run over every number from the first to the last
file, so a missing frame in the middle fails only the windows that need it (as an InputError naming it).
"""

from __future__ import annotations

import re
from pathlib import Path

from configs.schema import SourceConfig
from pipeline.console import console
from pipeline.errors import DatasetLayoutError
from pipeline.sources.base import Clip, OnError, read_split_files

FPS = 10.0
CAMERA = "image_02"
LAYOUT = f"<root>/<date>/<date>_drive_<dddd>_sync/{CAMERA}/data/<frame:010d>.png"

_DRIVE = re.compile(r"^\d{4}_\d{2}_\d{2}_drive_\d{4}_sync$")
_FRAME = re.compile(r"^(\d{10})\.png$")


def list_kitti(root: Path, cfg: SourceConfig, *, on_error: OnError | None = None) -> list[Clip]:
    root = Path(root)
    drives = sorted(
        (d for date in _subdirs(root) for d in _subdirs(date) if _DRIVE.match(d.name) and (d / CAMERA / "data").is_dir()),
        key=lambda d: d.name,
    )
    if not drives:
        hint = ""
        if _DRIVE.match(root.name):
            hint = " (you passed a drive folder; pass the folder that holds the date folders)"
        raise DatasetLayoutError(f"{root}: no KITTI raw drives found{hint}; expected {LAYOUT}")
    split_of = read_split_files(root / "splits")
    clips, unlisted = [], []
    for drive in drives:
        split = "val" if split_of is None else split_of.get(drive.name)
        if split is None:
            unlisted.append(drive.name)
            continue
        data = drive / CAMERA / "data"
        numbers = sorted(int(m[1]) for m in map(_FRAME.match, (p.name for p in data.iterdir())) if m)
        if not numbers:
            continue
        paths = tuple(str(data / f"{n:010d}.png") for n in range(numbers[0], numbers[-1] + 1))
        clips.append(Clip(dataset="kitti", split=split, clip_id=drive.name, fps=FPS, num_frames=len(paths), frame_paths=paths))
    if unlisted:
        console.print(f"[yellow]note[/yellow] kitti: {len(unlisted)} drive(s) in no split file skipped, e.g. {unlisted[:3]}")
    return clips


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
