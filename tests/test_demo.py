"""A reduced `python cli.py demo`: every step of the real pipeline, with a handful of steps each."""

from __future__ import annotations

import json

import pytest

from configs.schema import load_config
from eval.demo import run_demo

REDUCED = [
    "stage1.train.steps=3", "stage1.train.batch_size=2", "stage1.train.ckpt_every=3", "stage1.train.val_every=3",
    "stage2.train.steps=3", "stage2.train.batch_size=2", "stage2.train.ckpt_every=3", "stage2.train.val_every=3",
    "heads.train.steps=3", "heads.train.batch_size=2", "heads.train.ckpt_every=3", "heads.train.val_every=3",
    "stage2.diffusion.steps=3", "cache.shard_size=2",
    "vfm_pretrain.steps=2", "vfm_pretrain.snippets=4", "vfm_pretrain.frames_per_snippet=2", "vfm_pretrain.batch_size=4",
    "vfm_pretrain.probe_snippets=4", "vfm_pretrain.probe_val_snippets=2", "vfm_pretrain.probe_steps=2",
]


@pytest.mark.slow
def test_reduced_demo_runs_every_step(tmp_path):
    cfg = load_config("tiny", REDUCED)
    result = run_demo(cfg, tmp_path, train_snippets=3, val_snippets=2, workers=1, eval_windows=2)
    assert list(result.steps) == ["vfm", "data", "cache", "stage1", "pool", "stage2", "baseline", "predict", "heads", "evaluate"]
    for name in ("grid.png", "prediction.mp4", "side_by_side.mp4", "tensors.safetensors", "predict.json"):
        assert (tmp_path / "predict" / name).is_file(), name
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "RANDOM" not in report  # nothing is random any more: pretrained VFM, fitted codec, trained models
    assert "Re2Pix" in report and "Baseline" in report and "Copy last frame" in report
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"Re2Pix", "Baseline"} <= set(metrics["rows"])
    assert "report:" in result.line()
    # the cache was made with the pretrained tiny VFM, through the weights-file path a DINOv2 checkpoint takes
    meta = json.loads((tmp_path / "cache" / "synthetic" / "meta.json").read_text())
    assert meta["vfm"]["weights"].startswith("file:")
    assert meta["vfm"]["pretraining"]["description"] == "tiny VFM pretrained on the synthetic world"
    assert "pretrained on the synthetic world" in report
    # a second run resumes every step instead of redoing it: no new checkpoints, the cache is left as it was
    before = sorted(p.name for p in (tmp_path / "stage1" / "checkpoints").iterdir())
    again = run_demo(cfg, tmp_path, train_snippets=3, val_snippets=2, workers=1, eval_windows=2)
    assert sorted(p.name for p in (tmp_path / "stage1" / "checkpoints").iterdir()) == before
    assert result.cache.skipped_shards == 0 and result.cache.bytes_written > 0
    assert again.cache.skipped_shards > 0 and again.cache.bytes_written == 0  # every shard is skipped, nothing rewritten
