"""FSDP (FULL_SHARD through Accelerate, configs/accelerate/fsdp.yaml) for the shared loop: checkpoints in the
single-process format, and the EMA kept as shards.

Under FSDP each rank holds 1/N of every parameter (with `use_orig_params`, each original parameter is a flat view of
its local shard between forward passes), of its gradient and of Adam's state. A checkpoint gathers them, as
collectives every rank must join:
- weights: `FULL_STATE_DICT` with `rank0_only` (offloaded to the CPU), so rank 0 writes the same `model.safetensors`
  a single process writes, and any single process loads it;
- Adam: `FSDP.optim_state_dict`, keyed by parameter name, converted to the single-process layout (state keyed by the
  parameter's index in the optimizer's order), so `--resume` works with and without FSDP either way;
- EMA: the shadow lives on each GPU as shards beside the parameter shards (1/N of the fp32 average each; no full copy
  anywhere while training). At a checkpoint the shards are swapped into the parameters, gathered like the weights
  into rank 0's CPU memory (the only full copy, for the time of the write), and the parameters are swapped back.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from train.ema import WARMUP_RULE, decay_at, init_weight


def _full(model: nn.Module, rank0_only: bool):
    # Offload to the CPU on GPUs. On a CPU process group offloading is a no-op, and FSDP's gathered optimizer tensors
    # then share one buffer (exp_avg came back equal to exp_avg_sq), so it is off there.
    offload = next(model.parameters()).device.type != "cpu"
    return FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                FullStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only),
                                FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only))


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the full state dict on rank 0 (CPU), {} on the other ranks."""
    with _full(model, rank0_only=True):
        return {k: v.clone() for k, v in model.state_dict().items()}  # copies, as for the optimizer state


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Collective: every rank passes the same full state dict; each keeps its shards."""
    with _full(model, rank0_only=False):
        model.load_state_dict(state)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, Any]:
    """Collective: the full Adam state on rank 0 in the single-process layout ({} elsewhere). `names`: the
    parameter names in the optimizer's order (taken from the unwrapped model before FSDP wrapped it)."""
    with _full(model, rank0_only=True):
        osd = FSDP.optim_state_dict(model, optimizer)
    if not osd:
        return {}
    index = {name: i for i, name in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]
    # Copies: on a CPU process group FSDP's offload is a no-op and its gathered tensors can share one buffer.
    state = {index[n]: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for n, s in osd["state"].items()}
    return {"state": state, "param_groups": groups}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                              names: list[str]) -> None:
    """Collective: load a single-process optimizer state (every rank passes it) into the sharded optimizer."""
    # Deep copies: FSDP flattens the tensors it is given in place.
    osd = {"state": {names[int(i)]: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                     for i, s in state["state"].items()},
           "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    with _full(model, rank0_only=False):
        optimizer.load_state_dict(FSDP.optim_state_dict_to_load(model, optimizer, osd))


class ShardedEMA:
    """train/ema.EMA on this rank's parameter shards: the same warm-up rule and updates, 1/N of the memory."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay={decay} must be in (0, 1); use 0 in the config to disable EMA")
        self.model, self.decay, self.updates = model, decay, 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        decay = decay_at(self.updates, self.decay)
        for target, p in zip(self.shadow, self.params):
            target.lerp_(p.detach().float(), 1.0 - decay)
        self.updates += 1

    @contextmanager
    def _swapped(self) -> Iterator[None]:
        """The parameters hold the average inside; their own values are restored afterwards."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective: the full average on rank 0 as float32 ({} elsewhere), buffers as the model has them."""
        with self._swapped():
            state = full_state_dict(self.model)
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

    def load_full_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Collective: every rank passes the full average; each keeps its shards. The model's weights are kept."""
        saved = [p.detach().clone() for p in self.params]
        load_full_state_dict(self.model, state)
        with torch.no_grad():
            for target, p, s in zip(self.shadow, self.params, saved):
                target.copy_(p.float())
                p.copy_(s)
        self.updates = int(updates)

    def describe(self) -> dict[str, object]:
        return {"decay": self.decay, "warmup": WARMUP_RULE, "updates": self.updates,
                "init_weight": init_weight(self.updates, self.decay), "sharded": True}
