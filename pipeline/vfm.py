"""The frozen vision foundation model: multi-layer patch features of a timm ViT (DINOv2-Reg, or SigLIP-2).

Features follow DINO-Foresight: the outputs of blocks `cfg.layers` (0-based), each passed through the backbone's
final LayerNorm, with prefix tokens (CLS and registers; SigLIP has none) dropped, concatenated on channels in
layer order (channel slice i*D:(i+1)*D is layer i) and laid out as a map [B, D * len(layers), grid_h, grid_w].

Frames are resized to (input_height, input_width) and normalised with the model's own pretrained mean/std
(ImageNet for DINOv2, 0.5/0.5 for SigLIP). The ViT is created at exactly that size, so its position embedding
is resampled once, when the weights are loaded (bicubic, antialiased: what DINOv2 itself does at run time).

Weights, in this order: `cfg.weights` (a local file, timm format or the official DINOv2 format), the timm hub
weights if already in the local Hugging Face cache, the hub itself when it is reachable; otherwise
`MissingWeightsError`, or seeded random weights with a loud warning when the caller allows them.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from configs.schema import VFMConfig
from pipeline.fingerprint import file_fingerprint
from pipeline.weights import (
    WeightsFormatError,
    cached_hub_file,
    file_weights_tag,
    hub_online,
    hub_weights_tag,
    load_into,
    load_state_dict,
    refuse_or_warn_random,
    require_local_path,
    seeded,
    strip_prefix,
)

VFM_WEIGHTS_OPTION = "--vfm-weights"
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


class VFMExtractor(nn.Module):
    """Frozen ViT -> concatenated, normalised patch features of selected blocks."""

    def __init__(
        self, model: VisionTransformer, layers: list[int], input_size: tuple[int, int], weights: str, name: str = ""
    ):
        super().__init__()
        depth = len(model.blocks)
        if not layers:
            raise ValueError("vfm.layers is empty: list at least one block index, e.g. [2, 5, 8, 11]")
        if any(i < 0 or i >= depth for i in layers):
            raise ValueError(f"vfm.layers={layers}: block indices must be 0-based and < depth {depth}")
        if list(layers) != sorted(set(layers)):
            raise ValueError(f"vfm.layers={layers}: list distinct block indices in increasing order")
        if isinstance(model.norm, nn.Identity):
            # Pooled-head variants (e.g. *_gap) move the final norm to fc_norm; their tokens are not normalised.
            raise ValueError(f"{type(model).__name__} has no final norm (model.norm is Identity); pick a ViT variant with one")
        patch_h, patch_w = model.patch_embed.patch_size
        if input_size[0] % patch_h or input_size[1] % patch_w:
            raise ValueError(
                f"vfm input size {input_size[0]}x{input_size[1]} must be a multiple of the patch size "
                f"{patch_h}x{patch_w}; e.g. {input_size[0] // patch_h * patch_h}x{input_size[1] // patch_w * patch_w}"
            )
        self.model = model.eval().requires_grad_(False)
        self.layers = list(layers)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.grid = (self.input_size[0] // patch_h, self.input_size[1] // patch_w)
        self.embed_dim = int(model.embed_dim)
        self.out_channels = self.embed_dim * len(self.layers)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.weights = weights
        self.name = name or type(model).__name__
        self.record: dict | None = None  # the pretraining record beside the weights (pretrain-vfm), when there is one
        mean = torch.tensor(model.pretrained_cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(model.pretrained_cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def train(self, mode: bool = True) -> "VFMExtractor":
        return super().train(False)  # frozen: dropout/drop-path stay off whatever the caller does

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> resized to the input size and normalised with the model's mean/std."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"VFM input must be [B, 3, H, W] RGB frames in [0, 1], got shape {tuple(frames.shape)}")
        x = frames.to(device=self.mean.device, dtype=torch.float32)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames float [B, 3, H, W] in [0, 1], any H, W -> features [B, out_channels, grid_h, grid_w] (float32)."""
        x = self.preprocess(frames)
        # timm applies model.norm to each selected block output and drops the prefix tokens (see test_vfm).
        per_layer = self.model.forward_intermediates(
            x, indices=self.layers, norm=True, stop_early=True, output_fmt="NCHW", intermediates_only=True
        )
        return torch.cat(per_layer, dim=1).float()

    def meta(self) -> dict:
        """What meta.json records about the VFM."""
        return {
            "name": self.name,
            "layers": self.layers,
            "input_size": list(self.input_size),
            "grid": list(self.grid),
            "channels": self.out_channels,
            "weights": self.weights,
            **({"pretraining": record_summary(self.record)} if self.record else {}),
        }

    @property
    def description(self) -> str:
        """How reports name this VFM."""
        if self.record:
            return self.record.get("description", "pretrained VFM")
        return "random-init VFM" if self.weights == "random" else self.name


# ------------------------------------------------------------------------------------------ weights records

RECORD_SUFFIX = ".json"  # a weights file's record sits beside it: vfm.safetensors -> vfm.json
RECORD_SUMMARY_KEYS = ("description", "objective", "label_free", "auxiliary_targets", "steps", "data_seed", "seconds",
                       "probe", "layer_difference", "settings_key", "weights_fingerprint")


def record_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(RECORD_SUFFIX)


