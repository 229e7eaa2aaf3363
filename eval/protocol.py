"""The evaluation protocol opened once: the cache's val windows, the frozen VFM, PCA and codec, the DPT heads and the
Stage 1 model, and the two scorers every method shares (`score_features` on feature maps, `score_pixels` on
generated frames). eval/evaluate.py runs the methods through it; the protocol's text lives with the report
(eval/report.py `describe_protocol`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from configs.schema import Config
from eval.feature_nets import FVD_MIN_FRAMES
from eval.frozen import build_frozen_codec, build_frozen_vfm, checkpoint_config
from eval.native_labels import read_native_label
from eval.scoring import MetricNets, RowMetrics, add_note, quantize
from models.heads import HEAD_TASKS, build_head, predict_labels
from models.rollout import rollout_from_history
from pipeline import layout
from pipeline.console import warn_loud
from pipeline.decode import read_frames
from pipeline.device import inference_autocast
from pipeline.pca import PCA
from pipeline.sources.base import Clip
from pipeline.store import CacheError, CacheReader, open_complete_cache
from train import checkpoint as ckpt
from train.heads import feature_frame_of
from train.stage1 import build_stage1_model, check_stage1_fits_cache

TRUTH_SOURCES = ("auto", "latents", "frames")


@dataclass
class EvalBatch:
    """One batch of val windows with everything every method needs (on the evaluation device)."""

    rows: list[int]
    features: torch.Tensor  # [B, Tf, C, h, w] true PCA features
    latents: torch.Tensor  # [B, Cz, Tl, H', W'] true latents
    truth: torch.Tensor  # uint8 [B, 3, K, H, W] true frames
    predicted_features: torch.Tensor  # [B, Tf - ctx, C, h, w] Stage 1 rollout
    seg_labels: list[torch.Tensor]  # per window [H, W] long at the label resolution (all 255 where no usable label)
    depth_labels: list[torch.Tensor]  # per window [H, W] long (all 0 where none)
    seg_valid: torch.Tensor  # [B] bool
    depth_valid: torch.Tensor  # [B] bool


@dataclass
class EvalProtocol:
    """Everything opened once for an evaluation; see the module docstring."""

    cache: str
    reader: CacheReader
    pca: PCA
    pca_on_device: PCA
    device: torch.device
    nets: MetricNets
    vfm: nn.Module
    codec: nn.Module
    heads: dict[str, tuple[nn.Module, dict[str, Any]]]
    stage1: nn.Module
    stage1_path: Path
    stage1_config: dict[str, Any]  # the checkpoint's config.json, with `selected` (why this checkpoint)
    rows: np.ndarray  # the val rows evaluated
    batch_size: int
    truth_from: str  # "latents" or "frames"
    window_frames: int  # K
    context_frames: int  # M
    height: int
    width: int
    feature_indices: list[int]  # window index of each feature frame
    context_latent_frames: int
    latent_frames: int
    annotated: int  # window index of the annotated frame
    annotated_feature: int  # its feature frame
    fvd_clips: bool  # whether the predicted clips are long enough for I3D
    label_resolution: str = "window"  # "native": label files at their own size; "window": the cache's labels

    @property
    def meta(self) -> dict[str, Any]:
        return self.reader.meta

    @property
    def predicted_frames(self) -> int:
        return self.window_frames - self.context_frames

    @property
    def num_classes(self) -> int:
        return int(self.heads["segmentation"][0].num_outputs)

    def batches(self) -> list[np.ndarray]:
        return [self.rows[i : i + self.batch_size] for i in range(0, len(self.rows), self.batch_size)]

    def new_scores(self) -> RowMetrics:
        fid_dim = int(self.nets.fid.dim) if self.nets.fid is not None else 0
        fvd_dim = int(self.nets.fvd.dim) if self.nets.fvd is not None else 0
        return RowMetrics(self.num_classes, fid_dim, fvd_dim)

    # ------------------------------------------------------------------------------------------- windows

    def load_batch(self, batch_rows: np.ndarray) -> EvalBatch:
        """Features, latents, true frames, labels and the Stage 1 rollout of the windows `batch_rows`."""
        reader, dev = self.reader, self.device
        idx = [int(r) for r in batch_rows]
        features_array, latents_array = reader.array(layout.FEATURES), reader.array(layout.LATENTS)
        feats = torch.from_numpy(np.stack([np.asarray(features_array[r], dtype=np.float32) for r in idx])).to(dev)
        lats = torch.from_numpy(np.stack([np.asarray(latents_array[r], dtype=np.float32) for r in idx])).to(dev)
        lats = lats.permute(0, 2, 1, 3, 4)
        if self.truth_from == "latents":
            with torch.no_grad():
                real = quantize(self.codec.decode(lats))
        else:
            frames = [read_truth_frames(reader.manifest.row(r, named=True), self.height, self.width) for r in idx]
            real = torch.from_numpy(np.stack(frames)).to(dev).permute(0, 4, 1, 2, 3).contiguous()
        if real.shape[2] != self.window_frames:
            raise CacheError(f"{self.cache}: window rows {idx} give {real.shape[2]} truth frames, the window has {self.window_frames}")
        label_index = reader.manifest["label_index"].to_numpy()
        labelled = torch.tensor([int(label_index[r]) == self.annotated for r in idx])
        seg, dep = self.load_labels(idx)
        seg_valid = labelled & torch.tensor([bool((s != 255).any()) for s in seg])
        depth_valid = labelled & torch.tensor([bool((d != 0).any()) for d in dep])
        ctx = self.context_latent_frames
        with torch.no_grad(), inference_autocast(dev):
            predicted = rollout_from_history(self.stage1, feats[:, :ctx], self.latent_frames - ctx).float()
        return EvalBatch(idx, feats, lats, real, predicted, [s.to(dev) for s in seg], [d.to(dev) for d in dep],
                         seg_valid.to(dev), depth_valid.to(dev))

    def load_labels(self, idx: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per window: segmentation train ids (255 = none) and depth bins (0 = none), long, at the label resolution:
        the label files' own size ("native", read through the manifest) or the cache's window-size copies."""
        reader = self.reader
        if self.label_resolution == "native":
            rows = [reader.manifest.row(r, named=True) for r in idx]
            found = [(read_native_label(row, "segmentation"), read_native_label(row, "depth")) for row in rows]
            seg = [torch.from_numpy(s.astype(np.int64)) if s is not None else torch.full((1, 1), 255, dtype=torch.int64)
                   for s, _ in found]
            dep = [torch.from_numpy(d.astype(np.int64)) if d is not None else torch.zeros((1, 1), dtype=torch.int64)
                   for _, d in found]
            return seg, dep
        size = (self.height, self.width)
        seg_array = reader.array(layout.SEGMENTATION) if reader.has(layout.SEGMENTATION) else None
        depth_array = reader.array(layout.DEPTH) if reader.has(layout.DEPTH) else None
        seg = [torch.from_numpy(np.asarray(seg_array[r]).astype(np.int64)) if seg_array is not None
               else torch.full(size, 255, dtype=torch.int64) for r in idx]
        dep = [torch.from_numpy(np.asarray(depth_array[r]).astype(np.int64)) if depth_array is not None
               else torch.zeros(size, dtype=torch.int64) for r in idx]
        return seg, dep

    # ------------------------------------------------------------------------------------------- scorers

    def score_features(self, scores: RowMetrics, batch: EvalBatch, coefficients: torch.Tensor) -> None:
        """Heads on PCA feature maps [B, C, h, w] of the annotated frame, against the windows' labels: the logits are
        upsampled bicubically to each label's size and argmaxed there (DINO-Foresight's protocol)."""
        if self.label_resolution == "window":
            size = (self.height, self.width)
            seg = predict_labels(self.heads["segmentation"][0], "segmentation", self.pca_on_device, coefficients, size)
            dep = predict_labels(self.heads["depth"][0], "depth", self.pca_on_device, coefficients, size)
            seg_labels, depth_labels = torch.stack(batch.seg_labels), torch.stack(batch.depth_labels)
            scores.add_semantics(seg[batch.seg_valid], seg_labels[batch.seg_valid],
                                 dep[batch.depth_valid], depth_labels[batch.depth_valid],
                                 seg_windows=[r for r, v in zip(batch.rows, batch.seg_valid.tolist()) if v],
                                 depth_windows=[r for r, v in zip(batch.rows, batch.depth_valid.tolist()) if v])
            return
        # Native labels: one window at a time, so at most one full-size logit chunk exists (models.dpt.upsampled_argmax).
        scores.add_semantics(None, None, None, None)
        for i in range(coefficients.shape[0]):
            for task, valid, labels in (("segmentation", batch.seg_valid, batch.seg_labels),
                                        ("depth", batch.depth_valid, batch.depth_labels)):
                if not bool(valid[i]):
                    continue
                label = labels[i]
                predicted = predict_labels(self.heads[task][0], task, self.pca_on_device, coefficients[i : i + 1],
                                           tuple(label.shape))
                if task == "segmentation":
                    scores.add_semantics(predicted, label[None], None, None, seg_windows=[batch.rows[i]])
                else:
                    scores.add_semantics(None, None, predicted, label[None], depth_windows=[batch.rows[i]])

    def score_pixels(self, scores: RowMetrics, batch: EvalBatch, future: torch.Tensor) -> None:
        """Generated uint8 future [B, 3, T, H, W]: pixel metrics, then VFM + PCA + heads on its annotated frame."""
        m = self.context_frames
        scores.add_frames(future, batch.truth[:, :, m:], self.nets, self.fvd_clips, windows=batch.rows)
        frame = future[:, :, self.annotated - m].float() / 255.0
        self.score_features(scores, batch, self.pca_on_device.project_maps(self.vfm(frame)).float())


