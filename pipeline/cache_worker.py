"""The work one cache worker does: decode windows, run the frozen VFM, project with the PCA, encode with the codec.

A plain class so the same code runs inside a Ray actor (pipeline/dag.py) and in a plain sequential loop
(`bench cache`'s baseline). It holds the models once and processes whole shards, so each shard is written by
exactly one worker.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from configs.schema import Config, config_from_dict
from pipeline import layout
from pipeline.codec import frame_psnr
from pipeline.decode import read_frames, read_label
from pipeline.device import resolve_device
from pipeline.errors import InputError
from pipeline.pca import PCA, PCAAccumulator
from pipeline.store import write_shard
from pipeline.windows import Window
from pipeline.worker_plan import WorkerPlan, assigned_resources, plan_worker


@dataclass
class Decoded:
    frames: np.ndarray | None = None  # uint8 [K, H, W, 3]
    segmentation: np.ndarray | None = None  # uint8 [H, W]
    depth: np.ndarray | None = None
    error: InputError | None = None
    seconds: float = 0.0


@dataclass
class StageTimes:
    decode: float = 0.0
    vfm: float = 0.0
    codec: float = 0.0
    write: float = 0.0
    frames: int = 0
    bytes: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    psnr_sum: float = 0.0  # codec reconstruction check: per-frame PSNR summed over the checked frames
    psnr_frames: int = 0
    psnr_windows: int = 0

    def add(self, other: "StageTimes") -> None:
        self.decode += other.decode
        self.vfm += other.vfm
        self.codec += other.codec
        self.write += other.write
        self.frames += other.frames
        self.bytes += other.bytes
        self.failures.extend(other.failures)
        self.psnr_sum += other.psnr_sum
        self.psnr_frames += other.psnr_frames
        self.psnr_windows += other.psnr_windows


class CacheWorker:
    def __init__(self, cfg_dict: dict[str, Any], allow_random_weights: bool, threads: int = 0, strict: bool = False,
                 write_behind: bool | None = None):
        """`threads` > 0: torch threads (the plain loop); 0: from the CPUs and GPUs Ray assigned this worker
        (pipeline/worker_plan.py), or torch's default outside Ray. `write_behind` overrides the plan's."""
        from pipeline.vfm import build_vfm

        resources = assigned_resources()
        if threads > 0:
            self.plan = WorkerPlan(threads=threads, prefetch=1, write_behind=False)
        elif resources is not None:
            self.plan = plan_worker(resources.get("CPU", 1.0), resources.get("GPU", 0.0))
        else:
            self.plan = WorkerPlan(threads=torch.get_num_threads(), prefetch=1, write_behind=False)
        if write_behind is not None:
            self.plan = replace(self.plan, write_behind=write_behind)
        torch.set_num_threads(self.plan.threads)
        self.cfg = config_from_dict(cfg_dict)
        self.device = resolve_device("auto")
        self.allow_random_weights = allow_random_weights
        self.strict = strict
        self.vfm = build_vfm(self.cfg.vfm, allow_random_weights=allow_random_weights, device=self.device)
        self.codec: Any = None
        self.pca: PCA | None = None
        self._pool = ThreadPoolExecutor(max_workers=self.plan.prefetch)  # decodes ahead while the models run
        self._writer = ThreadPoolExecutor(max_workers=1)  # writes the last shard while the next is computed
        self._writing: Future | None = None

    # ------------------------------------------------------------------------------------ info
    def describe(self) -> dict[str, Any]:
        """What the models give: VFM channels and grid, codec channels and weights (None while a linear codec is
        still to be fitted in pass 1)."""
        fitted_later = self.cfg.codec.name == "linear" and self.codec is None
        codec = None if fitted_later else self._codec()
        return {
            "vfm_weights": self.vfm.weights,
            "vfm_pretraining": self.vfm.meta().get("pretraining"),
            "vfm_channels": self.vfm.out_channels,
            "grid": list(self.vfm.grid),
            "codec_weights": None if codec is None else codec.weights,
            "codec_channels": self.cfg.codec.channels if codec is None else codec.channels,
            "device": self.device,
            "plan": self.plan.line(),
        }

    def _codec(self) -> Any:
        if self.codec is None:
            from pipeline.codec_factory import build_codec

            self.codec = build_codec(self.cfg.codec, allow_random_weights=self.allow_random_weights, device=self.device)
        return self.codec

    def set_pca(self, path: str) -> None:
        self.pca = PCA.load(path).to(self.device)

    def set_codec(self, path: str) -> None:
        """Use the linear codec fitted in pass 1 (the cache's codec.safetensors)."""
        from pipeline.codec_linear import LinearCodec

        self.codec = LinearCodec.load(path).to(self.device)

    # ---------------------------------------------------------------------------------- decoding
    def _decode(self, window: Window, feature_only: bool, labels: bool = True) -> Decoded:
        return decode_window(self.cfg, window, feature_only, labels, self.strict)

    def _decoded_stream(self, windows: Sequence[Window], feature_only: bool, labels: bool = True):
        """Yield decoded windows in order, decoding `plan.prefetch` ahead on background threads."""
        pending: deque[Future] = deque()
        ahead = iter(windows)
        for window in itertools.islice(ahead, self.plan.prefetch):
            pending.append(self._pool.submit(self._decode, window, feature_only, labels))
        while pending:
            current = pending.popleft().result()
            for window in itertools.islice(ahead, 1):
                pending.append(self._pool.submit(self._decode, window, feature_only, labels))
            yield current

    @torch.no_grad()
    def _vfm_features(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> VFM features [T, D, h, w] (float32), in batches of vfm.batch_size frames."""
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        bs = max(1, self.cfg.vfm.batch_size)
        return torch.cat([self.vfm(x[i : i + bs]).float() for i in range(0, x.shape[0], bs)])

    def _vfm_batches(self, items: Sequence[tuple[int, np.ndarray]]) -> list[tuple[int, torch.Tensor]]:
        """VFM over the frames of several windows at once: [(slot, uint8 [T, H, W, 3])] -> [(slot, [T, D, h, w])]."""
        feats = self._vfm_features(np.concatenate([frames for _, frames in items]))
        out, i = [], 0
        for slot, frames in items:
            out.append((slot, feats[i : i + len(frames)]))
            i += len(frames)
        return out

    # ------------------------------------------------------------------------------------ pass 1
    def accumulate(self, windows: Sequence[Window], pca: bool = True, codec: bool = False) -> tuple[dict[str, Any], StageTimes]:
        """Pass 1: float64 sums for the fits this cache still needs, over the same windows.

        `pca`: the VFM tokens of the feature frames (VFM batched across windows). `codec`: every space-time block of
        the whole window, for the linear codec (pipeline/codec_linear.py). Returns ({"pca": state | None,
        "codec": state | None}, times)."""
        from pipeline.codec_linear import add_video, block_accumulator
        from pipeline.codec_pixel import PixelCodec

        c = self.cfg.codec
        accumulator = PCAAccumulator(self.vfm.out_channels) if pca else None
        blocks = block_accumulator(c.temporal_factor, c.spatial_factor) if codec else None
        unshuffle = PixelCodec(c.temporal_factor, c.spatial_factor)
        times = StageTimes()
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            t0 = time.perf_counter()
            for _, feats in self._vfm_batches(pending):
                accumulator.add(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).cpu())
            times.vfm += time.perf_counter() - t0
            pending.clear()

        stream = self._decoded_stream(windows, feature_only=not codec, labels=False)
        for j, (window, dec) in enumerate(zip(windows, stream)):
            times.decode += dec.seconds
            if dec.error is not None:
                times.failures.append(_failure(-1, window, dec.error, "fit"))
                continue
            frames = dec.frames[self.cfg.feature_frame_indices] if codec else dec.frames
            times.frames += dec.frames.shape[0]
            if blocks is not None:
                t0 = time.perf_counter()
                add_video(blocks, unshuffle, _video(dec.frames, "cpu"))
                times.codec += time.perf_counter() - t0
            if accumulator is not None:
                pending.append((j, frames))
                if sum(len(f) for _, f in pending) >= self.cfg.vfm.batch_size:
                    flush()
        if pending:
            flush()
        states = {"pca": None if accumulator is None else accumulator.state_dict(), "codec": None if blocks is None else blocks.state_dict()}
        return states, times

    # ------------------------------------------------------------------------------------ pass 2
    @torch.no_grad()
    def _latents(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [K, H, W, 3] -> latents [Tl, Cz, H', W']. One window per codec call: the WAN VAE on 25 full frames
        is memory-bound, so batching windows would only raise peak memory."""
        return self._codec().encode(_video(frames, self.device))[0].permute(1, 0, 2, 3).float().cpu().numpy()  # [C, T, H, W] -> [T, C, H, W]

    @torch.no_grad()
    def _reconstruction_psnr(self, frames: np.ndarray, latents: np.ndarray, dtype: str) -> np.ndarray:
        """Per-frame PSNR (uint8 scale) of the codec's decode of the latents as the cache stores them (`dtype`)."""
        stored = torch.from_numpy(latents.astype(dtype).astype(np.float32)).to(self.device)
        video = self._codec().decode(stored.permute(1, 0, 2, 3)[None])[0]  # [3, K, H, W] in [-1, 1]
        decoded = ((video.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 3, 0).cpu().numpy()
        return frame_psnr(decoded, frames)

    def process_shard(self, root: str, shard: int, rows: Sequence[tuple[int, Window]], shapes: dict[str, tuple[int, ...]],
                      check_reconstruction: Sequence[int] = (), decoded: Sequence[Decoded] | None = None) -> StageTimes:
        """Compute and write every array of one shard, then its completion marker.

        Decoding runs `plan.prefetch` windows ahead on threads, unless `decoded` brings the shard's windows
        already decoded (by decode tasks: `decode_rows`); the VFM runs on the feature frames of several windows at
        once (vfm.batch_size frames per call); the codec encodes each window as it arrives. With
        `plan.write_behind` the shard is written on a background thread while the next call computes: the write's
        time and bytes come back with the next call or `flush()`, which also raises its errors. Samples listed in
        `check_reconstruction` are also decoded again and their per-frame PSNR is recorded in the shard's marker."""
        assert self.pca is not None, "set_pca() must run before pass 2"
        times = StageTimes()
        n = len(rows)
        arrays = {
            layout.FEATURES: np.zeros((n, *shapes[layout.FEATURES]), np.float32),
            layout.LATENTS: np.zeros((n, *shapes[layout.LATENTS]), np.float32),
            layout.SEGMENTATION: np.full((n, *shapes[layout.SEGMENTATION]), layout.IGNORE_LABEL, np.uint8),
            layout.DEPTH: np.full((n, *shapes[layout.DEPTH]), layout.INVALID_DEPTH, np.uint8),
        }
        flipped = layout.FEATURES_FLIPPED in shapes
        if flipped:
            arrays[layout.FEATURES_FLIPPED] = np.zeros((n, *shapes[layout.FEATURES_FLIPPED]), np.float32)
        statuses = []
        check = set(int(s) for s in check_reconstruction)
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            t0 = time.perf_counter()
            for slot, feats in self._vfm_batches(pending):
                # Slots >= n are the flipped copies of window slot - n (one VFM batch for both).
                name = layout.FEATURES if slot < n else layout.FEATURES_FLIPPED
                arrays[name][slot % n] = self.pca.project_maps(feats).float().cpu().numpy()
            times.vfm += time.perf_counter() - t0
            pending.clear()

        windows = [w for _, w in rows]
        stream = iter(decoded) if decoded is not None else self._decoded_stream(windows, feature_only=False)
        for j, ((sample, window), dec) in enumerate(zip(rows, stream)):
            times.decode += dec.seconds
            if dec.error is not None:
                times.failures.append(_failure(sample, window, dec.error, "decode"))
                statuses.append({"sample": sample, "status": "failed"})
                continue
            pending.append((j, dec.frames[self.cfg.feature_frame_indices]))
            if flipped:
                pending.append((n + j, np.ascontiguousarray(dec.frames[self.cfg.feature_frame_indices][:, :, ::-1])))
            t0 = time.perf_counter()
            arrays[layout.LATENTS][j] = self._latents(dec.frames)
            if sample in check:
                psnr = self._reconstruction_psnr(dec.frames, arrays[layout.LATENTS][j], self.cfg.cache.dtype)
                times.psnr_sum += float(psnr.sum())
                times.psnr_frames += len(psnr)
                times.psnr_windows += 1
            times.codec += time.perf_counter() - t0
            if dec.segmentation is not None:
                arrays[layout.SEGMENTATION][j] = dec.segmentation
            if dec.depth is not None:
                arrays[layout.DEPTH][j] = dec.depth
            times.frames += dec.frames.shape[0]
            statuses.append({"sample": sample, "status": "ok"})
            if sum(len(f) for _, f in pending) >= self.cfg.vfm.batch_size:
                flush()
        if pending:
            flush()
        extra = None
        if check:
            extra = {"reconstruction": {"psnr_sum": times.psnr_sum, "frames": times.psnr_frames, "windows": times.psnr_windows}}
        job = (root, shard, self.cfg.cache.shard_size, arrays, statuses, extra)
        if not self.plan.write_behind:
            times.add(_write(*job))
            return times
        times.add(self.flush())  # one shard in writing at a time: memory stays bounded
        self._writing = self._writer.submit(_write, *job)
        return times

    def flush(self) -> StageTimes:
        """Wait for the shard being written behind (if any): its write time and bytes; re-raises its error."""
        writing, self._writing = self._writing, None
        return writing.result() if writing is not None else StageTimes()

    def close(self) -> None:
        self.flush()
        self._pool.shutdown()
        self._writer.shutdown()


def _write(root: str, shard: int, shard_size: int, arrays: dict[str, np.ndarray], statuses: list[dict[str, Any]],
           extra: dict[str, Any] | None) -> StageTimes:
    t0 = time.perf_counter()
    written = write_shard(root, shard, shard_size, arrays, statuses, extra=extra)
    return StageTimes(write=time.perf_counter() - t0, bytes=written)


def decode_window(cfg: Config, window: Window, feature_only: bool = False, labels: bool = True, strict: bool = False
                  ) -> Decoded:
    """Read one window's frames (all, or only the feature frames) and its labels at the window size."""
    t0 = time.perf_counter()
    w = cfg.window
    out = Decoded()
    try:
        indices = [window.indices[i] for i in cfg.feature_frame_indices] if feature_only else list(window.indices)
        out.frames = read_frames(window.clip, indices, w.height, w.width)
        if labels and not feature_only and window.label_index >= 0:
            paths = window.clip.labels.get(window.indices[window.label_index], {})
            if paths.get("segmentation"):
                out.segmentation = read_label(paths["segmentation"], w.height, w.width, "segmentation")
            if paths.get("depth"):
                out.depth = read_label(paths["depth"], w.height, w.width, "depth")
    except InputError as exc:
        if strict:
            raise
        out.error = exc
    out.seconds = time.perf_counter() - t0
    return out


def decode_rows(cfg_dict: dict[str, Any], rows: Sequence[tuple[int, Window]], strict: bool = False) -> list[Decoded]:
    """A decode task (a CPU worker feeding GPU workers): every window of one shard, decoded, in order."""
    cfg = config_from_dict(cfg_dict)
    return [decode_window(cfg, window, strict=strict) for _, window in rows]


def _video(frames: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """uint8 [K, H, W, 3] -> float [1, 3, K, H, W] in [-1, 1] (the codecs' input)."""
    return torch.from_numpy(frames).to(device).permute(3, 0, 1, 2)[None].float().div_(127.5).sub_(1.0)


def _failure(sample: int, window: Window, exc: InputError, stage: str) -> dict[str, Any]:
    return {"sample": sample, "sample_id": window.sample_id, "path": str(exc.path), "stage": stage, "reason": str(exc.reason)}
