"""Typed configuration for every command.

The dataclass defaults are the paper's values; `configs/paper.toml` restates them explicitly and
`configs/tiny.toml` overrides what must shrink for a CPU laptop. A config is loaded from TOML, then
overridden by CLI options (`--set section.key=value` or a command's own flags), then validated. Every size
downstream (window length, latent frames, feature channels, token grid) is derived here, never hard-coded.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent


CODECS = ("wan", "linear", "pixel")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range. The message names it and the fix."""


# The Stage 2 samplers (models/samplers.py implements them): the config, the sampler itself, predict, evaluate and
# `bench sample` all check names against this one list.
SAMPLERS = ("euler", "multistep")


def check_sampler(name: str, where: str = "stage2.diffusion.sampler") -> None:
    """Refuse an unknown sampler name, naming the option it came from."""
    if name not in SAMPLERS:
        raise ConfigError(f"{where}={name!r}: choose one of {', '.join(SAMPLERS)}")


# --------------------------------------------------------------------------------------------- data


@dataclass
class WindowConfig:
    """A sample is one window of `frames` (K) frames; the first `context_frames` (M) are observed."""

    frames: int = 25
    context_frames: int = 13
    height: int = 432
    width: int = 768

    def check(self, temporal_factor: int) -> None:
        r = temporal_factor
        if self.frames < 2 or self.context_frames < 1 or self.context_frames >= self.frames:
            raise ConfigError(
                f"window.frames={self.frames}, window.context_frames={self.context_frames}: need 1 <= M < K"
            )
        for name, n in (("window.frames", self.frames), ("window.context_frames", self.context_frames)):
            if (n - 1) % r:
                raise ConfigError(
                    f"{name}={n} must be 1 + {r}·k to match the codec's causal rule (temporal factor {r}); "
                    f"try {1 + r * round((n - 1) / r)}"
                )
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"window.height/width must be positive, got {self.height}x{self.width}")


@dataclass
class SourceConfig:
    """How windows are cut from one dataset's clips (native frame rate, optionally subsampled)."""

    frame_step: int = 1  # take every n-th native frame
    stride: int = 25  # frames (after frame_step) between window starts
    start: int = 0  # first window start inside a clip
    max_windows_per_clip: int = 0  # 0 = no limit
    val_fraction: float = 0.2  # `videos` source only: last fraction of clips (sorted by name) is val


def _default_sources() -> dict[str, SourceConfig]:
    return {
        # One window per 30-frame snippet: frames 3..27, so the annotated frame 19 is window index 16.
        "cityscapes": SourceConfig(frame_step=1, stride=30, start=3, max_windows_per_clip=1),
        "synthetic": SourceConfig(frame_step=1, stride=30, start=3, max_windows_per_clip=1),
        "nuscenes": SourceConfig(frame_step=1, stride=25, start=0),
        "kitti": SourceConfig(frame_step=1, stride=25, start=0),
        "covla": SourceConfig(frame_step=1, stride=25, start=0),
        "videos": SourceConfig(frame_step=1, stride=12, start=0),
    }


@dataclass
class VFMConfig:
    """The frozen vision foundation model (timm). Features of `layers` are concatenated on channels."""

    name: str = "vit_base_patch14_reg4_dinov2.lvd142m"
    layers: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    input_height: int = 378  # VFM patch grid (27x48) == DiT token grid
    input_width: int = 672
    weights: str = ""  # local file (timm or official DINOv2 state dict); "" = hub name when online
    overrides: dict[str, Any] = field(default_factory=dict)  # timm kwargs (tiny: depth, embed_dim, ...)
    batch_size: int = 16


