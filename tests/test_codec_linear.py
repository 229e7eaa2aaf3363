"""The learned linear codec: the fit is a PCA of the pixel blocks, its error is the discarded variance, the frame and
shape rules, the file format, and what a cache that lost or changed its codec file does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from configs.schema import CodecConfig, ConfigError, load_config
from pipeline.codec import frame_psnr
from pipeline.codec_factory import build_codec
from pipeline.codec_linear import (
    LinearCodec,
    LinearCodecError,
    add_video,
    block_accumulator,
    fit_linear_codec,
)
from pipeline.codec_pixel import PixelCodec


def smooth_video(b=2, t=9, h=16, w=32, seed=0) -> torch.Tensor:
    """Correlated (low-pass) random video in [-1, 1], so the block PCA has a clear spectrum."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, t, h // 4, w // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(t, h, w), mode="trilinear", align_corners=False)
    return (x * 2 - 1) * 0.9 + 0.05 * torch.randn(b, 3, t, h, w, generator=g)


def fitted(r=4, s=4, channels=16, video=None) -> tuple[LinearCodec, torch.Tensor]:
    video = smooth_video() if video is None else video
    acc = block_accumulator(r, s)
    add_video(acc, PixelCodec(r, s), video)
    return fit_linear_codec(acc, channels, r, s), video


def blocks_of(video: torch.Tensor, r: int = 4, s: int = 4) -> np.ndarray:
    b = PixelCodec(r, s).encode(video)
    return b.permute(0, 2, 3, 4, 1).reshape(-1, b.shape[1]).double().numpy()


def test_fit_equals_a_direct_pca_of_the_blocks():
    codec, video = fitted()
    x = blocks_of(video)
    centred = x - x.mean(0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    population = sv**2 / len(x)
    np.testing.assert_allclose(codec.mean.double().numpy(), x.mean(0), atol=1e-6)
    np.testing.assert_allclose(codec.eigenvalues.double().numpy(), population, rtol=1e-4, atol=1e-9)
    # Same subspace, same directions up to sign; unit-variance latents with zero mean on the fit data.
    comps = codec.components.double().numpy()
    np.testing.assert_allclose(np.abs((comps * vt[:16]).sum(1)), 1.0, atol=1e-4)
    z = codec.encode(video)
    flat = z.permute(0, 2, 3, 4, 1).reshape(-1, 16).double()
    np.testing.assert_allclose(flat.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(flat.std(0, unbiased=False).numpy(), 1.0, atol=1e-3)


def test_round_trip_error_equals_the_discarded_variance():
    for channels in (4, 16, 48):
        codec, video = fitted(channels=channels)
        x = PixelCodec(4, 4).encode(video).double()
        coeff = codec.encode(video).double() * codec.latents_std.double().view(1, -1, 1, 1, 1)
        recon = torch.einsum("bcthw,cd->bdthw", coeff, codec.components.double()) + codec.mean.double().view(1, -1, 1, 1, 1)
        mse = float(((recon - x) ** 2).mean())  # block space: the decoder keeps one copy of the repeated frame 0
        assert mse == pytest.approx(codec.discarded_variance, rel=1e-3)
    # All 192 channels: lossless up to float32 rounding.
    codec, video = fitted(channels=192)
    assert torch.allclose(codec.decode(codec.encode(video)), video, atol=1e-4)


@pytest.mark.parametrize("r, s, t", [(4, 4, 9), (4, 2, 5), (2, 4, 7)])
def test_shapes_and_frame_rule(r, s, t):
    codec, _ = fitted(r, s, channels=8, video=smooth_video(t=t))
    video = smooth_video(b=1, t=t, seed=1)
    z = codec.encode(video)
    assert z.shape == (1, 8, 1 + (t - 1) // r, 16 // s, 32 // s) and z.dtype == torch.float32
    assert codec.decode(z).shape == video.shape
    with pytest.raises(ValueError, match=r"1 \+ .*·k frames"):
        codec.encode(smooth_video(b=1, t=t + 1))
    with pytest.raises(ValueError, match="divisible by the spatial factor"):
        codec.encode(smooth_video(b=1, t=t, h=17))
    with pytest.raises(ValueError, match="latents must be"):
        codec.decode(torch.zeros(1, 9, 2, 4, 8))


def test_save_load_round_trip_and_corruption(tmp_path):
    codec, video = fitted()
    path = tmp_path / "codec.safetensors"
    codec.save(path)
    loaded = LinearCodec.load(path)
    assert loaded.weights == codec.weights and loaded.weights.startswith("fit:")
    assert torch.equal(loaded.encode(video), codec.encode(video))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the tensor data: the fingerprint no longer matches
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(LinearCodecError, match="bad.safetensors.*fingerprint"):
        LinearCodec.load(bad)
    with pytest.raises(LinearCodecError, match="does not exist"):
        LinearCodec.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(LinearCodecError, match="junk.safetensors"):
        LinearCodec.load(tmp_path / "junk.safetensors")


def test_build_codec_reads_the_file_and_checks_the_config(tmp_path):
    codec, _ = fitted()
    path = tmp_path / "codec.safetensors"
    codec.save(path)
    cfg = CodecConfig(name="linear", temporal_factor=4, spatial_factor=4, latent_channels=16, weights=str(path))
    assert build_codec(cfg).weights == codec.weights
    with pytest.raises(ValueError, match="channels.*16.*config says.*8"):
        build_codec(CodecConfig(name="linear", temporal_factor=4, spatial_factor=4, latent_channels=8, weights=str(path)))
    with pytest.raises(LinearCodecError, match="fitted by `python cli.py cache`"):
        build_codec(CodecConfig(name="linear", temporal_factor=4, spatial_factor=4, latent_channels=16))


def test_config_validates_the_channel_count():
    with pytest.raises(ConfigError, match="latent_channels=500.*1..192"):
        load_config("tiny", ["codec.latent_channels=500"])
    with pytest.raises(ConfigError, match="codec.name='vq'"):
        load_config("tiny", ["codec.name=vq"])


def test_frame_psnr():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 255
    psnr = frame_psnr(b, a)
    assert psnr[0] == 100.0 and psnr[1] == pytest.approx(0.0)


def test_bench_codec_measures_every_codec(tmp_path):
    from eval.bench.codec import run

    figures = run(load_config("tiny"), limit=2)
    assert figures["pixel (lossless)"]["psnr_db"] == 100.0 and figures["pixel (lossless)"]["ssim"] == pytest.approx(1.0)
    linear = figures["linear (16 ch)"]
    assert 20.0 < linear["psnr_db"] < 100.0 and linear["channels"] == 16 and linear["latent_numbers"] == 16 * 7 * 16 * 32
    assert linear["encode_s"] > 0 and linear["decode_s"] > 0
