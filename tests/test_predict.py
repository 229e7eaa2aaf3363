"""predict: the whole hierarchy on a clip, with a real (tiny) cache from the DAG and checkpoints from both trainers
(the session fixture `trained` in conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eval.predict import predict
from eval.visualize import read_mp4, write_mp4
from pipeline import layout
from pipeline.decode import read_frames
from pipeline.errors import InputError
from pipeline.sources import list_clips
from pipeline.store import CacheError, CacheReader
from pipeline.weights import MissingWeightsError
from train import checkpoint as ckpt

STEPS = 3  # sampler steps: enough to exercise the multistep path, cheap on CPU


def _val_clip(trained):
    (clip,) = list_clips("synthetic", trained["root"] / "data", trained["cfg"].sources["synthetic"], splits=["val"])
    return clip


def _window_folder(trained, dst: Path, start: int, count: int) -> Path:
    """The val clip's frames start .. start+count-1 as their own folder of images (a clip to predict); kept if made."""
    if dst.exists():
        return dst
    dst.mkdir(parents=True)
    for i, src in enumerate(_val_clip(trained).frame_paths[start : start + count]):
        shutil.copy(src, dst / f"frame_{i:03d}.png")
    return dst


def _run(trained, tmp_path, **kw):
    clip = kw.pop("input", None) or _window_folder(trained, tmp_path / "clip", 3, 25)
    out = tmp_path / kw.pop("name", "out")
    record = predict(trained["s1"], trained["s2"], clip, out, steps=STEPS, allow_random_weights=True, **kw)
    return record, out, load_file(str(out / "tensors.safetensors"))


def test_writes_every_file_with_the_right_frames(trained, tmp_path):
    cfg = trained["cfg"]
    k, h, w = cfg.window.frames, cfg.window.height, cfg.window.width
    record, out, tensors = _run(trained, tmp_path)
    for name in ("prediction.mp4", "side_by_side.mp4", "grid.png", "tensors.safetensors", "predict.json"):
        assert (out / name).is_file(), name
    assert read_mp4(out / "prediction.mp4").shape == (k, h, w, 3)
    assert read_mp4(out / "side_by_side.mp4").shape == (k, h, 2 * w, 3)
    from PIL import Image

    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 4 * h and grid.shape[1] > cfg.latent_frames * w  # 4 rows, one column per feature frame
    tf, c = cfg.latent_frames, cfg.pca.components
    assert tensors["frames"].shape == (1, k, h, w, 3) and tensors["frames"].dtype == torch.uint8
    assert tensors["features"].shape == (tf, c, *CacheReader(trained["cache"]).meta["vfm"]["grid"])
    assert tensors["latents"].shape == (1, cfg.codec.channels, tf, *cfg.latent_hw)
    saved = json.loads((out / "predict.json").read_text())
    assert saved["random"] is True and set(saved["random_parts"]) == {"Stage 1", "Stage 2", "VFM"}
    assert saved["has_truth"] and saved["input_frames"] == k and saved["sampling"]["steps"] == STEPS
    assert saved["codec"]["weights"].startswith("fit:") and saved["vfm"]["weights"] == "random"
    assert record == saved


def test_context_frames_are_the_input_frames_and_samples_differ(trained, tmp_path):
    m = trained["cfg"].window.context_frames
    _, _, tensors = _run(trained, tmp_path, samples=2)
    frames, given = tensors["frames"], tensors["input_frames"]
    for s in range(2):
        assert torch.equal(frames[s, :m], given[:m])  # the observed frames are output as given, not re-encoded
    assert not torch.equal(frames[0, m:], frames[1, m:])
    assert not torch.equal(tensors["latents"][0], tensors["latents"][1])
    # Sample i depends on (seed, i) only: a one-sample run reproduces sample 0.
    _, _, single = _run(trained, tmp_path, name="single")
    assert torch.equal(single["latents"][0], tensors["latents"][0])


def test_context_features_equal_the_cache_on_the_same_window(trained, tmp_path):
    # The cache's val window is frames 3..27 of the snippet: predict must compute its features exactly as the DAG did.
    _, _, tensors = _run(trained, tmp_path)
    reader = CacheReader(trained["cache"])
    (val,) = reader.samples("val")
    ctx = reader.meta["context_latent_frames"]
    cached = torch.from_numpy(reader.array(layout.FEATURES)[int(val)][:ctx].astype(np.float32))
    assert torch.allclose(tensors["features"][:ctx], cached, atol=2e-2, rtol=2e-3)