@dataclass
class VFMPretrainConfig:
    """`pretrain-vfm`: masked latent prediction (EMA teacher) of the `vfm` architecture on frames of the synthetic
    world drawn from their own seed stream (pipeline/synthetic/frames.py), then the linear probe that scores it.
    Only meaningful for architectures without published weights (the tiny config); at paper size DINOv2 is loaded."""

    seed: int = 1234  # data seed of the pretraining and probe frames (streams 2 and 3: disjoint from make-sample-data)
    snippets: int = 512  # pretraining scenes
    frames_per_snippet: int = 6  # evenly spaced snippet frames of each scene
    steps: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1  # linear warm-up, then cosine decay to 0 over `steps`
    ema_momentum: list[float] = field(default_factory=lambda: [0.99, 0.999])  # cosine from start to end
    mask_ratio: list[float] = field(default_factory=lambda: [0.3, 0.6])  # fraction of patches masked per view
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])  # random resized crop, fraction of the area
    target_layers: int = 3  # teacher blocks averaged into the target
    layer_scale_init: float = 1.0  # LayerScale gamma at the start of pretraining (timm's DINOv2 init: 1e-5)
    aux_weight: float = 0.0  # > 0 adds segmentation + depth targets (the fallback when label-free misses the bar)
    probe_snippets: int = 256  # labelled frames (frame 19) that train the probe (pretraining stream)
    probe_val_snippets: int = 64  # held-out labelled frames that score it (stream 3)
    probe_steps: int = 300
    out: str = ""  # "" = <paths.root>/vfm/<settings key>


@dataclass
class PCAConfig:
    components: int = 1152
    fit_split: str = "train"
    fit_max_windows: int = 0  # 0 = every training window
    checkpoint: str = ""  # use an existing PCA (ours, .safetensors) instead of fitting
    allow_pickle: bool = False  # needed to import DINO-Foresight's pickled PCA (.pth); unpickling runs code


@dataclass
class CodecConfig:
    """`wan`: WAN2.1 VAE (diffusers AutoencoderKLWan). `linear`: PCA of space-time pixel blocks, fitted by `cache`
    (pipeline/codec_linear.py). `pixel`: lossless space-time pixel-unshuffle."""

    name: str = "wan"
    temporal_factor: int = 4
    spatial_factor: int = 8
    latent_channels: int = 16  # wan and linear; the pixel codec has 3·r·s² channels
    # wan: diffusers folder or original Wan2.1_VAE.pth; linear: an existing codec.safetensors to reuse ("" = fit it)
    weights: str = ""
    dtype: str = "float32"  # float32 | bfloat16 (GPU)
    overrides: dict[str, Any] = field(default_factory=dict)  # AutoencoderKLWan kwargs (tests: tiny random VAE)
    # wan: diffusers' spatial tiling (256 px tiles every 192, blended): ~4x lower encode/decode peak memory
    # (`bench vae`), but the latents differ from untiled ones at the seams; recorded in meta.json when on.
    tiling: bool = False

    @property
    def channels(self) -> int:
        if self.name == "pixel":
            return 3 * self.temporal_factor * self.spatial_factor**2
        return self.latent_channels


@dataclass
class CacheConfig:
    shard_size: int = 8  # samples per Zarr shard; each shard is written by exactly one worker
    dtype: str = "float16"
    compressor: str = "zstd"
    compression_level: int = 3
    workers: int = 0  # 0 = one per GPU, else one per CPU (pipeline/worker_plan.py); not part of the cache's contents
    strict: bool = False  # fail fast on the first bad input instead of recording it
    # Val windows whose codec reconstruction PSNR is measured in pass 2 (meta.json codec.reconstruction; -1 = all).
    reconstruction_windows: int = 32
    # Also cache the PCA features of the horizontally flipped feature frames (Stage 1's flip augmentation): one more
    # VFM pass over the feature frames and one more features array.
    flipped_features: bool = False


# ------------------------------------------------------------------------------------------ training


