"""The labelled frame's labels at the source's own resolution (Cityscapes: 1024x2048), read through the manifest.

The cache keeps labels at the window size only. Native labels are read again from the files the manifest lists
(`segmentation_path`, `depth_path`) rather than cached: 500 Cityscapes val frames are 1 GB per label kind as uint8
at 1024x2048, and evaluation reads each once per run, while a window-size cache stays what training needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pipeline.decode import read_label
from pipeline.errors import InputError

LABEL_COLUMNS = {"segmentation": "segmentation_path", "depth": "depth_path"}


def native_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file, read from its header."""
    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the label image ({exc})") from exc


def read_native_label(row: dict[str, Any], kind: str) -> np.ndarray | None:
    """uint8 [H, W] label of one manifest row at the file's own size, or None when the window has no such label."""
    path = row.get(LABEL_COLUMNS[kind]) or ""
    if not path:
        return None
    try:
        height, width = native_size(path)
        return read_label(path, height, width, kind)
    except InputError as exc:
        raise InputError(exc.path, f"{exc.reason}; native-resolution scoring reads the label files the manifest lists "
                                   "(set protocol.label_resolution = \"window\" to score the cache's labels)") from exc
