"""FID / FVD feature networks: random mode, local files in both FVD formats, refusals, input conventions."""

import pytest
import torch

from eval.feature_nets import (
    FID_WEIGHTS_URL,
    FVD_TORCHSCRIPT_URL,
    ClipTooShortError,
    MissingMetricWeightsError,
    build_fid_extractor,
    build_fvd_extractor,
    is_torchscript_archive,
    to_uint8,
)
from models.i3d import InceptionI3d
from models.inception import FIDInceptionV3
from pipeline.fingerprint import file_fingerprint
from pipeline.weights import WeightsFormatError


class StyleGANVStandIn(torch.nn.Module):
    """Same call convention as StyleGAN-V's i3d_torchscript.pt; returns a feature we can predict exactly."""

    def forward(
        self, videos: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if videos.dtype != torch.uint8:
            raise RuntimeError("expected uint8 videos")
        if not (rescale and resize and return_features):
            raise RuntimeError("expected rescale=True, resize=True, return_features=True")
        per_clip = videos.float().mean(dim=(2, 3, 4))  # [B, C]: time / space mean of each channel
        return per_clip.repeat(1, 134)[:, :400] / 127.5 - 1.0


def test_to_uint8_conventions():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 128, 255, 255]  # round(127.5) = 128, out of range clamped
    assert to_uint8(torch.tensor([0.0, 0.5, 1.0]), value_range=(0.0, 1.0)).tolist() == [0, 128, 255]
    u = torch.tensor([3, 200], dtype=torch.uint8)
    assert to_uint8(u) is u


def test_missing_weights_refusal_names_the_option_and_the_download():
    with pytest.raises(MissingMetricWeightsError) as fid:
        build_fid_extractor("", allow_random=False)
    message = str(fid.value)
    assert "--fid-weights PATH" in message and "--allow-random-metric-weights" in message and FID_WEIGHTS_URL in message
    with pytest.raises(MissingMetricWeightsError) as fvd:
        build_fvd_extractor("", allow_random=False)
    assert "--fvd-weights PATH" in str(fvd.value) and FVD_TORCHSCRIPT_URL in str(fvd.value)
    with pytest.raises(MissingMetricWeightsError, match="does_not_exist.pth"):
        build_fvd_extractor("/nonexistent/does_not_exist.pth", allow_random=True)  # a named file must exist


def test_fid_random_extractor_gives_2048_features_for_uint8_and_float_input():
    extractor = build_fid_extractor("", allow_random=True)
    assert extractor.weights == "random" and extractor.dim == 2048
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, 3, 48, 80), dtype=torch.uint8, generator=g)
    as_float = frames.float() / 127.5 - 1.0  # the codec's [-1, 1] range
    feats = extractor(torch.cat([frames, to_uint8(as_float)]))
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert torch.equal(feats[0], feats[1])  # float input is quantised exactly back to the same uint8 frame
    assert (feats >= 0).all()  # post-ReLU average pool


def test_fid_file_loads_strictly_and_matches_torch_fidelity(tmp_path):
    torch.manual_seed(1)
    source = FIDInceptionV3()
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(source.state_dict(), path)
    extractor = build_fid_extractor(str(path), allow_random=False)
    assert extractor.weights == f"file:{file_fingerprint(path)}"
    assert torch.equal(extractor.net.Mixed_7c.branch_pool.conv.weight, source.Mixed_7c.branch_pool.conv.weight)

    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    reference = fidelity.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )
    frames = torch.randint(0, 256, (1, 3, 37, 61), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(extractor(frames), reference(frames)[0], rtol=1e-4, atol=1e-5)


def test_fid_refuses_a_file_of_the_wrong_network(tmp_path):
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save({"logits.conv3d.weight": torch.zeros(400, 1024, 1, 1, 1)}, path)
    with pytest.raises(WeightsFormatError, match="i3d_pretrained_400.pt"):
        build_fid_extractor(str(path))


def test_fvd_random_extractor_gives_400_logits_on_a_tiny_clip():
    extractor = build_fvd_extractor("", allow_random=True)
    assert extractor.weights == "random" and not extractor.torchscript and extractor.dim == 400
    clip = torch.rand(1, 3, 10, 24, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = extractor(clip)
    assert feats.shape == (1, 400) and torch.isfinite(feats).all()
    with pytest.raises(ClipTooShortError, match="at least 10"):
        extractor(clip[:, :, :9])


def test_fvd_state_dict_file_loads_through_the_path(tmp_path):
    torch.manual_seed(2)
    source = InceptionI3d(num_classes=400)
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, path)  # a DataParallel export
    assert not is_torchscript_archive(path)
    extractor = build_fvd_extractor(str(path), allow_random=False)
    assert extractor.weights == f"file:{file_fingerprint(path)}" and not extractor.torchscript
    loaded = extractor.net.state_dict()
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save are deprecated but make the stand-in
def test_fvd_torchscript_file_is_detected_and_called_with_the_stylegan_v_convention(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(StyleGANVStandIn()), str(path))
    assert is_torchscript_archive(path)
    extractor = build_fvd_extractor(str(path), allow_random=False)
    assert extractor.torchscript and extractor.weights == f"file:{file_fingerprint(path)}"
    clip = torch.rand(2, 3, 12, 16, 20, generator=torch.Generator().manual_seed(4)) * 2 - 1  # [B, 3, T, H, W]
    feats = extractor(clip)
    expected = StyleGANVStandIn()(to_uint8(clip), rescale=True, resize=True, return_features=True)
    assert feats.shape == (2, 400)
    torch.testing.assert_close(feats, expected)

    with pytest.raises(WeightsFormatError, match="TorchScript"):
        build_fid_extractor(str(path))  # the FID loader takes the pytorch-fid state dict, says so
