"""`bench loader`: how fast the streaming datasets read a cache (samples/s and MB/s) for Stage 1 and Stage 2 items.

MB/s counts the float16 bytes delivered (decoded); `disk MB/s` scales it by the arrays' on-disk/decoded size ratio
(local caches only), i.e. roughly what the storage must supply. The first batch (worker start-up) is timed apart.

Without a cache (a fresh clone) it writes a small one of random float16 arrays at the config's shapes in a temp
folder and says so: read rates depend on array shapes and chunking, not on values (random values compress worse
than real features, so its disk MB/s is pessimistic).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from pipeline import atomic, layout
from pipeline.console import console, summary
from pipeline.store import CacheError, CacheReader
from train.data import LoaderRequest, Stage1SubWindows, WindowSamples, training_loader


def _disk_ratio(root: str, names: list[str], reader: CacheReader) -> float | None:
    """On-disk bytes / decoded bytes of the arrays `names` (None for remote caches)."""
    if atomic.is_url(root):
        return None
    disk = logical = 0
    for name in names:
        folder = Path(root) / name
        disk += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.name.endswith(".json"))
        arr = reader.array(name)
        logical += int(np.prod(arr.shape)) * arr.dtype.itemsize
    return disk / logical if logical else None


def _measure(dataset: Any, item_bytes: int, batch_size: int, workers: int, batches: int) -> dict[str, float]:
    loader = training_loader(dataset, LoaderRequest(batch_size=batch_size), workers)
    it = iter(loader)
    tic = time.perf_counter()
    next(it)
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - tic
    del it
    samples = batches * batch_size
    return {
        "first_batch_s": first,
        "samples_per_s": samples / seconds,
        "mb_per_s": samples * item_bytes / seconds / 1e6,
        "item_mb": item_bytes / 1e6,
    }


def run(cache: str, batch_size: int = 8, workers: int = 2, batches: int = 20, context_frames: int | None = None, split: str | None = "train") -> dict[str, Any]:
    """Benchmark Stage 1 sub-window items and Stage 2 whole-window items of `cache`; prints a table, returns figures."""
    reader = CacheReader(cache)
    samples = reader.samples(split)
    if len(samples) == 0:
        raise CacheError(f"{cache} has no complete {split!r} samples to read; pass split=None for every split")
    if batch_size > len(samples):
        console.print(f"only {len(samples)} {split or 'cached'} windows: batch size lowered from {batch_size} to {len(samples)}")
        batch_size = len(samples)
    latent_frames = reader.window.latent_frames
    m = int(context_frames or reader.window.context_latent_frames)
    features = reader.array(layout.FEATURES)
    per_frame = int(np.prod(features.shape[2:])) * features.dtype.itemsize
    results: dict[str, Any] = {"cache": cache, "batch_size": batch_size, "workers": workers, "batches": batches}

    stage1 = Stage1SubWindows(cache, samples, m, latent_frames, reader.shard_size)
    results["stage1"] = _measure(stage1, (m + 1) * per_frame, batch_size, workers, batches)
    results["stage1"]["disk_ratio"] = _disk_ratio(cache, [layout.FEATURES], reader)

    with_pool = reader.has(layout.POOL_FEATURES) and len(reader.pool_samples()) > 0
    stage2_samples = np.intersect1d(samples, reader.pool_samples()) if with_pool else samples
    stage2 = WindowSamples(cache, stage2_samples, reader.shard_size, pool_samples=reader.pool_samples() if with_pool else None)
    names = [layout.FEATURES, layout.LATENTS] + ([layout.POOL_FEATURES] if with_pool else [])
    item = sum(int(np.prod(reader.array(n).shape[1:])) * reader.array(n).dtype.itemsize for n in names)
    results["stage2"] = _measure(stage2, item, batch_size, workers, batches)
    results["stage2"]["disk_ratio"] = _disk_ratio(cache, names, reader)
    results["stage2"]["arrays"] = names

    table = Table(title=f"loader: {cache} (batch {batch_size}, {workers} workers, {batches} batches)")
    for col in ("what", "item MB", "first batch s", "samples/s", "MB/s decoded", "disk MB/s"):
        table.add_column(col, justify="right")
    for key, label in (("stage1", f"stage 1 sub-windows ({m + 1} frames)"), ("stage2", "stage 2 windows (" + ", ".join(names) + ")")):
        r = results[key]
        disk = f"{r['mb_per_s'] * r['disk_ratio']:.1f}" if r["disk_ratio"] else "-"
        table.add_row(label, f"{r['item_mb']:.3f}", f"{r['first_batch_s']:.2f}", f"{r['samples_per_s']:.1f}", f"{r['mb_per_s']:.1f}", disk)
    console.print(table)
    summary(
        f"loader: stage 1 {results['stage1']['samples_per_s']:.1f} samples/s ({results['stage1']['mb_per_s']:.1f} MB/s), "
        f"stage 2 {results['stage2']['samples_per_s']:.1f} samples/s ({results['stage2']['mb_per_s']:.1f} MB/s)"
    )
    return results


def run_or_make(cache: str | None, cfg: Any, samples: int = 16, **kwargs: Any) -> dict[str, Any]:
    """`run` on `cache` when it holds a complete cache, else on a temporary random cache at `cfg`'s shapes."""
    if cache is not None and atomic.exists(atomic.join(cache, layout.META)):
        return run(cache, **kwargs)
    from pipeline.synthetic.random_cache import write_random_cache

    where = f"no cache at {cache}" if cache else "no cache given"
    with tempfile.TemporaryDirectory(prefix="re2pix-bench-loader-") as tmp:
        grid = cfg.token_grid
        console.print(f"{where}: writing {samples} windows of random arrays at the {cfg.name} config's shapes "
                      f"(features {cfg.latent_frames}x{cfg.pca.components}x{grid[0]}x{grid[1]}, latents "
                      f"{cfg.latent_frames}x{cfg.codec.channels}x{cfg.latent_hw[0]}x{cfg.latent_hw[1]}) in {tmp}")
        root = write_random_cache(
            str(Path(tmp) / "cache"), num_samples=samples, shard_size=cfg.cache.shard_size, feature_frames=cfg.latent_frames,
            context_latent_frames=cfg.context_latent_frames, channels=cfg.pca.components, grid=grid,
            latent_channels=cfg.codec.channels, latent_hw=cfg.latent_hw, temporal_factor=cfg.codec.temporal_factor,
        )
        return run(root, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cache")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--context-frames", type=int, default=None)
    args = parser.parse_args()
    run(args.cache, args.batch_size, args.workers, args.batches, args.context_frames)


if __name__ == "__main__":
    main()
