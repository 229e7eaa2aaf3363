"""`python cli.py cache`: one Ray DAG from raw driving videos to a sharded Zarr cache.

    list clips -> windows -> manifest ──► pass 1: CacheWorker.accumulate (per-worker float64 sums) ─► merge ─► eigh ─► pca.safetensors
                                     └──► pass 2: CacheWorker.process_shard (decode → VFM → PCA → codec → write shard → marker)
                                          └──► finalize: manifest status, failures.parquet, meta.json "complete"

One worker (Ray actor) per GPU when GPUs exist, CPU workers otherwise; each shard is written by exactly one worker.
Re-running the same command resumes: finished shards (those with a marker) are skipped, the saved PCA is reused, and
a different configuration is refused with the differences named. Works on a local Ray (started here) and on an
existing cluster (`--ray-address`), with the cache on a local path or an fsspec URL.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from configs.schema import Config
from pipeline import atomic, layout
from pipeline.cache_worker import CacheWorker, StageTimes, decode_rows
from pipeline.codec_linear import LinearCodec, fit_linear_codec
from pipeline.console import console, progress, warn_loud
from pipeline.errors import InputError
from pipeline.fingerprint import RANDOM, dict_fingerprint, differences
from pipeline.pca import PCA, PCAAccumulator, fit_pca
from pipeline.sources import list_clips
from pipeline.store import (
    ArraySpec,
    CacheError,
    WriterLock,
    create_arrays,
    done_shards,
    empty_failures,
    read_parquet,
    write_parquet,
)
from pipeline.windows import Window, make_windows
from pipeline.worker_plan import dag_plan

REPO_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass
class CacheSummary:
    out: str
    samples: int
    ok: int
    failed: int
    frames: int
    seconds: float
    bytes_written: int
    skipped_shards: int
    times: StageTimes
    reconstruction: dict[str, Any] | None = None  # meta.json codec.reconstruction
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds: start (Ray + workers ready), fit, encode, ...

    def line(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        recon = ""
        if self.reconstruction and self.reconstruction.get("psnr_db") is not None:
            r = self.reconstruction
            recon = f", codec reconstruction {r['psnr_db']:.1f} dB PSNR on {r['windows']} {r['split']} windows"
        return (
            f"cache: {self.samples} samples ({self.ok} ok, {self.failed} failed, {self.skipped_shards} shards already done) "
            f"in {self.seconds:.1f} s, {fps:.1f} frames/s, {self.bytes_written / 1e6:.1f} MB written{recon} -> {self.out}"
        )


# ----------------------------------------------------------------------------------- what defines a cache


def cache_settings(cfg: Config, dataset: str, root: str) -> dict[str, Any]:
    """Everything that changes the cache's contents. A resume must match it exactly."""
    c = cfg.to_dict()
    return {
        "dataset": dataset,
        "root": str(root),
        "window": c["window"],
        "source": c["sources"].get(dataset, {}),
        "vfm": {k: c["vfm"][k] for k in ("name", "layers", "input_height", "input_width", "weights", "overrides")},
        "pca": {k: c["pca"][k] for k in ("components", "fit_split", "fit_max_windows", "checkpoint")},
        "codec": {k: c["codec"][k] for k in ("name", "temporal_factor", "spatial_factor", "latent_channels", "weights", "overrides")}
        | ({"tiling": True} if c["codec"].get("tiling") and c["codec"]["name"] == "wan" else {}),
        "cache": {k: c["cache"].get(k) for k in ("shard_size", "dtype", "compressor", "compression_level")}
        | ({"flipped_features": True} if c["cache"].get("flipped_features") else {}),
    }


# --------------------------------------------------------------------------------------------- manifest


