"""The cache on disk: Zarr v3 arrays + meta.json + manifest, with a writer lock and shard completion markers.

Writers: `CacheWriter` (used by the DAG; the pool writer reuses `write_shard`). Readers: `CacheReader` (trainers,
pool, evaluation). A shard is complete only when its `_done/shard_N.json` marker exists; the marker is written
atomically after every array of the shard, so a killed run never leaves a sample that reads as complete but is
partial. See pipeline/layout.py for the contract.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Sequence

import fsspec
import numpy as np
import polars as pl
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from pipeline import atomic, layout, lock
from pipeline.layout import CacheError  # its home is the contract; every reader imports it from here too


def _fs_path(url: str) -> tuple[Any, str]:
    return fsspec.core.url_to_fs(url)


def _compressor(name: str, level: int) -> Any:
    if name == "zstd":
        return ZstdCodec(level=level)
    if name == "blosc":
        return BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle")
    if name == "none":
        return None
    raise CacheError(f"cache.compressor={name!r}: choose zstd, blosc or none")


# ----------------------------------------------------------------------------------------------- lock


class WriterLock(lock.WriterLock):
    """`cache.lock`: one writer per cache (the generic lock in pipeline/lock.py, refusing with CacheError)."""

    def __init__(self, root: str, purpose: str):
        super().__init__(atomic.join(root, layout.LOCK), purpose, what="cache", error=CacheError)


# --------------------------------------------------------------------------------------------- tables


def write_parquet(path: str, df: pl.DataFrame) -> None:
    buf = io.BytesIO()
    df.write_parquet(buf)
    atomic.write_bytes(path, buf.getvalue())


def read_parquet(path: str) -> pl.DataFrame:
    with fsspec.open(path, "rb") as f:
        return pl.read_parquet(f)


def empty_failures() -> pl.DataFrame:
    return pl.DataFrame(schema={k: pl.Int64 if v == "int64" else pl.Utf8 for k, v in layout.FAILURE_COLUMNS.items()})


# --------------------------------------------------------------------------------------------- arrays


@dataclass
class ArraySpec:
    name: str
    shape: tuple[int, ...]  # without the leading sample axis
    dtype: str
    fill_value: Any = 0


def create_arrays(root: str, num_samples: int, shard_size: int, specs: Sequence[ArraySpec], compressor: str, level: int) -> None:
    """Create (or keep, when they already exist with the same shape) sharded arrays, one sample per chunk."""
    group = zarr.open_group(store=root, mode="a")
    for spec in specs:
        shape = (num_samples, *spec.shape)
        if spec.name in group:
            existing = group[spec.name]
            if tuple(existing.shape) != shape or str(existing.dtype) != spec.dtype:
                raise CacheError(
                    f"{atomic.join(root, spec.name)} has shape {tuple(existing.shape)} {existing.dtype}, expected "
                    f"{shape} {spec.dtype}; this cache was written with other settings: use a new --out folder"
                )
            continue
        group.create_array(
            name=spec.name,
            shape=shape,
            chunks=(1, *spec.shape),
            shards=(shard_size, *spec.shape),
            dtype=spec.dtype,
            compressors=_compressor(compressor, level),
            fill_value=spec.fill_value,
        )


def write_shard(root: str, shard: int, shard_size: int, arrays: dict[str, np.ndarray], statuses: list[dict[str, Any]],
                done_dir: str = layout.DONE_DIR, extra: dict[str, Any] | None = None) -> int:
    """Write every array of one shard, then its completion marker (with `extra` fields, e.g. the codec's measured
    reconstruction). Returns bytes of array data written."""
    group = zarr.open_group(store=root, mode="a")
    start = shard * shard_size
    written = 0
    for name, data in arrays.items():
        arr = group[name]
        stop = start + data.shape[0]
        if stop > arr.shape[0] or data.shape[1:] != tuple(arr.shape[1:]):
            raise CacheError(f"shard {shard} of {name}: data {data.shape} does not fit array {arr.shape}")
        arr[start:stop] = data.astype(arr.dtype, copy=False)
        written += data.nbytes
    marker = {"shard": shard, "samples": statuses, **(extra or {})}
    atomic.write_json(atomic.join(root, done_dir, layout.shard_done_name(shard)), marker)
    return written


def done_shards(root: str, done_dir: str = layout.DONE_DIR) -> dict[int, dict[str, Any]]:
    """Markers of the complete shards: {shard: marker}."""
    path = atomic.join(root, done_dir)
    fs, p = _fs_path(path)
    if not fs.exists(p):
        return {}
    out = {}
    for name in sorted(fs.ls(p, detail=False)):
        base = name.rsplit("/", 1)[-1]
        if base.startswith("shard_") and base.endswith(".json"):
            marker = atomic.read_json(atomic.join(path, base))
            out[int(marker["shard"])] = marker
    return out


# --------------------------------------------------------------------------------------------- reader


class CacheReader:
    """Read-only view of a finished (or partially finished) cache. Only samples of complete shards are served."""

    def __init__(self, root: str | os.PathLike):
        self.root = atomic.local(root)
        meta_path = atomic.join(self.root, layout.META)
        if not atomic.exists(meta_path):
            raise CacheError(f"{self.root}: no {layout.META}; this is not a Re2Pix cache. Create one with `python cli.py cache`.")
        self.meta: dict[str, Any] = atomic.read_json(meta_path)
        if self.meta.get("schema_version") != layout.SCHEMA_VERSION:
            raise CacheError(
                f"{meta_path}: schema version {self.meta.get('schema_version')} but this code reads "
                f"{layout.SCHEMA_VERSION}; rebuild the cache with `python cli.py cache`."
            )
        manifest_path = atomic.join(self.root, layout.MANIFEST)
        if not atomic.exists(manifest_path):
            raise CacheError(f"{manifest_path} is missing; the cache was never started properly. Re-run `python cli.py cache`.")
        self.manifest = read_parquet(manifest_path)
        self._group = zarr.open_group(store=self.root, mode="r")
        self.shard_size = int(self.meta["shard_size"])
        self._status = self._sample_status()

    def _sample_status(self) -> np.ndarray:
        """Per-sample status from the completion markers (the manifest is only final after the run)."""
        status = np.array(["pending"] * len(self.manifest), dtype=object)
        for marker in done_shards(self.root).values():
            for s in marker["samples"]:
                status[s["sample"]] = s["status"]
        return status

    @property
    def window(self) -> layout.WindowMeta:
        """The window contract (frames, size, feature frames, latent frames), typed."""
        return layout.WindowMeta.of(self.meta)

    @property
    def contract(self) -> layout.CacheMeta:
        """meta.json read through the typed contract (pipeline/layout.py CacheMeta)."""
        return layout.CacheMeta(self.meta)

    @property
    def complete(self) -> bool:
        return self.meta.get("status") == "complete"

    def array(self, name: str) -> zarr.Array:
        if name not in self._group:
            hint = " Run `python cli.py make-predicted-pool` first." if name.startswith("pool") else ""
            raise CacheError(f"{atomic.join(self.root, name)} does not exist.{hint}")
        return self._group[name]

    def has(self, name: str) -> bool:
        return name in self._group

    def samples(self, split: str | None = None) -> np.ndarray:
        """Row indices of the samples that are complete and ok, optionally of one split."""
        ok = self._status == "ok"
        if split is not None:
            ok &= (self.manifest["split"] == split).to_numpy()
        return np.flatnonzero(ok)

    def pool_samples(self) -> np.ndarray:
        """Rows whose Stage 1 pool predictions are complete."""
        status = np.zeros(len(self.manifest), dtype=bool)
        for marker in done_shards(self.root, layout.POOL_DONE_DIR).values():
            for s in marker["samples"]:
                if s["status"] == "ok":
                    status[s["sample"]] = True
        return np.flatnonzero(status)

    def shard_of(self, sample: int) -> int:
        return int(sample) // self.shard_size

    def pca(self) -> Any:
        from pipeline.pca import PCA

        return PCA.load(atomic.join(self.root, layout.PCA_FILE))

    def failures(self) -> pl.DataFrame:
        path = atomic.join(self.root, layout.FAILURES)
        return read_parquet(path) if atomic.exists(path) else empty_failures()

    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    def require(self, **expected: Any) -> None:
        """Refuse a cache whose meta differs from what a checkpoint/config expects, naming every mismatch.

        Keys are dotted meta paths, e.g. require(**{"pca.components": 64, "window.frames": 25}).
        """
        problems = []
        for key, want in expected.items():
            node: Any = self.meta
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node != want:
                problems.append(f"{key}: cache has {node!r}, expected {want!r}")
        if problems:
            raise CacheError(f"{self.root} does not match: " + "; ".join(problems))


def open_complete_cache(cache: str, expected: dict[str, Any] | None = None) -> CacheReader:
    """A cache to read from: refused unless complete and matching `expected` (dotted meta keys), naming every
    mismatch. Each trainer passes the fields its model depends on (see `cache_expectations`); the pool, predict and
    evaluate check their checkpoints against the cache instead."""
    reader = CacheReader(cache)
    if not reader.complete:
        raise CacheError(
            f"{cache}: meta.json status is {reader.meta.get('status')!r}, not 'complete'; finish it first "
            "(re-run `python cli.py cache` with the same --out, it resumes)"
        )
    reader.require(**(expected or {}))
    return reader


def cache_expectations(cfg: Any, *, window: bool = True, codec: bool = False) -> dict[str, Any]:
    """The meta fields a config fixes: VFM always; the window/PCA layout for the forecasting stages; the codec for
    Stage 2."""
    out: dict[str, Any] = {"vfm.name": cfg.vfm.name, "vfm.layers": list(cfg.vfm.layers)}
    if window:
        out.update({
            "pca.components": cfg.pca.components,
            "feature_frame_indices": cfg.feature_frame_indices,
            "context_latent_frames": cfg.context_latent_frames,
            "window.frames": cfg.window.frames,
            "window.context_frames": cfg.window.context_frames,
        })
    if codec:
        out.update({
            "codec.name": cfg.codec.name,
            "codec.temporal_factor": cfg.codec.temporal_factor,
            "codec.spatial_factor": cfg.codec.spatial_factor,
        })
    return out
