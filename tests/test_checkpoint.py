"""Checkpoint folders: atomic writes, the `latest` pointer, inference loading, and refusal of mismatched resumes."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from torch import nn

from configs.schema import load_config
from tests.cache_fixtures import make_cache, tiny_stage1_overrides
from train import checkpoint as ckpt
from train.stage1 import build_stage1_model, train_stage1


class Tiny(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.lin = nn.Linear(width, 2)


def _factory(config):
    return Tiny(config["width"])


def _save(out, step, model, ema=None):
    return ckpt.save_checkpoint(
        out, step, model_state=model.state_dict(), config={"model": {"width": 3}, "step": step},
        train_state={"step": step}, ema_state=None if ema is None else ema.state_dict(),
    )


def test_save_writes_every_file_and_points_latest(tmp_path):
    torch.manual_seed(0)
    model = Tiny(3)
    path = _save(tmp_path, 5, model)
    assert path.name == "step_0000005" and ckpt.is_complete(path)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000005"
    _save(tmp_path, 10, model)
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000010"
    assert ckpt.read_train_state(path) == {"step": 5}


def test_leftover_temp_folder_is_ignored_and_replaced(tmp_path):
    model = Tiny(3)
    _save(tmp_path, 1, model)
    # A crash in the middle of saving step 2: a partial temp folder, `latest` still at step 1.
    tmp = tmp_path / "checkpoints" / ".tmp_step_0000002"
    tmp.mkdir()
    (tmp / ckpt.MODEL_FILE).write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000001"
    # Also when `latest` is gone: only complete step folders count.
    (tmp_path / "checkpoints" / "latest").unlink()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000001"
    path = _save(tmp_path, 2, model)
    assert ckpt.is_complete(path) and not tmp.exists()


def test_latest_falls_back_when_it_names_an_incomplete_folder(tmp_path):
    model = Tiny(3)
    _save(tmp_path, 1, model)
    broken = _save(tmp_path, 2, model)
    (broken / ckpt.STATE_FILE).unlink()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000001"


def test_resaving_a_step_replaces_it(tmp_path):
    model = Tiny(3)
    _save(tmp_path, 3, model)
    with torch.no_grad():
        model.lin.weight.fill_(7.0)
    path = _save(tmp_path, 3, model)
    weights, _ = ckpt.read_weights(path)
    assert torch.all(weights["lin.weight"] == 7.0)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_0000003"]


def test_load_model_for_inference_prefers_ema(tmp_path):
    model, ema = Tiny(3), Tiny(3)
    with torch.no_grad():
        ema.lin.weight.fill_(1.0)
    path = _save(tmp_path, 4, model, ema)
    loaded, config = ckpt.load_model_for_inference(tmp_path, _factory)  # the run folder works too
    assert torch.equal(loaded.lin.weight, ema.lin.weight) and config["loaded_weights"] == "ema"
    assert not loaded.training and config["checkpoint"] == str(path)
    raw, config = ckpt.load_model_for_inference(path, _factory, prefer_ema=False)
    assert torch.equal(raw.lin.weight, model.lin.weight) and config["loaded_weights"] == "model"


def test_weights_that_do_not_fit_are_refused(tmp_path):
    _save(tmp_path, 1, Tiny(3))
    with pytest.raises(ckpt.CheckpointError, match="do not fit"):
        ckpt.load_model_for_inference(tmp_path, lambda c: nn.Linear(3, 3))


def test_missing_checkpoint_error_names_the_path(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="step_0000009"):
        ckpt.resolve_checkpoint(tmp_path / "checkpoints" / "step_0000009")
    assert ckpt.resolve_resume(tmp_path, True) is None
    assert ckpt.resolve_resume(tmp_path, False) is None


# ----------------------------------------------------------------------------- resume refusal (Stage 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = make_cache(tmp_path_factory.mktemp("c") / "cache", num_samples=4)
    cfg = load_config("tiny", tiny_stage1_overrides(**{"stage1.train.steps": 2, "stage1.train.val_every": 0}))
    out = tmp_path_factory.mktemp("run")
    result = train_stage1(cfg, cache, str(out))
    return cache, cfg, out, result


def test_stage1_checkpoint_rebuilds_the_model_alone(trained):
    cache, cfg, out, result = trained
    model, config = ckpt.load_model_for_inference(result.checkpoint, build_stage1_model)
    assert config["model"]["in_channels"] == 8 and config["cache_fingerprint"] == "test-cache-fp"
    assert config["random_weights"] is True and config["step"] == 2
    assert config["config"]["stage1"]["model"]["width"] == cfg.stage1.model.width
    x = torch.randn(1, cfg.stage1.model.context_frames + 1, 8, 4, 6)
    assert model(x).shape == (1, 8, 4, 6)


def test_resume_with_another_model_is_refused_naming_the_field(trained):
    cache, cfg, out, _ = trained
    other = dataclasses.replace(cfg)
    other.stage1 = dataclasses.replace(cfg.stage1, model=dataclasses.replace(cfg.stage1.model, width=30))
    with pytest.raises(ckpt.CheckpointError, match=r"model\.width: checkpoint has 24, this run has 30"):
        train_stage1(other, cache, str(out), resume=True, steps=4)


def test_resume_with_another_batch_is_refused(trained):
    cache, cfg, out, _ = trained
    with pytest.raises(ckpt.CheckpointError, match="effective_batch"):
        train_stage1(cfg, cache, str(out), resume=True, steps=4, batch_size=2)


def test_resume_on_another_cache_is_refused(trained, tmp_path):
    cache, cfg, out, _ = trained
    other = make_cache(tmp_path / "other", num_samples=4, fingerprint="another-cache")
    with pytest.raises(ckpt.CheckpointError, match="cache_fingerprint"):
        train_stage1(cfg, other, str(out), resume=True, steps=4)
    shutil.rmtree(tmp_path / "other")


# ------------------------------------------------------------------------------------------- choice


def _save_validated(out, step, val=None):
    model = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(out, step, model_state=model.state_dict(), config={"model": {}, "step": step, "val": val},
                         train_state={"step": step})
    if val is not None:
        ckpt.update_selection(out, step, val, "loss", "min", "best", "lowest validation loss, as DINO-Foresight")


def test_the_best_checkpoint_by_validation_and_every_way_to_choose(tmp_path):
    for step, loss in ((100, 0.5), (200, 0.3), (300, 0.4)):
        _save_validated(tmp_path, step, {"loss": loss})
    best, why = ckpt.select_checkpoint(tmp_path)  # the run's default is "best"
    assert best.name == "step_0000200" and "best by validation loss = 0.3 at step 200" in why and "DINO-Foresight" in why
    latest, why = ckpt.select_checkpoint(f"{tmp_path}@latest")
    assert latest.name == "step_0000300" and why.startswith("latest, step 300 (asked for)")
    step, why = ckpt.select_checkpoint(f"{tmp_path}@100")
    assert step.name == "step_0000100" and why == "step 100 (asked for)"
    folder, why = ckpt.select_checkpoint(latest)
    assert folder == latest and "checkpoint folder was given" in why
    with pytest.raises(ckpt.CheckpointError, match=r"no complete checkpoint at step 150.*step_0000100"):
        ckpt.select_checkpoint(f"{tmp_path}@150")
    assert ckpt.read_selection(tmp_path)["best"] == {"step": 200, "value": 0.3, "checkpoint": "step_0000200"}


def test_a_run_without_validation_hands_on_its_latest(tmp_path):
    _save_validated(tmp_path, 10)
    _save_validated(tmp_path, 20)
    path, why = ckpt.select_checkpoint(tmp_path)
    assert path.name == "step_0000020" and "newest" in why
    with pytest.raises(ckpt.CheckpointError, match="no best checkpoint"):
        ckpt.select_checkpoint(f"{tmp_path}@best")


def test_trainers_record_validation_with_each_checkpoint_and_track_the_best(tmp_path):
    cache = make_cache(tmp_path / "cache", num_samples=8, splits=["train"] * 6 + ["val"] * 2)
    cfg = load_config("tiny", tiny_stage1_overrides(**{"stage1.train.steps": 4, "stage1.train.val_every": 2,
                                                        "stage1.train.ckpt_every": 2}))
    result = train_stage1(cfg, cache, str(tmp_path / "run"))
    configs = {s: ckpt.read_config(tmp_path / "run" / "checkpoints" / ckpt.step_name(s)) for s in (2, 4)}
    assert all(set(c["val"]) >= {"loss", "cos_step1", "cos_copy_last_step1"} for c in configs.values())
    selection = ckpt.read_selection(tmp_path / "run")
    assert selection["default"] == "best" and selection["metric"] == "loss" and selection["mode"] == "min"
    best = min((2, 4), key=lambda s: configs[s]["val"]["loss"])
    assert selection["best"]["step"] == best and ckpt.resolve_checkpoint(tmp_path / "run").name == ckpt.step_name(best)
    assert result.checkpoint.endswith(ckpt.step_name(4))


# ------------------------------------------------------------------------------------ retention, damage


def _steps(out):
    return sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))


def test_pruning_keeps_the_newest_the_milestones_and_the_best(tmp_path):
    losses = {100: 0.9, 200: 0.2, 300: 0.5, 400: 0.6, 500: 0.7, 600: 0.8, 700: 0.85}
    for step, loss in losses.items():
        _save_validated(tmp_path, step, {"loss": loss})
        ckpt.prune_checkpoints(tmp_path, keep_last=2, keep_every=300)
    # newest 2 (600, 700), milestones (300, 600), the best by loss (200); 100, 400, 500 deleted
    assert _steps(tmp_path) == [200, 300, 600, 700]
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))
    assert ckpt.select_checkpoint(tmp_path)[0].name == "step_0000200"
    assert ckpt.prune_checkpoints(tmp_path, keep_last=0) == []  # 0 keeps everything


def test_pruning_never_deletes_the_protected_one(tmp_path):
    for step in (1, 2, 3):
        _save_validated(tmp_path, step)
    (tmp_path / "checkpoints" / "latest").write_text("step_0000003\n")
    ckpt.prune_checkpoints(tmp_path, keep_last=1, protect=(tmp_path / "checkpoints" / "step_0000001",))
    assert _steps(tmp_path) == [1, 3]


def test_a_trainer_prunes_after_each_save(tmp_path):
    cache = make_cache(tmp_path / "cache", num_samples=4, splits=["train"] * 3 + ["val"])
    cfg = load_config("tiny", tiny_stage1_overrides(**{"stage1.train.steps": 5, "stage1.train.ckpt_every": 1,
                                                       "stage1.train.val_every": 0, "stage1.train.keep_last": 2,
                                                       "stage1.train.keep_every": 2}))
    train_stage1(cfg, cache, str(tmp_path / "run"))
    assert _steps(tmp_path / "run") == [2, 4, 5]


def _truncate(path, keep_fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


@pytest.mark.parametrize("damaged", [ckpt.MODEL_FILE, ckpt.STATE_FILE])
def test_a_truncated_checkpoint_is_refused_by_name(tmp_path, damaged):
    model = Tiny(3)
    path = _save(tmp_path, 1, model)
    assert ckpt.checkpoint_problem(path) is None
    _truncate(path / damaged)
    assert damaged in ckpt.checkpoint_problem(path)
    with pytest.raises(ckpt.CheckpointError, match=f"step_0000001 is damaged: {damaged} is truncated"):
        ckpt.resolve_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError, match="damaged"):
        ckpt.load_model_for_inference(tmp_path, _factory)


def test_a_truncated_file_without_a_size_list_is_still_caught(tmp_path):
    path = _save(tmp_path, 1, Tiny(3))
    (path / ckpt.FILES_FILE).unlink()  # as in checkpoints written before files.json existed
    assert ckpt.checkpoint_problem(path) is None
    _truncate(path / ckpt.MODEL_FILE, 0.9)
    assert "model.safetensors is truncated" in ckpt.checkpoint_problem(path)


def test_resume_latest_falls_back_to_the_newest_intact_one_and_says_so(tmp_path, capsys):
    for step in (1, 2, 3):
        _save(tmp_path, step, Tiny(3))
    _truncate(tmp_path / "checkpoints" / "step_0000003" / ckpt.STATE_FILE)
    path = ckpt.resolve_resume(tmp_path, True)
    assert path.name == "step_0000002"
    out = "".join(capsys.readouterr().err.split())  # rich wraps long lines, even inside a path
    assert "step_0000003isdamaged" in out and "insteadofstep_0000003" in out
    _truncate(tmp_path / "checkpoints" / "step_0000002" / ckpt.MODEL_FILE)
    _truncate(tmp_path / "checkpoints" / "step_0000001" / ckpt.MODEL_FILE)
    with pytest.raises(ckpt.CheckpointError, match="every checkpoint .* is damaged"):
        ckpt.resolve_resume(tmp_path, True)


def test_an_edited_config_json_is_not_damage_but_broken_json_is(tmp_path):
    path = _save(tmp_path, 1, Tiny(3))
    (path / ckpt.CONFIG_FILE).write_text('{"model": {"width": 3}, "note": "edited by hand"}')
    assert ckpt.checkpoint_problem(path) is None
    (path / ckpt.CONFIG_FILE).write_text('{"model": ')
    assert "config.json is corrupt" in ckpt.checkpoint_problem(path)