def manifest_frame(windows: Sequence[Window], shard_size: int) -> pl.DataFrame:
    rows = []
    for i, w in enumerate(windows):
        label = w.clip.labels.get(w.indices[w.label_index], {}) if w.label_index >= 0 else {}
        rows.append(
            {
                "sample": i,
                "sample_id": w.sample_id,
                "dataset": w.clip.dataset,
                "split": w.clip.split,
                "clip_id": w.clip.clip_id,
                "fps": float(w.clip.fps),
                "frame_indices": list(map(int, w.indices)),
                "source": w.clip.video,
                "frame_paths": [w.clip.frame_paths[j] for j in w.indices] if w.clip.frame_paths else [],
                "label_index": int(w.label_index),
                "segmentation_path": label.get("segmentation", ""),
                "depth_path": label.get("depth", ""),
                "shard": i // shard_size,
                "status": "pending",
            }
        )
    schema = {
        "sample": pl.Int64, "sample_id": pl.Utf8, "dataset": pl.Utf8, "split": pl.Utf8, "clip_id": pl.Utf8,
        "fps": pl.Float64, "frame_indices": pl.List(pl.Int64), "source": pl.Utf8, "frame_paths": pl.List(pl.Utf8),
        "label_index": pl.Int64, "segmentation_path": pl.Utf8, "depth_path": pl.Utf8, "shard": pl.Int64, "status": pl.Utf8,
    }
    return pl.DataFrame(rows, schema=schema)


def select_windows(
    cfg: Config, dataset: str, root: str, splits: Sequence[str], limit: int, listing_failures: list[dict[str, Any]] | None = None
) -> list[Window]:
    """Clips -> K-frame windows, sorted by split then sample id. Files unreadable while listing go to `listing_failures`."""

    def on_error(exc: InputError) -> None:
        if listing_failures is None:
            raise exc
        listing_failures.append({"sample": -1, "sample_id": "", "path": exc.path, "stage": "list", "reason": exc.reason})

    clips = list_clips(dataset, root, cfg.sources.get(dataset) or _missing_source(dataset), splits, on_error=on_error)
    windows = make_windows(clips, cfg.window.frames, cfg.sources[dataset])
    windows = sorted(windows, key=lambda w: (splits.index(w.clip.split) if w.clip.split in splits else len(splits), w.sample_id))
    if limit > 0:
        kept, per_split = [], {}
        for w in windows:
            if per_split.get(w.clip.split, 0) < limit:
                kept.append(w)
                per_split[w.clip.split] = per_split.get(w.clip.split, 0) + 1
        windows = kept
    return windows


def _missing_source(dataset: str) -> Any:
    raise CacheError(f"no [sources.{dataset}] settings in the config; add a table with frame_step/stride/start")


def array_specs(cfg: Config, info: dict[str, Any]) -> list[ArraySpec]:
    """The cache's per-sample arrays (layout.py), sized from the config and the built models (`CacheWorker.describe`)."""
    h, w = info["grid"]
    lh, lw = cfg.latent_hw
    frame = (cfg.window.height, cfg.window.width)
    flipped = [ArraySpec(layout.FEATURES_FLIPPED, (cfg.latent_frames, cfg.pca.components, h, w), cfg.cache.dtype)]
    return [
        ArraySpec(layout.FEATURES, (cfg.latent_frames, cfg.pca.components, h, w), cfg.cache.dtype),
        *(flipped if cfg.cache.flipped_features else []),
        ArraySpec(layout.LATENTS, (cfg.latent_frames, info["codec_channels"], lh, lw), cfg.cache.dtype),
        ArraySpec(layout.SEGMENTATION, frame, "uint8", layout.IGNORE_LABEL),
        ArraySpec(layout.DEPTH, frame, "uint8", layout.INVALID_DEPTH),
    ]


# ------------------------------------------------------------------------------------------------- Ray


def _init_ray(address: str | None, workers: int) -> Any:
    import ray

    if not ray.is_initialized():
        path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        kwargs: dict[str, Any] = dict(
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,  # workers only repeat the driver's warnings; their errors come back as exceptions
            logging_level="ERROR",
        )
        if address:
            ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": path}}, **kwargs)
        else:
            # A local Ray's workers inherit this process's environment: setting PYTHONPATH here instead of through a
            # runtime_env lets them start from Ray's pre-started worker pool (measured: start-up 2-3 s shorter).
            old = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = path
            try:
                ray.init(num_cpus=max(os.cpu_count() or 1, workers), object_store_memory=512 * 1024**2, **kwargs)
            finally:
                if old is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = old
    return ray


