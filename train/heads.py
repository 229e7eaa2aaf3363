"""`train-heads`: DPT segmentation and depth heads on the VFM features reconstructed from the cached PCA coefficients.

The heads decode what the semantic representation means, so that evaluation can score predicted features (Stage 1)
and the VFM features of generated frames (Stage 2) with mIoU and depth errors (paper §4.1, appendix 9.3). Each head
sees the 4 VFM layers of ONE frame per training window, the labelled one:

    cached PCA coefficients [C, h, w] of the labelled feature frame
      -> PCA.inverse_maps -> [L*D, h, w] -> split into L = len(vfm.layers) maps [D, h, w]
      -> DPTHead -> logits [classes, 8h, 8w] -> bicubic to the label size -> cross-entropy

The cache stores the labels at window resolution for window index `manifest.label_index`. That frame must be a
feature frame (window indices 0, r, 2r, ...: on a Cityscapes snippet cut at frame 3, annotated frame 19 is window
index 16 = feature frame 4 with r = 4); otherwise there are no features of it and the trainer refuses.

Recipe (paper 9.3 / DINO-Foresight's `train_dpt_head.py`): AdamW (heads.optim: lr 1.6e-3 at batch 128, betas
(0.9, 0.999), weight decay 1e-4), linear warmup, then
  * segmentation: 19 train ids, CE ignore 255, schedule `heads.optim.schedule` (paper: polynomial power 1 = linear);
  * depth: 256-way classification of the 8-bit pseudo-disparity, CE ignore 0, cosine decay (paper) — the schedule is
    `heads.depth_schedule` when the config has that field, else "cosine".
DINO-Foresight's warmup starts at 1/3 of the peak lr; ours (train/optim.py) rises linearly from ~0. Augmentation:
horizontal flip with probability 0.5 of features and labels together. Flipping the token grid of cached features is
not bit-identical to the features of a flipped image (a ViT is not exactly flip-equivariant) — the price of training
from the cache instead of running the VFM every step; photometric distortion cannot be applied to cached features.
Windows whose label is entirely ignore (255) / invalid (0) are skipped. Validation: mIoU (and moving-object mIoU) or
AbsRel / δ1 on the val split's labelled windows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from configs.schema import Config, ConfigError
from models.dpt import (
    DEPTH_IGNORE_INDEX,
    SEGMENTATION_IGNORE_INDEX,
    depth_from_logits,
    depth_loss,
    segmentation_from_logits,
    segmentation_loss,
)
from models.heads import HEAD_TASKS, build_head, head_tokens
from models.metrics import ConfusionMatrix, DepthMetrics
from pipeline import atomic, layout
from pipeline.console import console
from pipeline.pca import PCA
from pipeline.store import (
    CacheError,
    CacheReader,
    cache_expectations,
    open_complete_cache,
)
from train.data import LazyCacheGroup, loader_factories
from train.loop import TrainResult, is_main_process, run_training

LABEL_ARRAYS = {"segmentation": layout.SEGMENTATION, "depth": layout.DEPTH}
IGNORE_VALUES = {"segmentation": SEGMENTATION_IGNORE_INDEX, "depth": DEPTH_IGNORE_INDEX}
DEFAULT_DEPTH_SCHEDULE = "cosine"  # paper 9.3


# ------------------------------------------------------------------------------------------- model


def head_model_config(cfg: Config, meta: dict[str, Any], task: str) -> dict[str, Any]:
    """Everything that rebuilds one head, with the VFM sizes taken from the cache's meta.json."""
    if task not in HEAD_TASKS:
        raise ConfigError(f"head task {task!r}: choose one of {HEAD_TASKS}")
    layers, channels = len(layout.CacheMeta(meta).vfm_layers), layout.CacheMeta(meta).vfm_channels
    if channels % layers:
        raise CacheError(f"meta.json: vfm.out_channels={channels} does not split into {layers} layers; the cache is inconsistent")
    return {
        "task": task,
        "in_channels": channels // layers,
        "layers": layers,
        "features": int(cfg.heads.features),
        "out_channels": [int(c) for c in cfg.heads.out_channels],
        "num_outputs": int(cfg.heads.num_classes if task == "segmentation" else cfg.heads.depth_bins),
        "use_bn": True,
    }


# -------------------------------------------------------------------------------------------- data


def feature_frame_of(label_index: int, feature_frame_indices: Sequence[int], where: str) -> int:
    """Position in the feature frames of window index `label_index`; refuses a frame that has no features."""
    indices = list(feature_frame_indices)
    if label_index not in indices:
        r = indices[1] - indices[0] if len(indices) > 1 else 1
        raise CacheError(
            f"{where}: the labelled frame is window index {label_index}, which is not a feature frame (the cache has "
            f"features only at window indices {indices}). Cut the windows so that the annotated frame lands on a "
            f"multiple of {r} (e.g. Cityscapes: sources.cityscapes.start = 3 puts frame 19 at index 16), rebuild the "
            f"cache, and train the heads again."
        )
    return indices.index(label_index)


