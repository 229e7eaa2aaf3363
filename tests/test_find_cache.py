"""eval.frozen.find_cache: a checkpoint's cache from any working folder (meta.json files only; no models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.frozen import find_cache
from pipeline.store import CacheError


def _cache(path: Path, fingerprint: str) -> Path:
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"fingerprint": fingerprint}))
    return path


def test_the_recorded_cache_is_found_from_any_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    cache = _cache(project / "runs/tiny/cache/synthetic", "abc")
    checkpoint = project / "runs/tiny/stage2/checkpoints/step_0000002"
    checkpoint.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # not the folder training ran from
    old = {"cache": "runs/tiny/cache/synthetic", "cache_fingerprint": "abc"}  # before the absolute path was recorded
    assert Path(find_cache(checkpoint, old)) == cache
    assert find_cache(checkpoint, {**old, "cache_absolute": str(cache)}) == str(cache)
    assert find_cache(checkpoint, old, cache="/elsewhere") == "/elsewhere"  # the caller's --cache wins


def test_a_cache_with_another_fingerprint_is_passed_over_and_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stale = _cache(tmp_path / "moved" / "cache", "old")
    right = _cache(tmp_path / "run_root" / "cache", "new")
    checkpoint = tmp_path / "run_root/s2/checkpoints/step_0000001"
    checkpoint.mkdir(parents=True)
    config = {"cache": "cache", "cache_absolute": str(stale), "cache_fingerprint": "new"}
    assert Path(find_cache(checkpoint, config)) == right
    right.joinpath("meta.json").unlink()
    with pytest.raises(CacheError, match=r"fingerprint old, trained on new.*--cache"):
        find_cache(checkpoint, config)
    with pytest.raises(CacheError, match="records no cache path"):
        find_cache(checkpoint, {})