def open_protocol(
    cfg: Config, cache: str, heads: str, stage1: str, nets: MetricNets, device: torch.device, *, limit: int = 0,
    truth: str = "auto", allow_random_weights: bool = False, notes: list[str],
) -> EvalProtocol:
    """Open the cache (complete, with val windows), the frozen parts as the cache made them, the heads and Stage 1,
    each checked against the cache; refuse anything that does not fit, naming it."""
    reader = open_complete_cache(cache)
    meta = reader.meta
    pca = reader.pca()
    window = layout.WindowMeta.of(meta)
    k_frames, m_frames, height, width = window.frames, window.context_frames, window.height, window.width
    feature_indices = list(window.feature_indices)
    annotated = int(cfg.eval.annotated_index)
    if not m_frames <= annotated < k_frames:
        raise ValueError(
            f"eval.annotated_index={annotated} must be a predicted frame (window indices {m_frames}..{k_frames - 1}); "
            f"on Cityscapes windows cut at snippet frame 3 the annotated frame 19 is index 16"
        )
    annotated_feature = feature_frame_of(annotated, feature_indices, f"eval.annotated_index of {cache}")
    future_frames = k_frames - m_frames
    fvd_clips = nets.fvd is not None and future_frames >= getattr(nets.fvd, "min_frames", FVD_MIN_FRAMES)
    if nets.fvd is not None and not fvd_clips:
        add_note(notes, f"FVD is n/a: {future_frames} predicted frames per clip, the I3D protocol needs at least {FVD_MIN_FRAMES}")

    full_config = cfg.to_dict()
    vfm = build_frozen_vfm(meta, full_config, None, allow_random_weights, device)
    codec = build_frozen_codec(meta, full_config, None, allow_random_weights, device, cache)
    loaded_heads = load_heads(heads, meta, pca, device)
    stage1_path, stage1_config = checkpoint_config(stage1, "stage1")
    check_stage1_fits_cache(stage1_config, meta, cache, pca.fingerprint)
    stage1_model, _ = ckpt.load_model_for_inference(stage1_path, build_stage1_model, device=device)

    rows = reader.samples("val")
    if len(rows) == 0:
        raise CacheError(f"{cache} has no complete 'val' windows to evaluate; check manifest.parquet splits and failures.parquet")
    if limit > 0:
        rows = rows[:limit]
    return EvalProtocol(
        cache=str(cache), reader=reader, pca=pca, pca_on_device=pca.to(device=device, dtype=torch.float32), device=device,
        nets=nets, vfm=vfm, codec=codec, heads=loaded_heads, stage1=stage1_model, stage1_path=stage1_path,
        stage1_config=stage1_config, rows=rows, batch_size=max(1, int(cfg.eval.batch_size)),
        truth_from=truth_source(truth, layout.CacheMeta(meta).codec_weights or ""), window_frames=k_frames,
        context_frames=m_frames, height=height, width=width, feature_indices=feature_indices,
        context_latent_frames=window.context_latent_frames, latent_frames=window.latent_frames,
        annotated=annotated, annotated_feature=annotated_feature, fvd_clips=fvd_clips,
        label_resolution=cfg.protocol.label_resolution,
    )


