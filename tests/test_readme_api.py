"""README "Python API": its example runs as written, and `export` carries or names the VFM, on a demo-sized run
(the demo's folder layout, a VFM loaded from a weights file as the demo's pretrained one is, the learned linear codec,
two steps of each stage)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from configs.schema import load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """runs/tiny/{sample-data, cache/synthetic, stage1, stage2} in a fresh folder, trained from that folder."""
    import ray

    from pipeline.dag import build_cache
    from pipeline.synthetic import write_sample_dataset
    from pipeline.vfm import create_vit
    from pipeline.weights import seeded
    from train.stage1 import train_stage1
    from train.stage2 import train_stage2

    folder = tmp_path_factory.mktemp("project")
    root = folder / "runs" / "tiny"
    write_sample_dataset(root / "sample-data", train=2, val=1, height=64, width=128, progress=False)
    cfg = load_config("tiny")
    with seeded(0):
        vit = create_vit(cfg.vfm)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "vfm.safetensors"), metadata={"format": "pt"})
    cfg = load_config("tiny", {
        "vfm.weights": str(root / "vfm.safetensors"),
        "stage1.train.steps": 2, "stage1.train.batch_size": 2, "stage1.train.val_every": 0,
        "stage2.train.steps": 2, "stage2.train.batch_size": 2, "stage2.train.val_every": 0,
        "stage2.mixed_supervision_prob": 0.0, "stage2.diffusion.steps": 2,
    })
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        build_cache(cfg, "synthetic", "runs/tiny/sample-data", "runs/tiny/cache/synthetic", workers=1)
        train_stage1(cfg, "runs/tiny/cache/synthetic", "runs/tiny/stage1")
        train_stage2(cfg, "runs/tiny/cache/synthetic", "runs/tiny/stage2")
    finally:
        ray.shutdown()
        os.chdir(cwd)
    return folder


def test_the_readme_example_runs_as_written(demo_folder, monkeypatch):
    code = readme_example()
    assert len(code.strip().splitlines()) == 5
    monkeypatch.chdir(demo_folder)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    out = scope["out"]
    assert out.frames.shape == (1, 12, 64, 128, 3) and out.frames.dtype == torch.uint8  # what the comment says
    assert out.provenance["random"] is False and out.provenance["vfm"]["weights"].startswith("file:")
    assert out.provenance["cache"] == str(demo_folder / "runs/tiny/cache/synthetic")


def test_export_with_and_without_the_vfm_on_a_run_whose_vfm_is_a_weights_file(demo_folder, tmp_path, monkeypatch):
    from eval.bundle import export_bundle, read_bundle
    from pipeline.weights import MissingWeightsError
    from re2pix import Re2PixPipeline

    monkeypatch.chdir(demo_folder)
    vfm = demo_folder / "runs/tiny/vfm.safetensors"
    lean = export_bundle("runs/tiny/stage1", "runs/tiny/stage2", tmp_path / "lean")
    full = export_bundle("runs/tiny/stage1", "runs/tiny/stage2", tmp_path / "full", include_vfm=True)
    fingerprint = read_bundle(tmp_path / "lean").meta["vfm"]["weights"]
    assert lean["needs"]["vfm"]["weights"] == fingerprint and full["needs"]["vfm"] is None
    assert full["files"]["vfm"] == "vfm/vfm.safetensors" and "vfm" not in lean["files"]
    moved = vfm.rename(tmp_path / "vfm.safetensors")  # the weights are no longer where the cache recorded them
    try:
        with pytest.raises(MissingWeightsError):
            Re2PixPipeline.from_pretrained(tmp_path / "lean")
        assert Re2PixPipeline.from_pretrained(tmp_path / "lean", vfm_weights=str(moved)).provenance["vfm"]["weights"] == fingerprint
        assert Re2PixPipeline.from_pretrained(tmp_path / "full").provenance["vfm"]["weights"] == fingerprint
    finally:
        moved.rename(vfm)
