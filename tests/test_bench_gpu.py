"""`bench gpu` without a GPU: it says so and runs every part of the same script at tiny size."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs at paper size: run `bench gpu` itself")
def test_bench_gpu_runs_every_part_at_tiny_size_without_a_gpu(tmp_path, capsys):
    from eval.bench.gpu import run

    results = run(steps=1, limit=1, e2e_steps=1, workers=1, json_out=str(tmp_path / "gpu.json"))
    assert results["size"] == "tiny" and results["device"] == "cpu"
    parts = ("stage2_fwd_bwd", "stage1_step", "cache_dag", "end_to_end")
    for part in parts:
        assert "error" not in results[part], (part, results[part])
    assert results["stage2_fwd_bwd"]["ours_step_s"] > 0 and results["stage2_fwd_bwd"]["diffusers_step_s"] > 0
    assert results["cache_dag"]["frames"] > 0 and results["end_to_end"]["stage2_loss"] > 0
    assert set(parts) <= set(json.loads((tmp_path / "gpu.json").read_text()))
    captured = capsys.readouterr()
    assert "no GPU" in " ".join((captured.err + captured.out).split()) and "all parts ran" in captured.out


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the part runs: run `bench gpu` itself")
def test_the_stage2_memory_check_says_it_needs_cuda():
    """It imports and, without CUDA, refuses at once with the reason and where the CPU prediction is."""
    from configs.schema import load_config
    from eval.bench.gpu import NEEDS_CUDA, PARTS, stage2_memory

    assert "stage2_memory" in PARTS
    with pytest.raises(RuntimeError, match="needs a CUDA GPU") as info:
        stage2_memory(load_config("paper"))
    assert str(info.value) == NEEDS_CUDA and "bench memory --config paper" in NEEDS_CUDA


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_stage2_memory_step_runs_on_the_cpu_at_tiny_size(checkpointing):
    """The step the GPU part times (bf16 autocast, Adam, EMA, warm-up) runs as written; only the peak is CUDA's."""
    import math

    from configs.schema import load_config
    from eval.bench.gpu import train_steps
    from eval.bench.memory import probes

    cfg = load_config("tiny", {"stage2.train.ema_decay": 0.99})
    probe = next(p for p in probes(cfg) if p.name == "Stage 2")
    peak, step_s = train_steps(cfg, probe, checkpointing, 2, 1, torch.device("cpu"))
    assert math.isnan(peak) and step_s > 0
