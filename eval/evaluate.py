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
  * `Copy last frame (through the codec)`: the last context frame as the codec reconstructs it, repeated, and scored
    like a generated row (VFM + PCA + heads on its pixels). Every generated row passes through the codec's decoder,
    so this, not the pixel copy, is the like-for-like "nothing moves" reference;
  * `Codec reconstruction`: the true future encoded and decoded (the cached latents), scored like a generated row:
    the ceiling any generated row can reach through this codec;
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

Outputs in `out`: metrics.json (everything, machine-readable), windows.npz (every row's metrics split by window, in
one window order, for paired comparisons: eval/windows.py), report.md (eval/report.py), plots/ (metric vs step, PNG)
and qualitative/ (frame grids of the first windows).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from configs.schema import Config, config_from_dict
from eval.frechet import FeatureStats
from eval.frozen import check_checkpoints_fit_cache, checkpoint_config
from eval.generate import FrameRenderer
from eval.protocol import EvalBatch, EvalProtocol, open_protocol
from eval.protocol_tag import protocol_tags
from eval.report import describe_protocol, plot_metric_vs_step, write_report
from eval.scoring import (
    EXTRA_DEPTH_METRICS,
    METRICS,
    PIXEL_METRICS,  # noqa: F401  (part of this module's public vocabulary)
    SEMANTIC_METRICS,  # noqa: F401
    WINDOW_FEATURE_MAX_DIM,
    MetricNets,
    RowMetrics,
    add_note,
    build_metric_nets,
    quantize,
    summarize,
)
from eval.visualize import GridCollector
from eval.windows import FILENAME as WINDOWS_FILE
from eval.windows import write_windows
from models.samplers import sampling_settings
from models.stage2 import build_stage2_model
from pipeline import atomic, layout
from pipeline.console import progress, summary, warn_loud
from pipeline.device import resolve_device
from pipeline.fingerprint import RANDOM
from train import checkpoint as ckpt

STAGE1_ROW = "Re2Pix (Stage 1)"
COPY_ROW = "Copy last frame"
CODEC_COPY_ROW = "Copy last frame (through the codec)"
CODEC_ROW = "Codec reconstruction"
ORACLE_ROW = "Oracle (true features)"
REFERENCE_ROWS = (STAGE1_ROW, COPY_ROW, CODEC_COPY_ROW, CODEC_ROW, ORACLE_ROW)

# A renderer maps (batch of windows, sample index) to uint8 future frames [B, 3, K - M, H, W]: FrameRenderer, or
# anything with that signature (another model, a stand-in) scored the same way.
Renderer = Callable[[EvalBatch, int], torch.Tensor]


@dataclass
class Stage2Job:
    """One Stage 2 checkpoint to sample from: the main row of a run, or one step of its metric-vs-step curve."""

    run: str
    path: Path
    config: dict[str, Any]
    main: bool
    step: int
    scores: list[RowMetrics] = field(default_factory=list)


@dataclass
class RealStats:
    """Fréchet statistics of the real future frames (FID: every frame; FVD: one clip per window)."""

    fid: FeatureStats
    fvd: FeatureStats
    window_features: dict[int, Any] = field(default_factory=dict)  # cache row -> [T, D] real frame features (windows.npz)


# ------------------------------------------------------------------------------------------------ the steps


def plan_stage2_jobs(stage2_runs: dict[str, str], p: EvalProtocol, all_checkpoints: bool) -> list[Stage2Job]:
    """Every Stage 2 checkpoint to score, each checked against the cache; with `all_checkpoints` every complete
    sibling of a run's selected checkpoint is a point of its metric-vs-step curve (Figure 3)."""
    jobs: list[Stage2Job] = []
    for name, path in stage2_runs.items():
        s2_path, s2_config = checkpoint_config(path, "stage2")
        check_checkpoints_fit_cache(p.meta, p.pca, p.stage1_config, s2_config, p.cache)
        paths = [s2_path]
        if all_checkpoints:  # s2_path is <run>/checkpoints/step_N
            paths = sorted({q for q in s2_path.parent.glob("step_*") if ckpt.is_complete(q)} | {s2_path})
        for q in paths:
            config = {**ckpt.read_config(q), "selected": s2_config["selected"] if q == s2_path else "a metric-vs-step point"}
            jobs.append(Stage2Job(name, q, config, main=(q == s2_path), step=int(config.get("step", 0))))
    return jobs


