"""The predicted-feature pool: contents equal the rollout, resumable shard by shard, refused for another checkpoint."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from configs.schema import Stage1ModelConfig
from models.foresight import FeatureForesight
from models.rollout import rollout
from pipeline import layout
from pipeline.store import CacheError, CacheReader, WriterLock
from tests.cache_fixtures import make_cache
from train import checkpoint as ckpt
from train.data import WindowSamples
from train.pool import in_pool, make_predicted_pool

SPLITS = ["train", "train", "val", "train", "train", "train", "train", "val", "train", "train"]  # 10 windows, 3 shards


def _stage1_checkpoint(out, seed: int, in_channels: int = 8, pca_fingerprint: str = "test-pca-fp") -> tuple[str, FeatureForesight]:
    """A Stage 1 checkpoint as train/loop.py writes it, with a random (non-zero) head so predictions vary."""
    torch.manual_seed(seed)
    cfg = Stage1ModelConfig(width=24, heads=2, depth=1, dropout=0.0, context_frames=3, in_channels=in_channels, grid_h=4, grid_w=6)
    model = FeatureForesight(cfg)
    torch.nn.init.normal_(model.head.weight, std=0.1)
    config = {"model": dataclasses.asdict(cfg), "pca_fingerprint": pca_fingerprint, "random_weights": True, "step": 1}
    path = ckpt.save_checkpoint(out, 1, model_state=model.state_dict(), config=config, train_state={"step": 1})
    return str(path), model.eval()


def _cache(tmp_path, name="cache"):
    return make_cache(tmp_path / name, num_samples=10, shard_size=4, splits=SPLITS)


def test_pool_holds_the_rollout_of_every_training_window(tmp_path):
    cache = _cache(tmp_path)
    path, model = _stage1_checkpoint(tmp_path / "s1", seed=0)
    summary = make_predicted_pool(cache, path, batch_size=3, device="cpu")
    assert summary["complete"] and summary["pool_windows"] == 8 and summary["shards_written"] == 3
    reader = CacheReader(cache)
    train = [i for i, s in enumerate(SPLITS) if s == "train"]
    assert reader.pool_samples().tolist() == train  # val windows are not in the pool
    pool = reader.array(layout.POOL_FEATURES)
    assert pool.shape == (10, 3, 8, 4, 6) and str(pool.dtype) == "float16"
    feats = torch.from_numpy(reader.array(layout.FEATURES)[:].astype(np.float32))
    with torch.no_grad():
        expected = rollout(model, feats[:, 1:4], 3)  # the model's last M_f = 3 of the 4 context frames
    got = torch.from_numpy(pool[:].astype(np.float32))
    assert torch.allclose(got[train], expected[train].half().float(), atol=1e-3)
    assert torch.all(got[[2, 7]] == 0)
    windows = WindowSamples(cache, [1, 2], shard_size=4, latents=False, pool_samples=reader.pool_samples())
    assert windows[0]["in_pool"] and torch.equal(windows[0]["pool"], got[1])
    assert not windows[1]["in_pool"] and torch.all(windows[1]["pool"] == 0) and windows[1]["pool"].shape == (3, 8, 4, 6)
    meta = json.loads((tmp_path / "cache" / layout.META).read_text())["pool"]
    assert meta["context_frames"] == 4 and meta["future_frames"] == 3 and meta["status"] == "complete"
    assert meta["checkpoint"] == path and meta["fraction"] == 1.0 and len(meta["stage1_fingerprint"]) == 16


def test_interrupted_pool_resumes_to_the_same_result(tmp_path):
    path, _ = _stage1_checkpoint(tmp_path / "s1", seed=0)
    straight = _cache(tmp_path, "straight")
    make_predicted_pool(straight, path, batch_size=4, device="cpu")
    cache = _cache(tmp_path, "resumed")
    partial = make_predicted_pool(cache, path, batch_size=4, device="cpu", max_shards=1)
    assert not partial["complete"] and partial["shards_written"] == 1
    assert CacheReader(cache).pool_samples().tolist() == [0, 1, 3]  # only shard 0 is served so far
    assert json.loads((tmp_path / "resumed" / layout.META).read_text())["pool"]["status"] == "in_progress"
    rest = make_predicted_pool(cache, path, batch_size=4, device="cpu")
    assert rest["complete"] and rest["shards_already_done"] == 1 and rest["shards_written"] == 2
    a = CacheReader(straight).array(layout.POOL_FEATURES)[:]
    b = CacheReader(cache).array(layout.POOL_FEATURES)[:]
    assert np.array_equal(a, b)


def test_fraction_picks_a_deterministic_subset(tmp_path):
    cache = _cache(tmp_path)
    path, _ = _stage1_checkpoint(tmp_path / "s1", seed=0)
    make_predicted_pool(cache, path, fraction=0.5, device="cpu")
    reader = CacheReader(cache)
    ids = reader.manifest["sample_id"].to_list()
    expected = [i for i, s in enumerate(SPLITS) if s == "train" and in_pool(ids[i], 0.5)]
    assert reader.pool_samples().tolist() == expected and 0 < len(expected) < 8


def test_pool_from_another_checkpoint_is_refused_unless_overwrite(tmp_path):
    cache = _cache(tmp_path)
    first, _ = _stage1_checkpoint(tmp_path / "a", seed=0)
    second, model = _stage1_checkpoint(tmp_path / "b", seed=1)
    make_predicted_pool(cache, first, device="cpu", max_shards=1)
    with pytest.raises(CacheError, match="stage1_fingerprint"):
        make_predicted_pool(cache, second, device="cpu")
    summary = make_predicted_pool(cache, second, device="cpu", overwrite=True)
    assert summary["complete"] and summary["shards_written"] == 3  # nothing kept from the first checkpoint
    reader = CacheReader(cache)
    feats = torch.from_numpy(reader.array(layout.FEATURES)[:1].astype(np.float32))
    with torch.no_grad():
        expected = rollout(model, feats[:, 1:4], 3).half().float()
    assert torch.allclose(torch.from_numpy(reader.array(layout.POOL_FEATURES)[:1].astype(np.float32)), expected, atol=1e-3)


def test_checkpoint_for_another_feature_space_is_refused(tmp_path):
    cache = _cache(tmp_path)
    path, _ = _stage1_checkpoint(tmp_path / "s1", seed=0, in_channels=16, pca_fingerprint="other-pca")
    with pytest.raises(CacheError, match=r"PCA fingerprint.*Stage 1 reads 16 PCA components, the cache has 8"):
        make_predicted_pool(cache, path, device="cpu")


def test_a_cache_held_by_another_writer_is_refused(tmp_path):
    cache = _cache(tmp_path)
    path, _ = _stage1_checkpoint(tmp_path / "s1", seed=0)
    with WriterLock(cache, "cache"):
        with pytest.raises(CacheError, match="another writer"):
            make_predicted_pool(cache, path, device="cpu")


def test_pool_measures_itself_against_forecasts_of_unseen_windows(tmp_path):
    cache = _cache(tmp_path)
    path, model = _stage1_checkpoint(tmp_path / "s1", seed=0)
    quality = make_predicted_pool(cache, path, device="cpu")["quality"]
    reader = CacheReader(cache)
    feats = torch.from_numpy(reader.array(layout.FEATURES)[:].astype(np.float32))
    pool = torch.from_numpy(reader.array(layout.POOL_FEATURES)[:].astype(np.float32))
    train, val = reader.pool_samples().tolist(), reader.samples("val").tolist()
    expected_pool = torch.nn.functional.cosine_similarity(pool[train], feats[train, 4:], dim=2).mean(dim=(0, 2, 3))
    with torch.no_grad():
        forecast = rollout(model, feats[val, 1:4], 3)
    expected_val = torch.nn.functional.cosine_similarity(forecast, feats[val, 4:], dim=2).mean(dim=(0, 2, 3))
    expected_copy = torch.nn.functional.cosine_similarity(feats[val, 3:4].expand(-1, 3, -1, -1, -1), feats[val, 4:], dim=2).mean(dim=(0, 2, 3))
    assert quality["pool_windows"] == len(train) and quality["val_windows"] == len(val)
    np.testing.assert_allclose(quality["pool_train"], expected_pool.numpy(), atol=1e-4)
    np.testing.assert_allclose(quality["rollout_val"], expected_val.numpy(), atol=1e-5)
    np.testing.assert_allclose(quality["copy_last_val"], expected_copy.numpy(), atol=1e-5)
    assert json.loads((tmp_path / "cache" / layout.META).read_text())["pool"]["quality"] == quality


def test_cross_fitted_pool_predicts_each_fold_with_a_model_that_never_saw_it(tmp_path):
    from configs.schema import load_config
    from tests.cache_fixtures import tiny_stage1_overrides
    from train.pool import fold_of
    from train.stage1 import build_stage1_model, train_stage1

    cache = _cache(tmp_path)
    cfg = load_config("tiny", tiny_stage1_overrides(**{"stage1.model.context_frames": 3, "stage1.train.steps": 2,
                                                        "stage1.train.batch_size": 2, "stage1.train.val_every": 0}))
    train_stage1(cfg, cache, str(tmp_path / "s1"))
    summary = make_predicted_pool(cache, str(tmp_path / "s1"), device="cpu", folds=2)
    assert summary["complete"] and summary["folds"] == 2
    reader = CacheReader(cache)
    ids = reader.manifest["sample_id"].to_list()
    feats = torch.from_numpy(reader.array(layout.FEATURES)[:].astype(np.float32))
    pool = torch.from_numpy(reader.array(layout.POOL_FEATURES)[:].astype(np.float32))
    for k in range(2):
        run = tmp_path / "s1" / "folds" / f"fold_{k}_of_2"
        config = ckpt.read_config(ckpt.resolve_checkpoint(run))
        rows = [s for s in reader.pool_samples().tolist() if fold_of(ids[s], 2) == k]
        assert config["train_windows"] == 8 - len(rows)  # trained without its fold
        model, _ = ckpt.load_model_for_inference(run, build_stage1_model)
        with torch.no_grad():
            expected = rollout(model, feats[rows, 1:4], 3)
        assert torch.allclose(pool[rows], expected.half().float(), atol=1e-3)
    assert json.loads((tmp_path / "cache" / layout.META).read_text())["pool"]["folds"] == 2
