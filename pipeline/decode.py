"""Frames and labels as arrays: RGB uint8 frames resized straight to H x W, labels with nearest neighbour.

Every dataset is resized to the window size without keeping the aspect ratio (the paper resizes all datasets
to 432x768), bilinearly with antialiasing (Pillow's resize widens the filter when shrinking). Videos are
decoded in order from the first frame with PyAV, never seeked, so native frame index i is exactly the i-th
decoded frame whatever the container's timestamps say. Anything unreadable raises `InputError` naming the
file, so the cache DAG can record that sample as failed and carry on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.clip import LABEL_KINDS, Clip
from pipeline.errors import InputError


def probe_video(path: str) -> tuple[float, int]:
    """(fps, frame count) of a video's first video stream, from the container; packets are counted when the
    container does not store a frame count (mkv, webm)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(path, "no video stream in this file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            frames = int(stream.frames or 0)
            if frames <= 0:
                frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except InputError:
        raise
    except (av.FFmpegError, OSError) as exc:
        raise InputError(path, f"cannot open video ({_reason(exc)}); the file may be truncated or not a video") from None
    if frames <= 0:
        raise InputError(path, "video has no frames")
    if fps <= 0:
        raise InputError(path, "video does not state a frame rate")
    return fps, frames


def read_frames(clip: Clip, indices: Sequence[int], height: int, width: int) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB of native frames `indices` (any order, repeats allowed) of `clip`."""
    (frames,) = read_frame_groups(clip, [indices], height, width)
    return frames


def read_frame_groups(clip: Clip, groups: Sequence[Sequence[int]], height: int, width: int) -> list[np.ndarray]:
    """`read_frames` for several index lists of one clip (e.g. all its windows), decoding a video only once."""
    _check_size(height, width)
    wanted = sorted({int(i) for group in groups for i in group})
    bad = [i for i in wanted if not 0 <= i < clip.num_frames]
    if bad:
        raise ValueError(f"clip {clip.dataset}/{clip.clip_id}: frame indices {bad} outside 0..{clip.num_frames - 1}")
    if clip.video:
        decoded = _decode_video(clip.video, set(wanted), height, width)
    else:
        decoded = {i: _read_image(clip.frame_paths[i], height, width) for i in wanted}
    empty = np.zeros((0, height, width, 3), np.uint8)
    return [np.stack([decoded[int(i)] for i in group]) if len(group) else empty for group in groups]


def read_label(path: str, height: int, width: int, kind: str) -> np.ndarray:
    """uint8 [H, W] label image resized with nearest neighbour.

    kind "segmentation": Cityscapes train ids (`*_gtFine_labelTrainIds.png`), 255 = ignore.
    kind "depth": 8-bit pseudo-depth (`*_leftImg8bit_depth.png`), 0 = invalid.
    """
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind {kind!r}: choose one of {LABEL_KINDS}")
    _check_size(height, width)
    with _open_image(path) as image:
        if image.mode == "P":
            # Palette PNGs store the class ids as palette indices; the indices are the labels, not the colours.
            image = Image.fromarray(np.asarray(image))
        if image.mode != "L":
            expected = "*_gtFine_labelTrainIds.png (values 0..18, 255 ignore)" if kind == "segmentation" else (
                "*_leftImg8bit_depth.png (values 1..255, 0 invalid)"
            )
            raise InputError(
                path, f"{kind} label must be a single-channel 8-bit image, got mode {image.mode!r}; expected {expected}"
            )
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.NEAREST)
        return np.asarray(image, dtype=np.uint8).copy()


# ------------------------------------------------------------------------------------------ helpers


def _read_image(path: str, height: int, width: int) -> np.ndarray:
    with _open_image(path) as image:
        return _resize_rgb(image, height, width)


def _open_image(path: str) -> Image.Image:
    """Open and fully decode an image, turning every failure into an InputError that says what is wrong."""
    if not os.path.exists(path):
        raise InputError(path, "missing file")
    if os.path.getsize(path) == 0:
        raise InputError(path, "empty file (0 bytes)")
    try:
        image = Image.open(path)
        image.load()  # decode now: a truncated PNG/JPEG fails here, not later inside a model
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(path, f"cannot read image ({_reason(exc)})") from None
    return image


def _decode_video(path: str, wanted: set[int], height: int, width: int) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    last = max(wanted, default=-1)
    decoded = 0
    if last < 0:
        return out
    if not os.path.exists(path):
        raise InputError(path, "missing file")
    if os.path.getsize(path) == 0:
        raise InputError(path, "empty file (0 bytes)")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError(path, "no video stream in this file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threading: faster, output order unchanged
            for frame in container.decode(stream):
                if decoded in wanted:
                    out[decoded] = _resize_rgb(frame.to_image(), height, width)
                decoded += 1
                if decoded > last:
                    break
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot decode video at frame {decoded} ({_reason(exc)}); the file may be truncated") from None
    if decoded <= last:
        raise InputError(path, f"video ended after {decoded} frames but frame {last} was requested (truncated file?)")
    return out


def _resize_rgb(image: Image.Image, height: int, width: int) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [T, H, W, 3] frames resized to [T, height, width, 3] exactly as frames read from files are (Pillow
    bilinear with antialiasing; frames already at the size are returned unchanged)."""
    _check_size(height, width)
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([_resize_rgb(Image.fromarray(np.ascontiguousarray(f)), height, width) for f in frames])


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {height}x{width}")


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"

