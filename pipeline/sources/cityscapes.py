"""Cityscapes video snippets (`leftImg8bit_sequence`), with the gtFine and pseudo-depth labels of frame 19.

Layout (cityscapesScripts naming):
    <root>/leftImg8bit_sequence/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    <root>/gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png                  (segmentation, optional)
    <root>/leftImg8bit_sequence_depthv2/{split}/{city}/{stem}_leftImg8bit_depth.png (depth, optional)
    <root>/leftImg8bit_depthv2/{split}/{city}/{stem}_leftImg8bit_depthv2.png      (depth, DINO-Foresight's script)

Every annotated image is frame 19 of a 30-frame snippet. Snippets are found as DINO-Foresight does:
- a city with >= 10 sequence ids stores one snippet per sequence id: one clip per id;
- a city with fewer ids holds long recordings (e.g. val/frankfurt): its frames, sorted, are cut into consecutive
  30-frame snippets. Unlike DINO-Foresight, a gap in the frame numbers also starts a new snippet, so one
  missing file cannot shift every later snippet; on the complete package both rules give the same snippets.
Snippets that are not exactly 30 frames long are still listed (the window maker decides) and counted in a note.
Label paths are built from the frame's stem and the city folder, never by string-replacing an absolute path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from configs.schema import SourceConfig
from pipeline.console import console
from pipeline.errors import DatasetLayoutError
from pipeline.sources.base import SPLITS, Clip, OnError

FPS = 17.0  # 30 frames per ~1.8 s snippet
SNIPPET_FRAMES = 30  # a property of the dataset (not of the paper's window)
ANNOTATED_INDEX = 19  # the gtFine frame is the 20th frame of its snippet
SHORT_SNIPPET_MIN_SEQUENCES = 10

SEQUENCE_DIR = "leftImg8bit_sequence"
FRAME_SUFFIX = "_leftImg8bit.png"
SEGMENTATION_DIR, SEGMENTATION_SUFFIX = "gtFine", "_gtFine_labelTrainIds.png"
DEPTH_LOCATIONS = (
    ("leftImg8bit_sequence_depthv2", "_leftImg8bit_depth.png"),
    ("leftImg8bit_depthv2", "_leftImg8bit_depthv2.png"),
)
LAYOUT = f"<root>/{SEQUENCE_DIR}/{{train,val,test}}/<city>/<city>_<seq:06d>_<frame:06d>{FRAME_SUFFIX}"

_FRAME_NAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d+)_(?P<frame>\d+)_leftImg8bit\.png$")


def list_cityscapes(
    root: Path, cfg: SourceConfig, *, on_error: OnError | None = None, dataset: str = "cityscapes", fps: float = FPS
) -> list[Clip]:
    """Every snippet of every split present under `root` (also the reader of the synthetic sample dataset)."""
    root = Path(root)
    sequences = root / SEQUENCE_DIR
    if not sequences.is_dir():
        hint = ""
        if root.name == SEQUENCE_DIR:
            hint = f" (you passed the {SEQUENCE_DIR} folder itself; pass its parent)"
        raise DatasetLayoutError(f"{root}: not a {dataset} root{hint}; expected {LAYOUT}")
    clips: list[Clip] = []
    odd_lengths = 0
    for split in SPLITS:
        split_dir = sequences / split
        if not split_dir.is_dir():
            continue
        for city in sorted(p.name for p in split_dir.iterdir() if p.is_dir()):
            labels_for = _label_finder(root, split, city)
            for snippet in _city_snippets(split_dir / city):
                odd_lengths += len(snippet) != SNIPPET_FRAMES
                stems = [_stem(name) for name in snippet]
                labels = {}
                if len(snippet) > ANNOTATED_INDEX:
                    found = labels_for(stems[ANNOTATED_INDEX])
                    if found:
                        labels[ANNOTATED_INDEX] = found
                clips.append(
                    Clip(
                        dataset=dataset,
                        split=split,
                        clip_id=stems[0],
                        fps=fps,
                        num_frames=len(snippet),
                        frame_paths=tuple(str(split_dir / city / name) for name in snippet),
                        labels=labels,
                    )
                )
    if not clips:
        raise DatasetLayoutError(f"{root}: no frames found under {sequences}; expected {LAYOUT}")
    if odd_lengths:
        console.print(
            f"[yellow]note[/yellow] {dataset}: {odd_lengths} of {len(clips)} snippets are not {SNIPPET_FRAMES} frames "
            "long (incomplete download?); they are listed and windows that do not fit are skipped"
        )
    return clips


def _city_snippets(city_dir: Path) -> list[list[str]]:
    """Frame file names of one city grouped into snippets, each sorted by frame number."""
    frames: list[tuple[str, int, str]] = []  # (seq, frame number, file name)
    for name in os.listdir(city_dir):
        match = _FRAME_NAME.match(name)
        if match:
            frames.append((match["seq"], int(match["frame"]), name))
    frames.sort()
    sequences = sorted({seq for seq, _, _ in frames})
    if len(sequences) >= SHORT_SNIPPET_MIN_SEQUENCES:
        return [[name for s, _, name in frames if s == seq] for seq in sequences]
    snippets: list[list[str]] = []
    run: list[str] = []
    previous: tuple[str, int] | None = None
    for seq, number, name in frames:
        if previous is not None and (seq != previous[0] or number != previous[1] + 1):
            snippets.extend(_chunks(run))
            run = []
        run.append(name)
        previous = (seq, number)
    snippets.extend(_chunks(run))
    return snippets


def _chunks(run: list[str]) -> list[list[str]]:
    return [run[i : i + SNIPPET_FRAMES] for i in range(0, len(run), SNIPPET_FRAMES)]


def _stem(name: str) -> str:
    return name[: -len(FRAME_SUFFIX)]


def _label_finder(root: Path, split: str, city: str):
    """stem -> {"segmentation": path, "depth": path} for the label files that exist (one listing per folder)."""
    segmentation_dir = root / SEGMENTATION_DIR / split / city
    segmentation = _names(segmentation_dir)
    depth_dirs = [(root / folder / split / city, suffix) for folder, suffix in DEPTH_LOCATIONS]
    depth_names = [_names(folder) for folder, _ in depth_dirs]

    def find(stem: str) -> dict[str, str]:
        found = {}
        if stem + SEGMENTATION_SUFFIX in segmentation:
            found["segmentation"] = str(segmentation_dir / (stem + SEGMENTATION_SUFFIX))
        for (folder, suffix), names in zip(depth_dirs, depth_names):
            if stem + suffix in names:
                found["depth"] = str(folder / (stem + suffix))
                break
        return found

    return find


def _names(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return set()
