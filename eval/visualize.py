"""Pictures and videos of predictions: PCA-coloured feature maps, labelled frame grids, atomic PNG and MP4 files.

Feature maps are shown as the paper's figures do: their first three PCA channels as RGB. One min/max per channel over
the whole clip (not per frame) keeps a colour meaning the same thing in every frame. MP4s are H.264 (libx264) when the
installed PyAV/FFmpeg has it, else MPEG-4 part 2; both are written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from pipeline import atomic

BLANK = 32  # grey level of empty grid cells
BACKGROUND = 255  # grid background and label column
GAP = 2  # pixels between grid cells


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def pca_rgb(features: torch.Tensor | np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """features [T, C, h, w] (PCA coefficients) -> uint8 [T, H, W, 3]: channels 0, 1, 2 as R, G, B.

    Each of the three channels is mapped to 0..255 with its min/max over all T frames; a constant channel maps to 0.
    With fewer than 3 channels the missing colours stay 0. `size` = (H, W) upsamples with nearest neighbour so every
    feature cell stays a crisp block; None keeps h x w.
    """
    f = _as_tensor(features).detach().float().cpu()
    if f.ndim != 4:
        raise ValueError(f"pca_rgb expects features [T, C, h, w], got shape {tuple(f.shape)}")
    t, c, h, w = f.shape
    rgb = torch.zeros(t, 3, h, w)
    rgb[:, : min(c, 3)] = f[:, :3]
    lo = rgb.amin(dim=(0, 2, 3), keepdim=True)
    hi = rgb.amax(dim=(0, 2, 3), keepdim=True)
    span = hi - lo
    rgb = torch.where(span > 0, (rgb - lo) / span.clamp_min(1e-12), torch.zeros_like(rgb))
    if size is not None and tuple(size) != (h, w):
        rgb = F.interpolate(rgb, size=tuple(size), mode="nearest")
    return (rgb * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """A codec video [3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3] (rounded, so a lossless round trip is exact)."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video [3, T, H, W] in [-1, 1], got shape {tuple(video.shape)}")
    frames = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).contiguous().numpy()


def _check_image(image: np.ndarray, where: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{where}: expected a uint8 image [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    return image


def frame_grid(rows: Sequence[Sequence[np.ndarray | None]], labels: Sequence[str] | None = None, gap: int = GAP) -> np.ndarray:
    """Tile uint8 [H, W, 3] images into one uint8 image, row by row, with a text label left of each row.

    Cells may be None (drawn as a dark blank) and rows may be of different lengths; every cell gets the size of the
    largest image (smaller images are centred).
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("frame_grid needs at least one row with at least one cell")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"frame_grid: {len(labels)} labels for {len(rows)} rows")
    cells = [_check_image(c, f"frame_grid row {i}") for i, row in enumerate(rows) for c in row if c is not None]
    if not cells:
        raise ValueError("frame_grid: every cell is empty")
    cell_h = max(c.shape[0] for c in cells)
    cell_w = max(c.shape[1] for c in cells)
    font = ImageFont.load_default()
    label_w = 0
    if labels:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_w = max(int(probe.textlength(str(label), font=font)) for label in labels) + 2 * gap + 4
    columns = max(len(r) for r in rows)
    height = len(rows) * cell_h + (len(rows) + 1) * gap
    width = label_w + columns * cell_w + (columns + 1) * gap
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    for i, row in enumerate(rows):
        y = gap + i * (cell_h + gap)
        for j in range(columns):
            x = label_w + gap + j * (cell_w + gap)
            cell = row[j] if j < len(row) else None
            if cell is None:
                canvas[y : y + cell_h, x : x + cell_w] = BLANK
                continue
            dy, dx = (cell_h - cell.shape[0]) // 2, (cell_w - cell.shape[1]) // 2
            canvas[y + dy : y + dy + cell.shape[0], x + dx : x + dx + cell.shape[1]] = cell
    if labels:
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        for i, label in enumerate(labels):
            y = gap + i * (cell_h + gap) + cell_h // 2
            draw.text((gap + 2, y), str(label), fill=(0, 0, 0), font=font, anchor="lm")
        canvas = np.asarray(image).copy()
    return canvas


def write_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 [H, W, 3] image as PNG atomically."""
    image = _check_image(image, str(path))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    atomic.write_bytes(path, buffer.getvalue())


def mp4_codec() -> str:
    """libx264 when this FFmpeg build has the encoder, else mpeg4 (always built in)."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except (av.FFmpegError, ValueError):
        return "mpeg4"


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column when one is odd."""
    _, h, w, _ = frames.shape
    if h % 2:
        frames = np.concatenate([frames, frames[:, -1:]], axis=1)
    if w % 2:
        frames = np.concatenate([frames, frames[:, :, -1:]], axis=2)
    return frames


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float) -> str:
    """Write uint8 [T, H, W, 3] frames as an MP4 atomically (temporary sibling, then rename). Returns the codec used."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(f"{path}: expected uint8 frames [T >= 1, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    frames = _even(frames)
    codec = mp4_codec()
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=_rate(fps))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "17", "preset": "medium"}
            else:
                stream.bit_rate = 8_000_000
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return codec


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video as uint8 [T, H, W, 3] (for checks and notebooks)."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames)


class GridCollector:
    """Qualitative grids (paper figures 4-8): for each of a few windows, one row of frames per method, at the given
    window indices (`columns`). Methods add whole clips; the collector keeps only the cells it needs."""

    def __init__(self, rows: Sequence[int], columns: Sequence[int]):
        self.columns = list(columns)
        self.cells: dict[int, dict[str, list[np.ndarray | None]]] = {int(r): {} for r in rows}

    def add(self, rows: Sequence[int], label: str, video: torch.Tensor, first: int) -> None:
        """`video` uint8 [B, 3, T, H, W] for windows `rows`, whose frame 0 is window index `first` (earlier columns
        stay empty). The first clip added under a label is kept."""
        for b, r in enumerate(rows):
            if r in self.cells and label not in self.cells[r]:
                self.cells[r][label] = [video[b, :, c - first].permute(1, 2, 0).cpu().numpy() if c >= first else None
                                        for c in self.columns]

    def write(self, out_dir: Path, names: dict[int, str]) -> list[Path]:
        """One PNG per window, `out_dir / f"{names[row]}.png"`; returns the paths written."""
        written = []
        for r, cells in self.cells.items():
            if cells:
                labels = list(cells)
                path = out_dir / f"{names[r]}.png"
                write_png(frame_grid([cells[k] for k in labels], labels), path)
                written.append(path)
        return written
