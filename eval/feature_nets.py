"""FID and FVD feature networks built from local weight files, or (only when asked) from seeded random weights.

Weights are never downloaded: the user fetches the file once and passes it with `--fid-weights PATH` /
`--fvd-weights PATH` (config `eval.fid_weights` / `eval.fvd_weights`). Without a file the builders raise
`MissingMetricWeightsError` saying what to download from where; `--allow-random-metric-weights` builds the same
architecture with seeded random weights instead (numbers meaningless, said loudly, recorded as "random").
Each extractor carries `.weights` = "file:<sha16>" | "random" for the report.

Input convention of both extractors: frames as uint8 0..255, or float in `value_range` (default [-1, 1], the
codec's pixel range). Floats are first quantised to uint8 by rounding, so predicted and real frames (which are
decoded as uint8) go through exactly the same path, as the reference implementations do.

FID (reference §3e): TF "inception-2015-12-05", 2048-d pool features, `models.inception.FIDInceptionV3` loading
`pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's file; torch-fidelity serves the same bytes). Resize to
299x299 with TF1's bilinear kernel (no antialias), then (x − 128) / 128: torch-fidelity's pipeline, the
TF-compatible one. Every predicted frame and every matching real frame is one sample.

FVD (reference §3a, §3b, §3d) — the clip protocol:
  * one sample = one clip: all predicted frames of a window (K − M frames, e.g. frames 16..27 of a Cityscapes
    snippet: 12 frames) vs the real frames at the same positions; N windows give N clips per side;
  * every frame is squashed to 224x224 as a whole (bilinear, no crop, aspect ratio not kept), as the TF reference
    and cd-fvd do; center-crop protocols (common_metrics_on_video_quality) give different numbers;
  * the feature is the 400-d Kinetics logit vector averaged over time;
  * clips shorter than `FVD_MIN_FRAMES` = 10 are refused (`ClipTooShortError`), not padded: the I3D's temporal
    pooling needs >= 9 frames and the common protocols require >= 10; repeating the last frame would feed the
    network a frozen video and silently change the metric. A configuration predicting fewer frames reports no FVD.
Two weight files are accepted, the format is detected from the file:
  * `i3d_torchscript.pt` (StyleGAN-V / fvd-comparison port of the tf.hub model, the numbers closest to TF FVD):
    a TorchScript archive, called as `detector(videos_uint8[B, 3, T, H, W], rescale=True, resize=True,
    return_features=True)`; it rescales to [-1, 1] and resizes to 224 itself;
  * `i3d_pretrained_400.pt` (TATS / cd-fvd state dict for `models.i3d.InceptionI3d`): frames are resized here with
    `F.interpolate(bilinear, align_corners=False)` to 224x224 and mapped by 2x/255 − 1, as cd-fvd does.
Numbers from the two files are not interchangeable; the report records which file (its fingerprint) was used.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.i3d import InceptionI3d
from models.inception import FEATURE_DIM as FID_FEATURE_DIM
from models.inception import FIDInceptionV3
from pipeline.console import warn_loud
from pipeline.fingerprint import RANDOM
from pipeline.weights import (
    MissingWeightsError,
    WeightsFormatError,
    file_weights_tag,
    load_into,
    load_state_dict,
    seeded,
    strip_prefix,
)

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_MIRROR = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
FVD_TORCHSCRIPT_FILE = "i3d_torchscript.pt"
FVD_TORCHSCRIPT_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
FVD_STATE_DICT_FILE = "i3d_pretrained_400.pt"
FVD_STATE_DICT_URL = "https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt"

FVD_FEATURE_DIM = 400
FVD_FRAME_SIZE = 224
FVD_MIN_FRAMES = 10
RANDOM_OPTION = "--allow-random-metric-weights"


class MissingMetricWeightsError(MissingWeightsError):
    """No weights file for a metric network; the message names the file, where to get it and the option."""


class ClipTooShortError(ValueError):
    """A clip has fewer frames than FVD's I3D protocol allows."""


def to_uint8(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """uint8 stays as is; floats in `value_range` are mapped to 0..255 and rounded (clamped first)."""
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ValueError(f"to_uint8: expected uint8 or float frames, got {x.dtype}")
    low, high = value_range
    scaled = (x.float() - low) * (255.0 / (high - low))
    return scaled.clamp(0, 255).round().to(torch.uint8)


def is_torchscript_archive(path: str | Path) -> bool:
    """TorchScript archives hold `code/` and `constants.pkl`; torch.save files hold only `data.pkl` + tensors."""
    if not zipfile.is_zipfile(path):
        return False  # legacy (pre-1.6) torch.save pickles are not zip files; TorchScript always is
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in n or n.startswith("code/") or n.endswith("constants.pkl") for n in names)


def _missing(what: str, option: str, files: list[tuple[str, str]], path: str = "") -> MissingMetricWeightsError:
    sources = "; or ".join(f"{name} from {url}" for name, url in files)
    where = f"weights file {path!r} does not exist" if path else "no weights file was given"
    return MissingMetricWeightsError(
        f"{what}: {where}. Fix: download {sources} (on a machine with internet), then pass {option} PATH "
        f"(config eval.{option.strip('-').replace('-', '_')}); or pass {RANDOM_OPTION} to compute it with a seeded "
        f"random network (the numbers are then meaningless and the report says weights='random')."
    )


