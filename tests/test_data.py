"""Streaming data: the shard-aware sampler's properties and the datasets' indexing into the zarr cache."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tests.cache_fixtures import make_cache
from train.data import (
    LoaderRequest,
    ShardAwareSampler,
    Stage1SubWindows,
    WindowSamples,
    rank_split,
    training_loader,
    validation_loader,
)

SHARDS = np.repeat(np.arange(5), 4)[:18]  # 18 items in 5 shards (the last one short)


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_epoch_order_is_a_permutation_and_deterministic():
    s = ShardAwareSampler(SHARDS, batch_size=3, seed=7)
    order = s.epoch_order(0)
    assert sorted(order.tolist()) == list(range(len(SHARDS)))
    assert np.array_equal(order, ShardAwareSampler(SHARDS, batch_size=3, seed=7).epoch_order(0))
    assert not np.array_equal(order, s.epoch_order(1))
    assert not np.array_equal(order, ShardAwareSampler(SHARDS, batch_size=3, seed=8).epoch_order(0))


def test_epoch_order_keeps_each_shard_contiguous():
    order = ShardAwareSampler(SHARDS, batch_size=2, seed=3).epoch_order(4)
    shard_runs = [k for i, k in enumerate(SHARDS[order]) if i == 0 or k != SHARDS[order][i - 1]]
    assert sorted(shard_runs) == list(range(5))  # each shard appears as exactly one run


def test_every_epoch_drops_only_the_incomplete_last_batch():
    s = ShardAwareSampler(SHARDS, batch_size=4, seed=0, epochs=2)
    items = list(s)
    assert s.epoch_length == 16 and len(items) == 32 == len(s)
    assert len(set(items[:16])) == 16 and items[:16] == s.epoch_order(0)[:16].tolist()


def test_ranks_are_disjoint_and_cover_the_global_batch():
    world, b = 2, 3
    per_rank = [_take(ShardAwareSampler(SHARDS, b, world, r, seed=5), 5 * b) for r in range(world)]
    single = _take(ShardAwareSampler(SHARDS, b * world, 1, 0, seed=5), 5 * b * world)
    for step in range(5):
        parts = [per_rank[r][step * b : (step + 1) * b] for r in range(world)]
        assert not set(parts[0]) & set(parts[1])
        # the same global batch for any world size: one process with batch 2b sees what both ranks see together
        assert parts[0] + parts[1] == single[step * b * world : (step + 1) * b * world]


def test_start_resumes_the_same_stream():
    full = _take(ShardAwareSampler(SHARDS, 2, seed=1), 40)
    assert _take(ShardAwareSampler(SHARDS, 2, seed=1, start=22), 18) == full[22:]
    assert ShardAwareSampler(SHARDS, 2, seed=1).position(40) == {"samples_consumed": 40, "epoch": 2, "offset": 4}
    with pytest.raises(ValueError, match="multiple of the global batch"):
        ShardAwareSampler(SHARDS, 4, seed=1, start=6)


def test_too_few_items_for_a_global_batch_is_explained():
    with pytest.raises(ValueError, match="lower train.batch_size"):
        ShardAwareSampler(np.zeros(3, dtype=int), batch_size=2, world_size=2)


def test_rank_split_is_a_disjoint_cover():
    parts = [rank_split(np.arange(7), 3, r) for r in range(3)]
    assert np.concatenate(parts).tolist() == list(range(7))


# -------------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((6, 7, 8, 4, 6)).astype(np.float16)
    root = make_cache(tmp_path_factory.mktemp("c") / "cache", num_samples=6, shard_size=4, features=features)
    return root, features


def test_stage1_sub_windows_index_every_start(cache):
    root, features = cache
    ds = Stage1SubWindows(root, [1, 4, 5], context_frames=4, feature_frames=7, shard_size=4)
    assert len(ds) == 3 * 3  # Tf - M_f = 3 sub-windows per window
    assert ds.items.tolist() == [[s, k] for s in (1, 4, 5) for k in range(3)]
    assert ds.shards.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    for i, (sample, start) in enumerate(ds.items):
        x = ds[i]
        assert x.dtype == torch.float32 and x.shape == (5, 8, 4, 6)
        assert torch.equal(x, torch.from_numpy(features[sample, start : start + 5].astype(np.float32)))
    with pytest.raises(ValueError, match="feature_frames"):
        Stage1SubWindows(root, [0], context_frames=7, feature_frames=7, shard_size=4)


def test_window_samples_return_requested_arrays(cache):
    root, features = cache
    ds = WindowSamples(root, [2, 3], shard_size=4)
    item = ds[1]
    assert item["sample"] == 3 and set(item) == {"features", "latents", "sample"}
    assert torch.equal(item["features"], torch.from_numpy(features[3].astype(np.float32)))
    assert item["latents"].shape == (7, 3, 8, 12)
    with pytest.raises(KeyError, match="make-predicted-pool"):
        WindowSamples(root, [0], shard_size=4, pool_samples=[0])[0]


def test_dataset_pickles_without_an_open_zarr_handle(cache):
    root, _ = cache
    ds = Stage1SubWindows(root, [0], 4, 7, 4)
    ds[0]  # opens the group in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.group._group is None and torch.equal(clone[0], ds[0])


def test_worker_loader_yields_the_same_batches_as_in_process(cache):
    root, _ = cache
    ds = Stage1SubWindows(root, np.arange(6), 4, 7, 4)
    request = LoaderRequest(rank=0, world_size=1, batch_size=4, start_sample=8, seed=3)
    a = [b for b, _ in zip(training_loader(ds, request, num_workers=0), range(5))]
    b = [b for b, _ in zip(training_loader(ds, request, num_workers=2), range(5))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    order = ShardAwareSampler(ds.shards, 4, seed=3, start=8)
    expected = torch.stack([ds[i] for i in _take(order, 4)])
    assert torch.equal(a[0], expected)


def test_validation_loader_splits_by_rank(cache):
    root, _ = cache
    ds = WindowSamples(root, np.arange(6), 4, latents=False)
    seen = []
    for rank in range(2):
        for batch in validation_loader(ds, LoaderRequest(rank, 2, 2), num_workers=0):
            seen += batch["sample"].tolist()
    assert seen == list(range(6))


def test_bench_loader_reports_rates(cache):
    from eval.bench.loader import run

    root, _ = cache
    result = run(root, batch_size=2, workers=0, batches=2)
    for key in ("stage1", "stage2"):
        r = result[key]
        assert r["samples_per_s"] > 0 and r["mb_per_s"] > 0 and 0 < r["disk_ratio"] < 2
    assert result["stage1"]["item_mb"] == pytest.approx(5 * 8 * 4 * 6 * 2 / 1e6)
    assert result["stage2"]["arrays"] == ["features", "latents"]


def test_bench_loader_with_no_arguments_makes_its_own_cache(tmp_path, monkeypatch):
    # A fresh clone: no <paths.root>/cache/synthetic under the working directory.
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bench", "loader"])
    assert result.exit_code == 0, result.output
    assert "no cache at runs/tiny/cache/synthetic" in " ".join(result.output.split())
    assert "loader: stage 1" in result.output and "samples/s" in result.output
    assert not list(tmp_path.iterdir())  # the temporary cache is gone
