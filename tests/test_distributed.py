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
