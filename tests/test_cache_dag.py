"""End-to-end tests of the caching DAG on Ray (2 workers), resume, locking and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import zarr

from configs.schema import load_config
from pipeline import layout
from pipeline.codec import frame_psnr
from pipeline.codec_linear import (
    LinearCodec,
    add_video,
    block_accumulator,
    fit_linear_codec,
)
from pipeline.codec_pixel import PixelCodec
from pipeline.dag import build_cache
from pipeline.decode import read_frames
from pipeline.sources import list_clips
from pipeline.store import CacheError, CacheReader, WriterLock

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared" / "data").resolve()


def _arrays(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: g[k][:] for k in (layout.FEATURES, layout.LATENTS, layout.SEGMENTATION, layout.DEPTH)}


@pytest.mark.slow
def test_end_to_end_synthetic(tiny, full_cache, sample_data):
    out, summary = full_cache
    assert summary.ok == 6 and summary.failed == 0
    reader = CacheReader(out)
    assert reader.complete
    meta = reader.meta
    assert meta["random_weights"] is True and meta["vfm"]["weights"] == "random"
    assert meta["latent_frames"] == tiny.latent_frames == 7
    assert meta["feature_frame_indices"] == [0, 4, 8, 12, 16, 20, 24]
    assert meta["splits"] == {"train": 4, "val": 2}
    feats = reader.array(layout.FEATURES)
    assert feats.shape == (6, 7, tiny.pca.components, *tiny.token_grid)
    assert reader.array(layout.LATENTS).shape == (6, 7, tiny.codec.channels, *tiny.latent_hw)
    assert len(reader.samples("train")) == 4 and len(reader.samples("val")) == 2
    assert np.isfinite(feats[:].astype(np.float32)).all()
    # PCA coefficients of the training tokens are centred (the fit saw exactly those tokens)
    train_feats = feats[: 4].astype(np.float64)
    assert abs(train_feats.mean()) < 0.05 * train_feats.std()
    # manifest: frames 3..27 of every snippet, annotated frame 19 at window index 16
    m = reader.manifest
    assert m["frame_indices"][0].to_list() == list(range(3, 28))
    assert set(m["label_index"].to_list()) == {16}
    assert set(m["status"].to_list()) == {"ok"}
    # the typed contract reads the same record: every field a reader uses, with its type
    c = reader.contract
    assert c.window == reader.window and c.window.latent_frames == 7 and c.window.feature_indices == (0, 4, 8, 12, 16, 20, 24)
    assert c.vfm_grid == tuple(tiny.token_grid) and c.vfm_layers == tuple(tiny.vfm.layers)
    assert c.vfm_channels == reader.pca().dim and c.pca_components == tiny.pca.components
    assert (c.vfm_weights, c.pca_fingerprint, c.fingerprint) == ("random", reader.pca().fingerprint, meta["fingerprint"])
    assert (c.codec_name, c.codec_channels, c.codec_file) == ("linear", tiny.codec.channels, layout.CODEC_FILE)


def test_the_typed_contract_names_a_missing_field_and_the_fix():
    c = layout.CacheMeta({"pca": {"components": 8}, "codec": {"channels": 16}})
    assert (c.pca_components, c.codec_channels, c.vfm_weights, c.codec_file) == (8, 16, None, layout.CODEC_FILE)
    with pytest.raises(CacheError, match=r"meta.json has no vfm.grid: .*rebuild it with `python cli.py cache`"):
        c.vfm_grid


def test_linear_codec_fitted_across_workers_and_decodes_the_frames(tiny, full_cache, sample_data):
    """The DAG fits the linear codec from per-worker block sums (merged): it equals a fit of all training windows in
    one process, meta.json records it with the val PSNR, and decoding the cached latents gives the frames at that PSNR."""
    out, summary = full_cache
    reader = CacheReader(out)
    codec = LinearCodec.load(out / layout.CODEC_FILE)
    meta = reader.meta["codec"]
    assert meta["name"] == "linear" and meta["weights"] == codec.weights and meta["file"] == layout.CODEC_FILE
    assert meta["fit"]["fit_windows"] == 4 and meta["fit"]["discarded_variance"] == pytest.approx(codec.discarded_variance)
    rec = meta["reconstruction"]
    assert rec["split"] == "val" and rec["windows"] == 2 and rec["frames"] == 2 * tiny.window.frames
    assert summary.reconstruction == rec and f"{rec['psnr_db']:.1f} dB" in summary.line()

    clips = {c.clip_id: c for c in list_clips("synthetic", sample_data, tiny.sources["synthetic"])}
    acc = block_accumulator(4, 4)
    psnrs = []
    for i, row in enumerate(reader.manifest.iter_rows(named=True)):
        frames = read_frames(clips[row["clip_id"]], row["frame_indices"], tiny.window.height, tiny.window.width)
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        if row["split"] == "train":
            add_video(acc, PixelCodec(4, 4), video)
        else:
            latents = torch.from_numpy(reader.array(layout.LATENTS)[i].astype(np.float32)).permute(1, 0, 2, 3)[None]
            decoded = ((codec.decode(latents)[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 3, 0).numpy()
            psnrs.append(frame_psnr(decoded, frames))
    direct = fit_linear_codec(acc, 16, 4, 4)
    np.testing.assert_allclose(direct.eigenvalues.numpy(), codec.eigenvalues.numpy(), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose((direct.components * codec.components).sum(1).abs().numpy(), 1.0, atol=1e-5)
    assert np.concatenate(psnrs).mean() == pytest.approx(rec["psnr_db"], abs=1e-6)
    assert rec["psnr_db"] > 20.0


def test_a_cache_without_its_codec_file_or_with_another_is_refused_by_name(tiny, full_cache, tmp_path):
    import shutil

    from eval.frozen import build_frozen_codec

    out, _ = full_cache
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    meta = CacheReader(copy).meta
    assert build_frozen_codec(meta, tiny.to_dict(), None, False, torch.device("cpu"), str(copy)).weights == meta["codec"]["weights"]
    other, _ = fit_linear_codec_of_noise()
    other.save(copy / layout.CODEC_FILE)
    with pytest.raises(CacheError, match=rf"{layout.CODEC_FILE}.*not the one the cache's latents were made with"):
        build_frozen_codec(meta, tiny.to_dict(), None, False, torch.device("cpu"), str(copy))
    (copy / layout.CODEC_FILE).unlink()
    with pytest.raises(ValueError, match=rf"{layout.CODEC_FILE} does not exist"):
        build_frozen_codec(meta, tiny.to_dict(), None, False, torch.device("cpu"), str(copy))


def fit_linear_codec_of_noise():
    video = torch.rand(1, 3, 9, 16, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    acc = block_accumulator(4, 4)
    add_video(acc, PixelCodec(4, 4), video)
    return fit_linear_codec(acc, 16, 4, 4), video


def test_labels_cached(full_cache):
    out, _ = full_cache
    seg = zarr.open_group(str(out), mode="r")[layout.SEGMENTATION][:]
    depth = zarr.open_group(str(out), mode="r")[layout.DEPTH][:]
    assert set(np.unique(seg)) <= {0, 1, 2, 8, 10, 11, 13, 255}
    assert (seg != 255).mean() > 0.5 and (depth > 0).mean() > 0.3


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted(tiny, sample_data, full_cache, tmp_path):
    out = tmp_path / "resumed"
    first = build_cache(tiny, "synthetic", sample_data, out, workers=2, allow_random_weights=True, max_shards=1)
    assert first.ok == 2
    partial = CacheReader(out)
    assert not partial.complete and len(partial.samples()) == 2
    second = build_cache(tiny, "synthetic", sample_data, out, workers=2, allow_random_weights=True)
    assert second.skipped_shards == 1 and second.ok == 6
    a, b = _arrays(full_cache[0]), _arrays(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_killed_run_leaves_no_complete_partial_sample_and_resumes(tiny, sample_data, full_cache, tmp_path):
    """SIGKILL the real command once the first shard is done; the rest reads as pending; a re-run completes it."""
    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "cli.py"), "cache", "--dataset", "synthetic", "--root", str(sample_data), "--out", str(out),
           "--set", "cache.shard_size=2", "--workers", "1", "--allow-random-weights"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    done_dir = out / layout.DONE_DIR
    while time.time() < deadline and proc.poll() is None:
        if done_dir.exists() and any(done_dir.iterdir()):
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    reader = CacheReader(out)
    done = len(reader.samples())
    assert 0 < done < 6 and not reader.complete
    assert (out / layout.LOCK).exists()  # the dead writer's lock is left behind ...
    build_cache(tiny, "synthetic", sample_data, out, workers=1, allow_random_weights=True)  # ... and taken over
    a, b = _arrays(full_cache[0]), _arrays(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_second_writer_refused(tiny, sample_data, tmp_path):
    out = tmp_path / "locked"
    with WriterLock(str(out), purpose="test"):
        with pytest.raises(CacheError, match="another writer"):
            build_cache(tiny, "synthetic", sample_data, out, workers=1, allow_random_weights=True)


def test_resume_with_other_config_names_the_differences(tiny, sample_data, tmp_path):
    out = tmp_path / "mismatch"
    build_cache(tiny, "synthetic", sample_data, out, workers=1, allow_random_weights=True, max_shards=1)
    other = load_config("tiny", ["cache.shard_size=2", "pca.components=32", "window.height=32"])
    with pytest.raises(CacheError) as err:
        build_cache(other, "synthetic", sample_data, out, workers=1, allow_random_weights=True)
    msg = str(err.value)
    assert "pca.components" in msg and "window.height" in msg and "new --out" in msg


def test_missing_weights_refused(tiny, sample_data, tmp_path):
    from pipeline.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="--allow-random-weights"):
        build_cache(tiny, "synthetic", sample_data, tmp_path / "noweights", workers=1)


def _break_one_frame(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    victim = sorted((dst / "leftImg8bit_sequence" / "val").rglob("*_000010_leftImg8bit.png"))[0]
    victim.write_bytes(b"")  # zero-byte image
    return victim


def test_bad_input_is_recorded_and_the_rest_completes(tiny, sample_data, tmp_path):
    data = tmp_path / "data"
    victim = _break_one_frame(sample_data, data)
    out = tmp_path / "bad"
    summary = build_cache(tiny, "synthetic", data, out, workers=2, allow_random_weights=True)
    assert summary.ok == 5 and summary.failed == 1
    failures = CacheReader(out).failures()
    assert len(failures) == 1 and failures["path"][0] == str(victim)
    assert failures["reason"][0]
    manifest = pl.read_parquet(out / layout.MANIFEST)
    assert sorted(manifest["status"].to_list()) == ["failed"] + ["ok"] * 5
    assert CacheReader(out).complete


def test_strict_fails_fast_naming_the_file(tiny, sample_data, tmp_path):
    data = tmp_path / "data"
    victim = _break_one_frame(sample_data, data)
    with pytest.raises(CacheError, match=victim.name):
        build_cache(tiny, "synthetic", data, tmp_path / "strict", workers=1, allow_random_weights=True, strict=True)


@pytest.mark.skipif(not (SHARED / "driving_clips").exists(), reason="../shared/data/driving_clips not present")
@pytest.mark.slow
def test_real_clips_on_ray(tmp_path):
    cfg = load_config("tiny", ["cache.shard_size=2", "sources.videos.stride=30"])
    out = tmp_path / "clips"
    summary = build_cache(cfg, "videos", SHARED / "driving_clips", out, workers=2, allow_random_weights=True, limit=2)
    assert summary.ok == 4 and summary.failed == 0
    reader = CacheReader(out)
    assert reader.meta["splits"] == {"train": 2, "val": 2}
    assert reader.manifest["fps"][0] == pytest.approx(30.0, rel=1e-3)
    lat = reader.array(layout.LATENTS)[:].astype(np.float32)
    assert lat.std() > 0.05  # real pixels, not zeros


def test_flipped_features_are_the_features_of_the_flipped_frames_and_stage1_trains_on_them(sample_data, full_cache, tmp_path):
    from pipeline.cache_worker import CacheWorker
    from tests.cache_fixtures import tiny_stage1_overrides
    from train.stage1 import train_stage1

    cfg = load_config("tiny", ["cache.shard_size=2", "cache.flipped_features=true"])
    out = tmp_path / "flipped"
    build_cache(cfg, "synthetic", sample_data, out, workers=1, allow_random_weights=True, limit=2)
    reader = CacheReader(out)
    assert reader.meta["flipped_features"] is True and reader.meta["settings"]["cache"]["flipped_features"] is True
    row = reader.manifest.row(0, named=True)
    clip = next(c for c in list_clips("synthetic", sample_data, cfg.sources["synthetic"]) if c.clip_id == row["clip_id"])
    frames = read_frames(clip, [row["frame_indices"][i] for i in cfg.feature_frame_indices], cfg.window.height, cfg.window.width)
    worker = CacheWorker(cfg.to_dict(), allow_random_weights=True)
    worker.set_pca(str(out / layout.PCA_FILE))
    flipped = worker.pca.project_maps(worker._vfm_features(np.ascontiguousarray(frames[:, :, ::-1]))).numpy()
    cached = reader.array(layout.FEATURES_FLIPPED)[0].astype(np.float32)
    assert np.allclose(cached, flipped, atol=2e-2, rtol=1e-2)
    assert not np.allclose(cached, reader.array(layout.FEATURES)[0].astype(np.float32), atol=0.1)
    overrides = {**tiny_stage1_overrides(), "pca.components": cfg.pca.components, "stage1.hflip": True,
                 "stage1.train.steps": 2, "stage1.train.batch_size": 2, "stage1.train.val_every": 0}
    result = train_stage1(load_config("tiny", overrides), str(out), str(tmp_path / "s1"))
    assert np.isfinite(result.loss)
    with pytest.raises(CacheError, match="cache.flipped_features=true"):
        train_stage1(load_config("tiny", overrides), str(full_cache[0]), str(tmp_path / "s1b"))

