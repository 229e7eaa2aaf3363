"""The metrics behind reproduce's verdicts against their reference implementations, with shared random weights.

Both sides get the SAME state dict (seeded, variance-preserving random weights and random BatchNorm statistics, so
no layer is an identity and every feature varies with the input) and the SAME uint8 frames; each side then runs
its own pre-processing (resize, scaling) and network, and the features (and the Fréchet distance on them) must
agree to float32 round-off. References, from the dev extras (`pip install -e ".[dev]"`, which .ci/run does):
  * FVD: cd-fvd 0.1.1 (`cdfvd.third_party.i3d`: piergiaj's InceptionI3d and `preprocess_i3d`, TATS's protocol);
  * FID: torch-fidelity 0.4.0 (`FeatureExtractorInceptionV3("inception-v3-compat")`, the TF-FID-compatible port).
Without them the tests are skipped (pytest.importorskip), not passed. Measured max abs differences are in README
"Long study preset and reference checks".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.feature_nets import build_fid_extractor, build_fvd_extractor, variance_preserving_init
from eval.frechet import FeatureStats, frechet_distance
from models.i3d import InceptionI3d
from models.inception import FIDInceptionV3


def _random_batchnorm_statistics(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net


def _clips(seed: int, b: int = 3, t: int = 12, h: int = 64, w: int = 128) -> np.ndarray:
    """Smooth moving uint8 clips [B, T, H, W, 3] (cd-fvd's layout): gradients + noise, shifted over time."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((b, t, h, w, 3), dtype=np.uint8)
    for i in range(b):
        phase = rng.uniform(0, 2 * np.pi, 3)
        for j in range(t):
            for c in range(3):
                wave = 127 + 100 * np.sin((x + 3 * j) / (8 + 4 * c) + phase[c]) * np.cos(y / (6 + i))
                out[i, j, :, :, c] = np.clip(wave + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8)
    return out


def test_i3d_port_matches_cd_fvd_on_the_same_clip_and_weights(tmp_path):
    reference_i3d = pytest.importorskip("cdfvd.third_party.i3d.pytorch_i3d")
    reference_utils = pytest.importorskip("cdfvd.third_party.i3d.utils")
    torch.manual_seed(0)
    reference = _random_batchnorm_statistics(variance_preserving_init(reference_i3d.InceptionI3d(400, in_channels=3)), 1)
    reference.eval()
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(reference.state_dict(), path)
    ours = build_fvd_extractor(str(path))  # the evaluate path: our loader, our resize, our InceptionI3d
    assert isinstance(ours.net, InceptionI3d) and not ours.torchscript

    clips = _clips(seed=2, b=2)  # [B, T, H, W, 3] uint8, the tiny config's 64x128 window and 12 predicted frames
    with torch.no_grad():
        expected = reference(reference_utils.preprocess_i3d(clips)).double()
        got = ours(torch.from_numpy(clips).permute(0, 4, 1, 2, 3)).double()  # [B, 3, T, H, W]
    assert got.shape == expected.shape == (2, 400)
    scale = expected.abs().max().item()
    diff = (got - expected).abs().max().item()
    print(f"I3D vs cd-fvd: max abs diff {diff:.3g} (logits up to {scale:.3g})")
    assert scale > 1e-2 and (got[0] - got[1]).abs().max() > 1e-3 * scale  # the features say something about the clip
    assert diff <= 1e-4 * scale



def test_frechet_distance_matches_cd_fvd():
    """Ours (float64 sums + two eigh) vs cd-fvd's (torch SVD square roots), on correlated 400-d features."""
    reference_utils = pytest.importorskip("cdfvd.third_party.i3d.utils")
    g = torch.Generator().manual_seed(7)
    mix = torch.randn(400, 400, generator=g, dtype=torch.float64) / 20
    a = torch.randn(500, 400, generator=g, dtype=torch.float64) @ mix
    b = torch.randn(450, 400, generator=g, dtype=torch.float64) @ (mix * 1.1) + 0.05
    ours_fd = frechet_distance(FeatureStats(400).update(a), FeatureStats(400).update(b))
    reference_fd = float(reference_utils.frechet_distance(a, b))
    print(f"Frechet distance: ours {ours_fd:.9g}, cd-fvd {reference_fd:.9g}")
    assert ours_fd > 0.5 and ours_fd == pytest.approx(reference_fd, rel=1e-6)


@pytest.mark.parametrize("size", [(64, 128), (299, 299)])
def test_inception_wrapper_matches_torch_fidelity_on_the_same_images_and_weights(tmp_path, size):
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    torch.manual_seed(4)
    net = _random_batchnorm_statistics(variance_preserving_init(FIDInceptionV3()), 5)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    ours = build_fid_extractor(str(path))  # the evaluate path: float frames in [-1, 1] are quantised to uint8 first
    reference = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    reference.eval()

    frames = torch.from_numpy(_clips(seed=6, b=1, t=3, h=size[0], w=size[1])[0]).permute(0, 3, 1, 2).contiguous()  # [3, 3, H, W]
    with torch.no_grad():
        expected = reference(frames)[0].double()
        got = ours(frames.float() / 127.5 - 1.0).double()  # the codec's range, as evaluate hands predicted frames
    assert got.shape == expected.shape == (3, 2048)
    scale = expected.abs().max().item()
    diff = (got - expected).abs().max().item()
    print(f"Inception {size} vs torch-fidelity: max abs diff {diff:.3g} (features up to {scale:.3g})")
    assert scale > 1e-2 and (got[0] - got[1]).abs().max() > 1e-3 * scale
    assert diff <= 1e-4 * scale
