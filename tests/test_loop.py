"""The shared training loop: optimizer/schedule, exact resume, gradient accumulation, EMA, non-finite loss handling."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from configs.schema import ConfigError, OptimConfig, TrainConfig, load_config
from tests.cache_fixtures import make_cache, tiny_stage1_overrides
from train import checkpoint as ckpt
from train.ema import EMA, init_weight
from train.loop import (
    RUN_LOCK,
    NonFiniteLossError,
    RunLockedError,
    TrainingInterrupted,
    resolve_mixed_precision,
    run_training,
)
from train.optim import build_optimizer, build_schedule, scaled_lr, schedule_factor
from train.stage1 import Stage1Task, train_stage1

# ---------------------------------------------------------------------------------- optimizer, schedule


def test_lr_is_scaled_by_effective_batch_over_reference():
    assert scaled_lr(OptimConfig(lr=6.4e-4, reference_batch=64), 8) == pytest.approx(8e-5)
    assert scaled_lr(OptimConfig(lr=1e-3, reference_batch=0), 123) == 1e-3
    with pytest.raises(ConfigError, match="effective batch"):
        scaled_lr(OptimConfig(), 0)


def test_adam_or_adamw_from_weight_decay():
    model = nn.Linear(3, 3)
    adam = build_optimizer(model, OptimConfig(lr=1e-3, betas=[0.9, 0.99]), 8)
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.9, 0.99)
    adamw = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=1e-4), 8)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 1e-4
    with pytest.raises(ConfigError, match="optim.betas"):
        build_optimizer(model, OptimConfig(betas=[0.9]), 8)


def test_schedule_closed_forms():
    assert schedule_factor(0, 100, "cosine", 0) == 1.0
    assert schedule_factor(50, 100, "cosine", 0) == pytest.approx(0.5)
    assert schedule_factor(100, 100, "cosine", 0) == pytest.approx(0.0)
    # linear: warmup 10 steps to the peak, then straight to 0 at step 100
    assert schedule_factor(4, 100, "linear", 10) == pytest.approx(0.5)
    assert schedule_factor(10, 100, "linear", 10) == pytest.approx(1.0)
    assert schedule_factor(55, 100, "linear", 10) == pytest.approx(0.5)
    assert schedule_factor(3, 100, "constant", 4) == 1.0 and schedule_factor(90, 100, "constant", 4) == 1.0
    with pytest.raises(ConfigError, match="optim.schedule"):
        schedule_factor(0, 10, "step", 0)


def test_schedule_drives_the_optimizer_lr():
    opt = build_optimizer(nn.Linear(2, 2), OptimConfig(lr=0.1, schedule="cosine"), 1)
    sched = build_schedule(opt, OptimConfig(lr=0.1, schedule="cosine"), 4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_mixed_precision_auto_is_fp32_on_cpu():
    expected = "bf16" if torch.cuda.is_available() else "no"
    assert resolve_mixed_precision("auto") == expected
    assert resolve_mixed_precision("fp16") == "fp16"
    with pytest.raises(ConfigError, match="mixed_precision"):
        resolve_mixed_precision("fp8")


def test_ema_closed_form():
    model = nn.Linear(2, 1)
    ema = EMA(model, decay=0.9)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: warm-up decay (1 + 0) / (10 + 0) = 0.1 < 0.9
    assert torch.allclose(ema.shadow["weight"], 0.1 * before + 0.9 * (before + 1.0))
    target = nn.Linear(2, 1)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])


@pytest.mark.parametrize("decay, steps", [(0.9999, 40), (0.99, 300), (0.9, 200)])
def test_ema_weight_of_the_initialisation_matches_the_closed_form(decay, steps):
    """Weights start at w0 and are set to c before every update: the shadow is w0·P + c·(1 - P), P = prod decay_t."""
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema = EMA(model, decay=decay)
    with torch.no_grad():
        model.weight.fill_(-1.0)
    for _ in range(steps):
        ema.update(model)
    p = init_weight(steps, decay)
    expected = math.prod(min(decay, (1 + t) / (10 + t)) for t in range(steps))
    assert p == pytest.approx(expected, rel=1e-9)
    assert torch.allclose(ema.shadow["weight"].double(), torch.full((1, 3), 5.0 * p - 1.0 * (1 - p), dtype=torch.float64), atol=1e-6)
    assert ema.describe()["updates"] == steps and ema.describe()["init_weight"] == pytest.approx(p)
    # The fixed-decay EMA this replaces would still hold decay**steps of the initialisation.
    assert p < decay**steps


# ------------------------------------------------------------------------------------------ Stage 1 runs


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return make_cache(tmp_path_factory.mktemp("cache") / "c", num_samples=8, splits=["train"] * 6 + ["val"] * 2)


def _cfg(**extra):
    return load_config("tiny", tiny_stage1_overrides(**extra))


def test_resume_reproduces_the_uninterrupted_losses_exactly(cache, tmp_path):
    # Dropout on and two loader workers: every RNG and the data position must be restored. Constant lr, so that a
    # 3-step run continued to 6 steps has the same schedule as a straight 6-step run.
    cfg = _cfg(**{"stage1.model.dropout": 0.2, "stage1.train.num_workers": 2, "stage1.train.ckpt_every": 3,
                  "stage1.train.val_every": 2, "stage1.train.steps": 6, "stage1.optim.schedule": "constant"})
    straight = train_stage1(cfg, cache, str(tmp_path / "a"))
    first = train_stage1(cfg, cache, str(tmp_path / "b"), steps=3)
    resumed = train_stage1(cfg, cache, str(tmp_path / "b"), resume=True)
    assert list(first.losses) == [1, 2, 3] and list(resumed.losses) == [4, 5, 6]
    assert {**first.losses, **resumed.losses} == straight.losses  # exact, not approximate
    a, _ = ckpt.read_weights(straight.checkpoint, prefer_ema=False)
    b, _ = ckpt.read_weights(resumed.checkpoint, prefer_ema=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.val == resumed.val and "cos_step1" in straight.val
    assert list((tmp_path / "a" / "tb").glob("events.out.tfevents.*"))


def test_resume_true_continues_in_the_same_folder(cache, tmp_path):
    cfg = _cfg(**{"stage1.train.ckpt_every": 2, "stage1.train.steps": 4, "stage1.train.val_every": 0})
    straight = train_stage1(cfg, cache, str(tmp_path / "a"))
    out = tmp_path / "b"
    fresh = train_stage1(cfg, cache, str(out), resume=True)  # nothing to resume yet: starts at step 0
    assert list(fresh.losses) == [1, 2, 3, 4]
    (out / "checkpoints" / "latest").write_text("step_0000002\n")  # pretend the run died after step 2
    again = train_stage1(cfg, cache, str(out), resume=True)
    assert again.losses == {3: straight.losses[3], 4: straight.losses[4]}


def test_gradient_accumulation_matches_a_larger_batch(cache, tmp_path):
    cfg = _cfg(**{"stage1.train.steps": 3, "stage1.train.val_every": 0, "stage1.train.ckpt_every": 0})
    big = train_stage1(cfg, cache, str(tmp_path / "big"), batch_size=4)
    cfg_acc = _cfg(**{"stage1.train.steps": 3, "stage1.train.val_every": 0, "stage1.train.ckpt_every": 0, "stage1.train.grad_accum": 2})
    acc = train_stage1(cfg_acc, cache, str(tmp_path / "acc"), batch_size=2)
    assert acc.losses == pytest.approx(big.losses, rel=1e-5)
    wa, _ = ckpt.read_weights(acc.checkpoint)
    wb, _ = ckpt.read_weights(big.checkpoint)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_ema_weights_are_checkpointed_and_preferred(cache, tmp_path):
    cfg = _cfg(**{"stage1.train.steps": 2, "stage1.train.ema_decay": 0.5, "stage1.train.val_every": 0})
    result = train_stage1(cfg, cache, str(tmp_path / "run"))
    path = Path(result.checkpoint)
    assert (path / ckpt.EMA_FILE).is_file()
    ema, which = ckpt.read_weights(path)
    raw, _ = ckpt.read_weights(path, prefer_ema=False)
    assert which == "ema" and any(not torch.equal(ema[k], raw[k]) for k in raw)


# ------------------------------------------------------------------------------------ non-finite losses


class _Explodes:
    """A linear regression whose loss becomes NaN at a chosen step."""

    def __init__(self, bad_step: int):
        self.bad_step = bad_step

    def build_model(self):
        return nn.Linear(4, 1)

    def model_config(self):
        return {"in": 4}

    def training_loss(self, model, batch, step, generator):
        x = torch.randn(batch.shape[0], 4, generator=generator)
        loss = ((model(x) - 1.0) ** 2).mean()
        return (loss * math.nan if step + 1 == self.bad_step else loss), {"extra": 1.0}

    def validate(self, model, loader):
        return {}


def _endless(request):
    while True:
        yield torch.zeros(request.batch_size, 1)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train = TrainConfig(steps=10, batch_size=2, ckpt_every=2, val_every=0, log_every=1, num_workers=0)
    with pytest.raises(NonFiniteLossError) as info:
        run_training(_Explodes(bad_step=5), _endless, None, train, OptimConfig(lr=1e-2), str(tmp_path))
    message = str(info.value)
    assert "step 5" in message and "nan" in message and "step_0000004" in message
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step_0000004"
    assert not (tmp_path / "checkpoints" / "step_0000006").exists()
    weights, _ = ckpt.read_weights(latest)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
    train = TrainConfig(steps=3, batch_size=2, ckpt_every=10, val_every=0, num_workers=0)
    with pytest.raises(NonFiniteLossError, match="none"):
        run_training(_Explodes(bad_step=1), _endless, None, train, OptimConfig(lr=1e-2), str(tmp_path))
    assert ckpt.latest_checkpoint(tmp_path) is None


# ------------------------------------------------------------------------- one writer, graceful stop


def _write_lock(out: Path, pid: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": "earlier", "purpose": "train X"}))


def test_a_second_trainer_on_the_same_run_folder_is_refused(tmp_path):
    train = TrainConfig(steps=2, batch_size=2, ckpt_every=0, val_every=0, num_workers=0)
    other = subprocess.Popen(["sleep", "60"])  # a live process on this host holds the run
    try:
        _write_lock(tmp_path, other.pid)
        with pytest.raises(RunLockedError, match=rf"another writer holds this training run \(pid {other.pid} on {socket.gethostname()}"):
            run_training(_Explodes(bad_step=0), _endless, None, train, OptimConfig(lr=1e-2), str(tmp_path))
        assert ckpt.latest_checkpoint(tmp_path) is None and (tmp_path / RUN_LOCK).is_file()
    finally:
        other.kill()
        other.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(tmp_path, dead.pid)
    train = TrainConfig(steps=2, batch_size=2, ckpt_every=0, val_every=0, num_workers=0)
    result = run_training(_Explodes(bad_step=0), _endless, None, train, OptimConfig(lr=1e-2), str(tmp_path))
    assert result.step == 2 and not (tmp_path / RUN_LOCK).exists()


def test_sigterm_finishes_the_step_checkpoints_and_resume_is_exact(cache, tmp_path, monkeypatch):
    cfg = _cfg(**{"stage1.model.dropout": 0.2, "stage1.train.ckpt_every": 3, "stage1.train.val_every": 0,
                  "stage1.train.steps": 6, "stage1.optim.schedule": "constant"})
    straight = train_stage1(cfg, cache, str(tmp_path / "a"))
    original = Stage1Task.training_loss

    def signalled(self, model, batch, step, generator):
        if step == 1:  # during step 2 (0-based index 1), between two checkpoints
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, batch, step, generator)

    monkeypatch.setattr(Stage1Task, "training_loss", signalled)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="--resume latest") as info:
        train_stage1(cfg, cache, str(tmp_path / "b"))
    assert info.value.exit_code == 143 and info.value.step == 2
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert ckpt.latest_checkpoint(tmp_path / "b").name == "step_0000002"
    assert not (tmp_path / "b" / RUN_LOCK).exists()
    monkeypatch.setattr(Stage1Task, "training_loss", original)
    resumed = train_stage1(cfg, cache, str(tmp_path / "b"), resume=True)
    assert resumed.losses == {k: v for k, v in straight.losses.items() if k > 2}  # exact


def test_sigint_stops_with_130(tmp_path):
    class Interrupts(_Explodes):
        def training_loss(self, model, batch, step, generator):
            if step == 0:
                os.kill(os.getpid(), signal.SIGINT)
            return super().training_loss(model, batch, step, generator)

    train = TrainConfig(steps=5, batch_size=2, ckpt_every=0, val_every=0, num_workers=0)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when pytest runs as a background job
    with pytest.raises(TrainingInterrupted) as info:
        run_training(Interrupts(bad_step=0), _endless, None, train, OptimConfig(lr=1e-2), str(tmp_path))
    assert info.value.exit_code == 130 and ckpt.latest_checkpoint(tmp_path).name == "step_0000001"
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