def read_record(weights: str | Path) -> dict | None:
    """The pretraining record beside a weights file, or None (e.g. an official DINOv2 checkpoint has none). A record
    whose fingerprint names other weights is refused: it would put another model's probe scores in every report."""
    path = record_path(weights)
    if not Path(weights).is_file() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsFormatError(f"{path}: not valid JSON ({exc}). Fix: rerun pretrain-vfm, or delete the file") from None
    recorded = record.get("weights_fingerprint")
    if recorded is not None and recorded != file_fingerprint(weights):
        raise WeightsFormatError(
            f"{path}: its weights_fingerprint {recorded} is not that of {weights}; the record belongs to other weights. "
            f"Fix: rerun pretrain-vfm, or delete the stale record"
        )
    return record


def record_summary(record: dict) -> dict:
    """What meta.json and the reports carry of a pretraining record."""
    return {k: record[k] for k in RECORD_SUMMARY_KEYS if k in record}


# ------------------------------------------------------------------------------------------ building


def create_vit(cfg: VFMConfig, pretrained: bool = False) -> VisionTransformer:
    kwargs = dict(cfg.overrides)
    if "img_size" in kwargs:
        raise ValueError("vfm.overrides.img_size is not allowed: set vfm.input_height and vfm.input_width instead")
    kwargs.setdefault("num_classes", 0)  # features only: no classifier
    try:
        model = timm.create_model(cfg.name, pretrained=pretrained, img_size=(cfg.input_height, cfg.input_width), **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ValueError(f"vfm.name={cfg.name!r} is not a timm model; e.g. vit_base_patch14_reg4_dinov2.lvd142m") from None
        raise
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"vfm.name={cfg.name!r} builds a {type(model).__name__}; only timm VisionTransformer models are supported")
    return model


def convert_state_dict(state_dict: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Any supported checkpoint layout -> timm keys for `model`, position embedding resampled to its grid.

    timm's own `checkpoint_filter_fn` recognises the official DINOv2 layout (by its `mask_token`): it folds
    `pos_embed[:, 0]` into the CLS token, renames `register_tokens` to `reg_token`, and resamples the 37x37
    pretrained position grid bicubically with antialiasing to the model's grid, as DINOv2 does at run time.
    """
    state_dict = strip_prefix(dict(state_dict))
    converted = checkpoint_filter_fn(state_dict, model)
    if isinstance(model.head, nn.Identity):
        converted = {k: v for k, v in converted.items() if not k.startswith("head.")}
    return converted


def _load_file(model: VisionTransformer, path, what: str) -> None:
    state_dict = load_state_dict(path)
    try:
        converted = convert_state_dict(state_dict, model)
    except (RuntimeError, ValueError) as exc:  # e.g. a position grid that cannot be inferred
        raise WeightsFormatError(f"{path}: cannot convert to the {what} ({exc})") from None
    load_into(model, converted, path, what)


def build_vfm(cfg: VFMConfig, allow_random_weights: bool = False, device: str | torch.device = "cpu") -> VFMExtractor:
    """The frozen feature extractor described by `cfg`, on `device`."""
    what = f"VFM {cfg.name!r}"
    record = None
    if cfg.weights:
        path = require_local_path(cfg.weights, what, VFM_WEIGHTS_OPTION)
        with seeded(0):
            model = create_vit(cfg)
        _load_file(model, path, what)
        weights = file_weights_tag(path)
        record = read_record(path)  # pretrain-vfm's record beside the weights, if any
    elif (hub_file := _hub_file(cfg)) is not None:
        with seeded(0):
            model = create_vit(cfg)
        _load_file(model, hub_file, what)
        weights = hub_weights_tag(cfg.name)
    elif has_published_weights(cfg) and hub_online():
        model = create_vit(cfg, pretrained=True)
        weights = hub_weights_tag(cfg.name)
    else:
        fix = (
            f"pass {VFM_WEIGHTS_OPTION} PATH (a timm .safetensors/.pth of {cfg.name}, or the official DINOv2 "
            f"checkpoint such as dinov2_vitb14_reg4_pretrain.pth), or set vfm.weights in the config, or run once "
            f"online so timm can fetch the hub weights"
        )
        weights = refuse_or_warn_random(what, allow_random_weights, fix)
        with seeded(0):
            model = create_vit(cfg)
    extractor = VFMExtractor(model, cfg.layers, (cfg.input_height, cfg.input_width), weights, name=cfg.name)
    extractor.record = record
    return extractor.to(device)


def _hub_repo(cfg: VFMConfig) -> str | None:
    """The Hugging Face repo of the published weights, or None when there are none for this architecture.

    Size overrides (the tiny config) change the architecture, so the published weights cannot apply.
    """
    size_keys = {"embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "reg_tokens", "class_token"}
    if size_keys & set(cfg.overrides):
        return None
    try:
        pretrained = timm.models.get_pretrained_cfg(cfg.name)
    except (RuntimeError, ValueError):
        return None
    return getattr(pretrained, "hf_hub_id", None) or None


def has_published_weights(cfg: VFMConfig) -> bool:
    """Whether published weights exist for this architecture (DINOv2 sizes: yes; the tiny config's: no)."""
    return _hub_repo(cfg) is not None


def _hub_file(cfg: VFMConfig):
    repo_id = _hub_repo(cfg)
    return cached_hub_file(repo_id, _HUB_FILES) if repo_id else None
