"""`bench memory`: exact state bytes (checked against a real optimizer and EMA), the activation fit against direct
measurements at a size it did not see, and the per-card batch rule."""

from __future__ import annotations

import pytest
import torch

from configs.schema import load_config
from eval.bench import memory
from train.ema import EMA
from train.optim import build_optimizer

SMALL = {"stage2.model.depth": 3, "stage1.model.depth": 3}


def _probe(name: str, cfg=None) -> memory.Probe:
    cfg = cfg or load_config("tiny", SMALL)
    return next(p for p in memory.probes(cfg) if p.name.startswith(name))


@pytest.mark.parametrize("name", ["Stage 1", "Stage 2", "DPT"])
def test_state_bytes_from_the_meta_model_equal_the_real_adam_and_ema(name):
    cfg = load_config("tiny", {**SMALL, "stage1.train.ema_decay": 0.999, "heads.train.ema_decay": 0.999})
    probe = _probe(name, cfg)
    with torch.device("meta"):
        states = memory.count_states(probe.build(None, probe.grid), ema=True)
    model = probe.build(None, probe.grid)
    n = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert states.params == n and states.weight_bytes == 4 * n and states.grad_bytes == 4 * trainable
    assert states.total == 4 * n + 4 * trainable + 8 * trainable + states.ema_bytes
    optimizer = build_optimizer(model, cfg.stage2.optim, 1)
    probe.loss(model.train(), 1, probe.grid, torch.Generator().manual_seed(0)).backward()
    optimizer.step()
    adam = sum(t.nbytes for s in optimizer.state.values() for k, t in s.items() if k != "step")
    assert adam == states.adam_bytes
    assert sum(t.nbytes for t in EMA(model, 0.999).state_dict().values() if t.is_floating_point()) == states.ema_bytes


@pytest.mark.parametrize("name,checkpointing", [("Stage 2", False), ("Stage 2", True), ("Stage 1", False), ("DPT", False)])
def test_the_fit_predicts_a_deeper_wider_batch_it_did_not_measure(name, checkpointing):
    """Fitted at depth 1-2, batch 1-2 and grids up to 24 tokens/frame; checked at depth 3, the config's grid
    (8 x 16 tokens/frame) and batch 2, measured directly."""
    probe = _probe(name)
    acts = memory.measure_activations(probe)[checkpointing]
    for fit in acts.fits.values():
        assert fit.max_rel_error < 1e-3  # the fit reproduces the measured points
    direct = memory.saved_bytes(probe, None, probe.grid, 2, checkpointing)
    predicted = acts.saved_constant + 2 * acts.per_sample
    assert predicted == pytest.approx(direct, rel=0.02)


def test_largest_batch_is_the_last_that_fits_and_fsdp_shards_the_states():
    probe = _probe("Stage 2", load_config("paper"))
    with torch.device("meta"):
        model = probe.build(None, probe.grid)
    states = memory.count_states(model, ema=True, blocks=probe.blocks(model))
    acts = memory.Activations(per_sample=2e9, constant=1e9, recompute=0.5e9)
    assert states.params > 780e6 and states.total == 20 * states.params  # fp32 w, g, Adam (2), EMA: 20 B/param
    for card in memory.CARDS_GB:
        for strategy in ("ddp", "fsdp"):
            b = memory.largest_batch(states, acts, card, strategy)
            budget = memory.usable_bytes(card)
            assert b == 0 or memory.peak_bytes(states, acts, b, strategy) <= budget
            assert memory.peak_bytes(states, acts, b + 1, strategy) > budget
    assert memory.peak_bytes(states, acts, 1, "fsdp") < memory.peak_bytes(states, acts, 1, "ddp") - states.total / 2
    assert memory.accumulation_plan(8, 1, 8) == "1x1" and memory.accumulation_plan(64, 3, 8) == "2x4"
    assert memory.accumulation_plan(8, 0, 8) == "no"


def test_bench_memory_prints_one_table_with_every_card(capsys, tmp_path):
    import json

    results = memory.run(load_config("tiny"), models=("dpt",), json_out=str(tmp_path / "m.json"))
    assert list(results["models"]) == ["DPT head"]
    assert set(results["models"]["DPT head"]["settings"]["plain"]["cards"]) == set(memory.CARDS_GB)
    assert json.loads((tmp_path / "m.json").read_text())["config"] == "tiny"
    assert "bench memory (tiny)" in capsys.readouterr().out
