"""The frozen VFM: shapes, the layer/norm/prefix rule against a manual loop, weight formats, refusal, SigLIP-2."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed

from configs.schema import VFMConfig, load_config
from pipeline.vfm import VFMExtractor, build_vfm
from pipeline.weights import MissingWeightsError, WeightsFormatError

DINO = "vit_base_patch14_reg4_dinov2.lvd142m"
SIGLIP2 = "vit_base_patch16_siglip_224.v2_webli"
TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2}
DATA = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Never reach for the hub in tests (it is also what a machine without internet looks like)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_cfg(**changes) -> VFMConfig:
    base = VFMConfig(name=DINO, layers=[0, 2], input_height=56, input_width=112, overrides=dict(TINY))
    return dataclasses.replace(base, **changes)


def frames(batch=2, h=40, w=90, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=g)


def manual_features(vfm: VFMExtractor, x: torch.Tensor) -> torch.Tensor:
    """DINO-Foresight's rule written out: blocks -> final norm each -> drop prefix tokens -> concat channels."""
    model = vfm.model
    x = F.interpolate(x, size=vfm.input_size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    tokens = model.norm_pre(model._pos_embed(model.patch_embed((x - mean) / std)))
    outs = []
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            tokens = block(tokens)
            if i in vfm.layers:
                patch = model.norm(tokens)[:, model.num_prefix_tokens :]
                outs.append(patch.reshape(x.shape[0], *vfm.grid, -1).permute(0, 3, 1, 2))
    return torch.cat(outs, dim=1)


def test_tiny_config_shape_channels_grid():
    cfg = load_config("tiny").vfm
    vfm = build_vfm(cfg, allow_random_weights=True)
    d = cfg.overrides["embed_dim"]
    assert vfm.out_channels == d * len(cfg.layers)
    assert vfm.grid == (cfg.input_height // 14, cfg.input_width // 14)
    assert vfm.weights == "random"
    out = vfm(frames(2, 64, 128))
    assert out.shape == (2, vfm.out_channels, *vfm.grid) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert vfm.meta()["weights"] == "random" and vfm.meta()["channels"] == vfm.out_channels


def test_features_match_a_manual_loop_with_norm_and_prefix_drop():
    vfm = build_vfm(tiny_cfg(layers=[0, 2]), allow_random_weights=True)
    assert vfm.num_prefix_tokens == 5  # CLS + 4 registers
    assert vfm.mean.flatten().tolist() == pytest.approx(IMAGENET_DEFAULT_MEAN)
    assert vfm.std.flatten().tolist() == pytest.approx(IMAGENET_DEFAULT_STD)
    x = frames()
    out, ref = vfm(x), manual_features(vfm, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # Channel slice i*D:(i+1)*D is layer i, each normalised by the final LayerNorm (mean ~ bias, not raw tokens).
    d = vfm.embed_dim
    assert not torch.allclose(out[:, :d], out[:, d:])
    per_token = out[:, :d].permute(0, 2, 3, 1).reshape(-1, d)
    normed = (per_token - vfm.model.norm.bias) / vfm.model.norm.weight
    torch.testing.assert_close(normed.mean(-1), torch.zeros(normed.shape[0]), atol=1e-4, rtol=0)


def test_frames_at_the_input_size_are_only_normalised():
    vfm = build_vfm(tiny_cfg(), allow_random_weights=True)
    x = frames(1, *vfm.input_size)
    torch.testing.assert_close(vfm.preprocess(x), (x - vfm.mean) / vfm.std)


def test_random_weights_are_identical_across_builds_and_leave_the_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    a = build_vfm(tiny_cfg(), allow_random_weights=True)
    assert torch.equal(torch.rand(2), expected)
    b = build_vfm(tiny_cfg(), allow_random_weights=True)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = frames()
    assert torch.equal(a(x), b(x))


def test_refusal_without_weights_names_the_fix():
    with pytest.raises(MissingWeightsError) as err:
        build_vfm(tiny_cfg())
    msg = str(err.value)
    assert "--vfm-weights PATH" in msg and "--allow-random-weights" in msg and "dinov2_vitb14_reg4_pretrain.pth" in msg
    with pytest.raises(MissingWeightsError, match=r"missing\.pth.*--vfm-weights"):
        build_vfm(tiny_cfg(weights="/nonexistent/missing.pth"))


def test_timm_format_file_loads_and_is_fingerprinted(tmp_path):
    source = build_vfm(tiny_cfg(), allow_random_weights=True)
    with torch.no_grad():  # make the file differ from the seeded init, so loading is really tested
        for p in source.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = build_vfm(tiny_cfg(weights=str(path)))
    assert re.fullmatch(r"file:[0-9a-f]{16}", loaded.weights)
    x = frames()
    torch.testing.assert_close(loaded(x), source(x))


def official_dinov2_state(model) -> dict[str, torch.Tensor]:
    """A timm DINOv2-reg model rewritten in the official checkpoint layout (dinov2_vitb14_reg4_pretrain.pth)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    pos0 = 0.02 * torch.randn(1, 1, sd["pos_embed"].shape[-1], generator=g)  # the CLS position, folded by timm
    official = {
        "cls_token": sd.pop("cls_token") - pos0,
        "register_tokens": sd.pop("reg_token"),
        "pos_embed": torch.cat([pos0, sd.pop("pos_embed")], dim=1),
        "mask_token": torch.zeros(1, sd["norm.weight"].shape[0]),
    }
    official.update(sd)  # patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}, norm.*
    return official


def test_official_dinov2_checkpoint_loads_and_resamples_the_position_grid(tmp_path):
    # The official file stores a square position grid (37x37 for ViT-B/14); here 5x5 at a 70x70 input.
    torch.manual_seed(3)
    source = timm.create_model(DINO, pretrained=False, img_size=70, num_classes=0, **TINY).eval()
    official = official_dinov2_state(source)
    assert {"cls_token", "register_tokens", "mask_token", "blocks.0.ls1.gamma", "blocks.0.mlp.fc1.weight"} <= set(official)
    path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(official, path)

    same_grid = build_vfm(tiny_cfg(weights=str(path), input_height=70, input_width=70))
    reference = VFMExtractor(source, [0, 2], (70, 70), "reference")
    x = frames(1, 70, 70)
    torch.testing.assert_close(same_grid(x), reference(x), rtol=1e-5, atol=1e-5)

    other_grid = build_vfm(tiny_cfg(weights=str(path)))  # 56x112 -> 4x8 patches
    expected = resample_abs_pos_embed(source.pos_embed, new_size=[4, 8], old_size=[5, 5], num_prefix_tokens=0)
    torch.testing.assert_close(other_grid.model.pos_embed, expected)
    torch.testing.assert_close(other_grid.model.cls_token, source.cls_token)
    assert other_grid(frames()).shape == (2, other_grid.out_channels, 4, 8)


def test_wrong_size_weights_are_rejected_with_the_file_name(tmp_path):
    torch.manual_seed(0)
    other = timm.create_model(DINO, pretrained=False, img_size=(56, 112), num_classes=0, embed_dim=48, depth=3, num_heads=2)
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(WeightsFormatError, match=r"other\.pth.*do not fit"):
        build_vfm(tiny_cfg(weights=str(path)))


def test_siglip2_variant_has_no_prefix_tokens_and_its_own_normalisation():
    cfg = tiny_cfg(name=SIGLIP2, input_height=64, input_width=128, layers=[1, 2])
    vfm = build_vfm(cfg, allow_random_weights=True)
    assert vfm.num_prefix_tokens == 0
    assert vfm.grid == (4, 8) and vfm.out_channels == 2 * TINY["embed_dim"]
    assert vfm.mean.flatten().tolist() == pytest.approx([0.5] * 3)
    x = frames()
    out = vfm(x)
    assert out.shape == (2, vfm.out_channels, 4, 8)
    torch.testing.assert_close(out, manual_features(vfm, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"layers": [2, 0]}, "increasing order"),
        ({"layers": [0, 3]}, "< depth 3"),
        ({"layers": []}, "empty"),
        ({"input_height": 50}, "multiple of the patch size"),
        ({"name": "not_a_timm_model"}, "not a timm model"),
    ],
)
def test_bad_config_is_rejected_clearly(changes, match):
    with pytest.raises(ValueError, match=match):
        build_vfm(tiny_cfg(**changes), allow_random_weights=True)


def test_bad_frames_are_rejected():
    vfm = build_vfm(tiny_cfg(), allow_random_weights=True)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        vfm(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        vfm(torch.rand(1, 4, 32, 32))


def test_stays_frozen():
    vfm = build_vfm(tiny_cfg(), allow_random_weights=True)
    vfm.train()
    assert not vfm.training and not vfm.model.training
    assert not any(p.requires_grad for p in vfm.parameters())


def test_real_cityscapes_frame():
    frame_dir = DATA / "cityscapes_sample" / "leftImg8bit_sequence" / "val" / "frankfurt"
    pngs = sorted(frame_dir.glob("*.png")) if frame_dir.is_dir() else []
    if not pngs:
        pytest.skip(f"real sample data not found under {frame_dir}")
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(pngs[-1]).convert("RGB"))  # 1024x2048
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    vfm = build_vfm(load_config("tiny").vfm, allow_random_weights=True)
    x = vfm.preprocess(image)
    assert x.shape == (1, 3, *vfm.input_size)
    # Antialiased downsizing keeps the image's statistics (no aliasing blow-up of the per-channel means).
    mean_in = ((image - vfm.mean) / vfm.std).mean(dim=(2, 3))
    torch.testing.assert_close(x.mean(dim=(2, 3)), mean_in, atol=0.02, rtol=0)
    out = vfm(image)
    assert out.shape == (1, vfm.out_channels, *vfm.grid) and torch.isfinite(out).all()


def test_paper_config_looks_for_the_published_hub_weights_and_refuses_offline():
    from pipeline.vfm import _hub_repo

    paper = load_config("paper").vfm
    assert _hub_repo(paper) == "timm/vit_base_patch14_reg4_dinov2.lvd142m"
    assert _hub_repo(dataclasses.replace(paper, name=SIGLIP2)) == f"timm/{SIGLIP2}"
    assert _hub_repo(tiny_cfg()) is None  # size overrides: the published weights cannot apply
    with pytest.raises(MissingWeightsError, match="--vfm-weights"):
        build_vfm(paper)


def test_cached_hub_weights_are_used_before_random_ones(tmp_path, monkeypatch):
    source = build_vfm(tiny_cfg(), allow_random_weights=True)
    with torch.no_grad():
        for p in source.model.parameters():
            p.mul_(1.5)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    monkeypatch.setattr("pipeline.vfm._hub_file", lambda cfg: path)
    loaded = build_vfm(tiny_cfg())
    assert loaded.weights == f"hub:{DINO}"
    x = frames()
    torch.testing.assert_close(loaded(x), source(x))
