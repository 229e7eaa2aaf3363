"""A procedural driving dataset in the Cityscapes layout, for demos and tests (`make-sample-data`).

Each 30-frame snippet is one short drive rendered with a pinhole camera 1.5 m above a flat road: forward ego
motion (lane markings and asphalt scroll past, perspective from the ground-plane geometry), a slight yaw sway,
an optional gentle curve, sidewalks with curbs, building facades with windows and tree rows on both sides,
street lamps, a sky with clouds, cars driving at their own speeds in both directions, parked cars, a few
pedestrians, distance haze and the ego vehicle's hood at the bottom of the frame, as in Cityscapes.

Frame 19 of every snippet is annotated, consistent with the rendered geometry:
    gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png                  train ids (see TRAIN_IDS), 255 other
    leftImg8bit_sequence_depthv2/{split}/{city}/{stem}_leftImg8bit_depth.png   8-bit inverse depth,
        value = clip(round(255 * DEPTH_NEAR / Z), 1, 255) (larger = nearer), 0 = invalid (sky, ego hood)
Frames are drawn by compiled per-pixel loops (see render.py), deterministic by seed (each snippet draws from its
own generator seeded by (seed, split, index)), and every PNG is written atomically.

A split's snippets are spread evenly over cities of at most 12 (`synth{split}{i}`; each snippet is one sequence
id with frames 000000..000029, so 24 train snippets give 2 cities of 12 and the short-snippet rule applies). A
city with fewer than 10 sequence ids (e.g. the 8 val snippets) falls under the long-recording rule of the
Cityscapes reader instead, which yields the same snippets because every sequence holds exactly 30 contiguous
frames.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.console import progress as progress_bar
from pipeline.sources.cityscapes import (
    ANNOTATED_INDEX,
    DEPTH_LOCATIONS,
    FRAME_SUFFIX,
    SEGMENTATION_DIR,
    SEGMENTATION_SUFFIX,
    SEQUENCE_DIR,
    SNIPPET_FRAMES,
)
from pipeline.synthetic.png import encode_png
from pipeline.synthetic.render import render_frame
from pipeline.synthetic.world import (
    DEPTH_NEAR,
    FPS,
    IGNORE,
    INFO_FILE,
    SNIPPETS_PER_CITY,
    TRAIN_IDS,
    draw_scene,
)


def write_sample_dataset(
    out: Path, train: int = 24, val: int = 8, height: int = 128, width: int = 256, seed: int = 0, progress: bool = True,
    workers: int = 1,
) -> dict:
    """Render `train` + `val` snippets under `out`. Returns the counts {train, val, frames, segmentation, depth,
    seconds, frames_per_s}; `out/sample_dataset.json` records them with the parameters and the label conventions.

    `workers` > 1 renders snippets in that many processes. Every snippet draws from its own generator seeded by
    (seed, split, index), so the files are byte-identical whatever the number of workers."""
    if train < 0 or val < 0 or train + val == 0:
        raise ValueError(f"need train >= 0, val >= 0 and at least one snippet, got train={train}, val={val}")
    if height < 16 or width < 32:
        raise ValueError(f"sample frames must be at least 16x32 pixels, got {height}x{width}")
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    out = Path(out)
    t0 = time.perf_counter()
    jobs = [(out, split, index, train if split == "train" else val, height, width, seed)
            for split, n in (("train", train), ("val", val)) for index in range(n)]
    counts = {"frames": 0, "segmentation": 0, "depth": 0}
    with progress_bar() as bar:
        task = bar.add_task("rendering sample data", total=len(jobs), status="", visible=progress)
        if workers == 1:
            _heap_temporaries()
            done = map(_render_snippet, jobs)
        else:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_heap_temporaries)
            done = pool.map(_render_snippet, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
        try:
            for name, snippet_counts in done:
                for key, value in snippet_counts.items():
                    counts[key] += value
                bar.update(task, advance=1, status=name)
        finally:
            if workers > 1:
                pool.shutdown()
    seconds = time.perf_counter() - t0
    counts = {"train": train, "val": val, **counts}
    info = {**counts, "height": height, "width": width, "seed": seed, "fps": FPS, "train_ids": TRAIN_IDS,
            "ignore": IGNORE, "depth_encoding": f"255*{DEPTH_NEAR}/Z (1..255), 0 invalid"}
    atomic.write_text(out / INFO_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return {**counts, "seconds": seconds, "frames_per_s": counts["frames"] / seconds if seconds > 0 else 0.0}


def _render_snippet(job: tuple) -> tuple[str, dict[str, int]]:
    """Render and write one snippet (a process-pool task): its 30 frames and the labels of the annotated frame."""
    out, split, index, total, height, width, seed = job
    city, seq = _city_and_sequence(split, index, total)
    scene = draw_scene(np.random.default_rng([seed, ("train", "val").index(split), index]))
    counts = {"frames": 0, "segmentation": 0, "depth": 0}
    for frame in range(SNIPPET_FRAMES):
        rgb, label, depth = render_frame(scene, frame, height, width)
        stem = f"{city}_{seq:06d}_{frame:06d}"
        _write_png(out / SEQUENCE_DIR / split / city / (stem + FRAME_SUFFIX), rgb)
        counts["frames"] += 1
        if frame == ANNOTATED_INDEX:
            _write_png(out / SEGMENTATION_DIR / split / city / (stem + SEGMENTATION_SUFFIX), label)
            depth_dir, depth_suffix = DEPTH_LOCATIONS[0]
            _write_png(out / depth_dir / split / city / (stem + depth_suffix), depth)
            counts["segmentation"] += 1
            counts["depth"] += 1
    return f"{split} {city}_{seq:06d}", counts


def _heap_temporaries() -> None:
    """Keep frame-sized numpy temporaries in the heap. glibc serves allocations over 128 KiB with mmap and unmaps
    them on free, so each of the renderer's few-hundred-KiB temporaries page-faults afresh: measured 15-20 % of the
    render time at 128x256. Raising the thresholds keeps them in the heap (glibc only; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _city_and_sequence(split: str, index: int, total: int) -> tuple[str, int]:
    cities = max(1, math.ceil(total / SNIPPETS_PER_CITY))
    per_city = math.ceil(total / cities)  # e.g. 24 -> 2 cities of 12, 8 -> 1 city of 8
    return f"synth{split}{index // per_city}", index % per_city


def _write_png(path: Path, array: np.ndarray) -> None:
    # Atomic (temp name, rename) without a per-file fsync: a sample dataset is re-rendered, never recovered, and
    # the fsync cost as much as rendering's slowest stage.
    atomic.write_bytes(path, encode_png(array), fsync=False)
