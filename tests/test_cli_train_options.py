"""cli.py's train commands share one options object (TrainOptions): same defaults, same loop keywords, and each
command hands them to its trainer unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli

SHARED = ["--cache", "/data/cache", "--out", "/runs/x", "--resume", "latest", "--steps", "7", "--batch-size", "2",
          "--loader-workers", "0", "--mixed-precision", "no", "--set", "seed=3"]
LOOP = {"resume": True, "steps": 7, "batch_size": 2, "num_workers": 0, "mixed_precision": "no"}


def test_defaults_come_from_the_config():
    o = cli.TrainOptions.resolve("tiny", None, None, None, "stage2", None, None, None, None, None)
    assert o.cache == cli.default_cache(o.cfg) and o.out == str(Path(o.cfg.paths.root) / "stage2")
    assert o.loop == {"resume": False, "steps": None, "batch_size": None, "num_workers": None, "mixed_precision": None}
    assert cli.TrainOptions.resolve("tiny", None, None, None, "heads", "runs/a/checkpoints/step_1", *[None] * 4).loop["resume"] == "runs/a/checkpoints/step_1"


@pytest.mark.parametrize("command, module, extra, expected", [
    ("train-stage1", "train.stage1.train_stage1", ["--init", "f.ckpt"], {"init": "f.ckpt", "allow_pickle": False}),
    ("train-stage2", "train.stage2.train_stage2", [], {}),
    ("train-heads", "train.heads.train_heads", ["--task", "depth"], {"tasks": ("depth",)}),
])
def test_every_train_command_passes_the_shared_options_to_its_trainer(monkeypatch, command, module, extra, expected):
    seen = {}
    path, name = module.rsplit(".", 1)
    monkeypatch.setattr(__import__(path, fromlist=[name]), name, lambda cfg, cache, out, **kw: seen.update(
        cfg=cfg, cache=cache, out=out, kw=kw))
    result = CliRunner().invoke(cli.app, [command, *SHARED, *extra])
    assert result.exit_code == 0, result.output
    assert (seen["cache"], seen["out"], seen["cfg"].seed) == ("/data/cache", "/runs/x", 3)
    assert seen["kw"] == {**LOOP, **expected}
