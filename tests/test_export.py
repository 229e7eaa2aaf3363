"""`export`: a run as a self-contained bundle that `from_pretrained` and `predict --bundle` load with nothing else,
predicting exactly what the checkpoints predict; a bundle whose parts do not fit is refused naming the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from eval.bundle import INDEX, UPLOAD, BundleError, export_bundle
from pipeline.sources import list_clips
from re2pix import Re2PixPipeline
from train import checkpoint as ckpt

STEPS = 3


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    """A copy of the run exported, then the copy's cache and run folders deleted: the bundle must stand alone."""
    copy = tmp_path_factory.mktemp("export") / "run"
    for part in ("cache", "s1", "s2"):
        shutil.copytree(Path(trained["root"]) / part, copy / part)
    out = copy.parent / "bundle"
    export_bundle(copy / "s1", copy / "s2", out, cache=str(copy / "cache"))
    shutil.rmtree(copy)
    return out


def _frames(trained, count: int) -> np.ndarray:
    (clip,) = list_clips("synthetic", trained["root"] / "data", trained["cfg"].sources["synthetic"], splits=["val"])
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in clip.frame_paths[3 : 3 + count]])


def test_the_bundle_has_the_hugging_face_layout_and_a_model_card(trained, bundle):
    index = json.loads((bundle / INDEX).read_text())
    assert index["_class_name"] == "Re2PixPipeline" and index["files"]["codec"] == "codec.safetensors"
    for name in ("stage1/config.json", "stage1/model.safetensors", "stage2/config.json", "stage2/model.safetensors",
                 "pca.safetensors", "codec.safetensors", "cache.json", "README.md"):
        assert (bundle / name).is_file(), name
    # Stage 2's weights are the EMA weights predict loads from the checkpoint.
    weights, which = ckpt.read_weights(ckpt.resolve_checkpoint(trained["s2"]), prefer_ema=True)
    assert which == "ema" and json.loads((bundle / "stage2/config.json").read_text())["loaded_weights"] == "ema"
    exported = load_file(str(bundle / "stage2/model.safetensors"))
    assert exported.keys() == weights.keys() and all(torch.equal(exported[k], weights[k]) for k in weights)
    card = (bundle / "README.md").read_text()
    assert "RANDOM weights in Stage 1, Stage 2, VFM" in card and "license:" in card and "@article{re2pix" in card
    assert UPLOAD in card and index["needs"]["vfm"] is None  # a random VFM: nothing to fetch, and the card says why


def test_a_bundle_predicts_what_the_checkpoints_predict_with_nothing_else(trained, bundle, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.chdir(tmp_path)
    frames = _frames(trained, 25)
    from_run = Re2PixPipeline.from_checkpoints(trained["s1"], trained["s2"], allow_random_weights=True)
    from_bundle = Re2PixPipeline.from_pretrained(bundle, allow_random_weights=True)
    a, b = from_run(frames, seed=5, steps=STEPS), from_bundle(frames, seed=5, steps=STEPS)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames) and torch.equal(a.features, b.features)
    assert b.provenance["bundle"] == str(bundle) and b.provenance["cache"] is None
    assert b.provenance["stage2"]["selected"].startswith("the bundle's (exported from ")
    assert b.provenance["stage2"]["weights"] == a.provenance["stage2"]["weights"] == "ema"

    clip = tmp_path / "clip"
    clip.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(clip / f"{i:03d}.png")
    result = CliRunner().invoke(app, ["predict", "--input", str(clip), "--bundle", str(bundle), "--out", "out",
                                      "--seed", "5", "--sampling-steps", str(STEPS), "--allow-random-weights"])
    assert result.exit_code == 0, result.output
    assert torch.equal(load_file("out/tensors.safetensors")["latents"][0], b.latents[0])
    assert json.loads(Path("out/predict.json").read_text())["bundle"] == str(bundle)


@pytest.mark.parametrize("file, edit, named", [
    (INDEX, lambda d: d["fingerprints"].update(pca="0123456789abcdef"), "fingerprints.pca = '0123456789abcdef'"),
    (INDEX, lambda d: d["window"].update(frames=9), "window.frames = 9"),
    ("stage2/config.json", lambda d: d["model"]["dit"].update(feature_channels=7), "Stage 2 takes 7 feature channels"),
    ("stage1/config.json", lambda d: d.update(stage="stage2"), "stage is 'stage2'"),
    ("cache.json", lambda d: d["codec"].update(weights="fit:feedface"), "fingerprints.codec"),
])
def test_a_bundle_whose_parts_do_not_fit_is_refused_naming_the_field(bundle, tmp_path, file, edit, named):
    broken = Path(shutil.copytree(bundle, tmp_path / "broken"))
    data = json.loads((broken / file).read_text())
    edit(data)
    (broken / file).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=named.replace("(", r"\(").replace(".", r"\.")):
        Re2PixPipeline.from_pretrained(broken, allow_random_weights=True)


def test_edited_weights_and_missing_parts_are_refused(bundle, tmp_path):
    broken = Path(shutil.copytree(bundle, tmp_path / "broken"))
    (broken / "stage1/model.safetensors").write_bytes((bundle / "stage2/model.safetensors").read_bytes())
    with pytest.raises(BundleError, match="fingerprints.stage1"):
        Re2PixPipeline.from_pretrained(broken, allow_random_weights=True)
    (broken / "pca.safetensors").unlink()
    with pytest.raises(BundleError, match="pca.safetensors not found"):
        Re2PixPipeline.from_pretrained(broken, allow_random_weights=True)
    with pytest.raises(BundleError, match="not a Re2Pix bundle"):
        Re2PixPipeline.from_pretrained(tmp_path, allow_random_weights=True)


def test_export_refuses_to_write_into_a_folder_that_is_not_a_bundle(trained, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="is not a bundle"):
        export_bundle(trained["s1"], trained["s2"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("args", [["--stage1", "s1"], ["--bundle", "b", "--stage1", "s1", "--stage2", "s2"],
                                  ["--bundle", "b", "--cache", "c"], []])
def test_predict_takes_both_checkpoints_or_a_bundle_alone(tmp_path, args):
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["predict", "--input", str(tmp_path), *args])
    assert result.exit_code == 2 and "--bundle alone" in result.output
