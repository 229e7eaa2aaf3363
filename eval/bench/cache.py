"""`bench cache`: frames/s of the Ray DAG vs a plain sequential loop over the same windows, time split by stage.

The sequential baseline is the same CacheWorker code called in this process, one shard after the other (what a
simple for-loop script would do), reusing the PCA the DAG fitted so both write identical arrays.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from configs.schema import Config
from pipeline import atomic, layout
from pipeline.cache_worker import CacheWorker, StageTimes
from pipeline.console import console, summary
from pipeline.dag import array_specs, build_cache, select_windows
from pipeline.store import create_arrays


def _sequential(cfg: Config, dataset: str, root: str, out: str, dag_out: str, limit: int) -> tuple[StageTimes, float]:
    t0 = time.perf_counter()
    worker = CacheWorker(cfg.to_dict(), allow_random_weights=True)
    worker.set_pca(atomic.join(dag_out, layout.PCA_FILE))
    linear = cfg.codec.name == "linear"
    if linear:
        worker.set_codec(atomic.join(dag_out, layout.CODEC_FILE))
    info = worker.describe()
    windows = select_windows(cfg, dataset, root, ["train", "val"], limit)
    specs = array_specs(cfg, info)
    shapes = {spec.name: spec.shape for spec in specs}
    create_arrays(out, len(windows), cfg.cache.shard_size, specs, cfg.cache.compressor, cfg.cache.compression_level)
    total = StageTimes()
    # Pass 1 too, so both runs do the same work (the sums are discarded: the DAG's PCA and codec are reused for
    # equal outputs).
    _, fit_times = worker.accumulate([w for w in windows if w.clip.split == cfg.pca.fit_split], pca=True, codec=linear)
    total.add(fit_times)
    size = cfg.cache.shard_size
    for s in range(0, len(windows), size):
        rows = [(i, windows[i]) for i in range(s, min(len(windows), s + size))]
        total.add(worker.process_shard(out, s // size, rows, shapes))
    return total, time.perf_counter() - t0


def run(cfg: Config, dataset: str = "synthetic", root: Path | None = None, workers: int = 2, limit: int = 8) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="re2pix-bench-cache-") as tmp:
        if root is None:
            from pipeline.synthetic import write_sample_dataset

            root = Path(tmp) / "data"
            write_sample_dataset(root, train=limit, val=limit, height=cfg.window.height * 2, width=cfg.window.width * 2, seed=0, progress=False)
        dag_out = str(Path(tmp) / "dag")
        result = build_cache(cfg, dataset, root, dag_out, workers=workers, allow_random_weights=True, limit=limit)
        seq_times, seq_seconds = _sequential(cfg, dataset, str(root), str(Path(tmp) / "seq"), dag_out, limit)

    d = result.times
    rows = {
        "ray DAG": (result.frames, result.seconds, d),
        "sequential loop": (seq_times.frames, seq_seconds, seq_times),
    }
    table = Table(title=f"bench cache: {dataset}, {cfg.name} config, {result.samples} windows, DAG workers={workers}")
    for col in ("run", "frames", "wall s", "frames/s", "decode s", "vfm s", "codec s", "write s"):
        table.add_column(col, justify="right")
    figures: dict[str, Any] = {}
    for name, (frames, seconds, t) in rows.items():
        fps = frames / seconds if seconds else 0.0
        table.add_row(name, str(frames), f"{seconds:.1f}", f"{fps:.1f}", f"{t.decode:.1f}", f"{t.vfm:.1f}", f"{t.codec:.1f}", f"{t.write:.1f}")
        figures[name] = {"frames": frames, "seconds": seconds, "frames_per_s": fps, "decode_s": t.decode, "vfm_s": t.vfm, "codec_s": t.codec, "write_s": t.write}
    console.print(table)
    console.print("stage times are summed over workers and include pass 1 (PCA sums); wall s is end to end (the DAG's includes starting Ray).")
    summary(
        f"bench cache: DAG {figures['ray DAG']['frames_per_s']:.1f} frames/s vs sequential "
        f"{figures['sequential loop']['frames_per_s']:.1f} frames/s"
    )
    return figures
