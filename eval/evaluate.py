"""`evaluate`: the paper's protocol (§4.1, Table 1, appendix 6.1, Figure 3) on the cache's val split.

Every val window of K frames is split into M observed frames and K - M frames to predict (Cityscapes: snippet frames
3-15 observed, 16-27 predicted). Each method predicts the future; every method is scored on the same windows:

  semantic consistency, on the annotated frame (window index `eval.annotated_index`; snippet frame 19):
      mIoU over the 19 classes (A) and over the 8 moving-object classes (M), AbsRel and δ1 of the 8-bit
      pseudo-disparity bins, with the DPT heads of `train-heads`;
  generation quality, on every predicted frame: FID (Inception pool features of every predicted frame vs the real
      frame at the same position), FVD (one clip of K - M frames per window vs the real clip, I3D), and PSNR / SSIM
      as weight-free extras (frames quantised to uint8, then scaled to [0, 1]; per frame, averaged over all frames).

Rows (methods):
  * each Stage 2 checkpoint given (`Re2Pix`, the plain baseline, Large, REPA, VideoREPA: names from the caller): the
    full hierarchy, i.e. Stage 1 rollout of the future features from the true context features, Stage 2 sampling of
    the future latents from the clean context latents, codec decode. Segmentation and depth run the VFM + PCA + heads
    on the GENERATED annotated frame, as the paper does;
  * `Re2Pix (Stage 1)`: the heads applied directly to Stage 1's predicted features of the annotated frame (no pixels,
    so no FID/FVD/PSNR/SSIM);
  * `Copy last frame`: pixels = the last context frame repeated; features = the last context feature frame;
  * `Oracle (true features)` (optional): the heads on the true features of the annotated frame, the ceiling of the
    feature-space rows.
`samples` > 1 draws independent samples of every generative row (same seeds for every method: common random
numbers) and reports mean ± std over samples per metric (appendix 6.1); deterministic rows have one value.
`all_checkpoints=True` also evaluates every saved checkpoint of each Stage 2 run: metric vs training step (Figure 3).

Ground truth frames: with the lossless pixel codec (weights "lossless") the cached true latents decode exactly to the
source frames, so they are used; with a real VAE, whose reconstructions are not the truth, the source frames listed
in the manifest are read again (pipeline.decode, resized exactly as the cache did). `truth=` forces either.
FID/FVD weights: `eval.fid_weights` / `eval.fvd_weights`; without them evaluation stops and says how to get them,
unless `allow_random_metric_weights` (the numbers are then meaningless and the report says so loudly).

Outputs in `out`: metrics.json (everything, machine-readable), report.md (eval/report.py), plots/ (metric vs step,
PNG) and qualitative/ (frame grids of the first windows).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from configs.schema import Config, config_from_dict
from eval.feature_nets import FVD_MIN_FRAMES, build_fid_extractor, build_fvd_extractor
from eval.frechet import FeatureStats, frechet_distance
from eval.predict import (
    build_frozen_codec,
    build_frozen_vfm,
    check_checkpoints_fit_cache,
    checkpoint_config,
    sampling_config,
)
from eval.report import plot_metric_vs_step, write_report
from eval.visualize import frame_grid, write_png
from models.diffusion import context_inputs
from models.metrics import ConfusionMatrix, DepthMetrics, psnr, ssim
from models.rollout import rollout_from_history
from models.samplers import sample
from models.stage2 import build_stage2_model
from pipeline import atomic, layout
from pipeline.console import progress, summary, warn_loud
from pipeline.decode import read_frames
from pipeline.device import inference_autocast, resolve_device
from pipeline.fingerprint import RANDOM
from pipeline.pca import PCA
from pipeline.sources.base import Clip
from pipeline.store import CacheError, CacheReader
from train import checkpoint as ckpt
from train.heads import HEAD_TASKS, build_head, feature_frame_of, predict_labels
from train.stage1 import build_stage1_model, stage1_fit_problems

METRICS = ("miou", "miou_moving", "abs_rel", "delta1", "fid", "fvd", "psnr", "ssim")
SEMANTIC_METRICS = ("miou", "miou_moving", "abs_rel", "delta1")
PIXEL_METRICS = ("fid", "fvd", "psnr", "ssim")
EXTRA_DEPTH_METRICS = ("sq_rel", "rmse", "rmse_log", "delta2", "delta3")
STAGE1_ROW = "Re2Pix (Stage 1)"
COPY_ROW = "Copy last frame"
ORACLE_ROW = "Oracle (true features)"
TRUTH_SOURCES = ("auto", "latents", "frames")
SSIM_BORDER = "reflect"


# ------------------------------------------------------------------------------------------ metric nets


@dataclass
class MetricNets:
    """The FID and FVD feature networks (each with `.dim` and `.weights`: "file:<sha16>" or "random"); None when
    FID/FVD are switched off (`fid_fvd=False`: with random networks they cost most of an evaluation and mean nothing)."""

    fid: nn.Module | None
    fvd: nn.Module | None


def build_metric_nets(cfg: Config, allow_random: bool, device: torch.device | str = "cpu") -> MetricNets:
    """FID Inception and FVD I3D from `eval.fid_weights` / `eval.fvd_weights`; without a file this raises
    MissingMetricWeightsError (what to download, and `--allow-random-metric-weights`) unless `allow_random`."""
    allow = allow_random or cfg.eval.allow_random_metric_weights
    return MetricNets(
        fid=build_fid_extractor(cfg.eval.fid_weights, allow_random=allow, device=device, seed=cfg.seed),
        fvd=build_fvd_extractor(cfg.eval.fvd_weights, allow_random=allow, device=device, seed=cfg.seed),
    )


# ------------------------------------------------------------------------------------------- accumulators


class RowMetrics:
    """Everything one method (one sample of it) accumulates over the val windows."""

    def __init__(self, num_classes: int, fid_dim: int, fvd_dim: int):
        self.confusion = ConfusionMatrix(num_classes)
        self.depth = DepthMetrics()
        self.fid = FeatureStats(fid_dim) if fid_dim else None
        self.fvd = FeatureStats(fvd_dim) if fvd_dim else None
        self.psnr_sum, self.ssim_sum, self.frames = 0.0, 0.0, 0
        self.has_semantics = self.has_pixels = False

    def add_semantics(self, segmentation: torch.Tensor | None, seg_labels: torch.Tensor | None,
                      depth: torch.Tensor | None, depth_labels: torch.Tensor | None) -> None:
        """Predicted train ids / depth bins [B, H, W] against the labels of the windows that have them."""
        self.has_semantics = True
        if segmentation is not None and len(segmentation):
            self.confusion.update(segmentation.cpu(), seg_labels.cpu())
        if depth is not None and len(depth):
            self.depth.update(depth.cpu(), depth_labels.cpu())

    def add_frames(self, predicted: torch.Tensor, real: torch.Tensor, nets: MetricNets, fvd_clips: bool) -> None:
        """uint8 clips [B, 3, T, H, W] of predicted and real future frames."""
        self.has_pixels = True
        b, _, t, h, w = predicted.shape
        frames = predicted.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
        truth = real.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
        if nets.fid is not None:
            self.fid.update(nets.fid(frames))
        if fvd_clips and nets.fvd is not None:
            self.fvd.update(nets.fvd(predicted))
        x, y = frames.double() / 255.0, truth.double() / 255.0
        self.psnr_sum += float(psnr(x, y, data_range=1.0).sum())
        self.ssim_sum += float(ssim(x, y, data_range=1.0, border=SSIM_BORDER).sum())
        self.frames += b * t

    def compute(self, real_fid: FeatureStats, real_fvd: FeatureStats, notes: list[str]) -> dict[str, float | None]:
        out: dict[str, float | None] = dict.fromkeys(METRICS)
        if self.has_semantics:
            out["miou"] = self.confusion.miou()
            out["miou_moving"] = self.confusion.moving_miou() if self.confusion.num_classes == 19 else None
            depth = self.depth.compute()
            out["abs_rel"], out["delta1"] = depth["abs_rel"], depth["delta1"]
            out.update({k: depth[k] for k in EXTRA_DEPTH_METRICS})
        if self.has_pixels and self.frames:
            out["psnr"] = self.psnr_sum / self.frames
            out["ssim"] = self.ssim_sum / self.frames
            out["fid"] = _frechet(self.fid, real_fid, "FID", notes) if self.fid is not None else None
            out["fvd"] = _frechet(self.fvd, real_fvd, "FVD", notes) if self.fvd is not None and self.fvd.count else None
        return out


def _frechet(pred: FeatureStats, real: FeatureStats, what: str, notes: list[str]) -> float | None:
    if pred.count < 2 or real.count < 2:
        _note(notes, f"{what} needs at least 2 samples per side (have {pred.count} predicted, {real.count} real): reported as n/a")
        return None
    try:
        return frechet_distance(pred, real)
    except ValueError as exc:  # badly conditioned covariances (far fewer samples than dimensions)
        _note(notes, f"{what}: {exc}")
        return None


def _note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """{"mean", "std", "values"} over samples (std with ddof 0, as over a handful of sampling runs; None when n/a)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "std": None, "values": [None if v is None else float(v) for v in values]}
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)) if len(finite) > 1 else 0.0,
            "values": [None if v is None else float(v) for v in values]}