def score_reference_rows(p: EvalProtocol, oracle: bool, bar: Any, task: Any, grids: GridCollector) -> tuple[dict[str, RowMetrics], RealStats, dict[str, int]]:
    """Copy-last (pixels, and through the codec), the codec's reconstruction, Stage 1 (and the oracle) on every
    window, and the real frames' Fréchet statistics."""
    nets, m = p.nets, p.context_frames
    fid_dim = int(nets.fid.dim) if nets.fid is not None else 0
    fvd_dim = int(nets.fvd.dim) if nets.fvd is not None else 0
    real = RealStats(FeatureStats(max(fid_dim, 1)), FeatureStats(max(fvd_dim, 1)))
    rows = {name: p.new_scores() for name in (COPY_ROW, CODEC_COPY_ROW, CODEC_ROW, STAGE1_ROW)}
    if oracle:
        rows[ORACLE_ROW] = p.new_scores()
    labelled = {"segmentation": 0, "depth": 0}
    ctx = p.context_latent_frames
    for batch_rows in p.batches():
        batch = p.load_batch(batch_rows)
        labelled["segmentation"] += int(batch.seg_valid.sum())
        labelled["depth"] += int(batch.depth_valid.sum())
        real_future = batch.truth[:, :, m:]
        if nets.fid is not None:
            feats = nets.fid(real_future.permute(0, 2, 1, 3, 4).reshape(-1, 3, p.height, p.width))
            real.fid.update(feats)
            if fid_dim <= WINDOW_FEATURE_MAX_DIM:
                per = feats.detach().to("cpu", torch.float64).numpy().reshape(len(batch.rows), p.predicted_frames, -1)
                real.window_features.update({int(r): per[i] for i, r in enumerate(batch.rows)})
        if p.fvd_clips:
            real.fvd.update(nets.fvd(real_future))
        copy = batch.truth[:, :, m - 1 : m].expand(-1, -1, p.predicted_frames, -1, -1)
        rows[COPY_ROW].add_frames(copy, real_future, nets, p.fvd_clips, windows=batch.rows)
        p.score_features(rows[COPY_ROW], batch, batch.features[:, ctx - 1])
        # The codecs are causal in time (WAN's CausalConv3d, the linear and pixel codecs' blocks), so frame M-1 of the
        # whole window's reconstruction is the reconstruction of the context alone: one decode serves both rows.
        reconstruction = quantize(p.codec.decode(batch.latents))
        p.score_pixels(rows[CODEC_ROW], batch, reconstruction[:, :, m:])
        p.score_pixels(rows[CODEC_COPY_ROW], batch, reconstruction[:, :, m - 1 : m].expand(-1, -1, p.predicted_frames, -1, -1))
        p.score_features(rows[STAGE1_ROW], batch, batch.predicted_features[:, p.annotated_feature - ctx])
        if oracle:
            p.score_features(rows[ORACLE_ROW], batch, batch.features[:, p.annotated_feature])
        grids.add(batch.rows, "truth", batch.truth, 0)
        bar.update(task, advance=1)
    return rows, real, labelled


def stage2_renderer(job: Stage2Job, p: EvalProtocol, seed: int, overrides: dict[str, Any], notes: list[str]) -> FrameRenderer:
    """Load one Stage 2 checkpoint and its sampling settings (the training config's, with the caller's overrides;
    feature options only apply to a feature-conditioned model); records them in job.config."""
    model, loaded = ckpt.load_model_for_inference(job.path, build_stage2_model, device=p.device)
    train_cfg = config_from_dict(job.config["config"])
    conditioned = model.feature_channels > 0
    feature_options = {k: overrides[k] for k in ("inference_components", "guidance_weight", "guidance_components")}
    chosen = {"steps": overrides["steps"]}
    if conditioned:
        chosen.update(feature_options)
    elif any(v is not None for v in feature_options.values()):
        add_note(notes, f"{job.run}: components/guidance options do not apply to a model without feature conditioning")
    sampling = sampling_settings(train_cfg.stage2.diffusion, model.feature_channels, **chosen)
    job.config = {**job.config, "loaded_weights": loaded["loaded_weights"], "sampling": dataclasses.asdict(sampling)}
    return FrameRenderer(model, p.codec, sampling, p.context_latent_frames, p.context_frames, seed, p.device)