def test_guidance_and_sampler_options_run(trained, tmp_path):
    plain, _, a = _run(trained, tmp_path, name="plain", sampler="euler")
    guided, _, b = _run(trained, tmp_path, name="guided", sampler="euler", guidance_weight=0.5, guidance_components=8, inference_components=32)
    assert guided["sampling"] == {**plain["sampling"], "guidance_weight": 0.5, "guidance_components": 8, "inference_components": 32}
    assert not torch.equal(a["latents"], b["latents"])
    with pytest.raises(ValueError, match="guidance_components"):
        _run(trained, tmp_path, name="bad", guidance_weight=0.5, guidance_components=64)  # not fewer than the 64 in use


def test_a_short_clip_is_predicted_without_ground_truth(trained, tmp_path):
    cfg = trained["cfg"]
    m, k = cfg.window.context_frames, cfg.window.frames
    clip = _window_folder(trained, tmp_path / "short", 3, m + 2)
    record, out, tensors = _run(trained, tmp_path, input=clip)
    assert not record["has_truth"] and record["input_frames"] == m + 2
    assert not (out / "side_by_side.mp4").exists()
    assert tensors["frames"].shape[1] == k
    too_short = _window_folder(trained, tmp_path / "too_short", 3, m - 1)
    with pytest.raises(InputError, match=f"at least {m}"):
        _run(trained, tmp_path, input=too_short, name="never")


def test_a_video_file_is_accepted(trained, tmp_path):
    cfg = trained["cfg"]
    frames = read_frames(_val_clip(trained), list(range(3, 28)), cfg.window.height, cfg.window.width)
    write_mp4(frames, tmp_path / "clip.mp4", fps=17.0)
    record, out, tensors = _run(trained, tmp_path, input=tmp_path / "clip.mp4")
    assert record["fps"] == pytest.approx(17.0) and record["has_truth"]
    assert read_mp4(out / "prediction.mp4").shape[0] == cfg.window.frames


def test_random_weights_must_be_allowed(trained, tmp_path):
    clip = _window_folder(trained, tmp_path / "clip", 3, 25)
    with pytest.raises(MissingWeightsError, match="RANDOM VFM"):
        predict(trained["s1"], trained["s2"], clip, tmp_path / "out", steps=STEPS)


def test_mismatched_checkpoints_are_refused(trained, tmp_path):
    clip = _window_folder(trained, tmp_path / "clip", 3, 25)
    with pytest.raises(ckpt.CheckpointError, match="stage2 checkpoint is expected"):
        predict(trained["s1"], trained["s1"], clip, tmp_path / "out", allow_random_weights=True)
    # A Stage 2 checkpoint trained on another PCA cannot read this cache's features.
    other = Path(shutil.copytree(ckpt.resolve_checkpoint(trained["s2"]), tmp_path / "s2_other" / "step_0000002"))
    config = json.loads((other / ckpt.CONFIG_FILE).read_text())
    config["pca_fingerprint"] = "0123456789abcdef"
    (other / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CacheError, match="PCA fingerprint: Stage 2 checkpoint '0123456789abcdef'"):
        predict(trained["s1"], other, clip, tmp_path / "out", allow_random_weights=True)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_bench_sample_times_every_sampler_with_and_without_guidance():
    from eval.bench.sample import run

    result = run("tiny", width=64, depth=1, heads=2, steps=2, repeats=1, warmup=0)
    rows = {(r["sampler"], r["guidance_weight"] > 0): r for r in result["rows"]}
    assert set(rows) == {("euler", False), ("euler", True), ("multistep", False), ("multistep", True)}
    assert all(r["seconds_per_clip"] > 0 and r["evaluations"] == 3 for r in rows.values())
    assert rows[("euler", True)]["batch_per_evaluation"] == 2 and rows[("euler", False)]["guidance_cost"] == 1.0


def test_vae_tiling_is_recorded_off_and_refused_for_a_codec_without_tiles(trained, tmp_path):
    record, _, _ = _run(trained, tmp_path)
    assert record["codec"]["tiling"] is False  # predict.json says whether the frames went through tiles
    out = tmp_path / "tiled"
    with pytest.raises(ValueError, match="WAN codec only; this one is the linear codec"):
        predict(trained["s1"], trained["s2"], _window_folder(trained, tmp_path / "clip", 3, 25), out, steps=STEPS,
                allow_random_weights=True, vae_tiling=True)
    assert not out.exists()  # refused before anything is written
