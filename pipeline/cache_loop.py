"""The plain sequential loop: one CacheWorker in this process, the fit windows then every shard, one after another.

The reference the Ray DAG (pipeline/dag.py) is measured against (`bench cache`) and checked against
(tests/test_cache_equality.py): given the PCA and linear codec the DAG fitted (`fits_from`), it writes the same
arrays. Pass 1's sums are computed too (so both runs do the same work) and then discarded.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from configs.schema import Config
from pipeline import atomic, layout
from pipeline.cache_worker import CacheWorker, StageTimes
from pipeline.store import create_arrays


def build_cache_sequential(
    cfg: Config, dataset: str, root: str, out: str, fits_from: str, *, splits: Sequence[str] = ("train", "val"),
    limit: int = 0, threads: int = 0, fit_pass: bool = True,
) -> tuple[StageTimes, dict[str, float]]:
    """Write the arrays of `dataset` at `root` into `out` with one in-process worker (`threads` torch threads,
    0: torch's default). Returns (stage times, wall seconds by phase: start, fit, encode)."""
    from pipeline.dag import array_specs, select_windows  # the DAG's own window list and array layout

    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    worker = CacheWorker(cfg.to_dict(), allow_random_weights=True, threads=threads)
    worker.set_pca(atomic.join(fits_from, layout.PCA_FILE))
    linear = cfg.codec.name == "linear"
    if linear:
        worker.set_codec(atomic.join(fits_from, layout.CODEC_FILE))
    info: dict[str, Any] = worker.describe()
    windows = select_windows(cfg, dataset, root, list(splits), limit)
    shapes = {spec.name: spec.shape for spec in array_specs(cfg, info)}
    create_arrays(out, len(windows), cfg.cache.shard_size, array_specs(cfg, info), cfg.cache.compressor,
                  cfg.cache.compression_level)
    phases["start"] = time.perf_counter() - t0
    total = StageTimes()
    t = time.perf_counter()
    if fit_pass:
        _, fit_times = worker.accumulate([w for w in windows if w.clip.split == cfg.pca.fit_split], pca=True, codec=linear)
        total.add(fit_times)
    phases["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    size = cfg.cache.shard_size
    for s in range(0, len(windows), size):
        rows = [(i, windows[i]) for i in range(s, min(len(windows), s + size))]
        total.add(worker.process_shard(out, s // size, rows, shapes))
    worker.close()
    phases["encode"] = time.perf_counter() - t
    return total, phases