@dataclass
class OptimConfig:
    lr: float = 6.4e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine | linear (warmup then linear decay) | constant
    warmup_steps: int = 0
    reference_batch: int = 0  # >0: lr is scaled by effective_batch / reference_batch


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # per process
    grad_accum: int = 1
    clip_grad: float = 1.0
    mixed_precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | no | bf16 | fp16
    ema_decay: float = 0.0  # 0 = no EMA
    log_every: int = 10
    ckpt_every: int = 500
    val_every: int = 500
    val_batches: int = 8
    num_workers: int = 2
    seed: int = 0
    activation_checkpointing: bool = False
    # torch.compile each transformer block (Stage 1 and Stage 2; identical blocks share one compiled graph). Off on
    # the CPU presets: inductor's CPU code needs a C++ compiler and minutes of compiling for little gain there.
    compile: bool = False
    # Checkpoint retention, applied after each save: the newest keep_last (0 = keep all), plus every step divisible
    # by keep_every (0 = none; milestones for a metric-vs-step curve); the best by validation is never deleted.
    keep_last: int = 0
    keep_every: int = 0

    def overridden(self, **values: Any) -> "TrainConfig":
        """A copy with the command line's options applied (None = keep the config's value)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass
class Stage1ModelConfig:
    """DINO-Foresight masked feature transformer (README recipe, not the argparse defaults)."""

    width: int = 1152
    heads: int = 8
    depth: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    context_frames: int = 4  # M_f; the model sees M_f + 1 frames, the last one masked
    # Filled from the cache at build time and stored with the checkpoint:
    in_channels: int = 0  # PCA components
    grid_h: int = 0
    grid_w: int = 0


@dataclass
class Stage1Config:
    model: Stage1ModelConfig = field(default_factory=Stage1ModelConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=36800, batch_size=8, ema_decay=0.0, ckpt_every=2000, val_every=2000)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=6.4e-4, betas=[0.9, 0.99], schedule="cosine", reference_batch=64)
    )
    smooth_l1_beta: float = 0.1
    hflip: bool = False  # DINO-Foresight's random horizontal flip (p = 0.5); needs a cache with cache.flipped_features


@dataclass
class DiTConfig:
    """Cosmos-Predict2 block without cross-attention, plus early fusion of the semantic features."""

    width: int = 2048
    depth: int = 14
    heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 2
    adaln_lora_dim: int = 256
    rope_ntk_t: float = 1.0
    rope_ntk_h: float = 3.0
    rope_ntk_w: float = 3.0
    conditioning: str = "features"  # features (Re2Pix) | none (plain diffusion baseline)
    # Filled from the cache at build time and stored with the checkpoint:
    latent_channels: int = 0
    feature_channels: int = 0

    @property
    def feature_conditioned(self) -> bool:
        """Whether the DiT takes semantic features (early fusion): the one definition every layer uses."""
        return self.conditioning == "features" and self.feature_channels > 0


@dataclass
class DiffusionConfig:
    """Rectified-flow scaling (paper appendix 9.1) with Cosmos-Predict2's training/sampling choices."""

    p_mean: float = 0.0  # ln σ ~ N(p_mean, p_std²); the paper's σ = sigmoid(u) is t = σ/(1+σ)
    p_std: float = 1.0
    high_sigma_prob: float = 0.05
    high_sigma_min: float = 200.0
    high_sigma_max: float = 1e5
    scale_sigma_by_frames: bool = False  # paper eq. 11 (ln σ ~ N(0, 1)); True: Cosmos-Predict2 multiplies σ by √(latent frames)
    context_c_noise: float = 0.001  # paper; Cosmos-Predict2 uses t(1e-4)
    sampler: str = "multistep"  # multistep (Cosmos AB2) | euler
    steps: int = 35
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    rho: float = 7.0
    guidance_weight: float = 0.0  # representation guidance w (appendix 6.2); 0 = off
    guidance_components: int = 128  # c of the coarse pass
    inference_components: int = 0  # 0 = all feature channels (paper Table 5 varies this)


@dataclass
class Stage2Config:
    model: DiTConfig = field(default_factory=DiTConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=40000, batch_size=1, ema_decay=0.9999, ckpt_every=2000, val_every=2000)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=0.6 * 2**-10.5, betas=[0.9, 0.99], schedule="linear", warmup_steps=1000, reference_batch=0
        )
    )
    nested_dropout: bool = True
    nested_dropout_levels: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128, 256, 512, 1152])
    mixed_supervision_prob: float = 0.1  # probability that a sample's future features come from the pool
    alignment: str = "none"  # none | repa | videorepa (baselines; use with model.conditioning = "none")
    align_block: int = 4  # 1-indexed DiT block whose output is aligned
    align_weight: float = 0.5
    projector_dim: int = 2048
    trd_margin: float = 0.1


# ------------------------------------------------------------------------------------- evaluation


