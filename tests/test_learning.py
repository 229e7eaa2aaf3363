"""Learning checks on real (synthetic-driving) data through the real cache: the guard of the embedded default.

A tiny Stage 2 trained briefly on the cache's four training windows (linear codec, 16 channels) must bring its
validation loss at σ = 5 well below the level of a network that outputs zero: the failure this guards against is a
codec whose tokens the DiT cannot represent (the 192-channel pixel codec at width 96 stayed at that level).
"""

from __future__ import annotations

import torch

from configs.schema import load_config
from models.stage2 import build_stage2_model
from pipeline.store import CacheReader
from train import checkpoint as ckpt
from train.data import WindowSamples
from train.stage2 import Stage2Task, train_stage2


def _validation_loss(model, task, cache):
    reader = CacheReader(cache)
    val = WindowSamples(str(cache), reader.samples("val"), reader.shard_size, features=True, latents=True)
    batch = torch.utils.data.default_collate([val[i] for i in range(len(val))])
    model.eval()
    with torch.no_grad():
        return task.validate(model, [batch])


def test_tiny_stage2_denoises_well_below_the_zero_network(full_cache, tmp_path):
    cache, _ = full_cache
    cfg = load_config("tiny", [
        "stage2.model.width=64", "stage2.model.depth=1", "stage2.model.heads=2", "stage2.train.steps=120", "stage2.optim.lr=6e-3",
        "stage2.train.batch_size=2", "stage2.train.val_every=0", "stage2.train.ckpt_every=120",
        "stage2.mixed_supervision_prob=0", "stage2.nested_dropout=false", "stage2.train.ema_decay=0",
    ])
    result = train_stage2(cfg, str(cache), str(tmp_path / "s2"))
    trained, _ = ckpt.load_model_for_inference(result.checkpoint, build_stage2_model)
    task = Stage2Task(trained.spec, 4, nested=False, levels=[8])
    zero = build_stage2_model(trained.spec.to_dict())
    torch.nn.init.zeros_(zero.net.final_layer.linear.weight)  # F = 0 everywhere
    learned, silent = _validation_loss(trained, task, cache), _validation_loss(zero, task, cache)
    assert silent["loss_sigma5"] > 1.5  # E(ε - x0)² with unit-variance latents: about 2
    assert learned["loss_sigma5"] < 0.75 * silent["loss_sigma5"], (learned, silent)
