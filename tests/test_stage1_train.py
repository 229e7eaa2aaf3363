"""Stage 1 trainer: it learns (overfits a tiny batch), validates with rollout cosines, and refuses wrong caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs.schema import Stage1ModelConfig, load_config
from models.foresight import FeatureForesight
from pipeline.store import CacheError
from tests.cache_fixtures import make_cache, tiny_stage1_overrides
from train.stage1 import Stage1Task, train_stage1


def test_tiny_model_overfits_a_tiny_batch(tmp_path):
    # Two windows = 6 sub-windows = one batch, seen every step; a smooth signal so the target is learnable.
    rng = np.random.default_rng(0)
    t = np.arange(7)[:, None, None, None]
    base = rng.standard_normal((2, 1, 8, 4, 6))
    features = (base * np.cos(0.5 * t + base) + 0.1 * t).astype(np.float16)
    cache = make_cache(tmp_path / "cache", num_samples=2, shard_size=2, features=features)
    cfg = load_config(
        "tiny",
        tiny_stage1_overrides(**{
            "stage1.model.width": 48, "stage1.model.depth": 2, "stage1.train.batch_size": 6, "stage1.train.steps": 100,
            "stage1.train.val_every": 0, "stage1.train.ckpt_every": 0, "stage1.train.log_every": 50,
            "stage1.optim.lr": 1e-2, "stage1.optim.schedule": "constant", "stage1.train.clip_grad": 1.0,
        }),
    )
    result = train_stage1(cfg, cache, str(tmp_path / "run"))
    first = np.mean([result.losses[s] for s in (1, 2, 3)])
    last = np.mean([result.losses[s] for s in (98, 99, 100)])
    assert last < first / 10, (first, last)


def test_validation_reports_rollout_cosines_and_the_copy_baseline():
    torch.manual_seed(0)
    cfg = Stage1ModelConfig(width=24, heads=2, depth=1, dropout=0.0, context_frames=2, in_channels=8, grid_h=3, grid_w=4)
    task = Stage1Task(cfg, beta=0.1, context_latent_frames=3)
    model = FeatureForesight(cfg).eval()
    feats = torch.randn(2, 6, 8, 3, 4)  # Tf = 6, 3 context frames -> 3 rollout steps
    with torch.no_grad():
        metrics = task.validate(model, [{"features": feats[:1]}, {"features": feats[1:]}])
        expected_loss = np.mean([
            F.smooth_l1_loss(model(feats[:, s : s + 3]), feats[:, s + 2], beta=0.1).item() for s in range(4)
        ])
        step1 = F.cosine_similarity(model(feats[:, 1:4]), feats[:, 3], dim=1).mean().item()
    assert set(metrics) == {"loss"} | {f"cos_step{k}" for k in (1, 2, 3)} | {f"cos_copy_last_step{k}" for k in (1, 2, 3)}
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["cos_step1"] == pytest.approx(step1, abs=1e-6)  # step 1 uses true context frames only
    for k in (1, 2, 3):
        copy = F.cosine_similarity(feats[:, 2], feats[:, 2 + k], dim=1).mean().item()
        assert metrics[f"cos_copy_last_step{k}"] == pytest.approx(copy, abs=1e-6)


def test_a_cache_made_for_another_config_is_refused_naming_the_field(tmp_path):
    cache = make_cache(tmp_path / "cache", num_samples=4, channels=16)
    cfg = load_config("tiny", tiny_stage1_overrides(**{"stage1.train.steps": 1}))  # pca.components = 8
    with pytest.raises(CacheError, match=r"pca\.components: cache has 16, expected 8"):
        train_stage1(cfg, cache, str(tmp_path / "run"))


def test_an_unfinished_cache_is_refused(tmp_path):
    cache = make_cache(tmp_path / "cache", num_samples=8, shard_size=4, shards=[0])
    cfg = load_config("tiny", tiny_stage1_overrides(**{"stage1.train.steps": 1}))
    with pytest.raises(CacheError, match="in_progress"):
        train_stage1(cfg, cache, str(tmp_path / "run"))


def test_failed_samples_are_not_trained_on(tmp_path):
    cache = make_cache(tmp_path / "cache", num_samples=4, shard_size=4, failed=[0, 1, 2])
    cfg = load_config("tiny", tiny_stage1_overrides(**{"stage1.train.steps": 1, "stage1.train.batch_size": 4}))
    # one ok window = 3 sub-windows < one batch of 4: the sampler says so instead of reading failed rows
    with pytest.raises(ValueError, match="only 3 items"):
        train_stage1(cfg, cache, str(tmp_path / "run"))


def test_bench_stage1_times_every_variant():
    from eval.bench.stage1 import run

    overrides = ["stage1.model.width=24", "stage1.model.depth=1", "stage1.model.heads=2", "vfm.overrides={embed_dim=32, depth=2, num_heads=2}", "vfm.layers=[0, 1]"]
    result = run("tiny", batch_size=1, steps=1, warmup=0, device="cpu", overrides=overrides)
    assert set(result["steps"]) == {"cached", "cached_unfused", "online_vfm", "vfm_and_pca_only"}
    assert all(r["step_s"] > 0 for r in result["steps"].values())
    assert result["model"]["grid"] == [8, 16] and result["tokens"] == 5 * 8 * 16


def test_bf16_autocast_on_cpu_matches_float32(tmp_path):
    # The GPU path (mixed_precision bf16) run through Accelerate's CPU autocast. Measured: max relative loss
    # difference 1.6e-6 over 3 steps (the head and loss stay float32); asserted within 1e-3.
    cache = make_cache(tmp_path / "cache", num_samples=4, splits=["train"] * 3 + ["val"])
    cfg = load_config("tiny", tiny_stage1_overrides(**{"stage1.train.steps": 3, "stage1.train.val_every": 0,
                                                       "stage1.train.ckpt_every": 0}))
    fp32 = train_stage1(cfg, cache, str(tmp_path / "fp32"), mixed_precision="no").losses
    bf16 = train_stage1(cfg, cache, str(tmp_path / "bf16"), mixed_precision="bf16").losses
    assert bf16 != fp32  # autocast really ran in bf16
    assert bf16 == pytest.approx(fp32, rel=1e-3)
