"""Two CPU processes (gloo) with batch b train exactly like one process with batch 2b: same global batches, same
averaged gradients, so the same loss sequence and final weights up to float rounding."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cache_fixtures import make_cache

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "dist_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], timeout: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args[:4])} ... did not finish in {timeout} s")
    if proc.returncode != 0:
        if "Address already in use" in proc.stderr or "Operation not permitted" in proc.stderr:
            pytest.skip(f"cannot start a local process group here: {proc.stderr[-300:]}")
        pytest.fail(f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


@pytest.mark.slow
def test_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    cache = make_cache(tmp_path / "cache", num_samples=8, shard_size=4)
    common = ["--cache", cache, "--steps", "4"]
    _run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(WORKER), *common, "--out", str(tmp_path / "two"),
         "--result", str(tmp_path / "two.pt"), "--batch-size", "2"],
        timeout=90,
    )
    _run([sys.executable, str(WORKER), *common, "--out", str(tmp_path / "one"), "--result", str(tmp_path / "one.pt"), "--batch-size", "4"], timeout=60)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    assert list(two["losses"]) == [1, 2, 3, 4]
    for step, loss in one["losses"].items():
        assert two["losses"][step] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    for name, value in one["weights"].items():
        assert torch.allclose(two["weights"][name], value, atol=1e-5), name
    # Only rank 0 wrote the checkpoint, and it records both processes' RNG states.
    state = torch.load(tmp_path / "two" / "checkpoints" / "step_0000004" / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["data"]["samples_consumed"] == 16 and state["data"]["global_batch"] == 4


def _fsdp_run(tmp_path, cache, name: str, resume: str = "", val_every: int = 0) -> dict:
    extra = (["--resume", resume] if resume else []) + ["--val-every", str(val_every)]
    _run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(WORKER), "--cache", cache, "--steps", "3", "--ema", "0.9",
         "--ckpt-every", "1", "--out", str(tmp_path / name), "--result", str(tmp_path / f"{name}.pt"),
         "--batch-size", "2", "--fsdp", *extra],
        timeout=120,
    )
    return torch.load(tmp_path / f"{name}.pt", weights_only=True)


def _one_run(tmp_path, cache, name: str, resume: str = "", val_every: int = 0) -> dict:
    extra = (["--resume", resume] if resume else []) + ["--val-every", str(val_every)]
    _run([sys.executable, str(WORKER), "--cache", cache, "--steps", "3", "--ema", "0.9", "--ckpt-every", "1",
          "--out", str(tmp_path / name), "--result", str(tmp_path / f"{name}.pt"), "--batch-size", "4", *extra],
         timeout=60)
    return torch.load(tmp_path / f"{name}.pt", weights_only=True)


def _same(a: dict, b: dict, steps) -> None:
    for step in steps:
        assert a["losses"][step] == pytest.approx(b["losses"][step], rel=1e-5, abs=1e-6), step
    for part in ("weights", "ema"):
        assert a[part].keys() == b[part].keys()
        for key, value in b[part].items():
            assert torch.allclose(a[part][key], value, atol=1e-5), (part, key)


@pytest.mark.slow
def test_fsdp_trains_like_one_process_and_its_checkpoints_load_and_resume_either_way(tmp_path):
    """configs/accelerate/fsdp.yaml's FSDP (FULL_SHARD, one unit per block, use_orig_params) on 2 CPU processes,
    batch 2 each, against one process with batch 4: the same losses, weights and EMA over 3 steps (float32); its
    checkpoints (gathered on rank 0) load into a plain model, and `--resume` continues exactly from an FSDP
    checkpoint without FSDP, from a single-process checkpoint under FSDP, and under FSDP from its own."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    from train import checkpoint as ckpt
    from train.stage1 import build_stage1_model

    cache = make_cache(tmp_path / "cache", num_samples=10, shard_size=2, splits=["train"] * 8 + ["val"] * 2)
    fsdp = _fsdp_run(tmp_path, cache, "fsdp", val_every=3)
    one = _one_run(tmp_path, cache, "one", val_every=3)
    assert list(fsdp["losses"]) == [1, 2, 3]
    _same(fsdp, one, (1, 2, 3))
    # Validation runs under FSDP too (the root unit's parameters gathered for the unwrapped model's methods).
    assert fsdp["val"] and set(fsdp["val"]) == set(one["val"])
    assert all(v == v and abs(v) < float("inf") for v in fsdp["val"].values())

    # An FSDP checkpoint is a plain one: the model it describes loads it strictly, in this single process.
    step2 = tmp_path / "fsdp" / "checkpoints" / "step_0000002"
    model = build_stage1_model(ckpt.read_config(step2)["model"])
    model.load_state_dict(ckpt.read_weights(step2, prefer_ema=True)[0])
    state = torch.load(step2 / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and set(state["optimizer"]["state"]) == set(range(len(list(model.parameters()))))

    _same(_one_run(tmp_path, cache, "one_from_fsdp", resume=str(step2)), one, (3,))
    _same(_fsdp_run(tmp_path, cache, "fsdp_from_one", resume=str(tmp_path / "one" / "checkpoints" / "step_0000002")), one, (3,))
    _same(_fsdp_run(tmp_path, cache, "fsdp_from_fsdp", resume=str(step2)), one, (3,))
