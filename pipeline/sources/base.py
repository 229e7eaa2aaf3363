"""What every dataset reader shares: `Clip` (defined in pipeline/clip.py), one continuous recording at its native
frame rate, and the file extensions. Readers list files
only; they never decode images (listing Cityscapes must not open 90,000 PNGs), so a bad frame surfaces later,
in `pipeline.decode`, as an `InputError` for the one sample that needs it.

Also here: the split helpers several readers share (split files and the hash rule).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

from pipeline.clip import LABEL_KINDS, SPLITS, Clip  # noqa: F401  (re-exported: every reader yields a Clip)
from pipeline.console import console
from pipeline.errors import DatasetLayoutError, InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")

# Called with each unreadable file found while listing (e.g. a video whose header cannot be read);
# the listing skips that file and carries on.
OnError = Callable[[InputError], None]


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
