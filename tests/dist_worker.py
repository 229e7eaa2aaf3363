"""Launched by tests/test_distributed.py (torch.distributed.run or directly): trains Stage 1 through the shared loop on
a given cache and writes, from rank 0, the per-step losses and the final weights to --result (a .pt file)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.schema import load_config  # noqa: E402
from tests.cache_fixtures import tiny_stage1_overrides  # noqa: E402
from train import checkpoint as ckpt  # noqa: E402
from train.stage1 import train_stage1  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(
        "tiny",
        tiny_stage1_overrides(
            **{"stage1.train.steps": args.steps, "stage1.train.ckpt_every": 0, "stage1.train.val_every": 0, "stage1.optim.schedule": "constant"}
        ),
    )
    result = train_stage1(cfg, args.cache, args.out, batch_size=args.batch_size)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    weights, _ = ckpt.read_weights(result.checkpoint, prefer_ema=False)
    torch.save({"losses": result.losses, "weights": weights}, args.result)


if __name__ == "__main__":
    main()
