"""`Re2PixPipeline`: the whole hierarchy loaded once, called on frames in memory (the public API is `re2pix`).

    pipe = Re2PixPipeline.from_checkpoints("runs/tiny/stage1", "runs/tiny/stage2")   # or .from_pretrained(bundle)
    out = pipe(frames, num_samples=1, seed=0)      # frames: uint8 [T, H, W, 3] (T >= M), any size
    out.frames                                     # uint8 [S, K - M, H, W, 3]: the predicted future

A call runs, for the first M frames (resized to the window as every dataset is):
    VFM -> PCA of the context feature frames -> Stage 1 rollout -> codec.encode(context) -> Stage 2 sampling
    (sample i drawn from noise seed `noise_seed(seed, i)`) -> codec.decode.
It writes nothing; `predict` (eval/predict.py) is this call plus the files. Loading checks that every part fits
(the checkpoints against the cache or bundle, the VFM/codec weights against their fingerprints) and refuses, naming
the field; sampling options are checked by their one owner (models.samplers.sampling_settings).
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from configs.schema import DiffusionConfig, config_from_dict
from eval.frozen import (
    build_frozen_codec,
    build_frozen_vfm,
    check_checkpoints_fit_cache,
    checkpoint_config,
    find_cache,
    read_cache,
)
from eval.generate import noise_seed, sample_future
from eval.visualize import to_uint8_frames
from models.rollout import rollout_from_history
from models.samplers import sampling_settings
from models.stage2 import build_stage2_model
from pipeline import layout
from pipeline.console import progress, warn_loud
from pipeline.decode import resize_frames
from pipeline.device import inference_autocast, resolve_device
from pipeline.fingerprint import RANDOM
from pipeline.pca import PCA
from train import checkpoint as ckpt
from train.stage1 import build_stage1_model

SAMPLING_RECORD = ("sampler", "steps", "sigma_max", "sigma_min", "rho", "guidance_weight", "guidance_components",
                   "inference_components")


@dataclasses.dataclass
class Prediction:
    """What one call returns. Unbatched input ([T, H, W, 3]) gives the shapes below; a batch [B, T, H, W, 3] puts B
    first on every tensor."""

    frames: torch.Tensor  # uint8 [S, K - M, H, W, 3]: the predicted future frames, sample by sample
    latents: torch.Tensor  # float32 [S, Cz, Tl, H', W']: Stage 2's sampled latents (context latent frames included)
    features: torch.Tensor  # float32 [Tf, C, h, w]: PCA features, VFM of the context then the Stage 1 forecast
    context: torch.Tensor  # uint8 [M, H, W, 3]: the context frames as the model saw them (resized to the window)
    provenance: dict[str, Any]  # checkpoints or bundle, fingerprints, sampling settings, seeds, random parts


class Re2PixPipeline:
    """Stage 1, Stage 2, the frozen VFM, PCA and codec, and the window they were trained on; see the module docstring.

    Build it with `from_checkpoints` (a run's checkpoints and its cache) or `from_pretrained` (an exported bundle)."""

    def __init__(self, *, stage1: torch.nn.Module, stage2: torch.nn.Module, vfm: Any, codec: Any, pca: PCA,
                 meta: dict[str, Any], sampling: DiffusionConfig, device: torch.device, dtype: torch.dtype | None,
                 provenance: dict[str, Any]):
        self.stage1, self.stage2, self.vfm, self.codec = stage1, stage2, vfm, codec
        self.pca, self.pca_on_device, self.meta = pca, pca.to(device), meta
        self.default_sampling, self.device, self.dtype = sampling, device, dtype
        window = layout.WindowMeta.of(meta)
        self.window_frames, self.context_frames, self.height, self.width = (
            window.frames, window.context_frames, window.height, window.width)
        self.feature_indices = list(window.feature_indices)
        self.context_latent_frames, self.latent_frames = window.context_latent_frames, window.latent_frames
        self.provenance = provenance

    # ------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_checkpoints(cls, stage1: str | Path, stage2: str | Path, cache: str | None = None, *,
                         device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                         allow_random_weights: bool = False, vfm_weights: str | None = None,
                         codec_weights: str | None = None) -> Re2PixPipeline:
        """Load a run: checkpoint or run folders (`run@best|@latest|@<step>` as everywhere) and the cache they were
        trained on, found from any working folder (eval.frozen.find_cache), or `cache=` where it moved."""
        dev = resolve_device(None if device is None else str(device))
        s1_path, s1_config = checkpoint_config(stage1, "stage1")
        s2_path, s2_config = checkpoint_config(stage2, "stage2")
        cache_root = find_cache(s2_path, s2_config, cache)
        meta, pca = read_cache(cache_root)
        check_checkpoints_fit_cache(meta, pca, s1_config, s2_config, cache_root)
        s1_model, s1_loaded = ckpt.load_model_for_inference(s1_path, build_stage1_model, device=dev)
        s2_model, s2_loaded = ckpt.load_model_for_inference(s2_path, build_stage2_model, device=dev)
        parts = {"stage1": (s1_path, s1_config, s1_loaded["loaded_weights"]),
                 "stage2": (s2_path, s2_config, s2_loaded["loaded_weights"])}
        return cls._assemble(s1_model, s2_model, parts, meta, pca, cache_root, {"cache": cache_root, "bundle": None},
                             dev, dtype, allow_random_weights, vfm_weights, codec_weights)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, allow_random_weights: bool = False,
                        vfm_weights: str | None = None, codec_weights: str | None = None) -> Re2PixPipeline:
        """Load a bundle written by `export` (no cache, no run folder). The VFM (and a WAN VAE) are named by
        fingerprint in the bundle: pass `vfm_weights=` / `codec_weights=` when they are not where it says."""
        from eval.bundle import read_bundle

        dev = resolve_device(None if device is None else str(device))
        b = read_bundle(path)
        if vfm_weights is None and b.index["files"].get("vfm"):
            vfm_weights = str(b.root / b.index["files"]["vfm"])  # the VFM weights the bundle carries
        s1_model = ckpt.build_with_weights(build_stage1_model, b.stage1["model"], b.stage1_weights, b.root / "stage1", dev)
        s2_model = ckpt.build_with_weights(build_stage2_model, b.stage2["model"], b.stage2_weights, b.root / "stage2", dev)
        parts = {}
        for stage, config in (("stage1", b.stage1), ("stage2", b.stage2)):
            origin = config.get("exported_from") or {}
            why = f"the bundle's (exported from {origin.get('checkpoint', '?')}: {origin.get('selected', '?')})"
            parts[stage] = (b.root / stage, {**config, "selected": why}, config.get("loaded_weights", "model"))
        return cls._assemble(s1_model, s2_model, parts, b.meta, b.pca, str(b.root), {"cache": None, "bundle": str(b.root)},
                             dev, dtype, allow_random_weights, vfm_weights, codec_weights)

    @classmethod
    def _assemble(cls, stage1: torch.nn.Module, stage2: torch.nn.Module, parts: dict[str, tuple[Path, dict[str, Any], str]],
                  meta: dict[str, Any], pca: PCA, codec_root: str, source: dict[str, Any], dev: torch.device,
                  dtype: torch.dtype | None, allow_random_weights: bool, vfm_weights: str | None,
                  codec_weights: str | None) -> Re2PixPipeline:
        s1_config, s2_config = parts["stage1"][1], parts["stage2"][1]
        full_config = s2_config["config"]
        vfm = build_frozen_vfm(meta, full_config, vfm_weights, allow_random_weights, dev)
        codec = build_frozen_codec(meta, full_config, codec_weights, allow_random_weights, dev, codec_root)
        random_parts = [name for name, flag in (
            ("Stage 1", s1_config.get("random_weights")), ("Stage 2", s2_config.get("random_weights")),
            ("VFM", vfm.weights == RANDOM), ("codec", codec.weights == RANDOM),
        ) if flag]
        if random_parts:
            warn_loud(f"predicting with RANDOM weights in {', '.join(random_parts)}: the prediction is meaningless; "
                      "the provenance records it")
        provenance: dict[str, Any] = {
            stage: {"checkpoint": str(path), "selected": config.get("selected", ""), "weights": weights,
                    "step": config.get("step"), "random_weights": bool(config.get("random_weights"))}
            for stage, (path, config, weights) in parts.items()
        }
        provenance["stage2"].update(conditioning=stage2.spec.dit.conditioning, alignment=stage2.spec.alignment)
        provenance.update(source)
        provenance.update({
            "pca_fingerprint": pca.fingerprint,
            "vfm": {"name": vfm.name, "weights": vfm.weights},
            "codec": {"name": codec.name, "weights": codec.weights, "tiling": codec.tiling},
            "random": bool(random_parts),
            "random_parts": random_parts,
            "device": str(dev),
        })
        sampling = config_from_dict(full_config).stage2.diffusion
        return cls(stage1=stage1, stage2=stage2, vfm=vfm, codec=codec, pca=pca, meta=meta, sampling=sampling,
                   device=dev, dtype=dtype, provenance=provenance)

    # ---------------------------------------------------------------------------------------- properties

    @property
    def feature_channels(self) -> int:
        """Feature channels Stage 2 takes; 0 for a model without feature conditioning (the one definition)."""
        return int(self.stage2.feature_channels)

    def sampling(self, **overrides: Any) -> DiffusionConfig:
        """The checkpoint's sampling settings with `overrides` (None = keep), checked by their one owner."""
        return sampling_settings(self.default_sampling, self.feature_channels, **overrides)

    def _autocast(self) -> Any:
        if self.dtype is None:
            return inference_autocast(self.device)
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare_frames(self, frames: Any) -> tuple[np.ndarray, bool]:
        """(uint8 [B, M, H, W, 3] at the window size, whether the input was batched) from uint8 or float ([0, 1])
        frames [T, H, W, 3] or [B, T, H, W, 3] of any size, numpy or torch; only the first M frames are used."""
        array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if array.ndim not in (4, 5) or array.shape[-1] != 3:
            raise ValueError(
                f"frames of shape {tuple(array.shape)}: expected RGB frames [T, H, W, 3] or a batch [B, T, H, W, 3] "
                "(channels last)"
            )
        batched = array.ndim == 5
        if not batched:
            array = array[None]
        m = self.context_frames
        if array.shape[1] < m:
            raise ValueError(f"{array.shape[1]} frames given; the model observes {m} context frames "
                             "(window.context_frames), so at least that many are needed")
        array = array[:, :m]
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"frames of dtype {array.dtype}: pass uint8 (0..255) or float (0..1) frames")
            if array.size and (float(array.min()) < 0.0 or float(array.max()) > 1.0):
                raise ValueError(f"float frames must lie in [0, 1]; got values in [{array.min():g}, {array.max():g}]")
            array = np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
        return np.stack([resize_frames(clip, self.height, self.width) for clip in array]), batched

    def enable_vae_tiling(self) -> Re2PixPipeline:
        """Encode the context and decode the prediction in spatial tiles (diffusers' name and tiles: 256 px every
        192, blended): about 4x lower codec peak memory at 432x768x25, so a paper-size clip decodes on a small GPU.
        The frames then differ from untiled ones at the seams; the provenance records it. WAN codec only."""
        self.codec.enable_tiling()
        self.provenance["codec"]["tiling"] = True
        return self

    # ------------------------------------------------------------------------------------------- calling

    @torch.no_grad()
    def __call__(self, frames: Any, num_samples: int = 1, seed: int = 0, *, show_progress: bool = False,
                 **sampling: Any) -> Prediction:
        """Predict the K - M future frames after the first M of `frames`; `sampling` overrides the checkpoint's
        `stage2.diffusion` settings (sampler, steps, guidance_weight, guidance_components, inference_components, ...).
        Sample i uses noise seed noise_seed(seed, i), so it does not depend on how many samples are drawn.
        `show_progress` shows a bar over the samples (predict's)."""
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be >= 1")
        cfg = self.sampling(**sampling)
        context_frames, batched = self.prepare_frames(frames)
        dev, ctx, m = self.device, self.context_latent_frames, self.context_frames
        b = context_frames.shape[0]
        seconds: dict[str, float] = {}
        tic = time.perf_counter()
        images = torch.from_numpy(context_frames[:, self.feature_indices[:ctx]]).to(dev)
        images = images.flatten(0, 1).permute(0, 3, 1, 2).float().div(255.0)
        context_features = self.pca_on_device.project_maps(self.vfm(images)).float()
        context_features = context_features.reshape(b, ctx, *context_features.shape[1:])  # [B, ctx, C, h, w]
        seconds["features"] = time.perf_counter() - tic
        tic = time.perf_counter()
        with self._autocast():
            predicted = rollout_from_history(self.stage1, context_features, self.latent_frames - ctx).float()
        features = torch.cat([context_features, predicted], dim=1)  # [B, Tf, C, h, w]
        seconds["stage1"] = time.perf_counter() - tic

        tic = time.perf_counter()
        video = torch.from_numpy(context_frames).to(dev).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)
        context_latents = self.codec.encode(video)  # [B, Cz, ctx, H', W']
        conditioning = features if self.feature_channels else None
        latents, decoded = [], []
        bar = progress() if show_progress else None
        with bar or nullcontext():
            job = bar.add_task("sampling", total=num_samples, status=f"{cfg.sampler}, {cfg.steps} steps") if bar else None
            for i in range(num_samples):
                generator = torch.Generator().manual_seed(noise_seed(seed, i))
                z = sample_future(self.stage2, context_latents, self.latent_frames, conditioning, cfg, generator,
                                  self._autocast())
                latents.append(z)
                decoded.append(torch.from_numpy(np.stack([to_uint8_frames(v)[m:] for v in self.codec.decode(z)])))
                if bar is not None:
                    bar.update(job, advance=1)
        seconds["stage2_and_decode"] = time.perf_counter() - tic
        out = Prediction(
            frames=torch.stack(decoded, dim=1),  # [B, S, K - M, H, W, 3]
            latents=torch.stack(latents, dim=1).cpu(),  # [B, S, Cz, Tl, H', W']
            features=features.cpu(),
            context=torch.from_numpy(context_frames),
            provenance={**self.provenance, "samples": num_samples, "seed": seed,
                        "sample_seeds": [noise_seed(seed, i) for i in range(num_samples)],
                        "sampling": {k: getattr(cfg, k) for k in SAMPLING_RECORD}, "seconds": seconds},
        )
        if not batched:
            out.frames, out.latents, out.features, out.context = out.frames[0], out.latents[0], out.features[0], out.context[0]
        return out