def load_heads(heads: str, meta: dict[str, Any], pca: PCA, device: torch.device) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """{task: (head, checkpoint config)} from the `train-heads` output folder (`heads/segmentation`, `heads/depth`)."""
    loaded = {}
    for task in HEAD_TASKS:
        path = Path(heads) / task
        if not path.exists():
            raise ckpt.CheckpointError(
                f"{path} does not exist: pass the folder `train-heads` wrote (it holds segmentation/ and depth/); "
                "train them with `python cli.py train-heads`"
            )
        head, config = ckpt.load_model_for_inference(path, build_head, device=device)
        if config["model"].get("task") != task:
            raise ckpt.CheckpointError(f"{config['checkpoint']} is a {config['model'].get('task')!r} head, expected {task!r}")
        trained_on, cache_vfm = config.get("vfm") or {}, meta["vfm"]
        diffs = [f"vfm.{k}: head {trained_on.get(k)!r}, cache {cache_vfm.get(k)!r}"
                 for k in ("name", "layers", "out_channels", "weights") if trained_on.get(k) != cache_vfm.get(k)]
        if diffs:
            raise ckpt.CheckpointError(
                f"{config['checkpoint']} was trained on another VFM's features than this cache holds ({'; '.join(diffs)}); "
                "train the heads on this cache with `python cli.py train-heads`"
            )
        if config.get("pca_fingerprint") not in (None, pca.fingerprint):
            warn_loud(f"{config['checkpoint']} was trained on features reconstructed by another PCA "
                      f"({config['pca_fingerprint']} vs {pca.fingerprint}); its scores may be slightly off")
        loaded[task] = (head, config)
    return loaded


def truth_source(truth: str, codec_weights: str) -> str:
    """Where the true frames come from: the cached latents when the codec is lossless, else the source files."""
    if truth not in TRUTH_SOURCES:
        raise ValueError(f"truth={truth!r}: choose one of {TRUTH_SOURCES}")
    if truth == "auto":
        return "latents" if codec_weights == "lossless" else "frames"
    return truth


def read_truth_frames(row: dict[str, Any], height: int, width: int) -> np.ndarray:
    """uint8 [K, H, W, 3] of one window, read from the source files the manifest lists."""
    indices = [int(i) for i in row["frame_indices"]]
    if row["source"]:
        clip = Clip(dataset=row["dataset"], split=row["split"], clip_id=row["clip_id"], fps=float(row["fps"]),
                    num_frames=max(indices) + 1, video=row["source"])
        return read_frames(clip, indices, height, width)
    paths = list(row["frame_paths"])
    clip = Clip(dataset=row["dataset"], split=row["split"], clip_id=row["clip_id"], fps=float(row["fps"]),
                num_frames=len(paths), frame_paths=tuple(paths))
    return read_frames(clip, list(range(len(paths))), height, width)
