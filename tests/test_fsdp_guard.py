"""Under an FSDP launch the trainer refuses at once with what to do instead (it would otherwise hang at its first
checkpoint: README "Memory per GPU, checkpointing, compile, FSDP")."""

from __future__ import annotations

import pytest
from accelerate.utils import DistributedType

from configs.schema import ConfigError, OptimConfig, TrainConfig
from train import loop


def test_an_fsdp_launch_is_refused_naming_ddp(monkeypatch, tmp_path):
    class FakeFSDPAccelerator:
        distributed_type = DistributedType.FSDP

        def __init__(self, **kwargs):
            pass

    monkeypatch.setattr(loop, "Accelerator", FakeFSDPAccelerator)
    with pytest.raises(ConfigError, match="does not support FSDP") as info:
        loop.run_training(object(), lambda request: [], None, TrainConfig(steps=1), OptimConfig(), str(tmp_path))
    assert "DDP" in str(info.value) and "bench memory" in str(info.value)
    assert not (tmp_path / loop.RUN_LOCK).exists()  # refused before taking the run folder
