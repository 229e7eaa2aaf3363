"""A cache of random float16 arrays written with pipeline.store exactly as the cache contract says.

meta.json with the fields the DAG writes, manifest.parquet and one completion marker per written shard, but no
dataset, VFM or codec behind it: for tests of the trainers and for benchmarks that only read a cache
(`bench loader` on a fresh clone). Random values compress worse than real features, so disk figures are pessimistic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from pipeline import atomic, layout
from pipeline.store import ArraySpec, create_arrays, write_parquet, write_shard

MANIFEST_SCHEMA = {
    "sample": pl.Int64, "sample_id": pl.Utf8, "dataset": pl.Utf8, "split": pl.Utf8, "clip_id": pl.Utf8,
    "fps": pl.Float64, "frame_indices": pl.List(pl.Int64), "source": pl.Utf8, "frame_paths": pl.List(pl.Utf8),
    "label_index": pl.Int64, "segmentation_path": pl.Utf8, "depth_path": pl.Utf8, "shard": pl.Int64, "status": pl.Utf8,
}


def write_random_cache(
    root: str | Path,
    *,
    num_samples: int = 8,
    shard_size: int = 4,
    feature_frames: int = 7,
    context_latent_frames: int = 4,
    channels: int = 8,
    grid: tuple[int, int] = (4, 6),
    latent_channels: int = 3,
    latent_hw: tuple[int, int] = (8, 12),
    temporal_factor: int = 4,
    splits: Sequence[str] | None = None,
    features: np.ndarray | None = None,
    shards: Sequence[int] | None = None,
    failed: Sequence[int] = (),
    fingerprint: str = "test-cache-fp",
    seed: int = 0,
) -> str:
    """Write a cache and return its path. `splits` per sample (default all train); `shards` to write (default all);
    `failed` samples are marked failed in their shard's marker."""
    root = str(root)
    rng = np.random.default_rng(seed)
    tf, c, (h, w) = feature_frames, channels, grid
    if features is None:
        features = rng.standard_normal((num_samples, tf, c, h, w)).astype(np.float16)
    latents = rng.standard_normal((num_samples, tf, latent_channels, *latent_hw)).astype(np.float16)
    splits = list(splits) if splits is not None else ["train"] * num_samples
    frames = 1 + temporal_factor * (tf - 1)
    context = 1 + temporal_factor * (context_latent_frames - 1)
    num_shards = (num_samples + shard_size - 1) // shard_size

    meta: dict[str, Any] = {
        "schema_version": layout.SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "status": "in_progress",
        "dataset": "synthetic",
        "window": {"frames": frames, "context_frames": context, "height": latent_hw[0] * 4, "width": latent_hw[1] * 4},
        "feature_frame_indices": [i * temporal_factor for i in range(tf)],
        "latent_frames": tf,
        "context_latent_frames": context_latent_frames,
        "vfm": {"name": "vit_base_patch14_reg4_dinov2.lvd142m", "layers": [0, 1, 2, 3], "weights": "random", "out_channels": 4 * c, "grid": [h, w]},
        "pca": {"components": c, "fingerprint": "test-pca-fp"},
        "codec": {"name": "pixel", "temporal_factor": temporal_factor, "spatial_factor": 4, "channels": latent_channels, "weights": "random"},
        "num_samples": num_samples,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "random_weights": True,
    }
    atomic.write_json(atomic.join(root, layout.META), meta)
    rows = [
        {
            "sample": i, "sample_id": f"synthetic/clip_{i:03d}/000000", "dataset": "synthetic", "split": splits[i],
            "clip_id": f"clip_{i:03d}", "fps": 17.0, "frame_indices": list(range(frames)), "source": "",
            "frame_paths": [], "label_index": -1, "segmentation_path": "", "depth_path": "", "shard": i // shard_size,
            "status": "pending",
        }
        for i in range(num_samples)
    ]
    write_parquet(atomic.join(root, layout.MANIFEST), pl.DataFrame(rows, schema=MANIFEST_SCHEMA))
    create_arrays(
        root, num_samples, shard_size,
        [ArraySpec(layout.FEATURES, (tf, c, h, w), "float16"), ArraySpec(layout.LATENTS, (tf, latent_channels, *latent_hw), "float16")],
        "zstd", 1,
    )
    todo = list(range(num_shards)) if shards is None else list(shards)
    for shard in todo:
        lo, hi = shard * shard_size, min(num_samples, (shard + 1) * shard_size)
        statuses = [{"sample": i, "status": "failed" if i in failed else "ok"} for i in range(lo, hi)]
        write_shard(root, shard, shard_size, {layout.FEATURES: features[lo:hi], layout.LATENTS: latents[lo:hi]}, statuses)
    if len(todo) == num_shards:
        meta["status"] = "complete"
        atomic.write_json(atomic.join(root, layout.META), meta)
    return root