def labelled_samples(reader: CacheReader, split: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(cache rows, feature-frame position of each row's labelled frame) for `split`, skipping rows whose label is
    absent or entirely ignore/invalid."""
    name = LABEL_ARRAYS[task]
    if not reader.has(name):
        raise CacheError(
            f"{reader.root} has no {name} array: its dataset provides no {task} labels (e.g. a folder of videos). "
            "Train the heads on a labelled dataset (Cityscapes or the synthetic set)."
        )
    rows = reader.samples(split)
    label_index = reader.manifest["label_index"].to_numpy()
    rows = rows[label_index[rows] >= 0]
    frames = np.array([feature_frame_of(int(label_index[r]), reader.window.feature_indices, f"{reader.root} sample {r}") for r in rows], dtype=np.int64)
    labels = reader.array(name)
    ignore = IGNORE_VALUES[task]
    keep = np.array([bool((np.asarray(labels[int(r)]) != ignore).any()) for r in rows], dtype=bool)
    return rows[keep], frames[keep]


class LabelledFrames(Dataset):
    """Item -> {"features": float32 [C, h, w] PCA coefficients of the labelled frame, "label": int64 [H, W]}."""

    def __init__(self, root: str, samples: np.ndarray, frames: np.ndarray, label_array: str, shard_size: int):
        if len(samples) != len(frames):
            raise ValueError(f"LabelledFrames: {len(samples)} samples but {len(frames)} frame positions")
        self.group = LazyCacheGroup(root)
        self.samples = np.asarray(samples, dtype=np.int64)
        self.frames = np.asarray(frames, dtype=np.int64)
        self.label_array = label_array
        self.shards = self.samples // shard_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample, frame = int(self.samples[index]), int(self.frames[index])
        features = np.asarray(self.group[layout.FEATURES][sample, frame], dtype=np.float32)
        label = np.asarray(self.group[self.label_array][sample]).astype(np.int64)
        return {"features": torch.from_numpy(features), "label": torch.from_numpy(label)}


# -------------------------------------------------------------------------------------------- task


class HeadTask:
    """Plugs one DPT head (segmentation or depth) into the shared loop."""

    def __init__(self, model_cfg: dict[str, Any], pca: PCA, hflip: bool = True):
        self.model_cfg = model_cfg
        self.task = model_cfg["task"]
        self.pca = pca.to(torch.float32)  # float64 PCA matrices would make the reconstruction the slowest step
        self._pca_on: dict[torch.device, PCA] = {}
        self.hflip = hflip
        # DINO-Foresight keeps the head with the best validation mIoU / AbsRel.
        self.selection = (("miou", "max") if self.task == "segmentation" else ("abs_rel", "min")) + (
            "best", "DINO-Foresight keeps the head with the best validation mIoU / AbsRel")

    def _pca(self, device: torch.device) -> PCA:
        if device not in self._pca_on:
            self._pca_on[device] = self.pca.to(device)
        return self._pca_on[device]

    def build_model(self) -> nn.Module:
        return build_head(self.model_cfg)

    def model_config(self) -> dict[str, Any]:
        return dict(self.model_cfg)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task == "segmentation":
            return segmentation_loss(logits.float(), labels)
        return depth_loss(logits.float(), labels)

    def training_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        z, labels = batch["features"], batch["label"]
        if self.hflip:
            flip = (torch.rand(z.shape[0], generator=generator, device=generator.device) < 0.5).to(z.device)
            z = torch.where(flip[:, None, None, None], z.flip(-1), z)
            labels = torch.where(flip[:, None, None], labels.flip(-1), labels)
        logits = model(head_tokens(self._pca(z.device), z, self.model_cfg["layers"]))
        return self.loss(logits, labels), {}

    def validate(self, model: nn.Module, loader: Iterable[Any]) -> dict[str, float]:
        confusion = ConfusionMatrix(self.model_cfg["num_outputs"]) if self.task == "segmentation" else None
        depth = DepthMetrics() if self.task == "depth" else None
        loss_sum, count = 0.0, 0
        for batch in loader:
            z, labels = batch["features"], batch["label"]
            logits = model(head_tokens(self._pca(z.device), z, self.model_cfg["layers"]))
            loss_sum += self.loss(logits, labels).item() * z.shape[0]
            count += z.shape[0]
            size = tuple(labels.shape[-2:])
            if confusion is not None:
                confusion.update(segmentation_from_logits(logits.float(), size).cpu(), labels.cpu())
            else:
                depth.update(depth_from_logits(logits.float(), size).cpu(), labels.cpu())
        if count == 0:
            return {}
        out = {"loss": loss_sum / count}
        if confusion is not None:
            out["miou"] = confusion.miou()
            if confusion.num_classes == 19:
                out["miou_moving"] = confusion.moving_miou()
        else:
            values = depth.compute()
            out["abs_rel"], out["delta1"] = values["abs_rel"], values["delta1"]
        return out


# ----------------------------------------------------------------------------------------- trainer


def open_heads_cache(cfg: Config, cache: str) -> CacheReader:
    """The cache, refused unless complete and made with this config's VFM layers."""
    return open_complete_cache(cache, cache_expectations(cfg, window=False))


def head_schedules(cfg: Config) -> dict[str, Any]:
    """The optimizer settings of each head: segmentation as configured, depth with the depth schedule."""
    depth_schedule = getattr(cfg.heads, "depth_schedule", DEFAULT_DEPTH_SCHEDULE)
    return {"segmentation": cfg.heads.optim, "depth": dataclasses.replace(cfg.heads.optim, schedule=depth_schedule)}


def train_heads(
    cfg: Config,
    cache: str,
    out: str,
    resume: bool | str = False,
    steps: int | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    mixed_precision: str | None = None,
    tasks: Sequence[str] = HEAD_TASKS,
) -> dict[str, TrainResult]:
    """Train the heads in `tasks` on `cache`; each writes its run to `out/<task>` (checkpoints, TensorBoard).
    Options override `cfg.heads.train`. Returns {task: TrainResult}."""
    unknown = [t for t in tasks if t not in HEAD_TASKS]
    if unknown or not tasks:
        raise ConfigError(f"tasks={list(tasks)}: choose from {HEAD_TASKS}")
    cfg_train = cfg.heads.train.overridden(steps=steps, batch_size=batch_size, num_workers=num_workers,
                                          mixed_precision=mixed_precision)
    reader = open_heads_cache(cfg, cache)
    meta = reader.meta
    splits = {task: (labelled_samples(reader, "train", task), labelled_samples(reader, "val", task)) for task in tasks}
    for task, ((train_rows, _), _) in splits.items():
        if len(train_rows) == 0:
            raise CacheError(f"{cache} has no 'train' window with a usable {task} label (manifest label_index >= 0 and not all ignore)")
    pca = reader.pca()
    if pca.dim != reader.contract.vfm_channels:
        raise CacheError(f"{cache}: pca.safetensors reconstructs {pca.dim} channels, meta.json vfm.out_channels is {reader.contract.vfm_channels}")
    optims = head_schedules(cfg)
    workers = cfg_train.num_workers
    results: dict[str, TrainResult] = {}
    for task in tasks:
        (train_rows, train_frames), (val_rows, val_frames) = splits[task]
        if is_main_process():
            console.print(f"{task} head: {len(train_rows)} labelled training windows, {len(val_rows)} validation windows")
        train_set = LabelledFrames(cache, train_rows, train_frames, LABEL_ARRAYS[task], reader.shard_size)

        val_set = LabelledFrames(cache, val_rows, val_frames, LABEL_ARRAYS[task], reader.shard_size) if len(val_rows) else None
        if val_set is None and is_main_process():
            console.print(f"{cache} has no labelled 'val' windows: {task} validation is skipped")
        train_loader, val_loader = loader_factories(train_set, val_set, workers)

        model_cfg = head_model_config(cfg, meta, task)
        extra = {
            "random_weights": bool(meta.get("random_weights", False)),
            "vfm": meta["vfm"],
            "vfm_weights": reader.contract.vfm_weights,
            "pca_fingerprint": reader.contract.pca_fingerprint,
            "label_frames": sorted({int(f) for f in train_frames}),
            "schedule": optims[task].schedule,
            "cache": str(cache),
            "stage": "heads",
            "head_task": task,
        }
        results[task] = run_training(
            HeadTask(model_cfg, pca), train_loader, val_loader, cfg_train, optims[task], str(_task_dir(out, task)),
            resume=_task_resume(resume, task), cache_fingerprint=reader.fingerprint(), extra_meta=extra, full_config=cfg.to_dict(),
        )
    return results


def _task_dir(out: str, task: str) -> str:
    return atomic.join(out, task)


def _task_resume(resume: bool | str, task: str) -> bool | str:
    """A resume path names the heads run folder (or a task's checkpoint); each head resumes from its own folder."""
    if isinstance(resume, str) and resume and Path(resume, task).is_dir():
        return str(Path(resume, task))
    return resume
