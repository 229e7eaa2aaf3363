"""Stage 2 trainer: it learns (overfits one window), mixes in Stage 1's pool, trains the baselines with their
alignment losses, validates at fixed noise levels, resumes exactly, and refuses bad caches and configs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import zarr
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs.schema import ConfigError, Stage1ModelConfig, load_config
from models.dit import patchify
from models.foresight import FeatureForesight
from models.stage2 import Stage2Model, build_stage2_model, stage2_model_spec
from pipeline.store import CacheError
from tests.cache_fixtures import make_cache
from train import checkpoint as ckpt
from train.checkpoint import read_config, read_weights
from train.pool import make_predicted_pool
from train.stage2 import VALIDATION_SIGMAS, Stage2Task, sigma_bucket_names, train_stage2

LATENT_CHANNELS, LATENT_HW, PATCH = 3, (8, 12), 2
CHANNELS = LATENT_CHANNELS * PATCH * PATCH  # features = the patchified latents: x0 is a linear function of them


def overrides(**extra):
    """A tiny Stage 2 run on the fixture cache (12 feature channels, 3 latent channels, 8x12 latents)."""
    base = {
        "pca.components": CHANNELS, "codec.name": "pixel",  # the fixture cache records a pixel codec
        "stage2.model.width": 48, "stage2.model.depth": 2, "stage2.model.heads": 2, "stage2.model.adaln_lora_dim": 16,
        "stage2.nested_dropout_levels": [4, 8], "stage2.mixed_supervision_prob": 0.0,
        "stage2.projector_dim": 32, "stage2.align_block": 1,
        "stage2.train.batch_size": 2, "stage2.train.steps": 2, "stage2.train.num_workers": 0, "stage2.train.log_every": 1,
        "stage2.train.val_every": 0, "stage2.train.ckpt_every": 0, "stage2.train.ema_decay": 0.0, "stage2.train.val_batches": 2,
        "stage2.optim.warmup_steps": 0,
    }
    base.update(extra)
    return load_config("tiny", base)


def window_cache(root, num_samples=4, splits=None, seed=0):
    """A fixture cache whose features are the patchified latents of the same window (so they determine x0)."""
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((num_samples, 7, LATENT_CHANNELS, *LATENT_HW)).astype(np.float32)
    features = patchify(torch.from_numpy(latents).permute(0, 2, 1, 3, 4), PATCH).permute(0, 1, 4, 2, 3).numpy()
    cache = make_cache(root, num_samples=num_samples, shard_size=4, channels=CHANNELS, grid=(4, 6),
                       latent_channels=LATENT_CHANNELS, latent_hw=LATENT_HW, features=features.astype(np.float16), splits=splits)
    zarr.open_group(cache, mode="a")["latents"][:] = latents.astype(np.float16)
    return cache


def scalars(run_dir) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def stage1_checkpoint(out) -> str:
    torch.manual_seed(0)
    cfg = Stage1ModelConfig(width=24, heads=2, depth=1, dropout=0.0, context_frames=3, in_channels=CHANNELS, grid_h=4, grid_w=6)
    model = FeatureForesight(cfg)
    torch.nn.init.normal_(model.head.weight, std=0.1)
    config = {"model": dataclasses.asdict(cfg), "pca_fingerprint": "test-pca-fp", "random_weights": True, "stage": "stage1"}
    return str(ckpt.save_checkpoint(out, 1, model_state=model.state_dict(), config=config, train_state={"step": 1}))


# ---------------------------------------------------------------------------------------------- learning


def test_tiny_model_overfits_one_window(tmp_path):
    rng = np.random.default_rng(0)
    latents = np.repeat(rng.standard_normal((1, 7, LATENT_CHANNELS, *LATENT_HW)), 4, axis=0).astype(np.float32)
    features = patchify(torch.from_numpy(latents).permute(0, 2, 1, 3, 4), PATCH).permute(0, 1, 4, 2, 3).numpy()
    cache = make_cache(tmp_path / "cache", num_samples=4, shard_size=4, channels=CHANNELS, grid=(4, 6),
                       latent_channels=LATENT_CHANNELS, latent_hw=LATENT_HW, features=features.astype(np.float16))
    zarr.open_group(cache, mode="a")["latents"][:] = latents.astype(np.float16)  # 4 copies of ONE window
    cfg = overrides(**{
        "stage2.nested_dropout": False, "stage2.train.batch_size": 4, "stage2.train.steps": 120, "stage2.train.log_every": 60,
        "stage2.optim.lr": 3e-3, "stage2.optim.schedule": "constant",
    })
    result = train_stage2(cfg, cache, str(tmp_path / "run"))
    first = np.mean([result.losses[s] for s in range(1, 6)])
    last = np.mean([result.losses[s] for s in range(116, 121)])
    assert last < first / 10, (first, last)


# ------------------------------------------------------------------------------------ feature conditioning


def _task(cfg, meta, **kw):
    spec = stage2_model_spec(cfg, meta)
    return Stage2Task(spec, 4, nested=kw.pop("nested", False), levels=[4, 8], **kw)


META = {"pca": {"components": CHANNELS}, "codec": {"channels": LATENT_CHANNELS}}


def test_mixed_supervision_replaces_only_future_frames_of_pool_windows():
    cfg = overrides()
    task = _task(cfg, META, mixed_prob=1.0)
    truth = torch.randn(3, 7, CHANNELS, 4, 6)
    pool = torch.full((3, 3, CHANNELS, 4, 6), 7.0)
    batch = {"features": truth, "pool": pool, "in_pool": torch.tensor([True, False, True])}
    feats, logs = task.conditioning(batch, torch.Generator().manual_seed(0))
    feats = feats.permute(0, 2, 1, 3, 4)  # back to [B, T, C, h, w]
    assert torch.equal(feats[:, :4], truth[:, :4])  # context frames are always the encoder's
    assert torch.all(feats[[0, 2], 4:] == 7.0)  # pool windows: Stage 1's future
    assert torch.equal(feats[1, 4:], truth[1, 4:])  # a window without a pool entry stays ground truth
    assert logs["mixed_fraction"] == pytest.approx(2 / 3)


def test_pool_windows_are_mixed_more_often_when_the_pool_is_partial():
    cfg = overrides()
    assert _task(cfg, META, mixed_prob=0.1, pool_fraction=0.5).pool_prob == pytest.approx(0.2)
    assert _task(cfg, META, mixed_prob=0.6, pool_fraction=0.5).pool_prob == 1.0
    baseline = overrides(**{"stage2.model.conditioning": "none"})
    assert _task(baseline, META, mixed_prob=0.5).pool_prob == 0.0  # the baseline never sees features


def test_nested_dropout_keeps_a_prefix_of_channels_from_the_levels():
    task = _task(overrides(), META, nested=True)
    truth = torch.randn(64, 7, CHANNELS, 4, 6)
    feats, logs = task.conditioning({"features": truth}, torch.Generator().manual_seed(0))
    kept = (feats.abs().sum(dim=(2, 3, 4)) > 0).sum(dim=1)  # [B] channels with any non-zero value
    assert set(kept.tolist()) == {4, 8, CHANNELS}
    for b, k in enumerate(kept.tolist()):
        assert torch.equal(feats[b, :k], truth[b].permute(1, 0, 2, 3)[:k])
    assert logs["nested_keep_mean"] == pytest.approx(kept.float().mean().item())


def test_mixed_supervision_trains_from_the_pool(tmp_path):
    splits = ["train", "train", "train", "val"]
    cache = window_cache(tmp_path / "cache", splits=splits)
    make_predicted_pool(cache, stage1_checkpoint(tmp_path / "s1"), device="cpu")
    cfg = overrides(**{"stage2.mixed_supervision_prob": 1.0, "stage2.nested_dropout": True, "stage2.train.steps": 3,
                       "stage2.train.activation_checkpointing": True})
    result = train_stage2(cfg, cache, str(tmp_path / "run"))
    assert np.isfinite(result.loss)
    logged = scalars(tmp_path / "run")
    assert logged["train/mixed_fraction"] == [1.0, 1.0, 1.0]  # every training window has a pool entry
    assert all(4 <= k <= CHANNELS for k in logged["train/nested_keep_mean"])  # means of levels {4, 8, 12}
    config = ckpt.read_config(result.checkpoint)
    assert config["mixed_supervision"]["prob"] == 1.0 and len(config["mixed_supervision"]["pool_stage1_fingerprint"]) == 16


def test_mixed_supervision_without_a_pool_is_refused(tmp_path):
    cache = window_cache(tmp_path / "cache")
    cfg = overrides(**{"stage2.mixed_supervision_prob": 0.1})
    with pytest.raises(CacheError, match="make-predicted-pool"):
        train_stage2(cfg, cache, str(tmp_path / "run"))
    # The plain baseline reads no features, so it needs no pool.
    baseline = overrides(**{"stage2.mixed_supervision_prob": 0.1, "stage2.model.conditioning": "none", "stage2.train.steps": 1})
    assert np.isfinite(train_stage2(baseline, cache, str(tmp_path / "baseline")).loss)


# --------------------------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("alignment", ["none", "repa", "videorepa"])
def test_baselines_train_and_log_their_alignment_loss(tmp_path, alignment):
    cache = window_cache(tmp_path / "cache")
    cfg = overrides(**{"stage2.model.conditioning": "none", "stage2.alignment": alignment})
    result = train_stage2(cfg, cache, str(tmp_path / "run"))
    assert np.isfinite(result.loss)
    logged = scalars(tmp_path / "run")
    assert ("train/align_loss" in logged) == (alignment != "none")
    if alignment == "repa":
        assert all(-1.0 <= v <= 1.0 for v in logged["train/align_loss"])  # a negative cosine
    if alignment == "videorepa":
        assert all(0.0 <= v <= 2.0 for v in logged["train/align_loss"])  # ReLU(|S_s - S_t| - margin), cosines in [-1, 1]
    # the total loss adds the weighted alignment loss to the diffusion loss
    total = np.array([result.losses[s] for s in (1, 2)])
    diffusion = np.array(logged["train/diffusion_loss"])
    align = np.array(logged.get("train/align_loss", [0.0, 0.0]))
    assert np.allclose(total, diffusion + cfg.stage2.align_weight * align, rtol=1e-5)
    model, config = ckpt.load_model_for_inference(result.checkpoint, build_stage2_model)
    assert config["conditioning"] == "none" and config["alignment"] == alignment
    assert model.net.feature_embed is None and (model.projector is None) == (alignment == "none")


def test_an_align_block_outside_the_network_is_refused(tmp_path):
    cache = window_cache(tmp_path / "cache")
    cfg = overrides(**{"stage2.alignment": "repa", "stage2.align_block": 3})  # depth 2
    with pytest.raises(ConfigError, match="align_block=3"):
        train_stage2(cfg, cache, str(tmp_path / "run"))


# ------------------------------------------------------------------------------------- logging, validation


def test_loss_is_logged_per_noise_level_and_validated_at_fixed_sigmas(tmp_path):
    cache = window_cache(tmp_path / "cache", splits=["train", "train", "val", "val"])
    cfg = overrides(**{"stage2.train.steps": 2, "stage2.train.val_every": 2, "stage2.nested_dropout": True})
    result = train_stage2(cfg, cache, str(tmp_path / "run"))
    assert set(result.val) == {"loss"} | {f"loss_sigma{s:g}" for s in VALIDATION_SIGMAS}
    assert result.val["loss"] == pytest.approx(np.mean([result.val[f"loss_sigma{s:g}"] for s in VALIDATION_SIGMAS]))
    logged = scalars(tmp_path / "run")
    buckets = [k for k in logged if k.startswith("train/loss_sigma")]
    assert buckets and all(k.removeprefix("train/loss_") in sigma_bucket_names() for k in buckets)

    # Fixed noise per window: the same model gives the same metrics for any batch split.
    model, _ = ckpt.load_model_for_inference(result.checkpoint, build_stage2_model, prefer_ema=False)
    task = _task(cfg, {"pca": {"components": CHANNELS}, "codec": {"channels": LATENT_CHANNELS}})
    from train.data import WindowSamples

    windows = WindowSamples(cache, [2, 3], shard_size=4)
    whole = [torch.utils.data.default_collate([windows[0], windows[1]])]
    split = [torch.utils.data.default_collate([windows[i]]) for i in (0, 1)]
    with torch.no_grad():
        a, b = task.validate(model, whole), task.validate(model, split)
    assert a == pytest.approx(b, rel=1e-5)
    assert a == pytest.approx(result.val, rel=1e-4)


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    cache = window_cache(tmp_path / "cache")
    make_predicted_pool(cache, stage1_checkpoint(tmp_path / "s1"), device="cpu")
    settings = {"stage2.mixed_supervision_prob": 0.5, "stage2.nested_dropout": True, "stage2.train.ckpt_every": 2,
                "stage2.train.ema_decay": 0.9, "stage2.optim.schedule": "constant"}  # lr independent of train.steps
    straight = train_stage2(overrides(**settings, **{"stage2.train.steps": 4}), cache, str(tmp_path / "straight"))
    train_stage2(overrides(**settings, **{"stage2.train.steps": 2}), cache, str(tmp_path / "resumed"))
    resumed = train_stage2(overrides(**settings, **{"stage2.train.steps": 4}), cache, str(tmp_path / "resumed"), resume=True)
    assert [resumed.losses[s] for s in (3, 4)] == [straight.losses[s] for s in (3, 4)]
    # The EMA continues with its warm-up count: the averaged weights are the uninterrupted run's.
    ema_straight, which = read_weights(straight.checkpoint)
    ema_resumed, _ = read_weights(resumed.checkpoint)
    assert which == "ema" and all(torch.equal(ema_straight[k], ema_resumed[k]) for k in ema_straight)
    assert read_config(resumed.checkpoint)["ema"]["updates"] == 4


def test_checkpoint_rebuilds_the_model_and_records_the_cache(tmp_path):
    cache = window_cache(tmp_path / "cache")
    result = train_stage2(overrides(**{"stage2.train.steps": 1}), cache, str(tmp_path / "run"))
    model, config = ckpt.load_model_for_inference(result.checkpoint, build_stage2_model)
    assert isinstance(model, Stage2Model) and config["stage"] == "stage2" and config["cache"] == cache
    model.activation_checkpointing = True  # the switch the loop flips for train.activation_checkpointing
    assert model.net.activation_checkpointing
    assert config["model"]["dit"]["latent_channels"] == LATENT_CHANNELS and config["model"]["dit"]["feature_channels"] == CHANNELS
    assert config["random_weights"] is True and config["pca_fingerprint"] == "test-pca-fp"
    with pytest.raises(ConfigError, match="not written by train/stage2.py"):
        build_stage2_model({"width": 8})


def test_a_cache_made_for_another_codec_is_refused(tmp_path):
    cache = window_cache(tmp_path / "cache")
    cfg = overrides(**{"codec.spatial_factor": 8})
    with pytest.raises(CacheError, match=r"codec\.spatial_factor: cache has 4, expected 8"):
        train_stage2(cfg, cache, str(tmp_path / "run"))


def test_bf16_autocast_on_cpu_matches_float32(tmp_path):
    # The GPU path (mixed_precision bf16) through Accelerate's CPU autocast. Measured: max relative loss difference
    # 1.4e-3 over 3 steps; asserted within 1e-2.
    cache = window_cache(tmp_path / "cache")
    cfg = overrides(**{"stage2.train.steps": 3})
    fp32 = train_stage2(cfg, cache, str(tmp_path / "fp32"), mixed_precision="no").losses
    bf16 = train_stage2(cfg, cache, str(tmp_path / "bf16"), mixed_precision="bf16").losses
    assert bf16 != fp32  # autocast really ran in bf16
    assert bf16 == pytest.approx(fp32, rel=1e-2)
