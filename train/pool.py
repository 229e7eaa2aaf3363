"""The predicted-feature pool: Stage 1's autoregressive predictions of every training window's future feature frames.

Stage 2's mixed supervision (paper §3.3) replaces, with some probability, the true future feature frames by these
predictions, so the pixel model learns to cope with Stage 1's errors. For each selected window the rollout starts
from the context feature frames (the first `context_latent_frames`; the model reads the last M_f of them) and runs
Tf - context_latent_frames steps. Predictions go to `pool/features` [N, Tf - ctx, C, h, w] float16, one zarr shard per
cache shard, each followed by its `pool/_done/shard_N.json` marker, so an interrupted run resumes where it stopped.
Windows outside the pool (val/test split, failed samples, or not drawn when fraction < 1) are marked "skipped" and are
not served by `CacheReader.pool_samples()`.

How good the pool is matters: a Stage 1 that has memorised its training windows predicts them far better than it
forecasts unseen clips, and then the "predicted" 10% barely differ from the truth and cannot teach Stage 2 robustness
to real forecasting errors. Every pool therefore measures, per rollout step, the cosine to the truth of its own
predictions (training windows) next to that of the Stage 1 rollout on the val windows (what evaluation sees) and of
copying the last frame; meta.json `pool.quality` and the summary report them. `folds` = K > 1 cross-fits the pool:
K Stage 1 models, each trained (same config and steps as the given checkpoint) without one fold of the training
windows, predict that fold, so every pool entry is an out-of-sample forecast. It costs K Stage 1 trainings.

`folds="auto"` (the default of the CLI, the demo and `reproduce`) decides before any shard is written, from a probe:
the given Stage 1's rollouts of up to PROBE_WINDOWS training windows of the pool (what a plain pool would hold) and
of up to PROBE_WINDOWS val windows, cosine to the truth per rollout step. When the probe's pool cosine, averaged
over the rollout steps, exceeds the val forecasts' by more than AUTO_MARGIN, the pool is cross-fitted with
AUTO_FOLDS folds; otherwise the given checkpoint predicts every window. A probe instead of building the plain pool
and rebuilding: the plain pool's cosine is the mean of the same per-window cosines, so a few dozen windows estimate
it for the price of those rollouts, where building the pool twice costs a full pass over the training windows.
meta.json `pool.folds_choice` and the summary record the choice, the probe's figures, the margin and the reason.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
import torch.nn.functional as F

from models.rollout import rollout
from pipeline import atomic, layout
from pipeline.console import console, progress, summary, warn_loud
from pipeline.device import inference_autocast, resolve_device
from pipeline.fingerprint import file_fingerprint
from pipeline.store import (
    ArraySpec,
    CacheError,
    CacheReader,
    WriterLock,
    create_arrays,
    done_shards,
    open_complete_cache,
    write_shard,
)
from train import checkpoint as ckpt
from train.stage1 import build_stage1_model, check_stage1_fits_cache

FOLDS_AUTO = "auto"
AUTO_FOLDS = 2  # the cheapest cross-fitting (two more Stage 1 trainings); every entry is then out of sample
# The margin on the cosine gap (pool minus val forecasts, mean over rollout steps) above which the pool is
# cross-fitted. Why 0.02: a Stage 1 that does not memorise its windows shows almost no gap (the demo cache, 128
# training windows, Stage 1 after 300 steps: pool 0.833 / 0.782 / 0.762 vs val 0.836 / 0.786 / 0.769, gap -0.005),
# while the memorising Stage 1 issue 22 measured on real clips has +0.12 (0.946 vs 0.825). 0.02 is four times the
# first and a sixth of the second; the probe also records the gap's standard error over windows (`gap_se`), so a
# choice made inside the noise can be seen as such.
AUTO_MARGIN = 0.02
PROBE_WINDOWS = 32  # windows per side of the probe (evenly spread over the candidates, deterministic)


def parse_folds(value: int | str) -> int | str:
    """--folds value -> a positive int or "auto"; anything else is a ConfigError naming the value and the fix."""
    from configs.schema import ConfigError

    text = str(value).strip().lower()
    if text == FOLDS_AUTO:
        return FOLDS_AUTO
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--folds {value!r}: give 'auto' (cross-fit only when the in-sample pool is easier than val "
                          "forecasts), 1 (the given Stage 1 predicts every window) or an integer K >= 2 (cross-fit K folds)")
    k = int(text)
    return k


def _unit_draw(sample_id: str, salt: str = "") -> float:
    return int(hashlib.sha256((salt + sample_id).encode()).hexdigest()[:12], 16) / 16**12


def in_pool(sample_id: str, fraction: float) -> bool:
    """Deterministic draw per window from its id: the same windows are chosen on every run and every machine."""
    if fraction >= 1.0:
        return True
    return _unit_draw(sample_id) < fraction


def fold_of(sample_id: str, folds: int) -> int:
    """The cross-fitting fold of a window (stable hash of its id, independent of the pool's fraction draw)."""
    return min(folds - 1, int(_unit_draw(sample_id, "fold:") * folds))


def rollout_cosine(model: torch.nn.Module, features: torch.Tensor, ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window and rollout step, the cosine (PCA space, mean over tokens) to the truth of the model's rollout and
    of copying the last context frame: features [B, Tf, C, h, w] -> two [B, Tf - ctx] tensors."""
    m = int(model.cfg.context_frames)
    truth = features[:, ctx:]
    predicted = rollout(model, features[:, ctx - m : ctx], truth.shape[1]).float()
    copy = features[:, ctx - 1 : ctx].expand_as(truth)
    return (F.cosine_similarity(predicted, truth, dim=2).mean(dim=(2, 3)),
            F.cosine_similarity(copy, truth, dim=2).mean(dim=(2, 3)))


def _spread(rows: np.ndarray, n: int) -> np.ndarray:
    """At most n of `rows`, evenly spread (deterministic)."""
    if len(rows) <= n:
        return rows
    return rows[np.linspace(0, len(rows) - 1, n).round().astype(int)]


def probe_quality(reader: CacheReader, model: torch.nn.Module, ctx: int, rows: np.ndarray, batch_size: int,
                  dev: torch.device) -> dict[str, Any]:
    """The auto-folds probe: cosine to the truth per rollout step of `model`'s rollouts on up to PROBE_WINDOWS of
    `rows` (the pool's training windows: what a plain pool would hold) and on up to PROBE_WINDOWS val windows.
    Returns {"pool_train", "rollout_val": per-step means, "pool_windows", "val_windows", "gap", "gap_se"}: gap is
    the mean over steps of pool minus val (None without windows on either side), gap_se its standard error over
    windows."""
    features = reader.array(layout.FEATURES)

    def cosines(picked: np.ndarray) -> np.ndarray | None:
        parts = []
        for b in range(0, len(picked), batch_size):
            x = torch.from_numpy(np.stack([np.asarray(features[int(r)], dtype=np.float32)
                                           for r in picked[b : b + batch_size]])).to(dev)
            with torch.no_grad():
                cos, _ = rollout_cosine(model, x, ctx)
            parts.append(cos.double().cpu().numpy())
        return np.concatenate(parts) if parts else None  # [windows, steps]

    train_rows = _spread(np.asarray(rows, dtype=int), PROBE_WINDOWS)
    val_rows = _spread(np.asarray(reader.samples("val"), dtype=int), PROBE_WINDOWS)
    pool, val = cosines(train_rows), cosines(val_rows)
    gap = se = None
    if pool is not None and val is not None:
        p, v = pool.mean(axis=1), val.mean(axis=1)  # per window, mean over the rollout steps
        gap = float(p.mean() - v.mean())
        se = float(np.sqrt(p.var(ddof=1) / len(p) + v.var(ddof=1) / len(v))) if min(len(p), len(v)) > 1 else None
    return {"pool_train": None if pool is None else pool.mean(axis=0).tolist(),
            "rollout_val": None if val is None else val.mean(axis=0).tolist(), "pool_windows": int(len(train_rows)),
            "val_windows": int(len(val_rows)), "gap": gap, "gap_se": se}


def choose_folds(probe: dict[str, Any], margin: float = AUTO_MARGIN) -> tuple[int, str]:
    """(folds, reason) from the probe: AUTO_FOLDS when the pool's cosine exceeds the val forecasts' by > margin."""
    gap = probe.get("gap")
    if gap is None:
        return 1, "no val windows (or no pool windows) to compare with: the plain pool"
    if gap > margin:
        return AUTO_FOLDS, (f"the in-sample pool is easier than val forecasts (cosine gap {gap:+.3f} > margin {margin}): "
                            f"cross-fitted with {AUTO_FOLDS} folds so every entry is an out-of-sample forecast")
    return 1, f"the in-sample pool is like val forecasts (cosine gap {gap:+.3f} <= margin {margin}): the plain pool"


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
    folds: int | str = 1,
    margin: float = AUTO_MARGIN,
) -> dict[str, Any]:
    """Write (or resume) the pool of `cache` with the Stage 1 checkpoint `stage1_ckpt` (a checkpoint folder or
    `run[@best|@latest|@<step>]`). `folds` > 1 cross-fits it, "auto" decides from a probe (module docstring).
    `max_shards` stops after writing that many shards in this call (resume later). Returns a summary dict."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    requested = parse_folds(folds)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    reader = open_complete_cache(cache)
    dev = resolve_device(device)
    path, selected = ckpt.select_checkpoint(stage1_ckpt)
    model, config = ckpt.load_model_for_inference(path, build_stage1_model, prefer_ema=prefer_ema, device=dev)
    check_stage1_fits_cache({**config, "checkpoint": str(path)}, reader.meta, reader.root)
    if config.get("random_weights"):
        warn_loud(f"Stage 1 checkpoint {path} was trained on features from RANDOM weights; the pool inherits that")
    meta = reader.meta
    ctx, latent_frames = reader.window.context_latent_frames, reader.window.latent_frames
    future = latent_frames - ctx
    m = int(config["model"]["context_frames"])
    c, (h, w) = reader.contract.pca_components, reader.contract.vfm_grid
    n, shard_size = len(reader.manifest), reader.shard_size
    num_shards = (n + shard_size - 1) // shard_size
    ids = reader.manifest["sample_id"].to_list()
    chosen = np.zeros(n, dtype=bool)
    for sample in reader.samples(split):
        chosen[sample] = in_pool(ids[sample], fraction)

    if requested == FOLDS_AUTO:
        probe = probe_quality(reader, model, ctx, np.flatnonzero(chosen), batch_size, dev)
        folds, reason = choose_folds(probe, margin)
        train_ids = [ids[int(r)] for r in reader.samples(split)]
        if folds > 1 and any(all(fold_of(i, folds) == k for i in train_ids) for k in range(folds)):
            folds, reason = 1, reason + f"; but every training window falls in one fold of {folds}, so no fold model " \
                                        "could be trained without it: the plain pool"
        folds_choice = {"requested": FOLDS_AUTO, "chosen": folds, "margin": margin, "gap": probe["gap"],
                        "reason": reason, "probe": probe}
    else:
        folds = int(requested)
        folds_choice = {"requested": folds, "chosen": folds, "margin": None, "gap": None, "reason": "requested"}

    # One model per fold: the given checkpoint itself, or K models trained without their fold.
    predictors = [model] if folds == 1 else _fold_models(cache, path, config, reader, split, folds, prefer_ema, dev)
    weight_files = [path / (ckpt.EMA_FILE if config["loaded_weights"] == "ema" else ckpt.MODEL_FILE)]
    if folds > 1:
        weight_files = [Path(p.checkpoint_file) for p in predictors]
    wanted = {
        "stage1_fingerprint": file_fingerprint(weight_files[0]) if folds == 1 else
        hashlib.sha256("".join(file_fingerprint(f) for f in weight_files).encode()).hexdigest()[:16],
        "checkpoint": str(path),
        "selected": selected,
        "weights": config["loaded_weights"],
        "context_frames": ctx,
        "future_frames": future,
        "fraction": fraction,
        "split": split,
        "folds": folds,
    }

    written = skipped_done = samples_done = 0
    tic = time.perf_counter()
    with WriterLock(cache, "make-predicted-pool"):
        meta = atomic.read_json(atomic.join(cache, layout.META))  # fresh, under the lock
        old = meta.get("pool")
        if old:
            keys = ("stage1_fingerprint", "context_frames", "future_frames", "fraction", "split", "folds")
            diffs = [f"{k}: pool has {old.get(k, 1 if k == 'folds' else None)!r}, this call {wanted[k]!r}" for k in keys
                     if old.get(k, 1 if k == "folds" else None) != wanted[k]]
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
        autocast = inference_autocast(dev)
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
                arrays, cos_sum = {}, np.zeros(future)
                if len(rows):
                    block = np.zeros((hi - lo, future, c, h, w), dtype=np.float16)
                    windows = torch.from_numpy(np.asarray(features[lo:hi])[rows].astype(np.float32)).to(dev)
                    fold = np.array([fold_of(ids[lo + r], folds) for r in rows])
                    for k, predictor in enumerate(predictors):
                        mine = np.flatnonzero(fold == k)
                        for b in range(0, len(mine), batch_size):
                            pick = mine[b : b + batch_size]
                            x = windows[pick]
                            with torch.no_grad(), autocast:
                                predicted = rollout(predictor, x[:, ctx - m : ctx], future).float()
                            block[rows[pick]] = predicted.cpu().numpy().astype(np.float16)
                            stored = torch.from_numpy(block[rows[pick]].astype(np.float32)).to(dev)
                            cos_sum += F.cosine_similarity(stored, x[:, ctx:], dim=2).mean(dim=(2, 3)).sum(0).cpu().numpy()
                    arrays[layout.POOL_FEATURES] = block
                extra = {"quality": {"cos_sum": cos_sum.tolist(), "windows": int(len(rows))}}
                write_shard(cache, shard, shard_size, arrays, statuses, done_dir=layout.POOL_DONE_DIR, extra=extra)
                written += 1
                samples_done += len(rows)
                bar.update(job, advance=1, status=f"{samples_done} windows")
        complete = len(done_shards(cache, layout.POOL_DONE_DIR)) == num_shards
        meta["pool"]["status"] = "complete" if complete else "in_progress"
        meta["pool"]["samples"] = int(len(CacheReader(cache).pool_samples()))
        meta["pool"]["quality"] = _quality(cache, reader, model, ctx, batch_size, dev)
        meta["pool"]["folds_choice"] = folds_choice
        atomic.write_json(atomic.join(cache, layout.META), meta)

    seconds = time.perf_counter() - tic
    quality = meta["pool"]["quality"]
    result = {
        "cache": cache,
        "checkpoint": str(path),
        "selected": selected,
        "folds": folds,
        "folds_choice": folds_choice,
        "stage1_fingerprint": wanted["stage1_fingerprint"],
        "shards_written": written,
        "shards_already_done": skipped_done,
        "windows_predicted": samples_done,
        "pool_windows": meta["pool"]["samples"],
        "complete": complete,
        "quality": quality,
        "seconds": seconds,
        "windows_per_s": samples_done / max(seconds, 1e-9),
    }
    console.print(f"Stage 1 checkpoint: {path} ({selected})")
    summary(
        f"pool {'complete' if complete else 'partial'}: {result['pool_windows']} windows in {cache}/{layout.POOL_FEATURES} "
        f"({written} shards written now, {skipped_done} already done, {result['windows_per_s']:.1f} windows/s"
        + (f", {folds}-fold cross-fitted" if folds > 1 else "") + "); " + quality_line(quality)
        + (f"; folds auto -> {folds}: {folds_choice['reason']}" if requested == FOLDS_AUTO else "")
    )
    return result


def quality_line(quality: dict[str, Any]) -> str:
    """cosine to the truth per rollout step: pool (training windows) vs rollout on val vs copy-last on val."""
    def fmt(values: list[float] | None) -> str:
        return "/".join(f"{v:.3f}" for v in values) if values else "n/a"

    return (f"cosine to the truth per rollout step: pool {fmt(quality.get('pool_train'))}, "
            f"Stage 1 on val {fmt(quality.get('rollout_val'))}, copy-last on val {fmt(quality.get('copy_last_val'))}")


def _quality(cache: str, reader: CacheReader, model: torch.nn.Module, ctx: int, batch_size: int, dev: torch.device) -> dict[str, Any]:
    """Pool cosines (summed in the shard markers) next to the given Stage 1's rollout and copy-last on val windows."""
    parts = [mk["quality"] for mk in done_shards(cache, layout.POOL_DONE_DIR).values() if mk.get("quality")]
    pool_windows = sum(p["windows"] for p in parts)
    pool = (np.sum([p["cos_sum"] for p in parts], axis=0) / pool_windows).tolist() if pool_windows else None
    val_rows = reader.samples("val")
    rollout_sum = copy_sum = None
    features = reader.array(layout.FEATURES)
    for b in range(0, len(val_rows), batch_size):
        x = torch.from_numpy(np.stack([np.asarray(features[int(r)], dtype=np.float32) for r in val_rows[b : b + batch_size]])).to(dev)
        with torch.no_grad():
            cos, copy = rollout_cosine(model, x, ctx)
        rollout_sum = cos.sum(0) if rollout_sum is None else rollout_sum + cos.sum(0)
        copy_sum = copy.sum(0) if copy_sum is None else copy_sum + copy.sum(0)
    val = len(val_rows)
    return {
        "pool_train": pool,
        "pool_windows": pool_windows,
        "rollout_val": (rollout_sum / val).tolist() if val else None,
        "copy_last_val": (copy_sum / val).tolist() if val else None,
        "val_windows": val,
    }


def _fold_models(cache: str, path: Path, config: dict[str, Any], reader: CacheReader, split: str, folds: int,
                 prefer_ema: bool, dev: torch.device) -> list[torch.nn.Module]:
    """K Stage 1 models, model k trained like `path`'s run (its config, same steps) without fold k of the windows.
    Runs live next to that run (`<run>/folds/fold_k_of_K`) and resume like any training run."""
    from configs.schema import config_from_dict
    from train.stage1 import train_stage1

    run = path.parent.parent if path.parent.name == ckpt.CHECKPOINTS else path
    cfg = config_from_dict(config["config"])
    ids = reader.manifest["sample_id"].to_list()
    train = [int(s) for s in reader.samples(split)]
    models = []
    for k in range(folds):
        out = run / "folds" / f"fold_{k}_of_{folds}"
        keep = [s for s in train if fold_of(ids[s], folds) != k]
        console.rule(f"cross-fitting: Stage 1 without fold {k + 1} of {folds} ({len(keep)} of {len(train)} windows)")
        result = train_stage1(cfg, cache, str(out), resume=True, train_samples=keep)
        fold_model, loaded = ckpt.load_model_for_inference(out, build_stage1_model, prefer_ema=prefer_ema, device=dev)
        fold_path = Path(loaded["checkpoint"])
        fold_model.checkpoint_file = str(fold_path / (ckpt.EMA_FILE if loaded["loaded_weights"] == "ema" else ckpt.MODEL_FILE))
        models.append(fold_model)
        del result
    return models
