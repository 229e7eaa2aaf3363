"""The predicted-feature pool: Stage 1's autoregressive predictions of every training window's future feature frames.

Stage 2's mixed supervision (paper §3.3) replaces, with some probability, the true future feature frames by these
predictions, so the pixel model learns to cope with Stage 1's errors. For each selected window the rollout starts
from the context feature frames (the first `context_latent_frames`; the model reads the last M_f of them) and runs
Tf - context_latent_frames steps. Predictions go to `pool/features` [N, Tf - ctx, C, h, w] float16, one zarr shard per
cache shard, each followed by its `pool/_done/shard_N.json` marker, so an interrupted run resumes where it stopped.
Windows outside the pool (val/test split, failed samples, or not drawn when fraction < 1) are marked "skipped" and are
not served by `CacheReader.pool_samples()`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch

from pipeline import atomic, layout
from pipeline.console import console, progress, summary, warn_loud
from pipeline.fingerprint import file_fingerprint
from pipeline.store import ArraySpec, CacheError, CacheReader, WriterLock, create_arrays, done_shards, write_shard
from models.rollout import rollout
from train import checkpoint as ckpt
from train.stage1 import build_stage1_model, stage1_fit_problems


def in_pool(sample_id: str, fraction: float) -> bool:
    """Deterministic draw per window from its id: the same windows are chosen on every run and every machine."""
    if fraction >= 1.0:
        return True
    u = int(hashlib.sha256(sample_id.encode()).hexdigest()[:12], 16) / 16**12
    return u < fraction


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_compatible(reader: CacheReader, config: dict[str, Any], path: Path) -> None:
    """The checkpoint must read this cache's feature space: same PCA, channels, grid and context length."""
    meta, model = reader.meta, config["model"]
    problems = []
    if config.get("pca_fingerprint") and config["pca_fingerprint"] != meta["pca"].get("fingerprint"):
        problems.append(f"pca.fingerprint: checkpoint {config['pca_fingerprint']!r}, cache {meta['pca'].get('fingerprint')!r}")
    problems += stage1_fit_problems(model, meta, int(meta["pca"]["components"]))
    if problems:
        raise CacheError(f"Stage 1 checkpoint {path} does not fit cache {reader.root}: " + "; ".join(problems))


def _clear_pool_markers(root: str) -> None:
    fs, p = fsspec.core.url_to_fs(atomic.join(root, layout.POOL_DONE_DIR))
    if fs.exists(p):
        fs.rm(p, recursive=True)