def _resolve(weights: str, allow_random: bool, what: str, option: str, files: list[tuple[str, str]]) -> Path | None:
    """The weights file to load, or None for random weights (after a loud warning)."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise _missing(what, option, files, str(path))
        return path
    if not allow_random:
        raise _missing(what, option, files)
    warn_loud(f"{what} uses RANDOM weights ({RANDOM_OPTION}): its scores are meaningless, for plumbing tests only.")
    return None


# ------------------------------------------------------------------------------------------------ FID


class FIDFeatureExtractor(nn.Module):
    """Frames [B, 3, H, W] (uint8, or float in `value_range`) -> Inception pool features [B, 2048] float32."""

    dim = FID_FEATURE_DIM

    def __init__(self, net: FIDInceptionV3, weights: str):
        super().__init__()
        self.net = net
        self.weights = weights

    @torch.no_grad()
    def forward(self, images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FID extractor: expected frames [B, 3, H, W], got {tuple(images.shape)}")
        device = next(self.net.parameters()).device
        return self.net(to_uint8(images, value_range).to(device)).float()


def variance_preserving_init(net: nn.Module) -> nn.Module:
    """Re-initialise a random metric network so its features depend on the input.

    Both architectures' own initialisations are made for training (BatchNorm normalises batch statistics); in eval
    mode the BatchNorm layers keep their default running statistics (mean 0, var 1), activations shrink layer after
    layer and every clip maps to (nearly) the same feature vector, so FID/FVD come out as ~0 for anything. Kaiming
    (fan-in, ReLU) weights keep the activation scale through the depth, so the random features at least vary with
    the input. The numbers stay meaningless for research; this only keeps the plumbing honest."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def build_fid_extractor(
    weights: str, allow_random: bool = False, device: str | torch.device = "cpu", seed: int = 0
) -> FIDFeatureExtractor:
    """The FID Inception from `weights` (a pytorch-fid state dict), or seeded random weights if allowed."""
    what = "FID (Inception-v3)"
    path = _resolve(weights, allow_random, what, "--fid-weights", [(FID_WEIGHTS_FILE, FID_WEIGHTS_URL)])
    if path is None:
        with seeded(seed):
            net = variance_preserving_init(FIDInceptionV3())
        tag = RANDOM
    else:
        if is_torchscript_archive(path):
            raise WeightsFormatError(
                f"{path}: this is a TorchScript archive (e.g. clean-fid's / StyleGAN's inception-2015-12-05.pt); "
                f"--fid-weights takes pytorch-fid's state dict {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}"
            )
        net = FIDInceptionV3()
        load_into(net, strip_prefix(load_state_dict(path)), path, "FID Inception-v3")
        tag = file_weights_tag(path)
    return FIDFeatureExtractor(net, tag).to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ FVD


class FVDFeatureExtractor(nn.Module):
    """Clips [B, 3, T, H, W] (uint8, or float in `value_range`) -> I3D logits averaged over time [B, 400]."""

    dim = FVD_FEATURE_DIM

    def __init__(self, net: nn.Module, weights: str, torchscript: bool, min_frames: int = FVD_MIN_FRAMES):
        super().__init__()
        self.net = net
        self.weights = weights
        self.torchscript = torchscript
        self.min_frames = min_frames
        # TorchScript modules may hold no parameters we can query; remember the device explicitly.
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    @torch.no_grad()
    def forward(self, videos: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"FVD extractor: expected clips [B, 3, T, H, W], got {tuple(videos.shape)}")
        b, _, t, h, w = videos.shape
        if t < self.min_frames:
            raise ClipTooShortError(
                f"FVD extractor: clips have {t} frames, the I3D protocol needs at least {self.min_frames}. FVD is not "
                f"defined for such short clips (no padding is done): predict more future frames or report FVD as n/a."
            )
        clips = to_uint8(videos, value_range).to(self._device_probe.device)
        if self.torchscript:
            return self.net(clips, rescale=True, resize=True, return_features=True).float()
        frames = clips.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w).float()
        frames = F.interpolate(frames, size=(FVD_FRAME_SIZE, FVD_FRAME_SIZE), mode="bilinear", align_corners=False)
        frames = frames.reshape(b, t, 3, FVD_FRAME_SIZE, FVD_FRAME_SIZE).permute(0, 2, 1, 3, 4)
        return self.net(2.0 * frames / 255.0 - 1.0).float()


def build_fvd_extractor(
    weights: str, allow_random: bool = False, device: str | torch.device = "cpu", seed: int = 0
) -> FVDFeatureExtractor:
    """The FVD I3D from `weights` (TorchScript or InceptionI3d state dict, detected), or seeded random weights."""
    what = "FVD (I3D)"
    files = [(FVD_TORCHSCRIPT_FILE, FVD_TORCHSCRIPT_URL), (FVD_STATE_DICT_FILE, FVD_STATE_DICT_URL)]
    path = _resolve(weights, allow_random, what, "--fvd-weights", files)
    if path is None:
        with seeded(seed):
            net: nn.Module = variance_preserving_init(InceptionI3d(num_classes=FVD_FEATURE_DIM))
        extractor = FVDFeatureExtractor(net, RANDOM, torchscript=False)
    elif is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():  # torch marks TorchScript deprecated; the file format is StyleGAN-V's
                warnings.simplefilter("ignore", FutureWarning)
                net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # truncated download, wrong file
            raise WeightsFormatError(
                f"{path}: cannot load it as TorchScript ({type(exc).__name__}: {exc}); re-download "
                f"{FVD_TORCHSCRIPT_FILE} from {FVD_TORCHSCRIPT_URL}"
            ) from None
        extractor = FVDFeatureExtractor(net, file_weights_tag(path), torchscript=True)
    else:
        net = InceptionI3d(num_classes=FVD_FEATURE_DIM)
        load_into(net, strip_prefix(load_state_dict(path)), path, "FVD InceptionI3d (i3d_pretrained_400.pt layout)")
        extractor = FVDFeatureExtractor(net, file_weights_tag(path), torchscript=False)
    return extractor.to(device).eval().requires_grad_(False)