def score_stage2_job(job: Stage2Job, render: Renderer, p: EvalProtocol, samples: int, bar: Any, task: Any,
                     grids: GridCollector) -> None:
    """`samples` independent samples of every window through `render`, scored into job.scores."""
    job.scores = [p.new_scores() for _ in range(samples)]
    for batch_rows in p.batches():
        batch = p.load_batch(batch_rows)
        for s in range(samples):
            future = render(batch, s)
            p.score_pixels(job.scores[s], batch, future)
            if job.main and s == 0:
                grids.add(batch.rows, job.run, future, p.context_frames)
            bar.update(task, advance=1)


def _provenance(config: dict[str, Any], path: Path) -> dict[str, Any]:
    return {"checkpoint": str(path), "selected": config.get("selected"), "step": config.get("step"),
            "random_weights": bool(config.get("random_weights")), "loaded_weights": config.get("loaded_weights")}


def assemble_results(p: EvalProtocol, reference: dict[str, RowMetrics], real: RealStats, jobs: list[Stage2Job],
                     all_checkpoints: bool, notes: list[str]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(rows, steps): each method's metrics as mean/std/values over its samples, and the metric-vs-step entries."""

    def row(kind: str, scores: list[RowMetrics], extra: dict[str, Any]) -> dict[str, Any]:
        per_sample = [s.compute(real.fid, real.fvd, notes) for s in scores]
        keys = list(METRICS) + [k for k in EXTRA_DEPTH_METRICS if k in per_sample[0]]
        return {"kind": kind, "samples": len(scores), **extra, "metrics": {k: summarize([x.get(k) for x in per_sample]) for k in keys}}

    rows: dict[str, Any] = {COPY_ROW: row("copy_last", [reference[COPY_ROW]], {}),
                            CODEC_COPY_ROW: row("copy_last_codec", [reference[CODEC_COPY_ROW]], {}),
                            CODEC_ROW: row("codec_reconstruction", [reference[CODEC_ROW]], {})}
    steps: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        info = {**_provenance(job.config, job.path), "conditioning": job.config.get("conditioning"),
                "alignment": job.config.get("alignment"), "sampling": job.config.get("sampling")}
        result = row("generated", job.scores, info)
        if job.main:
            rows[job.run] = result
        if all_checkpoints:
            steps.setdefault(job.run, []).append({"step": job.step, "checkpoint": str(job.path), "metrics": result["metrics"]})
    rows[STAGE1_ROW] = row("stage1", [reference[STAGE1_ROW]], _provenance(p.stage1_config, p.stage1_path))
    if ORACLE_ROW in reference:
        rows[ORACLE_ROW] = row("oracle", [reference[ORACLE_ROW]], {})
    for entries in steps.values():
        entries.sort(key=lambda e: e["step"])
    return rows, steps


def provenance(p: EvalProtocol, jobs: list[Stage2Job]) -> dict[str, Any]:
    """Where every weight came from, and which parts were random (the report warns loudly about those)."""
    meta, nets = layout.CacheMeta(p.meta), p.nets
    random_parts = [name for name, flag in (
        ("VFM", meta.vfm_weights == RANDOM), ("codec", meta.codec_weights == RANDOM),
        ("FID Inception", nets.fid is not None and getattr(nets.fid, "weights", RANDOM) == RANDOM),
        ("FVD I3D", nets.fvd is not None and getattr(nets.fvd, "weights", RANDOM) == RANDOM),
        ("segmentation head", p.heads["segmentation"][1].get("random_weights")),
        ("depth head", p.heads["depth"][1].get("random_weights")),
        ("Stage 1", p.stage1_config.get("random_weights")),
        *[(f"Stage 2 '{j.run}'", j.config.get("random_weights")) for j in jobs if j.main],
    ) if flag]
    return {
        "vfm": {"name": meta.vfm_name, "weights": meta.vfm_weights,
                **({"pretraining": meta.vfm_pretraining} if meta.vfm_pretraining else {})},
        "codec": {"name": meta.codec_name, "weights": meta.codec_weights},
        "pca_fingerprint": p.pca.fingerprint,
        "fid_net": getattr(nets.fid, "weights", RANDOM) if nets.fid is not None else "not computed",
        "fvd_net": getattr(nets.fvd, "weights", RANDOM) if nets.fvd is not None else "not computed",
        "heads": {t: _provenance(c, Path(c["checkpoint"])) for t, (_, c) in p.heads.items()},
        "stage1": _provenance(p.stage1_config, p.stage1_path),
        "stage2": {j.run: {**_provenance(j.config, j.path), "conditioning": j.config.get("conditioning"),
                           "alignment": j.config.get("alignment")} for j in jobs if j.main},
        "random_parts": random_parts,
        "random": bool(random_parts),
    }


def window_rows(reference: dict[str, RowMetrics], jobs: list[Stage2Job], all_checkpoints: bool) -> dict[str, list[RowMetrics]]:
    """windows.npz's rows: every reference row, every main Stage 2 row, and with `all_checkpoints` every checkpoint
    as '<run> @ <step>'."""
    rows: dict[str, list[RowMetrics]] = {name: [scores] for name, scores in reference.items()}
    for job in jobs:
        if job.main:
            rows[job.run] = job.scores
        if all_checkpoints:
            rows[f"{job.run} @ {job.step}"] = job.scores
    return rows


def write_outputs(results: dict[str, Any], p: EvalProtocol, grids: GridCollector, out_dir: Path,
                  windows: tuple[dict[str, list[RowMetrics]], RealStats] | None = None) -> None:
    """plots/ (metric vs step), qualitative/ (frame grids), windows.npz (eval/windows.py), metrics.json and
    report.md; records the paths in results["files"]."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    steps = results["steps"]
    for metric in ("fid", "fvd", "miou", "abs_rel", "psnr") if steps else ():
        series = {run: [(e["step"], e["metrics"][metric]["mean"]) for e in entries] for run, entries in steps.items()}
        if any(v is not None for pts in series.values() for _, v in pts):
            path = out_dir / "plots" / f"{metric}_vs_step.png"
            plot_metric_vs_step(series, metric, path)
            files[f"plot_{metric}"] = str(path)
    sample_ids = p.reader.manifest["sample_id"]
    names = {r: _safe_name(str(sample_ids[r])) for r in grids.cells}
    written = grids.write(out_dir / "qualitative", names)
    if written:
        files["qualitative"] = str(written[0].parent)
    if windows is not None:
        rows, real = windows
        write_windows(out_dir / WINDOWS_FILE, [int(r) for r in p.rows], rows, p.num_classes, real.window_features)
        files["windows"] = str(out_dir / WINDOWS_FILE)
    results["files"] = {**files, "metrics": str(out_dir / "metrics.json"), "report": str(out_dir / "report.md")}
    atomic.write_json(out_dir / "metrics.json", results)
    write_report(results, out_dir)


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
    `components` (paper Table 5), `guidance_weight` / `guidance_components` (Tables 8-9) and `sampling_steps` override
    the sampling settings of every feature-conditioned run. `baseline` names the row the deltas are taken against
    (default: the first run trained without features and without alignment). `limit` > 0 evaluates only the first
    `limit` val windows. `allow_random_weights` accepts a cache made with a random VFM/codec (then rebuilt
    identically). `metric_nets` replaces the FID/FVD networks (tests, custom nets); by default they come from
    `eval.fid_weights` / `eval.fvd_weights`. `fid_fvd=False` skips FID and FVD (reported as not computed). Returns
    what metrics.json holds.
    """
    t_start = time.perf_counter()
    stage2_runs = dict(stage2_runs or {})
    samples = cfg.eval.samples if samples is None else samples
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1")
    for name in stage2_runs:
        if name in REFERENCE_ROWS:
            raise ValueError(f"Stage 2 run name {name!r} is reserved for a reference row; choose another name")
    if baseline is not None and baseline not in stage2_runs:
        raise ValueError(f"baseline={baseline!r} is not one of the Stage 2 runs {sorted(stage2_runs)}")
    dev = resolve_device(device)
    notes: list[str] = []

    # 1. open: metric networks first (a missing weights file stops here, before any expensive work), then the cache,
    #    the frozen parts, the heads and every checkpoint, each checked against the cache.
    if fid_fvd:
        nets = metric_nets or build_metric_nets(cfg, allow_random_metric_weights, dev)
    else:
        nets = MetricNets(fid=None, fvd=None)
        add_note(notes, "FID and FVD were not computed (fid_fvd off, --no-fid-fvd)")
    p = open_protocol(cfg, cache, heads, stage1, nets, dev, limit=limit, truth=truth,
                      allow_random_weights=allow_random_weights, notes=notes)
    jobs = plan_stage2_jobs(stage2_runs, p, all_checkpoints)
    if baseline is None:
        plain = [j.run for j in jobs if j.main and j.config.get("conditioning") == "none" and j.config.get("alignment") == "none"]
        baseline = plain[0] if plain else None
    overrides = {"steps": sampling_steps, "inference_components": components, "guidance_weight": guidance_weight,
                 "guidance_components": guidance_components}
    collector = GridCollector([int(r) for r in p.rows[: max(0, grids)]],
                              [p.context_frames - 1] + [i for i in p.feature_indices if i >= p.context_frames])

    seconds: dict[str, float] = {}
    with progress() as bar, torch.no_grad():
        task = bar.add_task("evaluate", total=len(p.batches()) * (1 + samples * len(jobs)), status="reference rows")
        # 2. the reference rows and the real frames' statistics
        tic = time.perf_counter()
        reference, real, labelled = score_reference_rows(p, oracle, bar, task, collector)
        seconds["reference"] = time.perf_counter() - tic
        # 3. every Stage 2 checkpoint, `samples` times, with the same noise for every one
        for job in jobs:
            tic = time.perf_counter()
            bar.update(task, status=f"{job.run} step {job.step}")
            renderer = stage2_renderer(job, p, cfg.seed, overrides, notes)
            score_stage2_job(job, renderer, p, samples, bar, task, collector)
            del renderer
            seconds[f"{job.run} step {job.step}"] = time.perf_counter() - tic

    # 4. assemble
    rows, steps = assemble_results(p, reference, real, jobs, all_checkpoints, notes)
    overrides_shown = {"components": components, "guidance_weight": guidance_weight,
                       "guidance_components": guidance_components, "steps": sampling_steps}
    results = _finite_or_none({
        "rows": rows,
        "baseline": baseline,
        "steps": steps,
        "protocol": describe_protocol(p, samples=samples, seed=cfg.seed, limit=limit, sampling_overrides=overrides_shown,
                                      windows_with_segmentation=labelled["segmentation"],
                                      windows_with_depth=labelled["depth"]),
        "provenance": provenance(p, jobs),
        "notes": notes,
        "seconds": {**seconds, "total": time.perf_counter() - t_start},
    })
    results["protocol_tags"] = protocol_tags(results["protocol"], results["provenance"],
                                             fd_dim=int(nets.fid.dim) if nets.fid is not None else None)

    # 5. write
    out_dir = Path(out)
    write_outputs(results, p, collector, out_dir, (window_rows(reference, jobs, all_checkpoints), real))
    random_parts = results["provenance"]["random_parts"]
    if random_parts:
        warn_loud(f"evaluated with RANDOM weights in {', '.join(random_parts)}: these numbers are meaningless (see report.md)")
    main_row = next(iter(stage2_runs), COPY_ROW)
    main = rows.get(main_row, rows[COPY_ROW])["metrics"]
    shown = ", ".join(f"{k} {main[k]['mean']:.4g}" for k in ("miou", "fid", "fvd", "psnr") if main.get(k, {}).get("mean") is not None)
    summary(f"evaluate: {len(p.rows)} val windows, {len(rows)} rows x {samples} sample(s) in "
            f"{results['seconds']['total']:.0f} s ({main_row}: {shown}) -> {out_dir / 'report.md'}")
    return results