def make_predicted_pool(
    cache: str,
    stage1_ckpt: str,
    fraction: float = 1.0,
    batch_size: int = 8,
    device: str = "auto",
    overwrite: bool = False,
    max_shards: int | None = None,
    split: str = "train",
    prefer_ema: bool = True,
    compressor: str = "zstd",
    compression_level: int = 3,
) -> dict[str, Any]:
    """Write (or resume) the pool of `cache` with the Stage 1 checkpoint `stage1_ckpt`. `max_shards` stops after
    writing that many shards in this call (resume later). Returns a summary dict."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    reader = CacheReader(cache)
    if not reader.complete:
        raise CacheError(f"{cache}: meta.json status is {reader.meta.get('status')!r}; finish the cache before making the pool")
    dev = _device(device)
    path = ckpt.resolve_checkpoint(stage1_ckpt)
    model, config = ckpt.load_model_for_inference(path, build_stage1_model, prefer_ema=prefer_ema, device=dev)
    _check_compatible(reader, config, path)
    if config.get("random_weights"):
        warn_loud(f"Stage 1 checkpoint {path} was trained on features from RANDOM weights; the pool inherits that")
    weights_file = path / (ckpt.EMA_FILE if config["loaded_weights"] == "ema" else ckpt.MODEL_FILE)
    meta = reader.meta
    ctx, tf = int(meta["context_latent_frames"]), int(meta["latent_frames"])
    future = tf - ctx
    m = int(config["model"]["context_frames"])
    c, (h, w) = int(meta["pca"]["components"]), meta["vfm"]["grid"]
    wanted = {
        "stage1_fingerprint": file_fingerprint(weights_file),
        "checkpoint": str(path),
        "weights": config["loaded_weights"],
        "context_frames": ctx,
        "future_frames": future,
        "fraction": fraction,
        "split": split,
    }
    n, shard_size = len(reader.manifest), reader.shard_size
    num_shards = (n + shard_size - 1) // shard_size
    ids = reader.manifest["sample_id"].to_list()
    chosen = np.zeros(n, dtype=bool)
    for s in reader.samples(split):
        chosen[s] = in_pool(ids[s], fraction)

    written = skipped_done = samples_done = 0
    tic = time.perf_counter()
    with WriterLock(cache, "make-predicted-pool"):
        meta = atomic.read_json(atomic.join(cache, layout.META))  # fresh, under the lock
        old = meta.get("pool")
        if old:
            diffs = [f"{k}: pool has {old.get(k)!r}, this call {wanted[k]!r}" for k in ("stage1_fingerprint", "context_frames", "future_frames", "fraction", "split") if old.get(k) != wanted[k]]
            if diffs and not overwrite:
                raise CacheError(
                    f"{cache} already holds a pool from another Stage 1 run or settings ({'; '.join(diffs)}). "
                    "Pass overwrite=True (--overwrite) to replace it."
                )
            if diffs:
                console.print(f"replacing the pool of {cache} ({'; '.join(diffs)})")
                _clear_pool_markers(cache)
        create_arrays(cache, n, shard_size, [ArraySpec(layout.POOL_FEATURES, (future, c, h, w), "float16")], compressor, compression_level)
        meta["pool"] = {**wanted, "status": "in_progress"}
        atomic.write_json(atomic.join(cache, layout.META), meta)

        done = done_shards(cache, layout.POOL_DONE_DIR)
        features = reader.array(layout.FEATURES)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
        with progress() as bar:
            job = bar.add_task("pool", total=num_shards, completed=len(done), status="")
            for shard in range(num_shards):
                if shard in done:
                    skipped_done += 1
                    continue
                if max_shards is not None and written >= max_shards:
                    break
                lo, hi = shard * shard_size, min(n, (shard + 1) * shard_size)
                rows = np.flatnonzero(chosen[lo:hi])
                statuses = [{"sample": lo + i, "status": "ok" if chosen[lo + i] else "skipped"} for i in range(hi - lo)]
                arrays = {}
                if len(rows):
                    block = np.zeros((hi - lo, future, c, h, w), dtype=np.float16)
                    context = np.asarray(features[lo:hi])[rows, ctx - m : ctx]
                    for b in range(0, len(rows), batch_size):
                        x = torch.from_numpy(context[b : b + batch_size].astype(np.float32)).to(dev)
                        with torch.no_grad(), autocast:
                            block[rows[b : b + batch_size]] = rollout(model, x, future).float().cpu().numpy().astype(np.float16)
                    arrays[layout.POOL_FEATURES] = block
                write_shard(cache, shard, shard_size, arrays, statuses, done_dir=layout.POOL_DONE_DIR)
                written += 1
                samples_done += len(rows)
                bar.update(job, advance=1, status=f"{samples_done} windows")
        complete = len(done_shards(cache, layout.POOL_DONE_DIR)) == num_shards
        meta["pool"]["status"] = "complete" if complete else "in_progress"
        meta["pool"]["samples"] = int(len(CacheReader(cache).pool_samples()))
        atomic.write_json(atomic.join(cache, layout.META), meta)

    seconds = time.perf_counter() - tic
    result = {
        "cache": cache,
        "checkpoint": str(path),
        "stage1_fingerprint": wanted["stage1_fingerprint"],
        "shards_written": written,
        "shards_already_done": skipped_done,
        "windows_predicted": samples_done,
        "pool_windows": meta["pool"]["samples"],
        "complete": complete,
        "seconds": seconds,
        "windows_per_s": samples_done / max(seconds, 1e-9),
    }
    summary(
        f"pool {'complete' if complete else 'partial'}: {result['pool_windows']} windows in {cache}/{layout.POOL_FEATURES} "
        f"({written} shards written now, {skipped_done} already done, {result['windows_per_s']:.1f} windows/s)"
    )
    return result