def _unwrap(exc: BaseException) -> BaseException:
    """The original exception inside a RayTaskError (InputError with --strict, CacheError, ...)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


# ------------------------------------------------------------------------------------------------ main


def build_cache(
    cfg: Config,
    dataset: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: Sequence[str] = ("train", "val"),
    ray_address: str | None = None,
    workers: int = 0,
    allow_random_weights: bool = False,
    strict: bool | None = None,
    limit: int = 0,
    max_shards: int = 0,
    decode_tasks: int | None = None,
) -> CacheSummary:
    """Build (or resume) the cache of `dataset` at `root` into `out`. `max_shards` > 0 stops early (tests, partial runs).
    `decode_tasks` > 0 decodes shards in that many CPU tasks feeding the workers (the GPU layout), 0 decodes inside
    the workers; None: the plan's choice (pipeline/worker_plan.py: tasks only when there are GPUs)."""
    t_start = time.perf_counter()
    root, out = str(root), atomic.local(out)
    strict = cfg.cache.strict if strict is None else strict
    settings = cache_settings(cfg, dataset, root)
    listing_failures: list[dict[str, Any]] = []
    # Absolute local paths: Ray workers may run in another folder than this process (a cluster, or a Ray started
    # earlier from elsewhere), and the manifest's frame paths must not depend on anyone's cwd.
    listing_root = root if atomic.is_url(root) else os.path.abspath(root)
    out = out if atomic.is_url(out) else os.path.abspath(out)  # the workers write shards and read the PCA here
    windows = select_windows(cfg, dataset, listing_root, list(splits), limit, listing_failures)
    if not windows:
        raise CacheError(f"{root}: no {dataset} clip is long enough for a {cfg.window.frames}-frame window (splits {list(splits)})")
    shard_size = cfg.cache.shard_size
    n = len(windows)
    num_shards = (n + shard_size - 1) // shard_size
    meta_path = atomic.join(out, layout.META)

    with WriterLock(out, purpose="cache"):
        meta = _open_or_create_meta(meta_path, settings, windows, shard_size)
        manifest = manifest_frame(windows, shard_size)
        manifest_path = atomic.join(out, layout.MANIFEST)
        if atomic.exists(manifest_path):
            old_ids = read_parquet(manifest_path)["sample_id"].to_list()
            if old_ids != manifest["sample_id"].to_list():
                raise CacheError(
                    f"{manifest_path}: the dataset at {root} now lists other windows than when this cache was started "
                    f"({len(old_ids)} before, {len(manifest)} now); use a new --out folder"
                )
        else:
            write_parquet(manifest_path, manifest)
        phases = {"prepare": time.perf_counter() - t_start}
        t_phase = time.perf_counter()
        ray = _init_ray(ray_address, workers)
        phases["ray_init"] = time.perf_counter() - t_phase
        plan = dag_plan(ray.cluster_resources(), workers or cfg.cache.workers)
        if decode_tasks is not None:
            plan["decode_tasks"], plan["in_flight"] = decode_tasks, 2 if decode_tasks > 0 else 1
            if decode_tasks > 0 and "num_gpus" not in plan["actor"]:
                plan["actor"] = {"num_cpus": 0}  # CPU-only: leave the CPUs to the decode tasks
        actor_cls = ray.remote(**plan["actor"])(CacheWorker)
        cfg_dict = cfg.to_dict()
        # threads=0: each worker sets its torch threads and overlap from the resources Ray assigned it
        actors = [actor_cls.remote(cfg_dict, allow_random_weights, 0, strict) for _ in range(plan["workers"])]
        try:
            info = ray.get([a.describe.remote() for a in actors])[0]  # every worker ready: start-up ends here
        except ray.exceptions.ActorDiedError:
            # Ray hides an actor constructor's exception; building the worker here re-raises the real, clear error
            # (missing weights, bad weights file, ...). Only paid when the actors failed anyway.
            CacheWorker(cfg.to_dict(), allow_random_weights).describe()
            raise
        except Exception as exc:
            raise _unwrap(exc) from None
        phases["workers_ready"] = time.perf_counter() - t_phase - phases["ray_init"]
        t_phase = time.perf_counter()
        _warn_random(info)
        total = StageTimes()
        total.failures.extend(listing_failures)

        # ---------------- pass 1: the fits (the feature PCA; the linear codec), one read of the training windows
        pca_path = atomic.join(out, layout.PCA_FILE)
        codec_path = atomic.join(out, layout.CODEC_FILE)
        need_pca = not atomic.exists(pca_path) and not cfg.pca.checkpoint
        need_codec = cfg.codec.name == "linear" and not atomic.exists(codec_path) and not cfg.codec.weights
        sums: dict[str, PCAAccumulator | None] = {"pca": None, "codec": None}
        fit_windows = 0
        if need_pca or need_codec:
            sums, fit_windows, times = _fit_pass(ray, actors, cfg, windows, info["vfm_channels"], pca=need_pca, codec=need_codec)
            total.add(times)
        if atomic.exists(pca_path):
            pca = PCA.load(pca_path)
            pca_info = meta.get("pca", {})
        elif cfg.pca.checkpoint:
            pca = _import_pca(cfg)
            pca.save(pca_path)
            pca_info = {"source": cfg.pca.checkpoint}
        else:
            accumulator = sums["pca"]
            if accumulator.count < cfg.pca.components:
                raise CacheError(f"only {accumulator.count} tokens to fit a {cfg.pca.components}-component PCA; add training windows")
            pca = fit_pca(accumulator, cfg.pca.components)
            pca_info = {"source": "fit", "fit_windows": fit_windows, "fit_tokens": int(accumulator.count),
                        "explained_variance_ratio_sum": float(pca.explained_variance_ratio.sum())}
            pca.save(pca_path)
        if pca.dim != info["vfm_channels"] or pca.n_components != cfg.pca.components:
            raise CacheError(
                f"{pca_path}: PCA maps {pca.dim} -> {pca.n_components} channels but the VFM gives {info['vfm_channels']} "
                f"and pca.components={cfg.pca.components}; use a matching PCA or a new --out folder"
            )
        ray.get([a.set_pca.remote(pca_path) for a in actors])
        if cfg.codec.name == "linear":
            codec = _linear_codec(cfg, codec_path, sums["codec"])
            ray.get([a.set_codec.remote(codec_path) for a in actors])
            info = {**info, "codec_weights": codec.weights, "codec_channels": codec.channels,
                    "codec_fit": meta.get("codec", {}).get("fit") or _codec_fit_info(codec, sums["codec"], fit_windows, cfg)}

        phases["fit"] = time.perf_counter() - t_phase
        t_phase = time.perf_counter()

        # ---------------- arrays
        specs = array_specs(cfg, info)
        shapes = {spec.name: spec.shape for spec in specs}
        create_arrays(out, n, shard_size, specs, cfg.cache.compressor, cfg.cache.compression_level)
        meta.update(_meta_body(cfg, dataset, root, settings, info, pca, pca_info, windows, shard_size, shapes))
        atomic.write_json(meta_path, meta)

        # ---------------- pass 2: shards
        finished = done_shards(out)
        todo = [s for s in range(num_shards) if s not in finished]
        if max_shards > 0:
            todo = todo[:max_shards]

        def rows_of(s: int) -> list[tuple[int, Window]]:
            return [(i, windows[i]) for i in range(s * shard_size, min(n, (s + 1) * shard_size))]

        checked = reconstruction_samples(cfg, windows)

        # Decode tasks (the GPU layout) run ahead of the workers: each worker has `in_flight` shards queued, so the
        # next shard's decode runs while the current one is computed.
        decode = ray.remote(num_cpus=1)(decode_rows) if plan["decode_tasks"] > 0 else None
        with progress() as bar:
            task = bar.add_task("pass 2: encode + write", total=len(todo), status="")
            pending: dict[Any, int] = {}
            queue = list(todo)
            idle = list(range(len(actors))) * plan["in_flight"]
            try:
                while queue or pending:
                    while queue and idle:
                        s = queue.pop(0)
                        k = idle.pop(0)
                        rows = rows_of(s)
                        check = [i for i, _ in rows if i in checked]
                        decoded = decode.remote(cfg_dict, rows, strict) if decode is not None else None
                        pending[actors[k].process_shard.remote(out, s, rows, shapes, check, decoded)] = k
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        idle.append(pending.pop(ref))
                        times = ray.get(ref)
                        total.add(times)
                        bar.update(task, advance=1, status=f"{total.frames} frames, {len(total.failures)} failed")
                for times in ray.get([a.flush.remote() for a in actors]):  # the shards still being written
                    total.add(times)
            except Exception as exc:
                original = _unwrap(exc)
                if isinstance(original, InputError):
                    raise CacheError(f"--strict: {original}. Fix or remove that file, or run without --strict to record it and carry on.") from None
                raise original from None

        phases["encode"] = time.perf_counter() - t_phase
        t_phase = time.perf_counter()

        # ---------------- finalize
        status = _finalize(out, meta, meta_path, manifest, total, complete=(max_shards == 0 or not queue and len(done_shards(out)) == num_shards))
    seconds = time.perf_counter() - t_start
    phases["finalize"] = time.perf_counter() - t_phase
    ok = int((status == "ok").sum())
    failed = int((status == "failed").sum())
    return CacheSummary(out, n, ok, failed, total.frames, seconds, total.bytes, len(finished), total,
                        meta.get("codec", {}).get("reconstruction"), phases)


