"""`predict`: the full Re2Pix hierarchy on any clip, from raw frames to predicted frames (paper Fig. 1).

    frames (video file or folder of images; the first K frames at the window size, at least the M context frames)
      -> VFM -> PCA                      features of the context feature frames, exactly as the cache made them
      -> Stage 1 rollout                 the future feature frames, autoregressively (models/rollout)
      -> codec.encode(context frames)    the clean context latents
      -> Stage 2 sampling                the future latents, conditioned on all feature frames (models/samplers)
      -> codec.decode                    K frames: the (reconstructed) context followed by the prediction

The cache is the contract between the stages: its meta.json says which VFM (name, layers, input size, settings,
weights) and codec made the features and latents the models were trained on, and its pca.safetensors is the PCA.
The Stage 2 checkpoint records the cache path (`cache=` overrides it, e.g. on another machine). Nothing runs unless
the PCA fingerprint agrees with both checkpoints and the rebuilt VFM/codec weights agree with the cache's record;
random VFM weights are used only when the cache itself was made with them and the caller allows them.

A clip with fewer than K but at least M frames is predicted all the same; the missing future simply has no ground
truth (no side-by-side video, blank truth cells in the grid).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from configs.schema import CodecConfig, DiffusionConfig, VFMConfig, check_sampler, config_from_dict
from eval.generate import noise_seed
from eval.visualize import frame_grid, pca_rgb, to_uint8_frames, write_mp4, write_png
from models.diffusion import context_inputs
from models.rollout import rollout_from_history
from models.samplers import sample
from models.stage2 import build_stage2_model
from pipeline import atomic, layout
from pipeline.console import progress, summary, warn_loud
from pipeline.decode import probe_video, read_frames
from pipeline.device import inference_autocast, resolve_device
from pipeline.errors import InputError
from pipeline.fingerprint import RANDOM
from pipeline.pca import PCA
from pipeline.sources.base import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Clip, natural_key
from pipeline.sources.videos import FRAME_FOLDER_FPS
from pipeline.store import CacheError
from pipeline.weights import MissingWeightsError
from train import checkpoint as ckpt
from train.stage1 import build_stage1_model, stage1_fit_problems

OUTPUT_FILES = ("prediction.mp4", "side_by_side.mp4", "grid.png", "tensors.safetensors", "predict.json")


# ---------------------------------------------------------------------------------------------- inputs


def load_clip(path: str | Path) -> Clip:
    """A video file, or a folder of images in natural name order (30 fps), as a Clip."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise InputError(str(path), f"not a video file ({', '.join(VIDEO_EXTENSIONS)}) nor a folder of frames")
        fps, count = probe_video(str(path))
        return Clip(dataset="input", split="test", clip_id=path.stem, fps=fps, num_frames=count, video=str(path))
    if path.is_dir():
        images = sorted(
            (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")),
            key=lambda p: natural_key(p.name),
        )
        if not images:
            raise InputError(str(path), f"folder holds no image frames ({', '.join(IMAGE_EXTENSIONS)})")
        return Clip(dataset="input", split="test", clip_id=path.name, fps=FRAME_FOLDER_FPS, num_frames=len(images),
                    frame_paths=tuple(str(p) for p in images))
    raise InputError(str(path), "does not exist; pass a video file or a folder of frames")


def read_input_frames(path: str | Path, frames: int, context_frames: int, height: int, width: int) -> tuple[np.ndarray, float]:
    """(uint8 [n, H, W, 3], fps): the first n = min(frames, clip length) frames, resized like the cache does."""
    clip = load_clip(path)
    if clip.num_frames < context_frames:
        raise InputError(
            str(path),
            f"has {clip.num_frames} frames; the model observes {context_frames} context frames (window.context_frames), "
            f"so at least {context_frames} are needed ({frames} give a full ground truth)",
        )
    n = min(frames, clip.num_frames)
    return read_frames(clip, list(range(n)), height, width), clip.fps


# ------------------------------------------------------------------------------------------ checkpoints


def checkpoint_config(path: str | Path, stage: str) -> tuple[Path, dict[str, Any]]:
    """(resolved folder, config.json) of a checkpoint or run folder, refused unless it was written by `stage`."""
    resolved, why = ckpt.select_checkpoint(path)
    config = {**ckpt.read_config(resolved), "selected": why}
    found = config.get("stage")
    if found != stage:
        raise ckpt.CheckpointError(
            f"{resolved} is a {found or 'non-Re2Pix'} checkpoint, but a {stage} checkpoint is expected here "
            "(predict takes the Stage 1 checkpoint first, then the Stage 2 checkpoint)"
        )
    return resolved, config


def _read_cache(root: str) -> tuple[dict[str, Any], PCA]:
    meta_path = atomic.join(root, layout.META)
    if not atomic.exists(meta_path):
        raise CacheError(
            f"{meta_path} not found. predict needs the cache the models were trained on (its meta.json and "
            f"{layout.PCA_FILE}); pass cache=PATH (--cache) if it lives elsewhere now"
        )
    meta = atomic.read_json(meta_path)
    pca_path = atomic.join(root, layout.PCA_FILE)
    if not atomic.exists(pca_path):
        raise CacheError(f"{pca_path} not found: the cache {root} is incomplete (no PCA); rebuild it with `python cli.py cache`")
    return meta, PCA.load(pca_path)


def check_checkpoints_fit_cache(meta: dict[str, Any], pca: PCA, s1: dict[str, Any], s2: dict[str, Any], cache: str) -> None:
    """Both checkpoints must read this cache's feature space and latent space; names every mismatch."""
    problems = []
    recorded = s2.get("pca_fingerprint")
    if recorded and recorded != pca.fingerprint:
        problems.append(f"PCA fingerprint: Stage 2 checkpoint {recorded!r}, {cache}/{layout.PCA_FILE} {pca.fingerprint!r}")
    if meta["pca"].get("fingerprint") not in (None, pca.fingerprint):
        problems.append(f"PCA fingerprint: meta.json {meta['pca']['fingerprint']!r}, {layout.PCA_FILE} {pca.fingerprint!r}")
    dit = s2["model"]["dit"]
    problems += stage1_fit_problems(s1, meta, pca.fingerprint)
    if dit["feature_channels"] != pca.n_components:
        problems.append(f"Stage 2 takes {dit['feature_channels']} feature channels, the PCA has {pca.n_components}")
    if dit["latent_channels"] != meta["codec"]["channels"]:
        problems.append(f"Stage 2 takes {dit['latent_channels']} latent channels, the cache's codec has {meta['codec']['channels']}")
    if problems:
        raise CacheError(f"the checkpoints do not fit cache {cache}:\n  - " + "\n  - ".join(problems))


# ------------------------------------------------------------------------------------------- frozen parts


def _settings(meta: dict[str, Any], full_config: dict[str, Any], section: str) -> dict[str, Any]:
    """How the cache built its VFM/codec: meta.json's `settings` (the DAG records them), else the training config."""
    recorded = (meta.get("settings") or {}).get(section)
    return dict(recorded if recorded is not None else full_config[section])


def build_frozen_vfm(meta: dict[str, Any], full_config: dict[str, Any], weights: str | None, allow_random_weights: bool, device: torch.device) -> Any:
    """The VFM that made the cache's features: same architecture, and weights whose record matches meta.json."""
    from pipeline.vfm import build_vfm

    known = {f.name for f in dataclasses.fields(VFMConfig)}
    cfg = VFMConfig(**{k: v for k, v in _settings(meta, full_config, "vfm").items() if k in known})
    recorded = meta["vfm"].get("weights")
    if recorded == RANDOM:
        if not allow_random_weights:
            raise MissingWeightsError(
                "the cache's features were made with a RANDOM VFM (meta.json vfm.weights = 'random'); predicting needs "
                "that same seeded random VFM. Pass allow_random_weights=True (--allow-random-weights) to accept it "
                "(outputs are then meaningless and predict.json records it), or rebuild the cache with real weights"
            )
        return build_vfm(dataclasses.replace(cfg, weights=""), allow_random_weights=True, device=device)
    if weights:
        cfg = dataclasses.replace(cfg, weights=weights)
    vfm = build_vfm(cfg, allow_random_weights=False, device=device)
    if vfm.weights != recorded:
        raise MissingWeightsError(
            f"the VFM weights found ({vfm.weights}) are not the ones the cache was made with ({recorded}); "
            "pass the same weights file with vfm_weights=PATH (--vfm-weights)"
        )
    return vfm


def build_frozen_codec(meta: dict[str, Any], full_config: dict[str, Any], weights: str | None, allow_random_weights: bool,
                       device: torch.device, cache_root: str) -> Any:
    """The codec that made the cache's latents, checked against meta.json's weights record. A linear codec is read
    from the cache itself (meta.json codec.file), or from `weights` when given."""
    from pipeline.codec import build_codec

    known = {f.name for f in dataclasses.fields(CodecConfig)}
    cfg = CodecConfig(**{k: v for k, v in _settings(meta, full_config, "codec").items() if k in known})
    recorded = meta["codec"].get("weights")
    if cfg.name == "linear":
        path = weights or atomic.join(cache_root, meta["codec"].get("file", layout.CODEC_FILE))
        codec = build_codec(dataclasses.replace(cfg, weights=path), device=device)
        if codec.weights != recorded:
            raise CacheError(
                f"{path}: linear codec {codec.weights} is not the one the cache's latents were made with ({recorded}); "
                f"restore {cache_root}/{layout.CODEC_FILE} or rebuild the cache"
            )
        return codec
    if recorded == RANDOM:
        if not allow_random_weights:
            raise MissingWeightsError(
                "the cache's latents were made with a RANDOM codec (meta.json codec.weights = 'random'); pass "
                "allow_random_weights=True (--allow-random-weights) to decode with that same seeded random codec"
            )
        return build_codec(dataclasses.replace(cfg, weights=""), allow_random_weights=True, device=device)
    if weights:
        cfg = dataclasses.replace(cfg, weights=weights)
    codec = build_codec(cfg, allow_random_weights=False, device=device)
    if codec.weights != recorded:
        raise MissingWeightsError(
            f"the codec weights found ({codec.weights}) are not the ones the cache was made with ({recorded}); "
            "pass the same weights with codec_weights=PATH (--codec-weights)"
        )
    return codec


def sampling_config(base: DiffusionConfig, **overrides: Any) -> DiffusionConfig:
    """The checkpoint's sampling settings with the caller's overrides (None = keep)."""
    cfg = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    check_sampler(cfg.sampler, "sampler")
    if cfg.steps < 1:
        raise ValueError(f"steps={cfg.steps} must be >= 1")
    return cfg


# ------------------------------------------------------------------------------------------------ predict


def predict(
    stage1_ckpt: str | Path,
    stage2_ckpt: str | Path,
    input: str | Path,
    out: str | Path,
    samples: int = 1,
    cache: str | None = None,
    device: str | None = None,
    seed: int = 0,
    guidance_weight: float | None = None,
    guidance_components: int | None = None,
    inference_components: int | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    allow_random_weights: bool = False,
    vfm_weights: str | None = None,
    codec_weights: str | None = None,
) -> dict[str, Any]:
    """Predict the future of the clip `input` with the two checkpoints; write the files listed in OUTPUT_FILES into
    `out` (plus prediction_<i>.mp4 for samples i >= 1). Returns what predict.json records.

    Sampling settings default to the Stage 2 training config's `stage2.diffusion`; the arguments override them.
    `vfm_weights` / `codec_weights` point at the weights files when they moved since the cache was made.
    """
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1")
    t_start = time.perf_counter()
    dev = resolve_device(device)
    autocast = inference_autocast(dev)
    out = Path(out)

    # ---- checkpoints, cache, compatibility
    s1_path, s1_config = checkpoint_config(stage1_ckpt, "stage1")
    s2_path, s2_config = checkpoint_config(stage2_ckpt, "stage2")
    cache_root = str(cache or s2_config.get("cache") or "")
    if not cache_root:
        raise CacheError(f"{s2_path} records no cache path; pass cache=PATH (--cache)")
    meta, pca = _read_cache(cache_root)
    check_checkpoints_fit_cache(meta, pca, s1_config, s2_config, cache_root)
    stage1, s1_loaded = ckpt.load_model_for_inference(s1_path, build_stage1_model, device=dev)
    stage2, s2_loaded = ckpt.load_model_for_inference(s2_path, build_stage2_model, device=dev)
    full_config = s2_config["config"]
    train_cfg = config_from_dict(full_config)
    sampling = sampling_config(
        train_cfg.stage2.diffusion, guidance_weight=guidance_weight, guidance_components=guidance_components,
        inference_components=inference_components, sampler=sampler, steps=steps,
    )
    uses_features = stage2.net.uses_features
    if sampling.guidance_weight > 0 and not uses_features:
        raise ValueError(
            f"guidance_weight={sampling.guidance_weight}: representation guidance needs a feature-conditioned Stage 2 model, "
            f"but {s2_path} is the '{stage2.spec.dit.conditioning}' baseline; use guidance_weight=0"
        )

    # ---- window and input frames
    window = meta["window"]
    k_frames, m_frames, height, width = (int(window[key]) for key in ("frames", "context_frames", "height", "width"))
    feature_indices = [int(i) for i in meta["feature_frame_indices"]]
    ctx, latent_frames = int(meta["context_latent_frames"]), int(meta["latent_frames"])
    frames, fps = read_input_frames(input, k_frames, m_frames, height, width)
    n_input = frames.shape[0]
    has_truth = n_input >= k_frames

    # ---- frozen VFM, PCA and codec, as the cache made them
    vfm = build_frozen_vfm(meta, full_config, vfm_weights, allow_random_weights, dev)
    codec = build_frozen_codec(meta, full_config, codec_weights, allow_random_weights, dev, cache_root)
    pca_dev = pca.to(dev)
    random_parts = [name for name, flag in (
        ("Stage 1", s1_config.get("random_weights")), ("Stage 2", s2_config.get("random_weights")),
        ("VFM", vfm.weights == RANDOM), ("codec", codec.weights == RANDOM),
    ) if flag]
    if random_parts:
        warn_loud(f"predicting with RANDOM weights in {', '.join(random_parts)}: the prediction is meaningless; predict.json records it")

    seconds: dict[str, float] = {}
    with torch.no_grad():
        tic = time.perf_counter()
        context_images = torch.from_numpy(frames[feature_indices[:ctx]]).to(dev).permute(0, 3, 1, 2).float().div(255.0)
        context_features = pca_dev.project_maps(vfm(context_images)).float()  # [ctx, C, h, w]
        seconds["features"] = time.perf_counter() - tic

        tic = time.perf_counter()
        with autocast:
            predicted = rollout_from_history(stage1, context_features[None], latent_frames - ctx).float()  # [1, Tf - ctx, C, h, w]
        features = torch.cat([context_features[None], predicted], dim=1)  # [1, Tf, C, h, w]
        seconds["stage1"] = time.perf_counter() - tic

        video = torch.from_numpy(frames[:m_frames]).to(dev).permute(3, 0, 1, 2)[None].float().div(127.5).sub(1.0)
        context_latents = codec.encode(video)  # [1, Cz, ctx, H', W']
        context, cond_mask = context_inputs(context_latents, latent_frames)
        shape = tuple(context.shape)
        dit_features = features.permute(0, 2, 1, 3, 4) if uses_features else None

        tic = time.perf_counter()
        latents, decoded = [], []
        with progress() as bar:
            job = bar.add_task("sampling", total=samples, status=f"{sampling.sampler}, {sampling.steps} steps")
            for i in range(samples):
                generator = torch.Generator().manual_seed(noise_seed(seed, i))
                with autocast:
                    z = sample(stage2.denoiser, shape, context, cond_mask, dit_features, sampling, generator=generator)
                latents.append(z.float())
                clip = to_uint8_frames(codec.decode(z.float())[0])  # [K, H, W, 3]
                clip[:m_frames] = frames[:m_frames]  # observed frames as given (a lossy codec would alter them)
                decoded.append(clip)
                bar.update(job, advance=1)
        seconds["stage2_and_decode"] = time.perf_counter() - tic

    # ---- outputs
    out.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    codec_name = write_mp4(decoded[0], out / "prediction.mp4", fps)
    outputs["prediction"] = str(out / "prediction.mp4")
    for i in range(1, samples):
        write_mp4(decoded[i], out / f"prediction_{i}.mp4", fps)
        outputs[f"prediction_{i}"] = str(out / f"prediction_{i}.mp4")
    if has_truth:
        write_mp4(np.concatenate([frames[:k_frames], decoded[0]], axis=2), out / "side_by_side.mp4", fps)
        outputs["side_by_side"] = str(out / "side_by_side.mp4")

    feature_images = pca_rgb(features[0], size=(height, width))
    future = range(ctx, latent_frames)
    rows = [
        [frames[feature_indices[j]] if j < ctx else None for j in range(latent_frames)],
        [frames[feature_indices[j]] if j in future and feature_indices[j] < n_input else None for j in range(latent_frames)],
        *[[d[feature_indices[j]] if j in future else None for j in range(latent_frames)] for d in decoded],
        list(feature_images),
    ]
    labels = ["context", "truth", *(["prediction"] if samples == 1 else [f"sample {i}" for i in range(samples)]), "features"]
    write_png(frame_grid(rows, labels), out / "grid.png")
    outputs["grid"] = str(out / "grid.png")

    tensors = {
        "latents": torch.cat(latents).cpu().contiguous(),  # [S, Cz, Tl, H', W']
        "features": features[0].cpu().contiguous(),  # [Tf, C, h, w]: VFM+PCA context, Stage 1 future
        "frames": torch.from_numpy(np.stack(decoded)),  # uint8 [S, K, H, W, 3]
        "input_frames": torch.from_numpy(np.ascontiguousarray(frames)),  # uint8 [n, H, W, 3]
    }
    atomic.write_bytes(out / "tensors.safetensors", save_safetensors(tensors, metadata={"format": "re2pix-predict-v1"}))
    outputs["tensors"] = str(out / "tensors.safetensors")

    seconds["total"] = time.perf_counter() - t_start
    record = {
        "input": str(input),
        "input_frames": int(n_input),
        "fps": float(fps),
        "window": {"frames": k_frames, "context_frames": m_frames, "height": height, "width": width},
        "feature_frame_indices": feature_indices,
        "has_truth": bool(has_truth),
        "samples": samples,
        "seed": seed,
        "sample_seeds": [noise_seed(seed, i) for i in range(samples)],
        "device": str(dev),
        "sampling": {k: getattr(sampling, k) for k in ("sampler", "steps", "sigma_max", "sigma_min", "rho", "guidance_weight", "guidance_components", "inference_components")},
        "stage1": {"checkpoint": str(s1_path), "selected": s1_config["selected"], "weights": s1_loaded["loaded_weights"], "step": s1_config.get("step"),
                   "random_weights": bool(s1_config.get("random_weights"))},
        "stage2": {"checkpoint": str(s2_path), "selected": s2_config["selected"], "weights": s2_loaded["loaded_weights"], "step": s2_config.get("step"),
                   "random_weights": bool(s2_config.get("random_weights")), "conditioning": stage2.spec.dit.conditioning,
                   "alignment": stage2.spec.alignment},
        "cache": cache_root,
        "pca_fingerprint": pca.fingerprint,
        "vfm": {"name": vfm.name, "weights": vfm.weights},
        "codec": {"name": codec.name, "weights": codec.weights, "mp4": codec_name},
        "random": bool(random_parts),
        "random_parts": random_parts,
        "outputs": {**outputs, "record": str(out / "predict.json")},
        "seconds": seconds,
    }
    atomic.write_json(out / "predict.json", record)
    summary(
        f"predict: {samples} sample(s) of {k_frames - m_frames} future frames from {n_input} input frames in "
        f"{seconds['total']:.1f} s ({sampling.sampler}, {sampling.steps} steps, guidance {sampling.guidance_weight:g})"
        + (", RANDOM weights" if random_parts else "") + f" -> {out}"
    )
    return record
