"""reproduce --preset: the long preset resolves to the ablations at >= 1,000 steps, fits its budget by the measured
costs, and reaches run_reproduce from the CLI (nothing is trained here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs.schema import ConfigError, load_config
from eval.presets import MEASURED, PRESETS, estimate_preset, eval_jobs_per_seed, resolve_preset
from eval.variants import BASELINE, LARGE, NESTED_OFF, PRED_ONLY, RE2PIX, REPA, TRUE_ONLY, VARIANTS, VIDEOREPA


def test_long_preset_trains_the_ablations_long_enough():
    long = resolve_preset("long")
    assert long.steps >= 1000 and long.seeds == 3 and long.sweeps and long.val_snippets == 64
    assert set(long.variants) == {RE2PIX, BASELINE, NESTED_OFF, TRUE_ONLY, PRED_ONLY}  # Tables 1 (main row), 3, 4
    assert long.out_name == "reproduce-long" and all(v in long.cut[0] for v in (LARGE, REPA, VIDEOREPA))
    default = resolve_preset("default")
    assert default.steps == 200 and set(default.variants) == set(VARIANTS) and default.cut == ()
    with pytest.raises(ConfigError, match="choose from default, long"):
        resolve_preset("huge")


def test_the_measured_costs_give_back_the_default_study_and_fit_the_long_one_in_its_budget():
    cfg = load_config("tiny")
    assert eval_jobs_per_seed(PRESETS["default"], cfg) == 22  # 8 Figure 3 + 6 variants + 3 components + 5 guidance
    assert eval_jobs_per_seed(PRESETS["long"], cfg) == 19  # 8 + 3 + 3 + 5
    default = estimate_preset(PRESETS["default"], cfg)
    # the README's measured phases (17.0 min of Stage 2 runs, 35.9 min of evaluations) come back out
    assert default["train_seconds"] / 60 == pytest.approx(17.0, abs=0.1)
    assert default["eval_seconds"] / 60 == pytest.approx(35.9, abs=0.2)
    assert default["total_seconds"] / 60 <= 60
    long = estimate_preset(PRESETS["long"], cfg)
    expected = (5 * MEASURED["stage2_seconds_per_step"] * 1000 * 3 / 2 + MEASURED["eval_seconds_per_window_job"] * 19 * 64 * 3 / 2
                + MEASURED["shared_seconds"])
    assert long["total_seconds"] == pytest.approx(expected) and long["total_seconds"] / 60 <= long["budget_minutes"] == 120


def test_cli_preset_long_reaches_run_reproduce_with_its_folder(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import eval.reproduce
    from cli import app

    calls = []
    monkeypatch.setattr(eval.reproduce, "run_reproduce", lambda cfg, out, **kw: calls.append((Path(out), kw)))
    runner = CliRunner()
    ok = runner.invoke(app, ["reproduce", "--preset", "long", "--set", f"paths.root={tmp_path}"])
    assert ok.exit_code == 0, ok.output
    (out, kw), = calls
    assert out == tmp_path / "reproduce-long" and kw["preset"] == "long" and kw["steps"] is None and not kw["variants"]
    bad = runner.invoke(app, ["reproduce", "--preset", "huge"])
    assert bad.exit_code == 2 and "choose from default, long" in bad.output


def test_run_reproduce_refuses_an_unknown_preset_before_doing_anything(tmp_path):
    from eval.reproduce import run_reproduce

    with pytest.raises(ConfigError, match="--preset 'huge'"):
        run_reproduce(load_config("tiny"), tmp_path, preset="huge")
    assert not any(tmp_path.iterdir())
