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
    parser.add_argument("--fsdp", action="store_true", help="FSDP as configs/accelerate/fsdp.yaml sets it, on the CPU")
    parser.add_argument("--ema", type=float, default=0.0)
    parser.add_argument("--ckpt-every", type=int, default=0)
    parser.add_argument("--val-every", type=int, default=0)
    parser.add_argument("--resume", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.fsdp:
        fsdp_on_cpu()
    cfg = load_config(
        "tiny",
        tiny_stage1_overrides(
            **{"stage1.train.steps": args.steps, "stage1.train.ckpt_every": args.ckpt_every,
               "stage1.train.val_every": args.val_every, "stage1.optim.schedule": "constant",
               "stage1.train.ema_decay": args.ema, "stage1.model.depth": 2}
        ),
    )
    result = train_stage1(cfg, args.cache, args.out, batch_size=args.batch_size, resume=args.resume or False)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    weights, _ = ckpt.read_weights(result.checkpoint, prefer_ema=False)
    ema = ckpt.read_weights(result.checkpoint, prefer_ema=True)[0] if args.ema else {}
    torch.save({"losses": result.losses, "weights": weights, "ema": ema, "val": result.val}, args.result)


def fsdp_on_cpu() -> None:
    """What `accelerate launch --config_file configs/accelerate/fsdp.yaml` sets, for a CPU process group. Accelerate
    1.15 builds FSDP only for GPU-type process groups, so the test lets it believe it has one (torch's FSDP itself runs
    on CPU/gloo); the device stays the CPU."""
    import os

    import yaml
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    fsdp = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/accelerate/fsdp.yaml").read_text())["fsdp_config"]
    names = {"fsdp_transformer_layer_cls_to_wrap": "FSDP_TRANSFORMER_CLS_TO_WRAP"}
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    for key, value in fsdp.items():
        os.environ[names.get(key, key.upper())] = str(value).lower() if isinstance(value, bool) else str(value)
    os.environ["FSDP_TRANSFORMER_CLS_TO_WRAP"] = "SeparableBlock"  # this worker trains Stage 1 (the yaml's note)
    state = PartialState(cpu=True)
    state._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    state._shared_state["device"] = torch.device("cpu")


if __name__ == "__main__":
    main()
