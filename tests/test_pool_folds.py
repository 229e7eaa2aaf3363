"""make-predicted-pool --folds auto: a probe of the plain pool against val forecasts decides whether to cross-fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs.schema import ConfigError
from pipeline import layout
from tests.test_pool import _cache, _stage1_checkpoint
from train import pool as pool_mod
from train.pool import AUTO_FOLDS, AUTO_MARGIN, choose_folds, make_predicted_pool, parse_folds


def _meta(tmp_path, name="cache"):
    return json.loads((tmp_path / name / layout.META).read_text())["pool"]


def test_the_probe_measures_what_the_plain_pool_then_holds(tmp_path):
    """With every training window in the probe (8 <= PROBE_WINDOWS) its cosines are those the plain pool records."""
    cache = _cache(tmp_path)
    path, _ = _stage1_checkpoint(tmp_path / "s1", seed=0)
    summary = make_predicted_pool(cache, path, device="cpu", folds="auto", margin=10.0)  # margin: never cross-fit
    choice, quality = summary["folds_choice"], summary["quality"]
    probe = choice["probe"]
    assert summary["folds"] == 1 and choice["requested"] == "auto" and choice["chosen"] == 1
    assert probe["pool_windows"] == quality["pool_windows"] == 8 and probe["val_windows"] == quality["val_windows"] == 2
    np.testing.assert_allclose(probe["pool_train"], quality["pool_train"], atol=2e-3)  # the pool is stored in float16
    np.testing.assert_allclose(probe["rollout_val"], quality["rollout_val"], atol=1e-6)
    assert choice["gap"] == pytest.approx(np.mean(probe["pool_train"]) - np.mean(probe["rollout_val"]), abs=1e-9)
    assert probe["gap_se"] > 0
    assert _meta(tmp_path)["folds_choice"] == choice and _meta(tmp_path)["folds"] == 1


def test_auto_keeps_the_plain_pool_when_the_gap_is_within_the_margin(tmp_path, monkeypatch):
    cache = _cache(tmp_path)
    path, _ = _stage1_checkpoint(tmp_path / "s1", seed=0)
    monkeypatch.setattr(pool_mod, "probe_quality", lambda *a, **k: {"gap": AUTO_MARGIN - 0.001, "gap_se": 0.01})
    summary = make_predicted_pool(cache, path, device="cpu", folds="auto")
    choice = _meta(tmp_path)["folds_choice"]
    assert summary["folds"] == 1 and not (tmp_path / "s1" / "folds").exists()  # no cross-fitting run was trained
    assert choice["requested"] == "auto" and choice["chosen"] == 1 and choice["margin"] == AUTO_MARGIN
    assert choice["gap"] == pytest.approx(AUTO_MARGIN - 0.001) and "plain pool" in choice["reason"]


def test_auto_cross_fits_when_the_pool_is_easier_than_val_forecasts(tmp_path, monkeypatch):
    from configs.schema import load_config
    from tests.cache_fixtures import tiny_stage1_overrides
    from train.stage1 import train_stage1

    cache = _cache(tmp_path)
    cfg = load_config("tiny", tiny_stage1_overrides(**{"stage1.model.context_frames": 3, "stage1.train.steps": 2,
                                                        "stage1.train.batch_size": 2, "stage1.train.val_every": 0}))
    train_stage1(cfg, cache, str(tmp_path / "s1"))
    monkeypatch.setattr(pool_mod, "probe_quality", lambda *a, **k: {"gap": 0.12, "gap_se": 0.01})  # issue 22's real clips
    summary = make_predicted_pool(cache, str(tmp_path / "s1"), device="cpu", folds="auto")
    meta = _meta(tmp_path)
    assert summary["folds"] == meta["folds"] == AUTO_FOLDS and summary["complete"]
    assert meta["folds_choice"]["chosen"] == AUTO_FOLDS and meta["folds_choice"]["gap"] == 0.12
    assert "cross-fitted" in meta["folds_choice"]["reason"]
    for k in range(AUTO_FOLDS):
        assert (tmp_path / "s1" / "folds" / f"fold_{k}_of_{AUTO_FOLDS}").is_dir()


def test_choose_folds_rule():
    assert choose_folds({"gap": AUTO_MARGIN + 1e-6})[0] == AUTO_FOLDS
    assert choose_folds({"gap": AUTO_MARGIN})[0] == 1  # "more than" the margin
    assert choose_folds({"gap": -0.3})[0] == 1
    assert choose_folds({"gap": None})[0] == 1  # no val windows: nothing to compare with
    assert choose_folds({"gap": 0.05}, margin=0.1)[0] == 1


def test_an_explicit_fold_count_is_recorded_as_requested(tmp_path):
    cache = _cache(tmp_path)
    path, _ = _stage1_checkpoint(tmp_path / "s1", seed=0)
    make_predicted_pool(cache, path, device="cpu", folds="1")
    assert _meta(tmp_path)["folds_choice"] == {"requested": 1, "chosen": 1, "margin": None, "gap": None, "reason": "requested"}


@pytest.mark.parametrize("bad", ["zero", "0", "-1", "1.5", "", True])
def test_bad_fold_values_are_refused_with_the_fix(bad):
    with pytest.raises(ConfigError, match=r"--folds .*'auto'.*K >= 2"):
        parse_folds(bad)
    assert parse_folds("AUTO") == "auto" and parse_folds(" 3 ") == 3 and parse_folds(2) == 2


def test_cli_refuses_folds_zero_and_documents_auto(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    cache = _cache(tmp_path)
    path, _ = _stage1_checkpoint(tmp_path / "s1", seed=0)
    bad = runner.invoke(app, ["make-predicted-pool", "--cache", cache, "--stage1", path, "--folds", "zero"])
    assert bad.exit_code == 2 and "--folds 'zero'" in bad.output and "Traceback" not in bad.output
    help_text = " ".join(runner.invoke(app, ["make-predicted-pool", "--help"]).output.split())
    assert "auto" in help_text and "folds_choice" in help_text


def test_auto_keeps_the_plain_pool_when_one_fold_would_hold_every_training_window(tmp_path, monkeypatch):
    from tests.cache_fixtures import make_cache
    from train.pool import fold_of

    # the fixture's ids are synthetic/clip_<i>/000000: the first two in fold 0 are the only training windows
    ids = [f"synthetic/clip_{i:03d}/000000" for i in range(10)]
    train = [i for i, s in enumerate(ids) if fold_of(s, AUTO_FOLDS) == 0][:2]
    assert len(train) == 2
    cache = make_cache(tmp_path / "cache", num_samples=10, shard_size=4,
                       splits=["train" if i in train else "val" for i in range(10)])
    path, _ = _stage1_checkpoint(tmp_path / "s1", seed=0)
    monkeypatch.setattr(pool_mod, "probe_quality", lambda *a, **k: {"gap": 0.12, "gap_se": 0.01})
    summary = make_predicted_pool(cache, path, device="cpu", folds="auto")
    assert summary["folds"] == 1 and "one fold" in summary["folds_choice"]["reason"]
