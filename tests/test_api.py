"""The Python API: `re2pix.Re2PixPipeline` loads once, predicts from frames in memory, and is the path `cli.py predict`
takes (identical tensors for one seed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from eval.predict import read_input_frames
from pipeline.sources import list_clips
from pipeline.store import CacheError
from re2pix import Prediction, Re2PixPipeline
from train import checkpoint as ckpt

STEPS = 3


def _clip_frames(trained, start: int = 3, count: int = 25) -> list[str]:
    (clip,) = list_clips("synthetic", trained["root"] / "data", trained["cfg"].sources["synthetic"], splits=["val"])
    return list(clip.frame_paths[start : start + count])


def _folder(paths: list[str], dst: Path, scale: int = 1) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(paths):
        image = Image.open(src)
        if scale != 1:
            image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        image.save(dst / f"frame_{i:03d}.png")
    return dst


def _read(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())])


@pytest.fixture(scope="module")
def pipe(trained):
    return Re2PixPipeline.from_checkpoints(trained["s1"], trained["s2"], allow_random_weights=True)


def test_cli_predict_and_the_api_give_identical_tensors(trained, pipe, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    clip = _folder(_clip_frames(trained), tmp_path / "clip")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "predict", "--input", str(clip), "--stage1", trained["s1"], "--stage2", trained["s2"], "--out", str(out),
        "--samples", "2", "--seed", "7", "--sampling-steps", str(STEPS), "--allow-random-weights", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    saved = load_file(str(out / "tensors.safetensors"))
    got = pipe(_read(clip), num_samples=2, seed=7, steps=STEPS)
    m, k = pipe.context_frames, pipe.window_frames
    assert isinstance(got, Prediction)
    assert got.frames.shape == (2, k - m, pipe.height, pipe.width, 3) and got.frames.dtype == torch.uint8
    assert torch.equal(got.latents, saved["latents"])
    assert torch.equal(got.features, saved["features"])
    assert torch.equal(got.frames, saved["frames"][:, m:])
    assert torch.equal(got.context, saved["input_frames"][:m])
    record = json.loads((out / "predict.json").read_text())
    for key in ("sampling", "sample_seeds", "stage1", "stage2", "pca_fingerprint", "vfm", "cache"):
        assert got.provenance[key] == record[key], key


def test_frames_of_any_size_are_resized_as_predict_reads_them(trained, pipe, tmp_path):
    big = _folder(_clip_frames(trained, count=pipe.context_frames), tmp_path / "big", scale=3)  # 192 x 384 frames
    frames = _read(big)
    assert frames.shape[1:3] == (3 * pipe.height, 3 * pipe.width)
    expected, _ = read_input_frames(big, pipe.window_frames, pipe.context_frames, pipe.height, pipe.width)
    prepared, batched = pipe.prepare_frames(frames)
    assert not batched and np.array_equal(prepared[0], expected)
    # float frames in [0, 1] and torch tensors are the same frames
    assert np.array_equal(pipe.prepare_frames(torch.from_numpy(frames).float() / 255)[0], prepared)
    a, b = pipe(frames, steps=STEPS), pipe(torch.from_numpy(frames.astype(np.float32) / 255), steps=STEPS)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)


def test_a_batch_predicts_each_clip(trained, pipe, tmp_path):
    m = pipe.context_frames
    one = _read(_folder(_clip_frames(trained, 3, m), tmp_path / "a"))
    two = _read(_folder(_clip_frames(trained, 10, m), tmp_path / "b"))
    batch = pipe(np.stack([one, two]), num_samples=2, steps=STEPS)
    tf, c = pipe.latent_frames, pipe.pca.n_components
    assert batch.frames.shape == (2, 2, pipe.window_frames - m, pipe.height, pipe.width, 3)
    assert batch.latents.shape[:2] == (2, 2) and batch.features.shape[:3] == (2, tf, c)
    alone = pipe(one, steps=STEPS)
    # The deterministic part (VFM, PCA, Stage 1) of window 0 does not depend on the batch it is in.
    assert torch.allclose(batch.features[0], alone.features, atol=1e-4, rtol=1e-4)
    assert not torch.equal(batch.features[0], batch.features[1])


def test_the_run_is_found_from_any_working_folder(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipe = Re2PixPipeline.from_checkpoints(trained["s1"], trained["s2"], allow_random_weights=True)
    assert Path(pipe.provenance["cache"]) == Path(trained["cache"])
    # A checkpoint from before the absolute path was recorded: its relative cache path is found above the run folder.
    src = ckpt.resolve_checkpoint(trained["s2"])
    old = Path(shutil.copytree(src, trained["root"] / "s2_old" / "checkpoints" / src.name))
    try:
        config = json.loads((old / ckpt.CONFIG_FILE).read_text())
        assert config["cache"] == "cache" and config.pop("cache_absolute")
        (old / ckpt.CONFIG_FILE).write_text(json.dumps(config))
        pipe = Re2PixPipeline.from_checkpoints(trained["s1"], old, allow_random_weights=True)
        assert Path(pipe.provenance["cache"]) == Path(trained["cache"])
        # Moved away from its cache: refused, naming what was tried and the fix.
        moved = Path(shutil.copytree(old, tmp_path / "elsewhere" / "checkpoints" / src.name))
        with pytest.raises(CacheError, match=r"was not found .*cache: no meta.json.*--cache"):
            Re2PixPipeline.from_checkpoints(trained["s1"], moved, allow_random_weights=True)
        assert Re2PixPipeline.from_checkpoints(trained["s1"], moved, cache=trained["cache"], allow_random_weights=True)
    finally:
        shutil.rmtree(trained["root"] / "s2_old")


def test_a_call_writes_nothing_and_refuses_bad_frames(trained, pipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p) for p in Path(trained["root"]).rglob("*"))
    frames = _read(_folder(_clip_frames(trained, count=pipe.context_frames), tmp_path / "clip"))
    shutil.rmtree(tmp_path / "clip")
    pipe(frames, steps=STEPS)
    assert list(tmp_path.iterdir()) == [] and sorted(str(p) for p in Path(trained["root"]).rglob("*")) == before
    with pytest.raises(ValueError, match="channels last"):
        pipe(frames.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="at least that many"):
        pipe(frames[: pipe.context_frames - 1])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        pipe(frames.astype(np.float32))
    with pytest.raises(ValueError, match="guidance_components=64"):
        pipe(frames, guidance_weight=0.5, guidance_components=64)


def test_dtype_chooses_the_autocast(trained, pipe, tmp_path):
    frames = _read(_folder(_clip_frames(trained, count=pipe.context_frames), tmp_path / "clip"))
    base = pipe(frames, steps=STEPS)  # CPU default: float32, no autocast
    fp32 = Re2PixPipeline.from_checkpoints(trained["s1"], trained["s2"], dtype=torch.float32, allow_random_weights=True)
    assert torch.equal(fp32(frames, steps=STEPS).latents, base.latents)
    bf16 = Re2PixPipeline.from_checkpoints(trained["s1"], trained["s2"], dtype=torch.bfloat16, allow_random_weights=True)
    low = bf16(frames, steps=STEPS)
    assert low.latents.dtype == torch.float32 and torch.isfinite(low.latents).all()
    assert not torch.equal(low.latents, base.latents)  # bf16 matmuls ran
    assert (low.latents - base.latents).abs().mean() < 0.1 * base.latents.abs().mean()
