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
