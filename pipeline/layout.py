"""The cache contract: names and shapes every stage relies on. Change only with SCHEMA_VERSION.

A cache is one directory (local path or fsspec URL):

    meta.json            schema version, window spec, VFM, PCA, codec (names, fingerprints or "random"),
                         config fingerprint, sample count, shard size; later `pool` (Stage 1 fingerprint)
    pca.safetensors      mean, std, components, explained_variance (see pipeline/pca.py)
    codec.safetensors    the linear codec (block mean, components, latent mean/std), only when codec.name = linear;
                         meta.json codec.weights = "fit:<fingerprint>", codec.reconstruction = its val-split PSNR
    manifest.parquet     one row per sample (MANIFEST_COLUMNS), written before pass 2, final status after it
    failures.parquet     what could not be read and why (FAILURE_COLUMNS)
    cache.lock           present while a writer runs; a second writer is refused
    zarr.json + arrays   Zarr v3 group, one row per sample, float16, sharded so one worker writes one shard:
      features           [N, Tf, C, h, w]  PCA coefficients of the VFM features of the feature frames
                                          (window indices 0, r, 2r, ...: the last frame of each latent group)
      features_flipped   [N, Tf, C, h, w]  the same for the horizontally flipped frames (cache.flipped_features:
                                          Stage 1's flip augmentation, as DINO-Foresight's random_horizontal_flip)
      latents            [N, Tl, Cz, H, W] codec latents of the whole window (Tl == Tf)
      labels/segmentation [N, H, W] uint8  train ids at window resolution (255 = ignore / no label)
      labels/depth       [N, H, W] uint8   8-bit pseudo-depth (0 = invalid / no label)
      pool/features      [N, Tf - Mf_ctx, C, h, w] Stage 1 autoregressive predictions of the future feature frames
    _done/shard_NNNNNN.json   written atomically after every array of a shard is written: the shard is complete
                              only if this exists (it lists the status of each of its samples)
    pool/_done/shard_NNNNNN.json  the same for the pool
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1

META = "meta.json"
PCA_FILE = "pca.safetensors"
CODEC_FILE = "codec.safetensors"  # the linear codec fitted in pass 1 (pipeline/codec_linear.py); absent for wan/pixel
MANIFEST = "manifest.parquet"
FAILURES = "failures.parquet"
LOCK = "cache.lock"
DONE_DIR = "_done"
POOL_DONE_DIR = "pool/_done"

FEATURES = "features"
FEATURES_FLIPPED = "features_flipped"
LATENTS = "latents"
SEGMENTATION = "labels/segmentation"
DEPTH = "labels/depth"
POOL_FEATURES = "pool/features"

IGNORE_LABEL = 255  # segmentation
INVALID_DEPTH = 0

# manifest.parquet: one row per sample, `sample` is the row index in every array.
MANIFEST_COLUMNS = {
    "sample": "int64",
    "sample_id": "str",  # f"{dataset}/{clip_id}/{first_frame:06d}"
    "dataset": "str",
    "split": "str",  # train | val | test
    "clip_id": "str",
    "fps": "float64",
    "frame_indices": "list[int64]",  # native frame indices of the K window frames
    "source": "str",  # video file, or "" for image sequences
    "frame_paths": "list[str]",  # image files of the K frames (empty for videos)
    "label_index": "int64",  # window index of the labelled frame, -1 if none
    "segmentation_path": "str",  # "" if none
    "depth_path": "str",  # "" if none
    "shard": "int64",
    "status": "str",  # ok | failed | pending
}

FAILURE_COLUMNS = {"sample": "int64", "sample_id": "str", "path": "str", "stage": "str", "reason": "str"}


def shard_done_name(shard: int) -> str:
    return f"shard_{shard:06d}.json"


@dataclass(frozen=True)
class WindowMeta:
    """meta.json's window, typed: K frames at H x W with the first M observed; the feature frames (window indices, one
    per latent frame) and how many of them are context."""

    frames: int  # K
    context_frames: int  # M
    height: int
    width: int
    feature_indices: tuple[int, ...]
    latent_frames: int
    context_latent_frames: int

    @classmethod
    def of(cls, meta: dict[str, Any]) -> WindowMeta:
        window = meta["window"]
        return cls(int(window["frames"]), int(window["context_frames"]), int(window["height"]), int(window["width"]),
                   tuple(int(i) for i in meta["feature_frame_indices"]), int(meta["latent_frames"]),
                   int(meta["context_latent_frames"]))


class CacheError(RuntimeError):
    """The cache is missing, incomplete, locked, or does not match what the caller expects."""


class CacheMetaError(CacheError):
    """meta.json lacks a field the contract needs: the cache predates it or was edited by hand."""


class CacheMeta:
    """meta.json read through the contract: one typed property per field a reader needs, so no module rebuilds the
    record's key paths by hand. It is a view: writers still build the dict (the record on disk), and a field is only
    read when asked for, so a partial record (a bundle's, a test's) serves the fields it has."""

    def __init__(self, record: dict[str, Any]):
        self.record = record

    @classmethod
    def of(cls, meta: dict[str, Any] | CacheMeta) -> CacheMeta:
        return meta if isinstance(meta, CacheMeta) else cls(meta)

    def _required(self, section: str, key: str) -> Any:
        try:
            return self.record[section][key]
        except (KeyError, TypeError):
            raise CacheMetaError(
                f"{META} has no {section}.{key}: the cache predates this field or was edited; rebuild it with "
                f"`python cli.py cache`"
            ) from None

    def _optional(self, section: str, key: str) -> Any:
        return (self.record.get(section) or {}).get(key)

    @property
    def window(self) -> WindowMeta:
        return WindowMeta.of(self.record)

    @property
    def fingerprint(self) -> str | None:
        return self.record.get("fingerprint")

    # ---- the frozen VFM
    @property
    def vfm_name(self) -> str:
        return str(self._required("vfm", "name"))

    @property
    def vfm_weights(self) -> str | None:
        """"random", "file:<sha16>" or None (unrecorded)."""
        return self._optional("vfm", "weights")

    @property
    def vfm_grid(self) -> tuple[int, int]:
        """Token grid (h, w) of every feature map."""
        h, w = self._required("vfm", "grid")
        return int(h), int(w)

    @property
    def vfm_layers(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self._required("vfm", "layers"))

    @property
    def vfm_channels(self) -> int:
        """Channels of the concatenated layers: what the PCA reduces and reconstructs."""
        return int(self._required("vfm", "out_channels"))

    @property
    def vfm_pretraining(self) -> dict[str, Any] | None:
        return self._optional("vfm", "pretraining")

    # ---- the PCA
    @property
    def pca_components(self) -> int:
        return int(self._required("pca", "components"))

    @property
    def pca_fingerprint(self) -> str | None:
        return self._optional("pca", "fingerprint")

    # ---- the codec
    @property
    def codec_name(self) -> str | None:
        return self._optional("codec", "name")

    @property
    def codec_channels(self) -> int:
        return int(self._required("codec", "channels"))

    @property
    def codec_weights(self) -> str | None:
        return self._optional("codec", "weights")

    @property
    def codec_file(self) -> str:
        """The linear codec's file in the cache (or bundle), relative to its root."""
        return str(self._optional("codec", "file") or CODEC_FILE)
