"""Suite-wide settings."""

from __future__ import annotations

import pytest
import torch

from configs.schema import load_config
from pipeline.dag import build_cache
from pipeline.synthetic import write_sample_dataset


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
