"""Frames of the procedural world rendered in memory (no files): the tiny VFM's pretraining set and its probes.

`make-sample-data` seeds snippet i of split s with the generator `(seed, s, i)`, s = 0 (train) or 1 (val). The
streams here use s = 2 (pretraining) and s = 3 (the probes' held-out frames), so whatever seed a downstream set was
made with, no scene of it is ever drawn here: the VFM never sees a snippet that Stage 1, Stage 2, the heads or the
evaluation later use.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.synthetic.world import draw_scene

PRETRAIN_STREAM = 2  # after make-sample-data's train (0) and val (1)
HELD_OUT_STREAM = 3
MIN_SNIPPETS_PER_WORKER = 16  # starting a process (numba import + compile cache load) costs more than ~16 snippets


@dataclass
class WorldFrames:
    """`rgb` uint8 [N, H, W, 3], `segmentation` uint8 [N, H, W] (train ids, 255 ignore), `depth` uint8 [N, H, W]
    (8-bit inverse depth, 0 invalid), and `snippet` int [N]: which snippet each frame comes from."""

    rgb: np.ndarray
    segmentation: np.ndarray
    depth: np.ndarray
    snippet: np.ndarray

    def __len__(self) -> int:
        return len(self.rgb)


def render_world_frames(seed: int, stream: int, snippets: int, frames: list[int], height: int, width: int,
                        workers: int = 1) -> WorldFrames:
    """Frames `frames` (snippet frame indices, 0..29) of `snippets` scenes drawn from the generator
    `(seed, stream, i)`, rendered at `height` x `width`. Deterministic; the result does not depend on `workers`."""
    if snippets < 1 or not frames:
        raise ValueError(f"need at least one snippet and one frame index, got {snippets} snippets, frames {frames}")
    jobs = [(seed, stream, i, tuple(frames), height, width) for i in range(snippets)]
    workers = min(workers, snippets // MIN_SNIPPETS_PER_WORKER)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_render_snippet, jobs, chunksize=max(1, snippets // (4 * workers))))
    else:
        parts = [_render_snippet(job) for job in jobs]
    rgb, seg, depth = (np.concatenate([p[k] for p in parts]) for k in range(3))
    snippet = np.repeat(np.arange(snippets), len(frames))
    return WorldFrames(rgb, seg, depth, snippet)


def _render_snippet(job: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from pipeline.synthetic.render import render_frame  # numba: imported only where frames are drawn

    seed, stream, index, frames, height, width = job
    scene = draw_scene(np.random.default_rng([seed, stream, index]))
    drawn = [render_frame(scene, f, height, width) for f in frames]
    return tuple(np.stack([d[k] for d in drawn]) for k in range(3))