# ------------------------------------------------------------------------------------------------ windows


@dataclass
class Windows:
    """One batch of val windows with everything every method needs (on the evaluation device)."""

    rows: list[int]
    features: torch.Tensor  # [B, Tf, C, h, w] true PCA features
    latents: torch.Tensor  # [B, Cz, Tl, H', W'] true latents
    truth: torch.Tensor  # uint8 [B, 3, K, H, W] true frames
    predicted_features: torch.Tensor  # [B, Tf - ctx, C, h, w] Stage 1 rollout
    seg_labels: torch.Tensor  # [B, H, W] long (all 255 where the window has no usable label)
    depth_labels: torch.Tensor  # [B, H, W] long (all 0 where none)
    seg_valid: torch.Tensor  # [B] bool
    depth_valid: torch.Tensor  # [B] bool


# A generator maps (windows, sample index) to uint8 future frames [B, 3, K - M, H, W]. Stage2Sampler is the one
# used here; anything with this signature (another model, a stand-in) can be scored the same way.
WindowGenerator = Callable[[Windows, int], torch.Tensor]


def quantize(video: torch.Tensor) -> torch.Tensor:
    """Codec output [B, 3, T, H, W] in [-1, 1] -> uint8 (rounded, as a saved frame would be)."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def window_seed(seed: int, sample_index: int, first_row: int) -> int:
    """The noise seed of one batch of windows: the same for every method and checkpoint (common random numbers)."""
    return int(np.random.SeedSequence([seed, sample_index, first_row]).generate_state(1)[0])


class Stage2Sampler:
    """The full hierarchy for one Stage 2 checkpoint: Stage 1 features (given) -> Stage 2 sampling -> decode."""

    def __init__(self, model: nn.Module, codec: nn.Module, dcfg: Any, ctx: int, context_frames: int, seed: int, device: torch.device):
        self.model, self.codec, self.dcfg = model, codec, dcfg
        self.ctx, self.context_frames, self.seed, self.device = ctx, context_frames, seed, device
        self.uses_features = bool(model.net.uses_features)

    @torch.no_grad()
    def __call__(self, windows: Windows, sample_index: int) -> torch.Tensor:
        latents = windows.latents
        context, cond_mask = context_inputs(latents[:, :, : self.ctx], latents.shape[2])
        features = None
        if self.uses_features:
            full = torch.cat([windows.features[:, : self.ctx], windows.predicted_features.to(windows.features.dtype)], dim=1)
            features = full.permute(0, 2, 1, 3, 4)  # [B, C, Tf, h, w]
        generator = torch.Generator().manual_seed(window_seed(self.seed, sample_index, windows.rows[0]))
        with inference_autocast(self.device):
            z = sample(self.model.denoiser, tuple(latents.shape), context, cond_mask, features, self.dcfg, generator=generator)
        return quantize(self.codec.decode(z.float())[:, :, self.context_frames :])


# ------------------------------------------------------------------------------------------------- helpers


def _load_heads(heads: str, meta: dict[str, Any], pca: PCA, device: torch.device) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """{task: (head, checkpoint config)} from the `train-heads` output folder (`heads/segmentation`, `heads/depth`)."""
    loaded = {}
    for task in HEAD_TASKS:
        path = Path(heads) / task
        if not path.exists():
            raise ckpt.CheckpointError(
                f"{path} does not exist: pass the folder `train-heads` wrote (it holds segmentation/ and depth/); "
                "train them with `python cli.py train-heads`"
            )
        head, config = ckpt.load_model_for_inference(path, build_head, device=device)
        if config["model"].get("task") != task:
            raise ckpt.CheckpointError(f"{config['checkpoint']} is a {config['model'].get('task')!r} head, expected {task!r}")
        trained_on, cache_vfm = config.get("vfm") or {}, meta["vfm"]
        diffs = [f"vfm.{k}: head {trained_on.get(k)!r}, cache {cache_vfm.get(k)!r}"
                 for k in ("name", "layers", "out_channels", "weights") if trained_on.get(k) != cache_vfm.get(k)]
        if diffs:
            raise ckpt.CheckpointError(
                f"{config['checkpoint']} was trained on another VFM's features than this cache holds ({'; '.join(diffs)}); "
                "train the heads on this cache with `python cli.py train-heads`"
            )
        if config.get("pca_fingerprint") not in (None, pca.fingerprint):
            warn_loud(f"{config['checkpoint']} was trained on features reconstructed by another PCA "
                      f"({config['pca_fingerprint']} vs {pca.fingerprint}); its scores may be slightly off")
        loaded[task] = (head, config)
    return loaded


def _check_stage1(meta: dict[str, Any], pca: PCA, config: dict[str, Any], cache: str) -> None:
    problems = []
    if config.get("pca_fingerprint") not in (None, pca.fingerprint):
        problems.append(f"PCA fingerprint: checkpoint {config['pca_fingerprint']!r}, cache {pca.fingerprint!r}")
    problems += stage1_fit_problems(config["model"], meta, pca.n_components)
    if problems:
        raise CacheError(f"Stage 1 checkpoint {config['checkpoint']} does not fit cache {cache}: " + "; ".join(problems))


def _truth_source(truth: str, codec_weights: str) -> str:
    if truth not in TRUTH_SOURCES:
        raise ValueError(f"truth={truth!r}: choose one of {TRUTH_SOURCES}")
    if truth == "auto":
        return "latents" if codec_weights == "lossless" else "frames"
    return truth


def _read_truth_frames(row: dict[str, Any], height: int, width: int) -> np.ndarray:
    """uint8 [K, H, W, 3] of one window, read from the source files the manifest lists."""
    indices = [int(i) for i in row["frame_indices"]]
    if row["source"]:
        clip = Clip(dataset=row["dataset"], split=row["split"], clip_id=row["clip_id"], fps=float(row["fps"]),
                    num_frames=max(indices) + 1, video=row["source"])
        return read_frames(clip, indices, height, width)
    paths = list(row["frame_paths"])
    clip = Clip(dataset=row["dataset"], split=row["split"], clip_id=row["clip_id"], fps=float(row["fps"]),
                num_frames=len(paths), frame_paths=tuple(paths))
    return read_frames(clip, list(range(len(paths))), height, width)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "window"


def _finite_or_none(obj: Any) -> Any:
    """JSON-safe: NaN / inf -> None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------- the protocol