@dataclass
class HeadsConfig:
    """DPT heads on the 4 VFM layers reconstructed from PCA (segmentation 19 classes, depth 256 bins)."""

    features: int = 256
    out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    num_classes: int = 19
    depth_bins: int = 256
    depth_schedule: str = "cosine"  # paper 9.3: polynomial (linear) for segmentation, cosine for depth
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2300, batch_size=16, ckpt_every=1000))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1.6e-3, betas=[0.9, 0.999], weight_decay=1e-4, schedule="linear", warmup_steps=230)
    )


@dataclass
class EvalConfig:
    samples: int = 1
    batch_size: int = 1
    annotated_index: int = 16  # window index of the labelled frame (snippet frame 19 when the window starts at 3)
    fid_weights: str = ""  # Inception (pt_inception-2015-12-05 state dict)
    fvd_weights: str = ""  # i3d_torchscript.pt (StyleGAN-V) or i3d_pretrained_400.pt (TATS / cd-fvd)
    allow_random_metric_weights: bool = False


LABEL_RESOLUTIONS = ("native", "window")


@dataclass
class ProtocolConfig:
    # Where segmentation and depth are scored. "native": the labelled frame's label files at their own size
    # (Cityscapes 1024x2048), read through the manifest, head logits upsampled bicubically to it (DINO-Foresight).
    # "window": the labels the cache stored at the window size (cheaper; not the paper's numbers).
    label_resolution: str = "native"


@dataclass
class PathsConfig:
    root: str = "runs/paper"  # every default output lives below this folder
    data: str = ""  # dataset root (cache --root)