def _open_or_create_meta(meta_path: str, settings: dict[str, Any], windows: Sequence[Window], shard_size: int) -> dict[str, Any]:
    if atomic.exists(meta_path):
        meta = atomic.read_json(meta_path)
        diffs = differences(meta.get("settings", {}), settings)
        if meta.get("num_samples") not in (None, len(windows)):
            diffs.append(f"num_samples: cache has {meta.get('num_samples')}, this run lists {len(windows)} windows")
        if diffs:
            raise CacheError(
                f"{meta_path}: this cache was written with other settings, so it cannot be resumed:\n  - "
                + "\n  - ".join(diffs)
                + "\nRe-run with the original settings, or use a new --out folder."
            )
        console.print(f"resuming the cache in {os.path.dirname(meta_path) or '.'}")
        return meta
    meta = {
        "schema_version": layout.SCHEMA_VERSION,
        "status": "in_progress",
        "settings": settings,
        "fingerprint": dict_fingerprint(settings),
        "num_samples": len(windows),
        "shard_size": shard_size,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic.write_json(meta_path, meta)
    return meta


def _import_pca(cfg: Config) -> PCA:
    return PCA.open(cfg.pca.checkpoint, allow_pickle=cfg.pca.allow_pickle)


def _fit_pass(ray: Any, actors: list[Any], cfg: Config, windows: Sequence[Window], dim: int, *, pca: bool, codec: bool
              ) -> tuple[dict[str, PCAAccumulator | None], int, StageTimes]:
    """Pass 1 over the fit windows: merged float64 sums for the feature PCA and/or the linear codec's blocks."""
    fit = [w for w in windows if w.clip.split == cfg.pca.fit_split]
    if not fit:
        raise CacheError(
            f"no {cfg.pca.fit_split!r} windows to fit the PCA / linear codec on; pass an existing PCA with --pca PATH "
            f"(e.g. another cache's pca.safetensors) and codec with --codec-weights, or include that split"
        )
    if cfg.pca.fit_max_windows and len(fit) > cfg.pca.fit_max_windows:
        picks = np.linspace(0, len(fit) - 1, cfg.pca.fit_max_windows).round().astype(int)
        fit = [fit[i] for i in picks]
    chunks = [list(c) for c in np.array_split(np.arange(len(fit)), min(len(fit), 4 * len(actors))) if len(c)]
    total = StageTimes()
    what = " + ".join(name for name, on in (("PCA", pca), ("codec", codec)) if on)
    with progress() as bar:
        task = bar.add_task(f"pass 1: {what} sums", total=len(chunks), status="")
        refs = [actors[i % len(actors)].accumulate.remote([fit[j] for j in chunk], pca, codec) for i, chunk in enumerate(chunks)]
        parts: dict[int, tuple[dict[str, Any], StageTimes]] = {}
        remaining = list(refs)
        try:
            while remaining:
                ready, remaining = ray.wait(remaining, num_returns=1)
                parts[refs.index(ready[0])] = ray.get(ready[0])
                bar.update(task, advance=1)
        except Exception as exc:
            original = _unwrap(exc)
            if isinstance(original, InputError):
                raise CacheError(f"--strict: {original}. Fix or remove that file, or run without --strict.") from None
            raise original from None
    sums: dict[str, PCAAccumulator | None] = {"pca": None, "codec": None}
    for i in range(len(refs)):  # merge in a fixed order: the fit is deterministic
        states, times = parts[i]
        for key, state in states.items():
            if state is not None:
                part = PCAAccumulator.from_state_dict(state)
                sums[key] = part if sums[key] is None else sums[key].merge(part)
        total.add(times)
    return sums, len(fit), total


def _linear_codec(cfg: Config, path: str, sums: PCAAccumulator | None) -> LinearCodec:
    """The cache's linear codec: the one already in it, a reused file (codec.weights), or fitted from pass 1's sums."""
    c = cfg.codec
    if atomic.exists(path):
        codec = LinearCodec.load(path)
    elif c.weights:
        codec = LinearCodec.load(c.weights)
    else:
        if sums is None or sums.count < c.latent_channels:
            raise CacheError(f"too few space-time blocks ({0 if sums is None else sums.count}) to fit a "
                             f"{c.latent_channels}-channel linear codec; add training windows")
        codec = fit_linear_codec(sums, c.latent_channels, c.temporal_factor, c.spatial_factor)
    got = (codec.temporal_factor, codec.spatial_factor, codec.channels)
    want = (c.temporal_factor, c.spatial_factor, c.latent_channels)
    if got != want:
        where = path if atomic.exists(path) else c.weights
        raise CacheError(
            f"{where}: linear codec with (temporal factor, spatial factor, channels) = {got} but the config says {want}; "
            "use a matching codec file or a new --out folder"
        )
    if not atomic.exists(path):
        codec.save(path)
    return codec


def _codec_fit_info(codec: LinearCodec, sums: PCAAccumulator | None, fit_windows: int, cfg: Config) -> dict[str, Any]:
    if sums is None:
        return {"source": cfg.codec.weights}
    return {"source": "fit", "fit_windows": fit_windows, "fit_blocks": int(sums.count),
            "discarded_variance": codec.discarded_variance,
            "psnr_fit_bound_db": _psnr_of_variance(codec.discarded_variance)}


def _psnr_of_variance(mse: float) -> float | None:
    """PSNR (uint8 scale) of a mean squared error measured on [-1, 1] video (x 127.5 to pixel units)."""
    return None if mse <= 0 else float(10 * np.log10(255.0**2 / (mse * 127.5**2)))


def _meta_body(cfg, dataset, root, settings, info, pca, pca_info, windows, shard_size, shapes) -> dict[str, Any]:
    splits: dict[str, int] = {}
    for w in windows:
        splits[w.clip.split] = splits.get(w.clip.split, 0) + 1
    return {
        "dataset": dataset,
        "root": str(root),
        "window": cfg.to_dict()["window"],
        "feature_frame_indices": cfg.feature_frame_indices,
        "latent_frames": cfg.latent_frames,
        "context_latent_frames": cfg.context_latent_frames,
        "vfm": {
            "name": cfg.vfm.name,
            "layers": list(cfg.vfm.layers),
            "input_height": cfg.vfm.input_height,
            "input_width": cfg.vfm.input_width,
            "weights": info["vfm_weights"],
            "out_channels": info["vfm_channels"],
            "grid": list(info["grid"]),
            **({"pretraining": info["vfm_pretraining"]} if info.get("vfm_pretraining") else {}),
        },
        "pca": {"components": pca.n_components, "fit_split": cfg.pca.fit_split, "fingerprint": pca.fingerprint, **pca_info},
        "codec": {
            "name": cfg.codec.name,
            "temporal_factor": cfg.codec.temporal_factor,
            "spatial_factor": cfg.codec.spatial_factor,
            "channels": info["codec_channels"],
            "weights": info["codec_weights"],
            **({"file": layout.CODEC_FILE, "fit": info["codec_fit"]} if "codec_fit" in info else {}),
        },
        "num_samples": len(windows),
        "shard_size": shard_size,
        "num_shards": (len(windows) + shard_size - 1) // shard_size,
        "splits": splits,
        "arrays": {k: [len(windows), *v] for k, v in shapes.items()},
        "random_weights": RANDOM in (info["vfm_weights"], info["codec_weights"]),
        "flipped_features": bool(cfg.cache.flipped_features),
    }


def _finalize(out: str, meta: dict[str, Any], meta_path: str, manifest: pl.DataFrame, total: StageTimes, complete: bool) -> np.ndarray:
    markers = done_shards(out)
    status = np.array(["pending"] * len(manifest), dtype=object)
    for marker in markers.values():
        for s in marker["samples"]:
            status[s["sample"]] = s["status"]
    write_parquet(atomic.join(out, layout.MANIFEST), manifest.with_columns(pl.Series("status", status.astype(str))))
    failures_path = atomic.join(out, layout.FAILURES)
    old = read_parquet(failures_path) if atomic.exists(failures_path) else empty_failures()
    new = pl.DataFrame(total.failures, schema=old.schema) if total.failures else empty_failures()
    failures = pl.concat([old, new]).unique(subset=["sample_id", "path", "stage"], keep="last", maintain_order=True)
    write_parquet(failures_path, failures)
    meta["status"] = "complete" if complete and not (status == "pending").any() else "in_progress"
    meta["counts"] = {"ok": int((status == "ok").sum()), "failed": int((status == "failed").sum()), "pending": int((status == "pending").sum())}
    meta["codec"]["reconstruction"] = _reconstruction(markers, meta["codec"])
    atomic.write_json(meta_path, meta)
    return status


def reconstruction_samples(cfg: Config, windows: Sequence[Window]) -> set[int]:
    """The samples whose codec reconstruction is measured in pass 2: the first `cache.reconstruction_windows` val
    windows (all when < 0; none for the lossless pixel codec, which is exact by construction)."""
    limit = cfg.cache.reconstruction_windows
    if cfg.codec.name == "pixel" or limit == 0:
        return set()
    val = [i for i, w in enumerate(windows) if w.clip.split == "val"]
    return set(val if limit < 0 else val[:limit])


def _reconstruction(markers: dict[int, dict[str, Any]], codec: dict[str, Any]) -> dict[str, Any]:
    """The codec's measured reconstruction: mean per-frame PSNR over the checked val windows (from the markers)."""
    if codec.get("weights") == "lossless":
        return {"split": "val", "windows": 0, "psnr_db": None, "note": "lossless: exact by construction"}
    parts = [m["reconstruction"] for m in markers.values() if m.get("reconstruction")]
    frames = sum(p["frames"] for p in parts)
    return {
        "split": "val",
        "windows": sum(p["windows"] for p in parts),
        "frames": frames,
        "psnr_db": sum(p["psnr_sum"] for p in parts) / frames if frames else None,
    }


def _warn_random(info: dict[str, Any]) -> None:
    if info["vfm_weights"] == RANDOM:
        warn_loud("the VFM has RANDOM weights: features are meaningless for research. Recorded in meta.json.")
    if info["codec_weights"] == RANDOM:
        warn_loud("the codec (VAE) has RANDOM weights: latents are meaningless for research. Recorded in meta.json.")
