"""A bundle of a run whose codec is a WAN2.1 VAE loaded from a diffusers folder (the paper's codec path): the VAE is
not redistributed, so the bundle names it by fingerprint, finds it where the run recorded it or where
`codec_weights=` says, predicts exactly what the checkpoints predict, and refuses a different VAE.

The VAE is random (no weights can be downloaded here) but written and read as a real diffusers folder, at the WAN2.1
layout with base width 8 and one res block per stage so a 25-frame window encodes in well under a second."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from PIL import Image

from configs.schema import load_config
from eval.bundle import INDEX, export_bundle
from pipeline.sources import list_clips
from pipeline.synthetic import write_sample_dataset
from pipeline.weights import MissingWeightsError
from re2pix import Re2PixPipeline
from tests.cache_fixtures import train_hierarchy

STEPS = 2
VAE = {"base_dim": 8, "num_res_blocks": 1, "z_dim": 16}


def _write_vae(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    AutoencoderKLWan(**VAE).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def wan_run(tmp_path_factory):
    """128x256 windows: WAN's 8x spatial factor gives 16x32 latents, so 2x2 DiT patches meet the tiny VFM's 8x16
    patch grid as the linear codec's 4x factor does at 64x128."""
    root = tmp_path_factory.mktemp("wan_bundle")
    vae = _write_vae(root / "vae", seed=0)
    write_sample_dataset(root / "data", train=2, val=1, height=128, width=256, progress=False)
    cfg = load_config("tiny", {
        "window.height": 128, "window.width": 256,
        "codec.name": "wan", "codec.spatial_factor": 8, "codec.weights": str(vae),
        "stage1.train.steps": 1, "stage1.train.batch_size": 2, "stage1.train.val_every": 0,
        "stage2.train.steps": 1, "stage2.train.batch_size": 2, "stage2.train.val_every": 0,
        "stage2.mixed_supervision_prob": 0.0,
    })
    train_hierarchy(cfg, root)
    (clip,) = list_clips("synthetic", root / "data", cfg.sources["synthetic"], splits=["val"])
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in clip.frame_paths[3:28]])
    bundle = root / "bundle"
    export_bundle(root / "s1", root / "s2", bundle, cache=str(root / "cache"))
    return {"root": root, "vae": vae, "frames": frames, "bundle": bundle}


def test_the_bundle_names_the_vae_by_fingerprint_and_carries_no_codec_file(wan_run):
    bundle = wan_run["bundle"]
    index = json.loads((bundle / INDEX).read_text())
    meta = json.loads((bundle / "cache.json").read_text())
    assert meta["codec"]["name"] == "wan" and meta["codec"]["weights"].startswith("file:")
    assert index["files"]["codec"] is None and not (bundle / "codec.safetensors").exists()
    assert index["needs"]["codec"]["weights"] == meta["codec"]["weights"] == index["fingerprints"]["codec"]
    assert "--codec-weights" in index["needs"]["codec"]["option"]  # the name every command uses
    assert meta["codec"]["weights"] in (bundle / "README.md").read_text()


def test_a_wan_bundle_predicts_what_the_checkpoints_predict(wan_run):
    root = wan_run["root"]
    from_run = Re2PixPipeline.from_checkpoints(root / "s1", root / "s2", allow_random_weights=True)
    from_bundle = Re2PixPipeline.from_pretrained(wan_run["bundle"], allow_random_weights=True)
    a, b = (p(wan_run["frames"], seed=3, steps=STEPS) for p in (from_run, from_bundle))
    assert a.frames.shape[-3:] == (128, 256, 3) and a.latents.shape[-2:] == (16, 32)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)


def test_a_moved_vae_is_found_through_codec_weights_and_a_different_one_is_refused(wan_run, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.move(str(wan_run["vae"]), str(moved))
    try:
        with pytest.raises((MissingWeightsError, FileNotFoundError), match="--codec-weights|codec_weights"):
            Re2PixPipeline.from_pretrained(wan_run["bundle"], allow_random_weights=True)
        pipe = Re2PixPipeline.from_pretrained(wan_run["bundle"], allow_random_weights=True, codec_weights=str(moved))
        assert pipe(wan_run["frames"], seed=3, steps=STEPS).frames.shape[-4] == 12  # K - M = 12 predicted frames
        other = _write_vae(tmp_path / "other", seed=1)
        with pytest.raises(MissingWeightsError, match="not the ones the cache was made with"):
            Re2PixPipeline.from_pretrained(wan_run["bundle"], allow_random_weights=True, codec_weights=str(other))
    finally:
        shutil.move(str(moved), str(wan_run["vae"]))
