"""Stage 2 trainer: the semantics-conditioned video DiT on cached latents and PCA features (paper §3.2-3.4).

Per training window: x0 = the codec latents [B, Cz, T, H, W]; the first `context_latent_frames` frames are context
(cond_mask = 1, given clean) and the loss is the weighted denoising loss of the future frames (models/diffusion).
The semantic features [B, C, T, h, w] of every frame come from the cache and go through, in this order:

1. Mixed supervision (§3.4): with probability `stage2.mixed_supervision_prob` per sample the future feature frames
   are Stage 1's predictions from `pool/features` instead of the encoder's. Windows that have no pool entry (the pool
   was made with fraction < 1) are always ground truth; to keep the overall predicted fraction at p, windows that do
   have one use p / f, where f is the fraction of training windows in the pool (capped at 1, logged as it happened).
   Only `conditioning = "features"` reads the pool: the baselines never see features.
2. Nested dropout (§3.4, eq. 9): per sample keep the first c channels, c uniform over `stage2.nested_dropout_levels`.

Every draw (mixing, nested level, σ, noise) comes from the per-step generator the loop hands over, so a resumed run
repeats the uninterrupted one exactly.

Baselines: `model.conditioning = "none"` is the plain latent diffusion model. `alignment = "repa"` adds REPA: a
projector on the hidden tokens after block `align_block` (1-indexed), negative cosine to the cached features of all
frames, weight `align_weight`. `alignment = "videorepa"` adds VideoREPA's token-relation distillation (margin
`trd_margin`) with the same student. Documented deviations: REPA aligns to the raw 768-d DINOv2 tokens of one layer;
we align to the cache's PCA features (target width = PCA components, 4 layers) because that is what the cache holds
and it is exactly the representation Re2Pix conditions on, so the baselines and Re2Pix see the same semantics.
VideoREPA's teacher is VideoMAEv2, whose weights are not available offline; the same cached features are the
teacher here (see models/alignment.py). Baseline-Large is just a deeper `stage2.model` config.

Validation: the denoising loss of the val windows at FIXED noise levels (`VALIDATION_SIGMAS`) with noise seeded per
window, on the ground-truth features (no dropout, no mixing), so curves are comparable between runs and steps.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from configs.schema import Config
from models.conditioning import (
    mix_future_features,
    nested_dropout,
    nested_levels,
    sample_mixed,
    sample_nested_keep,
)
from models.diffusion import context_mask, denoising_loss
from models.stage2 import Stage2Model, Stage2ModelSpec, stage2_model_spec
from pipeline import atomic, layout
from pipeline.console import console, warn_loud
from pipeline.store import (
    CacheError,
    CacheReader,
    cache_expectations,
    open_complete_cache,
)
from train.data import WindowSamples, loader_factories
from train.loop import TrainResult, is_main_process, run_training

# Upper edges of the σ ranges the training loss is logged by (the last range is open).
SIGMA_BUCKET_EDGES = (0.5, 2.0, 10.0)
# Absolute σ of the validation loss (not scaled by √frames) and the seed of its per-window noise.
VALIDATION_SIGMAS = (0.2, 1.0, 5.0)
VALIDATION_NOISE_SEED = 12345




# ------------------------------------------------------------------------------------------- the cache


def open_stage2_cache(cfg: Config, cache: str) -> CacheReader:
    """Open the cache and refuse it, naming every field, unless it was made for this config and is complete."""
    return open_complete_cache(cache, cache_expectations(cfg, codec=True))


def _check_arrays(reader: CacheReader, spec: Stage2ModelSpec) -> None:
    cache = reader.root
    latent_frames, patch = reader.window.latent_frames, spec.dit.patch_size
    latents = tuple(reader.array(layout.LATENTS).shape[1:])
    if len(latents) != 4 or latents[0] != latent_frames or latents[1] != spec.dit.latent_channels:
        raise CacheError(
            f"{cache}/{layout.LATENTS} has per-sample shape {latents}; meta.json says {latent_frames} latent frames of "
            f"{spec.dit.latent_channels} channels. The cache is inconsistent: rebuild it"
        )
    if latents[2] % patch or latents[3] % patch:
        raise CacheError(
            f"{cache}: latent grid {latents[2]}x{latents[3]} is not divisible by stage2.model.patch_size={patch}; "
            "choose a window size divisible by codec.spatial_factor x patch_size and rebuild the cache"
        )
    grid = reader.contract.vfm_grid
    features = tuple(reader.array(layout.FEATURES).shape[1:])
    if features != (latent_frames, spec.align_target_dim, *grid):
        raise CacheError(
            f"{cache}/{layout.FEATURES} has per-sample shape {features}, meta.json says "
            f"{(latent_frames, spec.align_target_dim, *grid)}; the cache is inconsistent, rebuild it"
        )


def require_pool(reader: CacheReader, train_samples: Any, prob: float) -> tuple[list[int], float]:
    """The training windows that have Stage 1 predictions, and their fraction of all training windows.

    Raises CacheError when mixed supervision is on but the cache has no usable pool."""
    cache, meta = reader.root, reader.meta
    fix = (
        f"run `python cli.py make-predicted-pool` on this cache with a Stage 1 checkpoint first, or set "
        f"stage2.mixed_supervision_prob=0 (now {prob})"
    )
    if not reader.has(layout.POOL_FEATURES) or "pool" not in meta:
        raise CacheError(f"{cache} has no {layout.POOL_FEATURES}, which mixed supervision reads: {fix}")
    pool_meta = meta["pool"]
    ctx, latent_frames = reader.window.context_latent_frames, reader.window.latent_frames
    if pool_meta.get("context_frames") != ctx or pool_meta.get("future_frames") != latent_frames - ctx:
        raise CacheError(
            f"{cache}: the pool predicts {pool_meta.get('future_frames')} frames after {pool_meta.get('context_frames')} "
            f"context frames, this cache's windows have {latent_frames - ctx} after {ctx}; remake it (--overwrite)"
        )
    in_pool = sorted(set(int(s) for s in reader.pool_samples()) & set(int(s) for s in train_samples))
    if not in_pool:
        raise CacheError(f"{cache}: no training window has a finished pool entry: {fix}")
    if pool_meta.get("status") != "complete" and is_main_process():
        warn_loud(f"{cache}: the pool is {pool_meta.get('status')!r}; only its {len(in_pool)} finished windows can be mixed")
    return in_pool, len(in_pool) / max(len(train_samples), 1)


# ------------------------------------------------------------------------------------------- the task


def _frames_second(x: torch.Tensor) -> torch.Tensor:
    """Cache layout [B, T, C, h, w] -> model layout [B, C, T, h, w]."""
    return x.permute(0, 2, 1, 3, 4)


def sigma_bucket_names() -> list[str]:
    edges = SIGMA_BUCKET_EDGES
    names = [f"sigma<{edges[0]:g}"]
    names += [f"sigma{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return names + [f"sigma>{edges[-1]:g}"]


class Stage2Task:
    """Plugs the Stage 2 model into the shared loop."""

    # The paper reports its runs after a fixed number of iterations; the denoising loss at three noise levels is only
    # a proxy for sample quality, so the best-by-loss checkpoint is tracked but not the default.
    selection = ("loss", "min", "latest", "the paper evaluates Stage 2 after its fixed training length")

    def __init__(self, spec: Stage2ModelSpec, context_latent_frames: int, *, nested: bool, levels: list[int],
                 mixed_prob: float = 0.0, pool_fraction: float = 1.0):
        self.spec = spec
        self.context = int(context_latent_frames)
        self.uses_features = spec.dit.feature_conditioned
        self.nested = nested and self.uses_features
        self.levels = list(levels)
        if self.nested:
            nested_levels(self.levels, spec.dit.feature_channels)  # bad levels fail here, before training starts
        self.mixed = self.uses_features and mixed_prob > 0
        # Windows with a pool entry are mixed with p / f so that a fraction p of all windows is (module docstring).
        self.pool_prob = min(1.0, mixed_prob / pool_fraction) if self.mixed else 0.0

    def build_model(self) -> nn.Module:
        return Stage2Model(self.spec)

    def model_config(self) -> dict[str, Any]:
        return self.spec.to_dict()

    def conditioning(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The features the DiT sees this step (mixed supervision, then nested dropout) and what was drawn."""
        if not self.uses_features:
            return None, {}
        feats = _frames_second(batch["features"])
        b, c = feats.shape[:2]
        logs: dict[str, float] = {}
        if self.mixed:
            use_pred = sample_mixed(b, self.pool_prob, generator).to(feats.device) & batch["in_pool"].to(feats.device).bool()
            feats = mix_future_features(feats, _frames_second(batch["pool"]), use_pred, self.context)
            logs["mixed_fraction"] = use_pred.float().mean().item()
        if self.nested:
            keep = sample_nested_keep(b, self.levels, c, generator).to(feats.device)
            feats = nested_dropout(feats, keep)
            logs["nested_keep_mean"] = keep.float().mean().item()
        return feats, logs

    def training_loss(self, model: nn.Module, batch: dict[str, Any], step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = _frames_second(batch["latents"])
        b, _, t = x0.shape[:3]
        features, logs = self.conditioning(batch, generator)
        align_target = _frames_second(batch["features"]) if self.spec.alignment != "none" else None
        loss, details = model(x0, context_mask(b, t, self.context, x0.device), features, align_target, generator)
        logs["diffusion_loss"] = details["diffusion_loss"].item()
        if "align_loss" in details:
            logs["align_loss"] = details["align_loss"].item()
        sigma, per_sample = details["sigma"].float().cpu(), details["per_sample"].float().cpu()
        bucket = torch.bucketize(sigma, torch.tensor(SIGMA_BUCKET_EDGES))
        for index, name in enumerate(sigma_bucket_names()):
            chosen = bucket == index
            if chosen.any():  # only ranges that occurred in this batch
                logs[f"loss_{name}"] = per_sample[chosen].mean().item()
        return loss, logs

    def validate(self, model: nn.Module, loader: Iterable[Any]) -> dict[str, float]:
        sums = torch.zeros(len(VALIDATION_SIGMAS), dtype=torch.float64)
        windows = 0
        for batch in loader:
            x0 = _frames_second(batch["latents"]).float()
            b, _, t = x0.shape[:3]
            features = _frames_second(batch["features"]).float() if self.uses_features else None
            mask = context_mask(b, t, self.context, x0.device)
            noise = torch.stack([
                torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(VALIDATION_NOISE_SEED + int(s)))
                for s in batch["sample"].tolist()
            ])
            for i, sigma in enumerate(VALIDATION_SIGMAS):
                result = denoising_loss(model.denoiser, x0, mask, features, torch.full((b,), sigma), noise)
                sums[i] += result.per_sample.sum().item()
            windows += b
        if windows == 0:
            return {}
        out = {f"loss_sigma{sigma:g}": (sums[i] / windows).item() for i, sigma in enumerate(VALIDATION_SIGMAS)}
        out["loss"] = float(sum(out.values()) / len(VALIDATION_SIGMAS))
        return out