@dataclass
class _Job:
    """One Stage 2 checkpoint to sample from: the main row of a run, or one step of its metric-vs-step curve."""

    run: str
    path: Path
    config: dict[str, Any]
    main: bool
    step: int
    results: list[RowMetrics] = field(default_factory=list)


def evaluate(
    cfg: Config,
    cache: str,
    heads: str,
    stage1: str,
    stage2_runs: dict[str, str] | None,
    out: str,
    samples: int | None = None,
    components: int | None = None,
    guidance_weight: float | None = None,
    guidance_components: int | None = None,
    all_checkpoints: bool = False,
    allow_random_metric_weights: bool = False,
    limit: int = 0,
    *,
    baseline: str | None = None,
    oracle: bool = True,
    sampling_steps: int | None = None,
    allow_random_weights: bool = False,
    truth: str = "auto",
    grids: int = 4,
    device: str | None = None,
    metric_nets: MetricNets | None = None,
    fid_fvd: bool = True,
) -> dict[str, Any]:
    """Run the protocol on the val split of `cache`; write metrics.json, report.md, plots/ and qualitative/ to `out`.

    `heads`: the folder `train-heads` wrote. `stage1`: Stage 1 checkpoint or run folder. `stage2_runs`: {row name:
    Stage 2 checkpoint or run folder}. `samples` (default `eval.samples`) independent samples per generative row.
    `components` (paper Table 5), `guidance_weight` / `guidance_components`
    (Tables 8-9) and `sampling_steps` override the sampling settings of every feature-conditioned run. `baseline`
    names the row the deltas are taken against (default: the first run trained without features and without
    alignment). `limit` > 0 evaluates only the first `limit` val windows. `allow_random_weights` accepts a cache made
    with a random VFM/codec (then rebuilt identically). `metric_nets` replaces the FID/FVD networks (tests, custom
    nets); by default they come from `eval.fid_weights` / `eval.fvd_weights`. `fid_fvd=False` skips FID and FVD
    (reported as not computed). Returns what metrics.json holds.
    """
    t_start = time.perf_counter()
    stage2_runs = dict(stage2_runs or {})
    samples = cfg.eval.samples if samples is None else samples
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1")
    for name in stage2_runs:
        if name in (STAGE1_ROW, COPY_ROW, ORACLE_ROW):
            raise ValueError(f"Stage 2 run name {name!r} is reserved for a reference row; choose another name")
    if baseline is not None and baseline not in stage2_runs:
        raise ValueError(f"baseline={baseline!r} is not one of the Stage 2 runs {sorted(stage2_runs)}")
    dev = resolve_device(device)
    out_dir = Path(out)
    notes: list[str] = []

    # ---- metric networks first: a missing weights file stops here, before any expensive work
    if fid_fvd:
        nets = metric_nets or build_metric_nets(cfg, allow_random_metric_weights, dev)
    else:
        nets = MetricNets(fid=None, fvd=None)
        _note(notes, "FID and FVD were not computed (fid_fvd off, --no-fid-fvd)")

    # ---- cache, frozen parts, checkpoints
    reader = CacheReader(cache)
    if not reader.complete:
        raise CacheError(f"{cache}: meta.json status is {reader.meta.get('status')!r}; finish the cache before evaluating")
    meta = reader.meta
    pca = reader.pca()
    pca_dev = pca.to(device=dev, dtype=torch.float32)
    window = meta["window"]
    k_frames, m_frames, height, width = (int(window[key]) for key in ("frames", "context_frames", "height", "width"))
    feature_indices = [int(i) for i in meta["feature_frame_indices"]]
    ctx, tf = int(meta["context_latent_frames"]), int(meta["latent_frames"])
    annotated = int(cfg.eval.annotated_index)
    if not m_frames <= annotated < k_frames:
        raise ValueError(
            f"eval.annotated_index={annotated} must be a predicted frame (window indices {m_frames}..{k_frames - 1}); "
            f"on Cityscapes windows cut at snippet frame 3 the annotated frame 19 is index 16"
        )
    annotated_feature = feature_frame_of(annotated, feature_indices, f"eval.annotated_index of {cache}")
    future_frames = k_frames - m_frames
    fvd_clips = nets.fvd is not None and future_frames >= getattr(nets.fvd, "min_frames", FVD_MIN_FRAMES)
    if nets.fvd is not None and not fvd_clips:
        _note(notes, f"FVD is n/a: {future_frames} predicted frames per clip, the I3D protocol needs at least {FVD_MIN_FRAMES}")

    full_config = cfg.to_dict()
    vfm = build_frozen_vfm(meta, full_config, None, allow_random_weights, dev)
    codec = build_frozen_codec(meta, full_config, None, allow_random_weights, dev, cache)
    truth_from = _truth_source(truth, meta["codec"].get("weights", ""))
    loaded_heads = _load_heads(heads, meta, pca, dev)
    s1_path, s1_config = checkpoint_config(stage1, "stage1")
    stage1_model, s1_loaded = ckpt.load_model_for_inference(s1_path, build_stage1_model, device=dev)
    s1_loaded["selected"] = s1_config["selected"]
    _check_stage1(meta, pca, s1_loaded, cache)

    jobs: list[_Job] = []
    for name, path in stage2_runs.items():
        s2_path, s2_config = checkpoint_config(path, "stage2")
        check_checkpoints_fit_cache(meta, pca, s1_config, s2_config, cache)
        paths = [s2_path]
        if all_checkpoints:  # s2_path is <run>/checkpoints/step_N: every complete sibling is a point of the curve
            paths = sorted({p for p in s2_path.parent.glob("step_*") if ckpt.is_complete(p)} | {s2_path})
        for p in paths:
            config = {**ckpt.read_config(p), "selected": s2_config["selected"] if p == s2_path else "a metric-vs-step point"}
            jobs.append(_Job(name, p, config, main=(p == s2_path), step=int(config.get("step", 0))))
    if baseline is None:
        plain = [j.run for j in jobs if j.main and j.config.get("conditioning") == "none" and j.config.get("alignment") == "none"]
        baseline = plain[0] if plain else None

    # ---- the windows
    rows = reader.samples("val")
    if len(rows) == 0:
        raise CacheError(f"{cache} has no complete 'val' windows to evaluate; check manifest.parquet splits and failures.parquet")
    if limit > 0:
        rows = rows[:limit]
    manifest = reader.manifest
    label_index = manifest["label_index"].to_numpy()
    seg_array = reader.array(layout.SEGMENTATION) if reader.has(layout.SEGMENTATION) else None
    depth_array = reader.array(layout.DEPTH) if reader.has(layout.DEPTH) else None
    features_array, latents_array = reader.array(layout.FEATURES), reader.array(layout.LATENTS)
    batch_size = max(1, int(cfg.eval.batch_size))
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    grid_rows = [int(r) for r in rows[: max(0, grids)]]
    grid_columns = [m_frames - 1] + [i for i in feature_indices if i >= m_frames]
    grid_cells: dict[int, dict[str, list[np.ndarray | None]]] = {r: {} for r in grid_rows}
    autocast = inference_autocast(dev)
    num_classes = int(loaded_heads["segmentation"][0].num_outputs)

    def load_windows(batch_rows: np.ndarray) -> Windows:
        idx = [int(r) for r in batch_rows]
        feats = torch.from_numpy(np.stack([np.asarray(features_array[r], dtype=np.float32) for r in idx])).to(dev)
        lats = torch.from_numpy(np.stack([np.asarray(latents_array[r], dtype=np.float32) for r in idx])).to(dev).permute(0, 2, 1, 3, 4)
        if truth_from == "latents":
            with torch.no_grad():
                real = quantize(codec.decode(lats))
        else:
            frames = [_read_truth_frames(manifest.row(r, named=True), height, width) for r in idx]
            real = torch.from_numpy(np.stack(frames)).to(dev).permute(0, 4, 1, 2, 3).contiguous()
        if real.shape[2] != k_frames:
            raise CacheError(f"{cache}: window rows {idx} give {real.shape[2]} truth frames, the window has {k_frames}")
        labelled = torch.tensor([int(label_index[r]) == annotated for r in idx])
        seg = torch.stack([torch.from_numpy(np.asarray(seg_array[r]).astype(np.int64)) if seg_array is not None
                           else torch.full((height, width), 255, dtype=torch.int64) for r in idx])
        dep = torch.stack([torch.from_numpy(np.asarray(depth_array[r]).astype(np.int64)) if depth_array is not None
                           else torch.zeros((height, width), dtype=torch.int64) for r in idx])
        seg_valid = labelled & (seg != 255).flatten(1).any(1)
        depth_valid = labelled & (dep != 0).flatten(1).any(1)
        with torch.no_grad(), autocast:
            predicted = rollout_from_history(stage1_model, feats[:, :ctx], tf - ctx).float()
        return Windows(idx, feats, lats, real, predicted, seg.to(dev), dep.to(dev), seg_valid.to(dev), depth_valid.to(dev))

    def score_features(acc: RowMetrics, w: Windows, coefficients: torch.Tensor) -> None:
        """Heads on feature maps [B, C, h, w] of the annotated frame."""
        size = (height, width)
        seg = predict_labels(loaded_heads["segmentation"][0], "segmentation", pca_dev, coefficients, size)
        dep = predict_labels(loaded_heads["depth"][0], "depth", pca_dev, coefficients, size)
        acc.add_semantics(seg[w.seg_valid], w.seg_labels[w.seg_valid], dep[w.depth_valid], w.depth_labels[w.depth_valid])

    def score_pixels(acc: RowMetrics, w: Windows, future: torch.Tensor) -> None:
        """Generated uint8 future [B, 3, T, H, W]: pixel metrics, then VFM + PCA + heads on its annotated frame."""
        acc.add_frames(future, w.truth[:, :, m_frames:], nets, fvd_clips)
        frame = future[:, :, annotated - m_frames].float() / 255.0
        score_features(acc, w, pca_dev.project_maps(vfm(frame)).float())

    def remember(w: Windows, label: str, video: torch.Tensor, first: int) -> None:
        """Keep the grid columns of `video` (uint8 [B, 3, T, H, W] whose frame 0 is window index `first`)."""
        for b, r in enumerate(w.rows):
            if r in grid_cells and label not in grid_cells[r]:
                grid_cells[r][label] = [video[b, :, c - first].permute(1, 2, 0).cpu().numpy() if c >= first else None
                                        for c in grid_columns]

    # ---- pass 1: reference rows and the real-frame statistics
    fid_dim = int(nets.fid.dim) if nets.fid is not None else 0
    fvd_dim = int(nets.fvd.dim) if nets.fvd is not None else 0
    real_fid, real_fvd = FeatureStats(max(fid_dim, 1)), FeatureStats(max(fvd_dim, 1))
    reference = {COPY_ROW: RowMetrics(num_classes, fid_dim, fvd_dim), STAGE1_ROW: RowMetrics(num_classes, fid_dim, fvd_dim)}
    if oracle:
        reference[ORACLE_ROW] = RowMetrics(num_classes, fid_dim, fvd_dim)
    total = len(batches) * (1 + samples * len(jobs))
    seconds: dict[str, float] = {}
    seg_windows = depth_windows = 0
    with progress() as bar, torch.no_grad():
        task = bar.add_task("evaluate", total=total, status="reference rows")
        tic = time.perf_counter()
        for batch_rows in batches:
            w = load_windows(batch_rows)
            seg_windows += int(w.seg_valid.sum())
            depth_windows += int(w.depth_valid.sum())
            real_future = w.truth[:, :, m_frames:]
            flat = real_future.permute(0, 2, 1, 3, 4).reshape(-1, 3, height, width)
            if nets.fid is not None:
                real_fid.update(nets.fid(flat))
            if fvd_clips:
                real_fvd.update(nets.fvd(real_future))
            copy = w.truth[:, :, m_frames - 1 : m_frames].expand(-1, -1, future_frames, -1, -1)
            reference[COPY_ROW].add_frames(copy, real_future, nets, fvd_clips)
            score_features(reference[COPY_ROW], w, w.features[:, ctx - 1])
            score_features(reference[STAGE1_ROW], w, w.predicted_features[:, annotated_feature - ctx])
            if oracle:
                score_features(reference[ORACLE_ROW], w, w.features[:, annotated_feature])
            remember(w, "truth", w.truth, 0)
            bar.update(task, advance=1)
        seconds["reference"] = time.perf_counter() - tic

        # ---- pass 2: every Stage 2 checkpoint, `samples` times
        for job in jobs:
            tic = time.perf_counter()
            bar.update(task, status=f"{job.run} step {job.step}")
            model, loaded = ckpt.load_model_for_inference(job.path, build_stage2_model, device=dev)
            train_cfg = config_from_dict(job.config["config"])
            conditioned = bool(model.net.uses_features)
            overrides = {"steps": sampling_steps}
            if conditioned:
                overrides.update(inference_components=components, guidance_weight=guidance_weight, guidance_components=guidance_components)
            elif any(v is not None for v in (components, guidance_weight, guidance_components)):
                _note(notes, f"{job.run}: components/guidance options do not apply to a model without feature conditioning")
            dcfg = sampling_config(train_cfg.stage2.diffusion, **overrides)
            if not conditioned and dcfg.guidance_weight > 0:
                dcfg = dataclasses.replace(dcfg, guidance_weight=0.0)
            job.config = {**job.config, "loaded_weights": loaded["loaded_weights"], "sampling": dataclasses.asdict(dcfg)}
            generate: WindowGenerator = Stage2Sampler(model, codec, dcfg, ctx, m_frames, cfg.seed, dev)
            job.results = [RowMetrics(num_classes, fid_dim, fvd_dim) for _ in range(samples)]
            for batch_rows in batches:
                w = load_windows(batch_rows)
                for s in range(samples):
                    future = generate(w, s)
                    score_pixels(job.results[s], w, future)
                    if job.main and s == 0:
                        remember(w, job.run, future, m_frames)
                    bar.update(task, advance=1)
            del model
            seconds[f"{job.run} step {job.step}"] = time.perf_counter() - tic

    # ---- assemble
    def row_result(kind: str, accs: list[RowMetrics], extra: dict[str, Any]) -> dict[str, Any]:
        per_sample = [a.compute(real_fid, real_fvd, notes) for a in accs]
        keys = list(METRICS) + [k for k in EXTRA_DEPTH_METRICS if k in per_sample[0]]
        return {"kind": kind, "samples": len(accs), **extra, "metrics": {k: summarize([p.get(k) for p in per_sample]) for k in keys}}

    def provenance_of(config: dict[str, Any], path: Path) -> dict[str, Any]:
        return {"checkpoint": str(path), "selected": config.get("selected"), "step": config.get("step"),
                "random_weights": bool(config.get("random_weights")), "loaded_weights": config.get("loaded_weights")}

    results_rows: dict[str, Any] = {COPY_ROW: row_result("copy_last", [reference[COPY_ROW]], {})}
    steps: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        info = {**provenance_of(job.config, job.path), "conditioning": job.config.get("conditioning"),
                "alignment": job.config.get("alignment"), "sampling": job.config.get("sampling")}
        result = row_result("generated", job.results, info)
        if job.main:
            results_rows[job.run] = result
        if all_checkpoints:
            steps.setdefault(job.run, []).append({"step": job.step, "checkpoint": str(job.path), "metrics": result["metrics"]})
    results_rows[STAGE1_ROW] = row_result("stage1", [reference[STAGE1_ROW]], provenance_of(s1_loaded, s1_path))
    if oracle:
        results_rows[ORACLE_ROW] = row_result("oracle", [reference[ORACLE_ROW]], {})
    for run in steps:
        steps[run].sort(key=lambda e: e["step"])

    first = manifest.row(int(rows[0]), named=True)
    native = [int(i) for i in first["frame_indices"]]
    random_parts = [name for name, flag in (
        ("VFM", meta["vfm"].get("weights") == RANDOM), ("codec", meta["codec"].get("weights") == RANDOM),
        ("FID Inception", nets.fid is not None and getattr(nets.fid, "weights", RANDOM) == RANDOM),
        ("FVD I3D", nets.fvd is not None and getattr(nets.fvd, "weights", RANDOM) == RANDOM),
        ("segmentation head", loaded_heads["segmentation"][1].get("random_weights")),
        ("depth head", loaded_heads["depth"][1].get("random_weights")),
        ("Stage 1", s1_config.get("random_weights")),
        *[(f"Stage 2 '{j.run}'", j.config.get("random_weights")) for j in jobs if j.main],
    ) if flag]
    results = {
        "rows": results_rows,
        "baseline": baseline,
        "steps": steps,
        "protocol": {
            "cache": str(cache),
            "dataset": meta.get("dataset"),
            "split": "val",
            "windows": len(rows),
            "limit": limit,
            "windows_with_segmentation": seg_windows,
            "windows_with_depth": depth_windows,
            "window_frames": k_frames,
            "context_frames": m_frames,
            "predicted_frames": future_frames,
            "context_window_indices": [0, m_frames - 1],
            "predicted_window_indices": [m_frames, k_frames - 1],
            "first_window_native_frames": {"context": [native[0], native[m_frames - 1]], "predicted": [native[m_frames], native[-1]]},
            "annotated_index": annotated,
            "annotated_native_frame": native[annotated],
            "annotated_feature_frame": annotated_feature,
            "copy_last_feature_index": feature_indices[ctx - 1],
            "resolution": [height, width],
            "samples": samples,
            "seed": cfg.seed,
            "batch_size": batch_size,
            "truth": "decoded cached latents (lossless pixel codec: exact source frames)" if truth_from == "latents"
                     else "source frames read again from the manifest's files",
            "fid": f"Inception pool3 ({fid_dim}-d) of every predicted frame vs the real frame at the same position "
                   f"({len(rows) * future_frames} frames per side); uint8 frames, resized to 299x299 by the extractor",
            "fvd": (f"one clip of {future_frames} predicted frames per window vs the real clip ({len(rows)} clips per side); "
                    f"every frame squashed to 224x224 (no crop), I3D Kinetics-400 logits averaged over time ({fvd_dim}-d); "
                    "Fréchet distance with N-1 covariances") if fvd_clips else "n/a (clips too short)",
            "segmentation": f"{num_classes} classes, one confusion matrix over the set, ignore 255; moving objects = train ids 11-18; "
                            f"logits upsampled bicubically to the label resolution {height}x{width} (the cache's window size)",
            "depth": "8-bit pseudo-disparity bins compared directly (no scale/shift alignment), valid = gt > 0, predicted bin 0 "
                     "clamped to 1, per-image metrics averaged over images",
            "psnr_ssim": f"frames quantised to uint8, scaled to [0, 1]; per frame, averaged over all predicted frames; "
                         f"SSIM Gaussian 11x11 sigma 1.5, {SSIM_BORDER} borders",
            "generated_semantics": "VFM on the generated annotated frame (uint8 -> [0, 1]), PCA projection and reconstruction, heads",
            "stage1_row": f"heads on Stage 1's rollout of feature frame {annotated_feature} (window index {annotated})",
            "copy_last_row": f"pixels: window frame {m_frames - 1} repeated; features: feature frame {ctx - 1} (window index {feature_indices[ctx - 1]})",
            "sampling_overrides": {"components": components, "guidance_weight": guidance_weight,
                                   "guidance_components": guidance_components, "steps": sampling_steps},
            "noise_seeds": "per (sample index, first window of the batch): the same noise for every method and checkpoint",
        },
        "provenance": {
            "vfm": {"name": meta["vfm"].get("name"), "weights": meta["vfm"].get("weights")},
            "codec": {"name": meta["codec"].get("name"), "weights": meta["codec"].get("weights")},
            "pca_fingerprint": pca.fingerprint,
            "fid_net": getattr(nets.fid, "weights", RANDOM) if nets.fid is not None else "not computed",
            "fvd_net": getattr(nets.fvd, "weights", RANDOM) if nets.fvd is not None else "not computed",
            "heads": {t: provenance_of(c, Path(c["checkpoint"])) for t, (_, c) in loaded_heads.items()},
            "stage1": provenance_of(s1_loaded, s1_path),
            "stage2": {j.run: {**provenance_of(j.config, j.path), "conditioning": j.config.get("conditioning"),
                               "alignment": j.config.get("alignment")} for j in jobs if j.main},
            "random_parts": random_parts,
            "random": bool(random_parts),
        },
        "notes": notes,
        "seconds": {**seconds, "total": time.perf_counter() - t_start},
    }
    results = _finite_or_none(results)

    # ---- files
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for metric in ("fid", "fvd", "miou", "abs_rel", "psnr") if steps else ():
        series = {run: [(e["step"], e["metrics"][metric]["mean"]) for e in entries] for run, entries in steps.items()}
        if any(v is not None for pts in series.values() for _, v in pts):
            path = out_dir / "plots" / f"{metric}_vs_step.png"
            plot_metric_vs_step(series, metric, path)
            files[f"plot_{metric}"] = str(path)
    for r, cells in grid_cells.items():
        if not cells:
            continue
        labels = list(cells)
        path = out_dir / "qualitative" / f"{_safe_name(str(manifest['sample_id'][r]))}.png"
        write_png(frame_grid([cells[k] for k in labels], labels), path)
        files.setdefault("qualitative", str(path.parent))
    results["files"] = {**files, "metrics": str(out_dir / "metrics.json"), "report": str(out_dir / "report.md")}
    atomic.write_json(out_dir / "metrics.json", results)
    write_report(results, out_dir)
    if random_parts:
        warn_loud(f"evaluated with RANDOM weights in {', '.join(random_parts)}: these numbers are meaningless (see report.md)")
    main = results_rows.get(next(iter(stage2_runs), COPY_ROW), results_rows[COPY_ROW])["metrics"]
    shown = ", ".join(f"{k} {main[k]['mean']:.4g}" for k in ("miou", "fid", "fvd", "psnr") if main.get(k, {}).get("mean") is not None)
    summary(
        f"evaluate: {len(rows)} val windows, {len(results_rows)} rows x {samples} sample(s) in "
        f"{results['seconds']['total']:.0f} s ({next(iter(stage2_runs), COPY_ROW)}: {shown}) -> {out_dir / 'report.md'}"
    )
    return results
