"""measure-plateau: the rule in closed form, the paper's schedule over the run's full length, a tiny run end to end."""

from __future__ import annotations

import json

import pytest

from configs.schema import ConfigError
from eval.plateau import PLATEAU_TOLERANCE, measure_plateau, plateau_config, plateau_step, read_val_curve
from eval.variants import BASELINE, RE2PIX
from tests.test_stage2_train import overrides, window_cache
from train import checkpoint as ckpt


def test_plateau_rule_closed_forms():
    curve = [(10, 1.0), (20, 0.5), (30, 0.45), (40, 0.449)]
    # 20: 0.5 - 0.449 = 0.051 >= 2 % of 0.5; 30: 0.45 - 0.449 = 0.001 < 0.009
    assert plateau_step(curve) == 30 and plateau_step(curve, tolerance=0.2) == 20 and plateau_step(curve, 0.0) == 40
    assert plateau_step(list(reversed(curve))) == 30  # order of the points does not matter
    assert plateau_step([(1, 1.0), (2, 0.9), (3, 0.95), (4, 0.7)]) == 4  # a late drop: not plateaued before the end
    assert plateau_step([(5, 2.0), (10, 2.1), (15, 2.2)]) == 5  # rising loss: nothing left to gain after the first
    with pytest.raises(ValueError, match="no"):
        plateau_step([])
    with pytest.raises(ValueError, match="tolerance"):
        plateau_step(curve, -0.1)


def test_plateau_config_is_the_papers_schedule_over_the_full_run():
    cfg = overrides(**{"stage2.optim.warmup_steps": 20, "stage2.optim.schedule": "cosine"})
    run = plateau_config(cfg, RE2PIX, seed=3, steps=1000, points=10)
    opt, train = run.stage2.optim, run.stage2.train
    assert opt.schedule == "linear" and opt.warmup_steps == 20 and train.steps == 1000 and train.seed == 3
    assert train.val_every == train.ckpt_every == train.keep_every == 100 and train.val_batches == 0  # every val window
    assert plateau_config(cfg, RE2PIX, 0, 40, 4).stage2.optim.warmup_steps == 4  # at most a tenth of the run
    assert plateau_config(cfg, BASELINE, 0, 40, 4).stage2.model.conditioning == "none"
    with pytest.raises(ConfigError, match="choose from"):
        plateau_config(cfg, "Nope", 0, 40, 4)
    with pytest.raises(ConfigError, match="points"):
        plateau_config(cfg, RE2PIX, 0, 40, 1)


def test_tiny_plateau_run_records_the_val_curve_and_resumes(tmp_path):
    cache = window_cache(tmp_path / "cache", num_samples=8, splits=["train"] * 6 + ["val"] * 2)
    cfg = overrides(**{"stage2.optim.warmup_steps": 20})
    out = tmp_path / "plateau"
    result = measure_plateau(cfg, cache, out, steps=24, points=4)
    steps = [p["step"] for p in result["val_loss"]]
    assert steps == [6, 12, 18, 24] and result["steps_run_in_this_call"] == 24 and result["seconds_per_step"] > 0
    curve = [(p["step"], p["loss"]) for p in result["val_loss"]]
    assert result["plateau_step"] == plateau_step(curve, PLATEAU_TOLERANCE)
    assert result["plateaued"] == (result["plateau_step"] < 24) and "2 %" in result["rule"]
    assert result["schedule"] == {"name": "linear", "warmup_steps": 2, "decay_to_zero_at": 24}
    # the learning rate decays to 0 at the run's last step (linear decay over the full length)
    last = ckpt.read_train_state(out / "checkpoints" / ckpt.step_name(24))["scheduler"]["_last_lr"][0]
    mid = ckpt.read_train_state(out / "checkpoints" / ckpt.step_name(12))["scheduler"]["_last_lr"][0]
    peak = ckpt.read_config(out / "checkpoints" / ckpt.step_name(12))["lr"]
    assert last == pytest.approx(0.0, abs=1e-12) and mid == pytest.approx(peak * (1 - (12 - 2) / 22))
    assert json.loads((out / "plateau.json").read_text()) == result
    again = measure_plateau(cfg, cache, out, steps=24, points=4)  # resumes: nothing left to train, same curve
    assert again["steps_run_in_this_call"] == 0 and again["val_loss"] == result["val_loss"] == [
        {"step": s, "loss": v} for s, v in read_val_curve(out)]


def test_cli_measure_plateau_help_names_the_schedule():
    from typer.testing import CliRunner

    from cli import app

    text = " ".join(CliRunner().invoke(app, ["measure-plateau", "--help"]).output.replace("│", " ").split())
    for option in ("--steps", "--points", "--tolerance", "--variant", "--cache", "--out"):
        assert option in text
    assert "decays linearly to 0" in text