# ---------------------------------------------------------------------------------------------- entry


def train_stage2(
    cfg: Config,
    cache: str,
    out: str,
    resume: bool | str = False,
    steps: int | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    mixed_precision: str | None = None,
) -> TrainResult:
    """Train Stage 2 on `cache`, writing checkpoints/TensorBoard under `out`. Options override `cfg.stage2.train`."""
    s2 = cfg.stage2
    cfg_train = s2.train.overridden(steps=steps, batch_size=batch_size, num_workers=num_workers,
                                          mixed_precision=mixed_precision)
    reader = open_stage2_cache(cfg, cache)
    meta = reader.meta
    spec = stage2_model_spec(cfg, meta)
    _check_arrays(reader, spec)
    train_samples = reader.samples("train")
    val_samples = reader.samples("val")
    if len(train_samples) == 0:
        raise CacheError(f"{cache} has no complete 'train' samples; check manifest.parquet splits and failures.parquet")

    conditioned = spec.dit.feature_conditioned
    needs_features = conditioned or spec.alignment != "none"
    mixing = conditioned and s2.mixed_supervision_prob > 0
    pool_samples, pool_fraction = (require_pool(reader, train_samples, s2.mixed_supervision_prob) if mixing else (None, 1.0))
    train_set = WindowSamples(cache, train_samples, reader.shard_size, features=needs_features, latents=True, pool_samples=pool_samples)
    val_set = WindowSamples(cache, val_samples, reader.shard_size, features=needs_features, latents=True) if len(val_samples) else None
    if val_set is None and is_main_process():
        console.print(f"{cache} has no 'val' samples: Stage 2 validation is skipped")
    train_loader, val_loader = loader_factories(train_set, val_set, cfg_train.num_workers)

    task = Stage2Task(
        spec, reader.window.context_latent_frames, nested=s2.nested_dropout, levels=s2.nested_dropout_levels,
        mixed_prob=s2.mixed_supervision_prob, pool_fraction=pool_fraction,
    )
    pool_meta = meta.get("pool") or {}
    extra = {
        "random_weights": bool(meta.get("random_weights", False)),
        "vfm_weights": reader.contract.vfm_weights,
        "codec_weights": reader.contract.codec_weights,
        "pca_fingerprint": reader.contract.pca_fingerprint,
        "cache": str(cache),
        "cache_absolute": atomic.absolute(cache),
        "stage": "stage2",
        "conditioning": spec.dit.conditioning,
        "alignment": spec.alignment,
        "mixed_supervision": {
            "prob": s2.mixed_supervision_prob if conditioned else 0.0,
            "pool_fraction": pool_fraction if mixing else None,
            "pool_stage1_fingerprint": pool_meta.get("stage1_fingerprint") if mixing else None,
        },
        "nested_dropout": bool(s2.nested_dropout and conditioned),
    }
    return run_training(
        task, train_loader, val_loader, cfg_train, s2.optim, out,
        resume=resume, cache_fingerprint=reader.fingerprint(), extra_meta=extra, full_config=cfg.to_dict(),
    )
