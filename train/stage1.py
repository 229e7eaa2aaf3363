"""Stage 1 trainer: DINO-Foresight's masked feature transformer on the cached PCA features.

Training items are the (M_f + 1)-frame sub-windows of every training window's feature frames; the loss is SmoothL1
(beta = stage1.smooth_l1_beta) between the prediction of the masked last frame and its true PCA coefficients.
Optimizer, schedule and clipping come from `stage1.optim` / `stage1.train` (paper: Adam (0.9, 0.99), lr at the
reference batch scaled by the effective batch, cosine to 0, clip 1.0).

Validation, on whole val windows: the same loss over all their sub-windows, and for every rollout step
k = 1 .. Tf - context_latent_frames the per-token cosine similarity (in PCA space, averaged over tokens) between the
autoregressive prediction from the context feature frames and the true features, next to the copy-last-frame
baseline's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from configs.schema import Config, ConfigError, Stage1ModelConfig
from models.foresight import FeatureForesight
from models.rollout import rollout
from pipeline import atomic, layout
from pipeline.console import console
from pipeline.store import (
    CacheError,
    CacheReader,
    cache_expectations,
    open_complete_cache,
)
from train.data import Stage1SubWindows, WindowSamples, loader_factories
from train.loop import TrainResult, is_main_process, run_training


def stage1_model_config(cfg: Config, meta: dict[str, Any]) -> Stage1ModelConfig:
    """The config's Stage 1 model with in_channels (PCA components) and token grid taken from the cache."""
    contract = layout.CacheMeta(meta)
    (grid_h, grid_w) = contract.vfm_grid
    return dataclasses.replace(cfg.stage1.model, in_channels=contract.pca_components, grid_h=grid_h, grid_w=grid_w)


def build_stage1_model(model_config: dict[str, Any]) -> FeatureForesight:
    """Model factory for `load_model_for_inference`: the checkpoint's `model` section -> FeatureForesight."""
    known = {f.name for f in dataclasses.fields(Stage1ModelConfig)}
    unknown = sorted(set(model_config) - known)
    if unknown:
        raise ConfigError(f"Stage 1 checkpoint model config has unknown keys {unknown}; it was written by other code")
    return FeatureForesight(Stage1ModelConfig(**model_config))


def stage1_fit_problems(config: dict[str, Any], meta: dict[str, Any], pca_fingerprint: str | None = None) -> list[str]:
    """Why a Stage 1 checkpoint (its config.json) cannot read a cache's feature space (meta.json, and the fingerprint
    of the PCA file when the caller loaded it); [] if it can. The one check the pool, predict and evaluate share."""
    model, problems, contract = config["model"], [], layout.CacheMeta(meta)
    cache_fingerprint = pca_fingerprint or contract.pca_fingerprint
    recorded = config.get("pca_fingerprint")
    if recorded and cache_fingerprint and recorded != cache_fingerprint:
        problems.append(f"PCA fingerprint: Stage 1 checkpoint {recorded!r}, cache {cache_fingerprint!r}")
    n_components = contract.pca_components
    if model["in_channels"] != n_components:
        problems.append(f"Stage 1 reads {model['in_channels']} PCA components, the cache has {n_components}")
    if (model["grid_h"], model["grid_w"]) != contract.vfm_grid:
        problems.append(f"Stage 1 token grid {[model['grid_h'], model['grid_w']]}, cache VFM grid {list(contract.vfm_grid)}")
    context = contract.window.context_latent_frames
    if model["context_frames"] > context:
        problems.append(f"Stage 1 needs {model['context_frames']} context feature frames, the window has {context}")
    return problems


def check_stage1_fits_cache(config: dict[str, Any], meta: dict[str, Any], cache: str, pca_fingerprint: str | None = None) -> None:
    """Refuse a Stage 1 checkpoint that cannot read the cache, naming every mismatch (see `stage1_fit_problems`)."""
    problems = stage1_fit_problems(config, meta, pca_fingerprint)
    if problems:
        raise CacheError(f"Stage 1 checkpoint {config.get('checkpoint', '?')} does not fit cache {cache}: " + "; ".join(problems))


def open_stage1_cache(cfg: Config, cache: str) -> CacheReader:
    """Open the cache and refuse it, naming every field, unless it was made for this config and is complete."""
    return open_complete_cache(cache, cache_expectations(cfg))


