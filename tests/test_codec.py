"""Codecs: the lossless pixel codec (exact, documented layout) and the WAN2.1 VAE on a tiny random config."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from diffusers import AutoencoderKLWan

from configs.schema import CodecConfig, load_config
from pipeline.codec import Codec
from pipeline.codec_factory import build_codec
from pipeline.codec_pixel import PixelCodec
from pipeline.codec_wan import (
    WanCodec,
    diffusers_to_original,
    is_original_layout,
    original_to_diffusers,
)
from pipeline.weights import MissingWeightsError, WeightsFormatError

# Published WAN2.1 latent statistics (reference/cosmos_predict2_dit.md §4).
WAN_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
            0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]  # fmt: skip
WAN_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
           3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]  # fmt: skip
TINY_WAN = {"base_dim": 8, "num_res_blocks": 1}


def video(b=1, t=5, h=32, w=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


# ------------------------------------------------------------------------------------------ pixel


@pytest.mark.parametrize("r, s, t", [(4, 4, 9), (4, 8, 1), (3, 2, 7), (1, 2, 3), (4, 1, 5)])
def test_pixel_round_trip_is_bit_exact(r, s, t):
    codec = PixelCodec(r, s)
    x = video(2, t, 16, 24)
    z = codec.encode(x)
    assert z.shape == (2, 3 * r * s * s, 1 + (t - 1) // r, 16 // s, 24 // s) and z.dtype == torch.float32
    assert torch.equal(codec.decode(z), x)


def test_pixel_channel_layout_follows_the_documented_formula():
    r, s = 4, 2
    codec = PixelCodec(r, s)
    x = video(1, 9, 4, 6)
    z = codec.encode(x)
    for j in range(z.shape[2]):
        for t in range(r):
            frame = 0 if j == 0 else r * (j - 1) + 1 + t  # latent frame 0 repeats pixel frame 0
            for c in range(3):
                for dy in range(s):
                    for dx in range(s):
                        channel = t * 3 * s * s + c * s * s + dy * s + dx
                        assert torch.equal(z[0, channel, j], x[0, c, frame, dy::s, dx::s])


def test_pixel_codec_from_the_tiny_config():
    cfg = load_config("tiny", ["codec.name=pixel"])
    codec = build_codec(cfg.codec)
    assert isinstance(codec, Codec) and codec.weights == "lossless"
    assert codec.channels == cfg.codec.channels == 3 * 4 * 4 * 4
    x = video(1, cfg.window.frames, cfg.window.height, cfg.window.width)
    z = codec.encode(x)
    assert z.shape == (1, codec.channels, cfg.latent_frames, *cfg.latent_hw)
    assert torch.equal(codec.decode(z), x)
    assert codec.meta() == {"name": "pixel", "temporal_factor": 4, "spatial_factor": 4, "channels": 192, "weights": "lossless"}


def test_frame_rule_and_bad_shapes_are_rejected():
    codec = PixelCodec(4, 4)
    assert [codec.latent_frames(n) for n in (1, 5, 25)] == [1, 2, 7]
    assert codec.pixel_frames(7) == 25
    with pytest.raises(ValueError, match=r"1 \+ 4·k frames.*got 6.*Use 5 or 9"):
        codec.latent_frames(6)
    with pytest.raises(ValueError, match="got 6"):
        codec.encode(video(1, 6, 16, 16))
    with pytest.raises(ValueError, match="divisible by the spatial factor 4"):
        codec.encode(video(1, 5, 18, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        codec.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 192, T, h, w\]"):
        codec.decode(torch.zeros(1, 191, 2, 4, 4))


def test_unknown_codec_name_is_rejected():
    with pytest.raises(ValueError, match="choose 'wan', 'linear' or 'pixel'"):
        build_codec(CodecConfig(name="vqgan"))


# -------------------------------------------------------------------------------------------- wan


def wan_cfg(**changes) -> CodecConfig:
    return dataclasses.replace(CodecConfig(name="wan", overrides=dict(TINY_WAN)), **changes)


@pytest.fixture(scope="module")
def wan() -> WanCodec:
    return build_codec(wan_cfg(), allow_random_weights=True)


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return video(1, 5, 32, 32)


@pytest.fixture(scope="module")
def latents(wan, clip) -> torch.Tensor:
    return wan.encode(clip)


def test_wan_shapes_and_metadata(wan, clip, latents):
    assert (wan.temporal_factor, wan.spatial_factor, wan.channels, wan.weights) == (4, 8, 16, "random")
    z = latents
    assert z.shape == (1, 16, 2, 4, 4) and z.dtype == torch.float32
    y = wan.decode(z)
    assert y.shape == clip.shape and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1


def test_wan_latents_are_the_normalised_posterior_mode(wan, clip, latents):
    z1, z2 = latents, wan.encode(clip)
    assert torch.equal(z1, z2)  # the mode, never a sample
    with torch.no_grad():
        mu = wan.vae.encode(clip).latent_dist.mean
    torch.testing.assert_close(z1, (mu - wan.latents_mean) / wan.latents_std)


def test_wan_normalisation_uses_the_published_constants_and_inverts(wan):
    assert wan.latents_mean.flatten().tolist() == pytest.approx(WAN_MEAN)
    assert wan.latents_std.flatten().tolist() == pytest.approx(WAN_STD)
    mu = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 3
    torch.testing.assert_close(wan.denormalize(wan.normalize(mu)), mu)
    torch.testing.assert_close(wan.normalize(wan.latents_mean.expand(1, 16, 1, 1, 1)), torch.zeros(1, 16, 1, 1, 1))


def test_wan_decode_unnormalises_before_the_vae(wan):
    z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = wan.vae.decode(z * wan.latents_std + wan.latents_mean).sample
    torch.testing.assert_close(wan.decode(z), expected)


def test_wan_is_causal(wan, clip, latents):
    longer = torch.cat([clip, video(1, 4, 32, 32, seed=5)], dim=2)  # 9 frames = 1 + 4·2
    torch.testing.assert_close(wan.encode(longer)[:, :, :2], latents, rtol=1e-4, atol=1e-5)


def test_wan_refuses_without_weights_and_random_is_deterministic(wan, monkeypatch):
    with pytest.raises(MissingWeightsError) as err:
        build_codec(wan_cfg())
    assert "--codec-weights PATH" in str(err.value) and "--codec pixel" in str(err.value) and "--allow-random-weights" in str(err.value)
    with pytest.raises(MissingWeightsError, match=r"Wan2\.1_VAE\.pth.*does not exist"):
        build_codec(wan_cfg(weights="/nonexistent/Wan2.1_VAE.pth"))
    again = build_codec(wan_cfg(), allow_random_weights=True)
    sa, sb = wan.state_dict(), again.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_wan_config_mismatches_are_rejected():
    with pytest.raises(ValueError, match="latent_channels"):
        build_codec(wan_cfg(overrides={**TINY_WAN, "z_dim": 8}), allow_random_weights=True)
    with pytest.raises(ValueError, match="spatial factor"):
        build_codec(wan_cfg(spatial_factor=4), allow_random_weights=True)
    with pytest.raises(ValueError, match="codec.dtype"):
        build_codec(wan_cfg(dtype="int8"), allow_random_weights=True)


# ------------------------------------------------------------------- original WanVAE_ key names


def test_key_conversion_matches_diffusers_reference_on_the_full_size_vae():
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):  # the real 127M-parameter layout, without allocating it
        full = AutoencoderKLWan()
    expected = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    original = diffusers_to_original(full.state_dict())
    assert is_original_layout(original)
    assert {"encoder.conv1.weight", "encoder.downsamples.0.residual.0.gamma", "decoder.upsamples.4.shortcut.weight",
            "decoder.upsamples.3.resample.1.weight", "encoder.middle.1.to_qkv.weight", "conv1.weight",
            "decoder.head.2.bias"} <= set(original)  # fmt: skip
    for converted in (original_to_diffusers(original), convert_wan_vae_to_diffusers(dict(original))):
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected


def test_key_conversion_round_trips_on_the_tiny_vae(wan):
    sd = wan.vae.state_dict()
    original = diffusers_to_original(sd, num_res_blocks=1, num_stages=4)
    assert not set(original) & {k for k in sd if "down_blocks" in k or "up_blocks" in k}
    back = original_to_diffusers(original, num_res_blocks=1, num_stages=4)
    assert back.keys() == sd.keys() and all(back[k].shape == sd[k].shape for k in sd)


def test_original_checkpoint_file_loads(wan, clip, latents, tmp_path):
    original = {f"net.{k}": v for k, v in diffusers_to_original(wan.vae.state_dict(), 1, 4).items()}  # Cosmos prefix
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(original, path)
    loaded = build_codec(wan_cfg(weights=str(path)))
    assert re.fullmatch(r"file:[0-9a-f]{16}", loaded.weights)
    torch.testing.assert_close(loaded.encode(clip), latents)


def test_diffusers_folder_and_model_folder_load(wan, clip, tmp_path):
    wan.vae.save_pretrained(tmp_path / "model" / "vae")
    for folder in (tmp_path / "model" / "vae", tmp_path / "model"):
        loaded = build_codec(wan_cfg(weights=str(folder), overrides={}))
        assert loaded.weights.startswith("file:")
        z = torch.randn(1, 16, 1, 2, 2, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(loaded.decode(z), wan.decode(z))
    with pytest.raises(ValueError, match="carries its own"):
        build_codec(wan_cfg(weights=str(tmp_path / "model")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsFormatError, match="config.json"):
        build_codec(wan_cfg(weights=str(tmp_path / "empty"), overrides={}))


def test_wrong_checkpoint_is_rejected_with_the_file_name(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(2, 3, 3, 3, 3)}, path)
    with pytest.raises(WeightsFormatError, match=r"bad\.pth.*do not fit"):
        build_codec(wan_cfg(weights=str(path)))


def test_wan_bfloat16_returns_float32_latents_close_to_float32(wan, clip):
    half = build_codec(wan_cfg(dtype="bfloat16"), allow_random_weights=True)
    assert next(half.vae.parameters()).dtype == torch.bfloat16
    frame = clip[:, :, :1, :16, :16]  # bfloat16 convolutions are slow on CPUs: one small frame
    z, reference = half.encode(frame), wan.encode(frame)
    assert z.dtype == torch.float32 and z.shape == (1, 16, 1, 2, 2)
    assert (z - reference).abs().max() < 0.1 * reference.abs().max()
    assert half.decode(z).dtype == torch.float32
