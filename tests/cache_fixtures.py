"""Small Re2Pix caches for training tests, written with pipeline.store exactly as the cache contract says.

Random float16 features/latents (or given ones), meta.json with the fields the DAG writes, manifest.parquet and one
completion marker per written shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.synthetic.random_cache import MANIFEST_SCHEMA, write_random_cache  # noqa: F401 (re-exported)


def make_cache(root: str | Path, **kwargs: Any) -> str:
    """See pipeline/synthetic/random_cache.py (the writer moved there so that benchmarks can use it too)."""
    return write_random_cache(root, **kwargs)


def tiny_stage1_overrides(**extra: Any) -> dict[str, Any]:
    """Config overrides that make Stage 1 training fit a test (tiny model, few steps, no workers)."""
    base = {
        "pca.components": 8,
        "stage1.model.width": 24,
        "stage1.model.heads": 2,
        "stage1.model.depth": 1,
        "stage1.model.dropout": 0.0,
        "stage1.train.batch_size": 4,
        "stage1.train.num_workers": 0,
        "stage1.train.log_every": 1,
        "stage1.train.val_batches": 1,
        "stage1.optim.lr": 1e-3,  # the float-agreement tests were sized for this rate
    }
    base.update(extra)
    return base


def train_hierarchy(cfg: Any, root: Path) -> dict[str, str]:
    """root/data (a synthetic set already written there) -> root/cache through the real Ray DAG -> Stage 1 and
    Stage 2 checkpoints root/s1 and root/s2, trained from root itself with relative paths, as `python cli.py` run from
    a project folder records them."""
    import os

    import ray

    from pipeline.dag import build_cache
    from train.stage1 import train_stage1
    from train.stage2 import train_stage2

    try:
        build_cache(cfg, "synthetic", root / "data", root / "cache", workers=1, allow_random_weights=True)
    finally:
        ray.shutdown()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train_stage1(cfg, "cache", "s1")
        train_stage2(cfg, "cache", "s2")
    finally:
        os.chdir(cwd)
    return {"cache": str(root / "cache"), "s1": str(root / "s1"), "s2": str(root / "s2")}
