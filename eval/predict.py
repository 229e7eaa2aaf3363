"""`predict`: the full Re2Pix hierarchy on any clip, from raw frames to predicted frames (paper Fig. 1).

    frames (video file or folder of images; the first K frames at the window size, at least the M context frames)
      -> VFM -> PCA                      features of the context feature frames, exactly as the cache made them
      -> Stage 1 rollout                 the future feature frames, autoregressively (models/rollout)
      -> codec.encode(context frames)    the clean context latents
      -> Stage 2 sampling                the future latents, conditioned on all feature frames (models/samplers)
      -> codec.decode                    K frames: the (reconstructed) context followed by the prediction

The computation is `Re2PixPipeline` (eval/hierarchy.py, public as `re2pix`); this file reads the clip and writes
the files. The cache is the contract between the stages: its meta.json says which VFM (name, layers, input size,
settings, weights) and codec made the features and latents the models were trained on, and its pca.safetensors is
the PCA. The checkpoints record the cache path, found from any working folder (`cache=` overrides it, e.g. on another
machine); an exported bundle (`bundle=`, `python cli.py export`) carries all of it instead. Nothing runs unless the
PCA fingerprint agrees with both checkpoints and the rebuilt VFM/codec weights agree with the cache's record; random
VFM weights are used only when the cache itself was made with them and the caller allows them.

A clip with fewer than K but at least M frames is predicted all the same; the missing future simply has no ground
truth (no side-by-side video, blank truth cells in the grid).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from eval.hierarchy import Re2PixPipeline
from eval.visualize import frame_grid, pca_rgb, write_mp4, write_png
from pipeline import atomic
from pipeline.console import summary
from pipeline.decode import probe_video, read_frames
from pipeline.errors import InputError
from pipeline.sources.base import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Clip, natural_key
from pipeline.sources.videos import FRAME_FOLDER_FPS

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


# ------------------------------------------------------------------------------------------------ predict


def load_pipeline(stage1_ckpt: str | Path | None, stage2_ckpt: str | Path | None, bundle: str | Path | None = None,
                  cache: str | None = None, **kw: Any) -> Re2PixPipeline:
    """The pipeline from a bundle, or from the two checkpoints (and their cache); one or the other."""
    if bundle is not None:
        if stage1_ckpt is not None or stage2_ckpt is not None or cache is not None:
            raise ValueError("bundle= holds both stages and everything they need: pass it alone, without stage1/stage2/cache")
        return Re2PixPipeline.from_pretrained(bundle, **kw)
    if stage1_ckpt is None or stage2_ckpt is None:
        raise ValueError("pass both checkpoints (--stage1 and --stage2), or an exported bundle (--bundle)")
    return Re2PixPipeline.from_checkpoints(stage1_ckpt, stage2_ckpt, cache, **kw)


def predict(
    stage1_ckpt: str | Path | None,
    stage2_ckpt: str | Path | None,
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
    bundle: str | Path | None = None,
    vae_tiling: bool = False,
) -> dict[str, Any]:
    """Predict the future of the clip `input` with the two checkpoints (or an exported `bundle`); write the files
    listed in OUTPUT_FILES into `out` (plus prediction_<i>.mp4 for samples i >= 1). Returns what predict.json records.

    Sampling settings default to the Stage 2 training config's `stage2.diffusion`; the arguments override them.
    `vfm_weights` / `codec_weights` point at the weights files when they moved since the cache was made.
    `vae_tiling` encodes and decodes the WAN VAE in spatial tiles (lower peak memory; predict.json records it).
    """
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1")
    t_start = time.perf_counter()
    out = Path(out)
    pipe = load_pipeline(stage1_ckpt, stage2_ckpt, bundle, cache, device=device, allow_random_weights=allow_random_weights,
                         vfm_weights=vfm_weights, codec_weights=codec_weights)
    if vae_tiling:
        pipe.enable_vae_tiling()
    overrides = {"guidance_weight": guidance_weight, "guidance_components": guidance_components,
                 "inference_components": inference_components, "sampler": sampler, "steps": steps}
    sampling = pipe.sampling(**overrides)  # refused here, before the clip is read, when an option does not apply
    k_frames, m_frames, height, width = pipe.window_frames, pipe.context_frames, pipe.height, pipe.width
    feature_indices, ctx, latent_frames = pipe.feature_indices, pipe.context_latent_frames, pipe.latent_frames
    frames, fps = read_input_frames(input, k_frames, m_frames, height, width)
    n_input = frames.shape[0]
    has_truth = n_input >= k_frames
    seconds: dict[str, float] = {"load": time.perf_counter() - t_start}

    result = pipe(frames, num_samples=samples, seed=seed, show_progress=True, **overrides)
    seconds.update(result.provenance["seconds"])  # features, stage1, stage2_and_decode
    # The observed frames as given (a lossy codec would alter them), then each sample's future.
    decoded = [np.concatenate([frames[:m_frames], result.frames[i].numpy()]) for i in range(samples)]
    features = result.features  # [Tf, C, h, w]: VFM+PCA context, Stage 1 future

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

    feature_images = pca_rgb(features, size=(height, width))
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
        "latents": result.latents.contiguous(),  # [S, Cz, Tl, H', W']
        "features": features.contiguous(),  # [Tf, C, h, w]
        "frames": torch.from_numpy(np.stack(decoded)),  # uint8 [S, K, H, W, 3]
        "input_frames": torch.from_numpy(np.ascontiguousarray(frames)),  # uint8 [n, H, W, 3]
    }
    atomic.write_bytes(out / "tensors.safetensors", save_safetensors(tensors, metadata={"format": "re2pix-predict-v1"}))
    outputs["tensors"] = str(out / "tensors.safetensors")

    seconds["total"] = time.perf_counter() - t_start
    p = result.provenance
    record = {
        "input": str(input),
        "input_frames": int(n_input),
        "fps": float(fps),
        "window": {"frames": k_frames, "context_frames": m_frames, "height": height, "width": width},
        "feature_frame_indices": feature_indices,
        "has_truth": bool(has_truth),
        **{k: p[k] for k in ("samples", "seed", "sample_seeds", "device", "sampling", "stage1", "stage2", "cache",
                             "bundle", "pca_fingerprint", "vfm", "random", "random_parts")},
        "codec": {**p["codec"], "mp4": codec_name},
        "outputs": {**outputs, "record": str(out / "predict.json")},
        "seconds": seconds,
    }
    atomic.write_json(out / "predict.json", record)
    summary(
        f"predict: {samples} sample(s) of {k_frames - m_frames} future frames from {n_input} input frames in "
        f"{seconds['total']:.1f} s ({sampling.sampler}, {sampling.steps} steps, guidance {sampling.guidance_weight:g})"
        + (", RANDOM weights" if p["random"] else "") + f" -> {out}"
    )
    return record