@dataclass
class Config:
    name: str = "paper"
    seed: int = 0
    window: WindowConfig = field(default_factory=WindowConfig)
    sources: dict[str, SourceConfig] = field(default_factory=_default_sources)
    vfm: VFMConfig = field(default_factory=VFMConfig)
    vfm_pretrain: VFMPretrainConfig = field(default_factory=VFMPretrainConfig)
    pca: PCAConfig = field(default_factory=PCAConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    # ---- derived sizes (the contract between stages) ----
    @property
    def latent_frames(self) -> int:
        return 1 + (self.window.frames - 1) // self.codec.temporal_factor

    @property
    def context_latent_frames(self) -> int:
        return 1 + (self.window.context_frames - 1) // self.codec.temporal_factor

    @property
    def feature_frame_indices(self) -> list[int]:
        """Window indices of the feature frames: the last frame of each latent group (0, r, 2r, ...)."""
        return [i * self.codec.temporal_factor for i in range(self.latent_frames)]

    @property
    def latent_hw(self) -> tuple[int, int]:
        s = self.codec.spatial_factor
        return self.window.height // s, self.window.width // s

    @property
    def token_grid(self) -> tuple[int, int]:
        h, w = self.latent_hw
        return h // self.stage2.model.patch_size, w // self.stage2.model.patch_size

    def validate(self) -> "Config":
        w, c = self.window, self.codec
        w.check(c.temporal_factor)
        if c.name not in CODECS:
            raise ConfigError(f"codec.name={c.name!r}: choose one of {', '.join(CODECS)}")
        if c.name == "linear" and not 1 <= c.latent_channels <= 3 * c.temporal_factor * c.spatial_factor**2:
            raise ConfigError(
                f"codec.latent_channels={c.latent_channels} must be in 1..{3 * c.temporal_factor * c.spatial_factor**2} "
                f"(3·r·s², the size of one space-time block) for the linear codec"
            )
        s = c.spatial_factor * self.stage2.model.patch_size
        if w.height % s or w.width % s:
            raise ConfigError(
                f"window {w.height}x{w.width} must be divisible by codec.spatial_factor x stage2.model.patch_size = {s}"
            )
        if self.stage1.model.context_frames >= self.latent_frames:
            raise ConfigError(
                f"stage1.model.context_frames={self.stage1.model.context_frames} must be < latent frames "
                f"({self.latent_frames}) so there is a future frame to predict"
            )
        if self.stage1.model.context_frames > self.context_latent_frames:
            raise ConfigError(
                f"stage1.model.context_frames={self.stage1.model.context_frames} exceeds the observed feature frames "
                f"({self.context_latent_frames}); lower it or lengthen window.context_frames"
            )
        if self.pca.components <= 0:
            raise ConfigError(f"pca.components={self.pca.components} must be positive")
        m = self.stage1.model
        if m.width % 3 or m.width % m.heads:
            raise ConfigError(f"stage1.model.width={m.width} must be divisible by 3 (time|row|col tables) and by heads={m.heads}")
        d = self.stage2.model
        if d.width % d.heads:
            raise ConfigError(f"stage2.model.width={d.width} must be divisible by stage2.model.heads={d.heads}")
        if d.conditioning not in ("features", "none"):
            raise ConfigError(f"stage2.model.conditioning={d.conditioning!r}: choose 'features' or 'none'")
        if self.stage2.alignment not in ("none", "repa", "videorepa"):
            raise ConfigError(f"stage2.alignment={self.stage2.alignment!r}: choose none, repa or videorepa")
        if not 0.0 <= self.stage2.mixed_supervision_prob <= 1.0:
            raise ConfigError(f"stage2.mixed_supervision_prob={self.stage2.mixed_supervision_prob} must be in [0, 1]")
        check_sampler(self.stage2.diffusion.sampler)
        if self.protocol.label_resolution not in LABEL_RESOLUTIONS:
            raise ConfigError(f"protocol.label_resolution={self.protocol.label_resolution!r}: choose one of {', '.join(LABEL_RESOLUTIONS)}")
        for name, sec in (("stage1", self.stage1.train), ("stage2", self.stage2.train), ("heads", self.heads.train)):
            if sec.mixed_precision not in ("auto", "no", "bf16", "fp16"):
                raise ConfigError(f"{name}.train.mixed_precision={sec.mixed_precision!r}: choose auto, no, bf16 or fp16")
            if sec.keep_last < 0 or sec.keep_every < 0:
                raise ConfigError(f"{name}.train.keep_last={sec.keep_last} and keep_every={sec.keep_every} must be >= 0 (0 = keep all / no milestones)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ------------------------------------------------------------------------------------------ loading


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a TOML/CLI value to the annotated type, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {k: _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: cannot read {value!r} as {tp.__name__}") from None
    return value


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    obj = cls()
    for key, value in data.items():
        current = getattr(obj, key)
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            merged = _merge_into(current, value, path)
            setattr(obj, key, merged)
        elif key == "sources" and isinstance(value, dict):
            merged_sources = dict(current)
            for name, sub in value.items():
                base = merged_sources.get(name, SourceConfig())
                merged_sources[name] = _merge_into(base, sub, f"{path}.{name}")
            setattr(obj, key, merged_sources)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))
    return obj


def _merge_into(obj: Any, data: dict[str, Any], where: str) -> Any:
    """Return a copy of dataclass `obj` with `data` applied on top (keeps defaults of nested factories)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    out = dataclasses.replace(obj)
    for key, value in data.items():
        current = getattr(out, key)
        path = f"{where}.{key}"
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            setattr(out, key, _merge_into(current, value, path))
        else:
            setattr(out, key, _coerce(value, hints[key], path))
    return out


def resolve_config_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.toml"
    if candidate.exists():
        return candidate
    known = sorted(q.stem for q in CONFIG_DIR.glob("*.toml"))
    raise ConfigError(f"config {str(name_or_path)!r} not found: pass a .toml path or one of {known}")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set stage2.train.steps=100")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings need no quotes on the command line
    return key.strip().split("."), value


def load_config(name_or_path: str | Path = "tiny", overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a preset or TOML file, apply overrides (`["stage1.train.steps=10"]` or {"stage1.train.steps": 10})."""
    path = resolve_config_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    items: list[tuple[list[str], Any]] = []
    if isinstance(overrides, dict):
        items = [(k.split("."), v) for k, v in overrides.items() if v is not None]
    elif overrides:
        items = [_parse_override(o) for o in overrides]
    for keys, value in items:
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(keys)}: {k} is not a section")
        node[keys[-1]] = value
    try:
        cfg = _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg.validate()


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with `to_dict()` (checkpoints and meta.json store it this way)."""
    return _build(Config, data, "")
