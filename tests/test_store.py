"""The store on a non-local fsspec filesystem (memory://): shards, markers, lock, reader, tables."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline import atomic, layout
from pipeline.store import (
    ArraySpec,
    CacheError,
    CacheReader,
    WriterLock,
    create_arrays,
    done_shards,
    write_parquet,
    write_shard,
)


def _manifest(n: int, shard: int) -> pl.DataFrame:
    return pl.DataFrame({"sample": list(range(n)), "split": ["train"] * (n - 1) + ["val"], "shard": [i // shard for i in range(n)]})


def test_store_round_trip_on_an_object_store_url():
    root = "memory://re2pix-test/cache"
    n, shard = 5, 2
    with WriterLock(root, purpose="test"):
        with pytest.raises(CacheError, match="another writer"):
            WriterLock(root, purpose="second").__enter__()
        atomic.write_json(atomic.join(root, layout.META), {"schema_version": layout.SCHEMA_VERSION, "shard_size": shard, "status": "in_progress", "fingerprint": "x"})
        write_parquet(atomic.join(root, layout.MANIFEST), _manifest(n, shard))
        create_arrays(root, n, shard, [ArraySpec(layout.FEATURES, (3, 4), "float16")], "zstd", 3)
        data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
        write_shard(root, 0, shard, {layout.FEATURES: data}, [{"sample": 0, "status": "ok"}, {"sample": 1, "status": "failed"}])
        write_shard(root, 2, shard, {layout.FEATURES: data[:1] + 1}, [{"sample": 4, "status": "ok"}])
    assert not atomic.exists(atomic.join(root, layout.LOCK))
    assert sorted(done_shards(root)) == [0, 2]
    reader = CacheReader(root)
    assert reader.samples().tolist() == [0, 4]  # shard 1 is not done; sample 1 failed
    assert reader.samples("val").tolist() == [4]
    np.testing.assert_array_equal(reader.array(layout.FEATURES)[0], data[0])
    with pytest.raises(CacheError, match="make-predicted-pool"):
        reader.array(layout.POOL_FEATURES)
    with pytest.raises(CacheError, match="shard_size"):
        reader.require(shard_size=3)


def test_reader_refuses_a_folder_that_is_not_a_cache(tmp_path):
    with pytest.raises(CacheError, match="python cli.py cache"):
        CacheReader(tmp_path)


def test_file_urls_are_local_paths(tmp_path):
    assert atomic.local(f"file://{tmp_path}") == str(tmp_path)
    assert not atomic.is_url(f"file://{tmp_path}")
    atomic.write_json(atomic.join(f"file://{tmp_path}", "a", "b.json"), {"k": 1})
    assert atomic.read_json(tmp_path / "a" / "b.json") == {"k": 1}
