"""Suite-wide settings."""

from __future__ import annotations

import pytest
import torch

from configs.schema import load_config
from pipeline.dag import build_cache
from pipeline.synthetic import write_sample_dataset
from tests.cache_fixtures import train_hierarchy


def pytest_configure(config) -> None:
    # Every model in the tests is tiny: one intra-op thread is faster than two contended ones on a 2-core machine
    # (measured 10-25x on busy machines), and it makes CPU float results independent of the machine's core count.
    torch.set_num_threads(1)


# ---- one small real cache (synthetic driving data, the tiny config, the Ray DAG) shared by the suite


@pytest.fixture(scope="session")
def tiny():
    return load_config("tiny", ["cache.shard_size=2"])


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_sample_dataset(root, train=4, val=2, height=64, width=128, seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def full_cache(tiny, sample_data, tmp_path_factory):
    """(cache folder, CacheSummary): 4 train + 2 val windows with the linear codec, built by 2 Ray workers."""
    out = tmp_path_factory.mktemp("cache") / "full"
    summary = build_cache(tiny, "synthetic", sample_data, out, workers=2, allow_random_weights=True)
    return out, summary


# ---- a trained tiny hierarchy (cache from the DAG, Stage 1 and Stage 2 checkpoints): predict, the API, export


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny synthetic set -> the real cache DAG (random VFM, linear codec) -> a few steps of Stage 1 and Stage 2,
    trained from the run's own folder with relative paths (as `python cli.py` run from a project folder records them)."""
    root = tmp_path_factory.mktemp("predict")
    write_sample_dataset(root / "data", train=2, val=1, height=64, width=128, progress=False)
    cfg = load_config("tiny", {
        "stage1.train.steps": 2, "stage1.train.batch_size": 2, "stage1.train.val_every": 0,
        "stage2.train.steps": 2, "stage2.train.batch_size": 2, "stage2.train.val_every": 0,
        "stage2.mixed_supervision_prob": 0.0,
    })
    return {"root": root, "cfg": cfg, **train_hierarchy(cfg, root)}