class Stage1Task:
    """Plugs FeatureForesight into the shared loop."""

    selection = ("loss", "min", "best", "DINO-Foresight keeps the checkpoint with the lowest validation loss")

    def __init__(self, model_cfg: Stage1ModelConfig, beta: float, context_latent_frames: int, init_state: dict[str, torch.Tensor] | None = None,
                 hflip: bool = False):
        self.model_cfg = model_cfg
        self.beta = beta
        self.hflip = hflip
        self.context_latent_frames = context_latent_frames
        self.init_state = init_state  # starting weights (--init); a resumed checkpoint overrides them

    def build_model(self) -> nn.Module:
        model = FeatureForesight(self.model_cfg)
        if self.init_state is not None:
            model.load_state_dict(self.init_state, strict=True)
        return model

    def model_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.model_cfg)

    def training_loss(self, model: nn.Module, batch: torch.Tensor, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if self.hflip:  # batch [B, 2, T, C, h, w]: as cached / flipped, chosen with probability 1/2 per sample
            flip = torch.rand(batch.shape[0], generator=generator, device=generator.device).to(batch.device) < 0.5
            batch = torch.where(flip[:, None, None, None, None], batch[:, 1], batch[:, 0])
        # model(...) rather than model.loss(...): the wrapper's forward is what synchronises gradients across processes.
        prediction = model(batch)
        return F.smooth_l1_loss(prediction.float(), batch[:, -1].float(), beta=self.beta), {}

    def validate(self, model: nn.Module, loader: Iterable[Any]) -> dict[str, float]:
        m = self.model_cfg.context_frames
        ctx = self.context_latent_frames
        loss_sum, loss_count, windows = 0.0, 0, 0
        cos_sum: torch.Tensor | None = None
        copy_sum: torch.Tensor | None = None
        for batch in loader:
            feats = batch["features"].float()  # [B, Tf, C, h, w]
            b, latent_frames = feats.shape[:2]
            for start in range(latent_frames - m):
                prediction = model(feats[:, start : start + m + 1])
                loss_sum += F.smooth_l1_loss(prediction.float(), feats[:, start + m], beta=self.beta).item() * b
                loss_count += b
            truth = feats[:, ctx:]  # [B, steps, C, h, w]
            predicted = rollout(model, feats[:, ctx - m : ctx], latent_frames - ctx).float()
            copy = feats[:, ctx - 1 : ctx].expand_as(truth)
            cos = F.cosine_similarity(predicted, truth, dim=2).mean(dim=(2, 3)).sum(0)  # [steps], summed over windows
            cos_copy = F.cosine_similarity(copy, truth, dim=2).mean(dim=(2, 3)).sum(0)
            cos_sum = cos if cos_sum is None else cos_sum + cos
            copy_sum = cos_copy if copy_sum is None else copy_sum + cos_copy
            windows += b
        if windows == 0:
            return {}
        out = {"loss": loss_sum / loss_count}
        for k, (c, c0) in enumerate(zip((cos_sum / windows).tolist(), (copy_sum / windows).tolist()), start=1):
            out[f"cos_step{k}"] = c
            out[f"cos_copy_last_step{k}"] = c0
        return out


def train_stage1(
    cfg: Config,
    cache: str,
    out: str,
    resume: bool | str = False,
    steps: int | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    mixed_precision: str | None = None,
    init: str | None = None,
    allow_pickle: bool = False,
    train_samples: Sequence[int] | None = None,
) -> TrainResult:
    """Train Stage 1 on `cache`, writing checkpoints/TensorBoard under `out`. Options override `cfg.stage1.train`.
    `init`: start from a DINO-Foresight .ckpt or one of our checkpoints (train/stage1_init.py). `train_samples`: train
    on these cache rows only (default: every complete training window)."""
    cfg_train = cfg.stage1.train.overridden(steps=steps, batch_size=batch_size, num_workers=num_workers,
                                          mixed_precision=mixed_precision)
    reader = open_stage1_cache(cfg, cache)
    meta = reader.meta
    model_cfg = stage1_model_config(cfg, meta)
    latent_frames = reader.window.latent_frames
    features = reader.array("features")
    expected = (latent_frames, model_cfg.in_channels, model_cfg.grid_h, model_cfg.grid_w)
    if tuple(features.shape[1:]) != expected:
        raise CacheError(f"{cache}/features has per-sample shape {tuple(features.shape[1:])}, meta.json says {expected}; the cache is inconsistent, rebuild it")
    all_train = reader.samples("train")
    if train_samples is None:
        train_samples = all_train
    else:  # a subset (the pool's cross-fitting folds): only complete training windows can be asked for
        unknown = sorted(set(int(s) for s in train_samples) - set(int(s) for s in all_train))
        if unknown:
            raise CacheError(f"{cache}: samples {unknown[:5]} are not complete training windows")
        train_samples = np.asarray(sorted(int(s) for s in train_samples), dtype=np.int64)
    val_samples = reader.samples("val")
    if len(train_samples) == 0:
        raise CacheError(f"{cache} has no complete 'train' samples; check manifest.parquet splits and failures.parquet")

    hflip = cfg.stage1.hflip
    if hflip and not reader.has(layout.FEATURES_FLIPPED):
        raise CacheError(
            f"stage1.hflip needs the features of flipped frames, which {cache} does not hold: rebuild the cache with "
            "--set cache.flipped_features=true, or set stage1.hflip=false"
        )
    train_set = Stage1SubWindows(cache, train_samples, model_cfg.context_frames, latent_frames, reader.shard_size, flipped=hflip)
    val_set = WindowSamples(cache, val_samples, reader.shard_size, features=True, latents=False) if len(val_samples) else None
    if val_set is None and is_main_process():
        console.print(f"{cache} has no 'val' samples: Stage 1 validation is skipped")
    train_loader, val_loader = loader_factories(train_set, val_set, cfg_train.num_workers)

    init_state = None
    if init:
        from train.stage1_init import initial_state_dict

        init_state = initial_state_dict(init, model_cfg, reader.pca(), allow_pickle=allow_pickle)
    task = Stage1Task(model_cfg, cfg.stage1.smooth_l1_beta, reader.window.context_latent_frames, init_state, hflip=hflip)
    extra = {
        "train_windows": int(len(train_samples)),
        "hflip": hflip,
        "random_weights": bool(meta.get("random_weights", False)),
        "vfm_weights": reader.contract.vfm_weights,
        "pca_fingerprint": reader.contract.pca_fingerprint,
        "cache": str(cache),
        "cache_absolute": atomic.absolute(cache),
        "stage": "stage1",
        "init": str(init or ""),
    }
    return run_training(
        task, train_loader, val_loader, cfg_train, cfg.stage1.optim, out,
        resume=resume, cache_fingerprint=reader.fingerprint(), extra_meta=extra, full_config=cfg.to_dict(),
    )
