"""`pretrain-vfm`: the views and masks, the probe's sampled upsampling, the diagnosis it fixes (LayerScale 1e-5 makes
the blocks the identity), and a tiny run end to end: timm-compatible weights + a record that `build_vfm` loads like a
DINOv2 checkpoint, reused by its settings key and refused when it names other weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from configs.schema import ConfigError, load_config
from models.vfm_pretraining import MaskedLatentPredictor, set_layer_scale
from pipeline.synthetic.frames import HELD_OUT_STREAM, PRETRAIN_STREAM, render_world_frames
from pipeline.vfm import VFMExtractor, build_vfm, create_vit, record_path
from pipeline.weights import WeightsFormatError, file_weights_tag, seeded
from train.vfm_pretrain import WEIGHTS_FILE, pretrain_vfm, settings_key, with_pretrained_vfm
from train.vfm_probe import extract_features, layer_differences, sample_logits
from train.vfm_views import ViewSpec, block_masks, random_resized_crops

TINY_RUN = [
    "vfm_pretrain.steps=3", "vfm_pretrain.snippets=4", "vfm_pretrain.frames_per_snippet=2", "vfm_pretrain.batch_size=4",
    "vfm_pretrain.probe_snippets=4", "vfm_pretrain.probe_val_snippets=2", "vfm_pretrain.probe_steps=3",
]


def test_sample_logits_equals_bilinear_upsampling_at_the_sampled_pixels():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 16, generator=gen, dtype=torch.float64)
    size = (64, 128)
    ys = torch.randint(size[0], (2, 300), generator=gen)
    xs = torch.randint(size[1], (2, 300), generator=gen)
    full = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    expected = full[torch.arange(2)[:, None], :, ys, xs].permute(0, 2, 1)  # [B, K, P]
    got = sample_logits(logits, ys, xs, size)
    assert got.shape == (2, 5, 300)
    assert (got - expected).abs().max() < 1e-12


def test_block_masks_hide_the_asked_fraction_and_are_a_function_of_the_generator():
    grid = (8, 16)
    a = block_masks(64, grid, (0.3, 0.6), 1.0, torch.Generator().manual_seed(3))
    b = block_masks(64, grid, (0.3, 0.6), 1.0, torch.Generator().manual_seed(3))
    assert a.shape == (64, 128) and a.dtype == torch.bool and torch.equal(a, b)
    fraction = a.float().mean(1)
    assert fraction.min() >= 0.3 - 1e-9 and fraction.max() <= 0.85  # rectangles overshoot the target by at most one
    assert not block_masks(8, grid, (0.3, 0.6), 0.0, torch.Generator().manual_seed(3)).any()  # probability 0: none


def test_random_resized_crops_are_whole_patch_grids_and_crop_the_image():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 64, 128, generator=gen)
    crops = random_resized_crops(images, ViewSpec(size=(112, 224), count=2, scale=(1.0, 1.0)), gen)
    assert crops.shape == (6, 3, 112, 224)
    # scale 1 with the frame's own aspect ratio (up to jitter): every crop is image b resized, possibly flipped
    resized = F.interpolate(images, size=(112, 224), mode="bilinear", align_corners=False)
    for v in range(6):
        target = resized[v % 3]
        err = min((crops[v] - target).abs().mean(), (crops[v].flip(-1) - target).abs().mean())
        assert err < 0.2  # the aspect jitter shifts a few pixels; another image would be ~0.33 away


def test_layer_scale_init_is_why_the_random_vfm_is_a_pixel_projection():
    cfg = load_config("tiny")
    frames = render_world_frames(0, HELD_OUT_STREAM, 2, [19], cfg.window.height, cfg.window.width).rgb
    with seeded(0):
        vit = create_vit(cfg.vfm)
    extractor = VFMExtractor(vit, cfg.vfm.layers, (cfg.vfm.input_height, cfg.vfm.input_width), "random")
    timm_init = layer_differences(extract_features(extractor, frames), vit.embed_dim)
    set_layer_scale(vit, 1.0)
    unit = layer_differences(extract_features(extractor, frames), vit.embed_dim)
    assert max(timm_init) < 1e-4  # gamma = 1e-5: every block passes its input through
    assert min(unit) > 0.1


def test_masked_latent_prediction_learns_and_the_teacher_follows():
    cfg = load_config("tiny")
    with seeded(0):
        vit = create_vit(cfg.vfm)
    set_layer_scale(vit, 1.0)
    model = MaskedLatentPredictor(vit, target_layers=2)
    x = torch.randn(4, 3, cfg.vfm.input_height, cfg.vfm.input_width, generator=torch.Generator().manual_seed(0))
    mask = block_masks(4, model.grid, (0.4, 0.5), 1.0, torch.Generator().manual_seed(0))
    params = [p for n, p in model.named_parameters() if not n.startswith("teacher.")]
    assert not any(p.requires_grad for p in model.teacher.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(40):  # a fixed teacher (momentum 1): the student must fit its targets on one batch
        loss, _ = model(x, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.75 * losses[0]  # measured: 0.557 -> 0.346 (targets of noise frames are hard)
    before = [p.clone() for p in model.teacher.parameters()]
    model.update_teacher(0.0)  # momentum 0: the teacher becomes the student
    assert all(torch.equal(t, s) for t, s in zip(model.teacher.parameters(), model.student.parameters()))
    assert any(not torch.equal(b, t) for b, t in zip(before, model.teacher.parameters()))
    with pytest.raises(ValueError, match="target_layers"):
        MaskedLatentPredictor(vit, target_layers=9)


def test_pretrain_frames_are_disjoint_from_the_probe_and_deterministic():
    a = render_world_frames(5, PRETRAIN_STREAM, 2, [0, 19], 32, 64)
    b = render_world_frames(5, PRETRAIN_STREAM, 2, [0, 19], 32, 64)
    held = render_world_frames(5, HELD_OUT_STREAM, 2, [0, 19], 32, 64)
    assert a.rgb.shape == (4, 32, 64, 3) and a.segmentation.shape == (4, 32, 64) and list(a.snippet) == [0, 0, 1, 1]
    assert (a.rgb == b.rgb).all() and not (a.rgb == held.rgb).all()


def test_tiny_pretraining_exports_weights_that_load_like_a_dinov2_checkpoint(tmp_path):
    cfg = load_config("tiny", TINY_RUN + ["vfm_pretrain.aux_weight=1.0"])
    record, reused = pretrain_vfm(cfg, tmp_path / "vfm")
    weights = tmp_path / "vfm" / WEIGHTS_FILE
    assert not reused and weights.is_file() and record_path(weights).is_file()
    on_disk = json.loads(record_path(weights).read_text())
    for key in ("objective", "steps", "data_seed", "seconds", "layer_difference", "settings_key", "weights_fingerprint"):
        assert key in on_disk, key
    assert on_disk["probe"].keys() >= {"miou", "miou_random", "miou_by_components"}
    assert on_disk["label_free"] is False and on_disk["auxiliary_targets"] == ["segmentation", "depth"]
    assert set(on_disk["probe"]["miou_by_components"]) == {"8", "16", "32"}

    # the same code path as a real checkpoint: a timm state dict, strict keys, the record travels into meta
    vfm = build_vfm(dataclasses.replace(cfg.vfm, weights=str(weights)))
    assert vfm.weights == file_weights_tag(weights) and vfm.weights != "random"
    assert vfm.meta()["pretraining"]["description"] == "tiny VFM pretrained on the synthetic world"
    assert vfm.description == "tiny VFM pretrained on the synthetic world"

    # same settings: reused without writing; other settings: another key, so another folder
    stamp = weights.stat().st_mtime_ns
    again, reused = pretrain_vfm(cfg, tmp_path / "vfm")
    assert reused and again == on_disk and weights.stat().st_mtime_ns == stamp
    assert settings_key(load_config("tiny", TINY_RUN + ["vfm_pretrain.steps=4"])) != settings_key(cfg)
    made, remade, reused = with_pretrained_vfm(cfg, tmp_path)
    assert made.vfm.weights == str(tmp_path / "vfm" / settings_key(cfg) / WEIGHTS_FILE) and not reused
    assert remade["weights_fingerprint"] == on_disk["weights_fingerprint"]  # same settings, same bytes

    # a record that names other weights is refused, not reported
    tensors = load_file(weights)
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1
    save_file(tensors, weights)
    with pytest.raises(WeightsFormatError, match="weights_fingerprint"):
        build_vfm(dataclasses.replace(cfg.vfm, weights=str(weights)))


def test_pretraining_refuses_an_architecture_with_published_weights():
    with pytest.raises(ConfigError, match="published weights"):
        pretrain_vfm(load_config("paper"))
    cfg = load_config("paper")
    assert with_pretrained_vfm(cfg) == (cfg, None, True)  # DINOv2 at paper size: nothing to make


@pytest.mark.slow  # pretrains through the CLI, then caches with Ray: 1-2.5 min
def test_cache_with_vfm_weights_records_the_pretrained_vfm(sample_data, tmp_path):
    """The CLI path a researcher takes: `pretrain-vfm`, then `cache --vfm-weights`; meta.json names the weights by
    fingerprint (not `random`) and carries the pretraining record."""
    from typer.testing import CliRunner

    from cli import app

    sets = [arg for s in TINY_RUN for arg in ("--set", s)]
    made = CliRunner().invoke(app, ["pretrain-vfm", "--out", str(tmp_path / "vfm"), "--render-workers", "1", *sets])
    assert made.exit_code == 0, made.output
    assert "pretrain-vfm: VFM made" in made.output and "probe mIoU" in made.output
    weights = tmp_path / "vfm" / WEIGHTS_FILE
    cached = CliRunner().invoke(app, ["cache", "--dataset", "synthetic", "--root", str(sample_data), "--out",
                                      str(tmp_path / "cache"), "--workers", "1", "--vfm-weights", str(weights)])
    assert cached.exit_code == 0, cached.output
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["vfm"]["weights"] == file_weights_tag(weights)
    assert meta["vfm"]["pretraining"]["weights_fingerprint"] == file_weights_tag(weights).removeprefix("file:")
    assert meta["vfm"]["pretraining"]["probe"]["miou_random"] >= 0
