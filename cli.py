"""Re2Pix command line. Thin: each command parses options, loads the config and calls one function.

    python cli.py make-sample-data runs/sample           # procedural driving dataset (Cityscapes layout)
    python cli.py cache --dataset synthetic --root runs/sample
    python cli.py bench pca | cache

Every command takes --config (a preset name from configs/ or a .toml path; default: tiny) and --set
section.key=value overrides. Run `python cli.py COMMAND --help` for every option.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

APP_HELP = (
    "Re2Pix: semantics-guided hierarchical video prediction. Every command takes --config (a preset in configs/: "
    "tiny (default, CPU) or paper, or a .toml path) and repeatable --set section.key=value overrides."
)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=APP_HELP)
bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmarks that print measured figures.")
app.add_typer(bench_app, name="bench")

ConfigOpt = typer.Option("tiny", "--config", "-c", help="Preset name in configs/ (tiny, paper) or a path to a .toml file.")
SetOpt = typer.Option(None, "--set", help="Override a config value, e.g. --set stage2.train.steps=100 (repeatable).")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when present, else CPU) | cpu | cuda[:N].")
RandomOpt = typer.Option(
    False,
    "--allow-random-weights",
    help="Run with randomly initialised VFM/VAE weights when no weights are given (loud warning; recorded in every output).",
)


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Known user errors print one clear message and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from configs.schema import ConfigError
        from pipeline.errors import DatasetLayoutError, InputError
        from pipeline.lock import LockError
        from pipeline.store import CacheError
        from pipeline.weights import MissingWeightsError, WeightsFormatError
        from train.checkpoint import CheckpointError
        from train.loop import NonFiniteLossError, TrainingInterrupted

        try:
            return fn(*args, **kwargs)
        except TrainingInterrupted as exc:  # already printed where to resume; 143 (SIGTERM) / 130 (SIGINT)
            raise typer.Exit(exc.exit_code) from None
        except (ConfigError, CacheError, CheckpointError, NonFiniteLossError, DatasetLayoutError, InputError, MissingWeightsError,
                WeightsFormatError, LockError, FileNotFoundError) as exc:
            from pipeline.console import console

            console.print(f"[bold red]error:[/bold red] {exc}")
            raise typer.Exit(2) from None

    return wrapper


def _config(config: str, overrides: Optional[list[str]], extra: Optional[dict[str, Any]] = None):
    from configs.schema import load_config

    items = list(overrides or [])
    items += [f"{k}={v!r}" if isinstance(v, str) else f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in (extra or {}).items() if v is not None]
    return load_config(config, items)


def default_cache(cfg: Any, dataset: str = "synthetic") -> str:
    return str(Path(cfg.paths.root) / "cache" / dataset)


# ------------------------------------------------------------------------------------------- data


@app.command("make-sample-data")
@_friendly_errors
def make_sample_data(
    out: Path = typer.Argument(..., help="Folder to write the dataset into (Cityscapes layout)."),
    train: int = typer.Option(24, help="Number of 30-frame training snippets."),
    val: int = typer.Option(8, help="Number of 30-frame validation snippets."),
    height: int = typer.Option(128, help="Frame height in pixels."),
    width: int = typer.Option(256, help="Frame width in pixels."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same bytes."),
    render_workers: int = typer.Option(0, "--render-workers", help="Rendering processes (0: one per CPU core); the bytes do not depend on it."),
) -> None:
    """Render a procedural driving dataset (road, lanes, sidewalks, buildings, trees, sky, moving cars) with labels."""
    import os

    from pipeline.console import summary
    from pipeline.synthetic import write_sample_dataset

    n = render_workers or os.cpu_count() or 1
    c = write_sample_dataset(out, train=train, val=val, height=height, width=width, seed=seed, workers=n)
    summary(
        f"make-sample-data: {c['train']} train + {c['val']} val snippets, {c['frames']} frames of {height}x{width} in "
        f"{c['seconds']:.1f} s ({c['frames_per_s']:.0f} frames/s, {n} processes) -> {out}"
    )


@app.command("pretrain-vfm")
@_friendly_errors
def pretrain_vfm(
    out: Optional[Path] = typer.Option(None, help="Output folder (default: <paths.root>/vfm/<settings key>); gets vfm.safetensors + vfm.json."),
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (vfm_pretrain.steps)."),
    aux_weight: Optional[float] = typer.Option(
        None, help="Weight of the segmentation + depth targets (vfm_pretrain.aux_weight); 0 = label-free."),
    render_workers: int = typer.Option(0, "--render-workers", help="Rendering processes (0: one per CPU core)."),
    force: bool = typer.Option(False, help="Pretrain again even when a VFM with the same settings exists in --out."),
) -> None:
    """Pretrain the config's (tiny) VFM architecture on the synthetic world, probe it against the random-init VFM,
    and export a timm state dict + record that `cache --vfm-weights` loads like a DINOv2 checkpoint."""
    import os

    from pipeline.console import summary
    from train.vfm_pretrain import WEIGHTS_FILE, default_out, describe_run
    from train.vfm_pretrain import pretrain_vfm as run

    cfg = _config(config, set_, {"vfm_pretrain.steps": steps, "vfm_pretrain.aux_weight": aux_weight})
    folder = Path(out or default_out(cfg))
    record, reused = run(cfg, folder, workers=render_workers or os.cpu_count() or 1, force=force)
    summary(f"pretrain-vfm: {describe_run(record, reused)} -> {folder / WEIGHTS_FILE}")


@app.command("cache")
@_friendly_errors
def cache(
    dataset: str = typer.Option("synthetic", help="cityscapes | nuscenes | kitti | covla | videos | synthetic."),
    root: Optional[Path] = typer.Option(None, help="Dataset root folder (default: paths.data from the config)."),
    out: Optional[str] = typer.Option(None, help="Cache folder or fsspec URL (default: <paths.root>/cache/<dataset>)."),
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    splits: str = typer.Option("train,val", help="Comma-separated splits to cache."),
    ray_address: Optional[str] = typer.Option(None, help="Attach to a running Ray cluster (e.g. auto or ray://host:10001)."),
    workers: int = typer.Option(0, help="Number of workers (0: one per GPU, with CPU tasks decoding for them; else one per CPU). Each sets its torch threads from the CPUs Ray assigns it."),
    vfm_weights: Optional[str] = typer.Option(None, help="Local VFM weights (timm or official DINOv2 format)."),
    vae_weights: Optional[str] = typer.Option(
        None, "--codec-weights", "--vae-weights",
        help="Codec weights: for wan, the WAN2.1 VAE (a diffusers folder or Wan2.1_VAE.pth); for linear, an existing "
             "codec.safetensors to reuse instead of fitting one.",
    ),
    codec: Optional[str] = typer.Option(
        None, help="Override codec.name: wan (the paper), linear (PCA of pixel blocks, fitted here) or pixel (lossless)."
    ),
    pca: Optional[str] = typer.Option(None, help="Use this PCA (pca.safetensors, or DINO-Foresight's .pth with --allow-pickle)."),
    allow_pickle: bool = typer.Option(False, help="Allow unpickling DINO-Foresight's PCA file (runs code from that file)."),
    allow_random_weights: bool = RandomOpt,
    strict: bool = typer.Option(False, help="Stop at the first bad input instead of recording it in failures.parquet."),
    limit: int = typer.Option(0, help="Cache at most this many windows per split (0: all)."),
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help="WAN codec: diffusers' spatial tiling (256 px tiles every 192): about 4x lower encode/decode peak memory (`bench vae`); the latents differ at the seams, and meta.json records it (codec.tiling)."),
) -> None:
    """Decode, run the frozen VFM (+ PCA) and the codec once, and write sharded Zarr arrays with a manifest."""
    from pipeline.console import summary
    from pipeline.dag import build_cache

    extra = {"vfm.weights": vfm_weights, "codec.weights": vae_weights, "codec.name": codec, "pca.checkpoint": pca}
    if allow_pickle:
        extra["pca.allow_pickle"] = True
    if vae_tiling:
        extra["codec.tiling"] = True
    cfg = _config(config, set_, extra)
    data_root = root or (Path(cfg.paths.data) if cfg.paths.data else None)
    if data_root is None:
        raise typer.BadParameter("give --root PATH (the dataset folder) or set paths.data in the config")
    result = build_cache(
        cfg,
        dataset,
        data_root,
        out or default_cache(cfg, dataset),
        splits=[s.strip() for s in splits.split(",") if s.strip()],
        ray_address=ray_address,
        workers=workers,
        allow_random_weights=allow_random_weights,
        strict=strict,
        limit=limit,
    )
    summary(result.line())


# ------------------------------------------------------------------------------------------ stage 1

CacheOpt = typer.Option(None, "--cache", help="Cache folder or URL (default: <paths.root>/cache/synthetic).")
ResumeOpt = typer.Option(None, "--resume", help="Resume: 'latest' (the newest checkpoint in --out) or a checkpoint folder.")
StepsOpt = typer.Option(None, help="Total optimizer steps (overrides the config's train.steps).")
BatchOpt = typer.Option(None, help="Batch size per process (overrides the config).")
LoaderWorkersOpt = typer.Option(None, "--loader-workers", help="DataLoader worker processes per training process (overrides the config).")
PrecisionOpt = typer.Option(None, help="auto | no | bf16 | fp16 (overrides the config; auto = bf16 on GPU, fp32 on CPU).")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The options every train command shares, resolved once: the config, the cache and run folders (with their
    defaults) and the loop settings every trainer takes as keywords."""

    cfg: Any
    cache: str
    out: str
    loop: dict[str, Any]

    @classmethod
    def resolve(cls, config: str, set_: Optional[list[str]], cache: Optional[str], out: Optional[str], run_name: str,
                resume: Optional[str], steps: Optional[int], batch_size: Optional[int], num_workers: Optional[int],
                mixed_precision: Optional[str]) -> "TrainOptions":
        cfg = _config(config, set_)
        loop = {"resume": False if resume is None else (True if resume == "latest" else resume), "steps": steps,
                "batch_size": batch_size, "num_workers": num_workers, "mixed_precision": mixed_precision}
        return cls(cfg, cache or default_cache(cfg), out or str(Path(cfg.paths.root) / run_name), loop)


@app.command("train-stage1")
@_friendly_errors
def train_stage1(
    cache: Optional[str] = CacheOpt,
    out: Optional[str] = typer.Option(None, help="Run folder for checkpoints and TensorBoard logs (default: <paths.root>/stage1)."),
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    resume: Optional[str] = ResumeOpt,
    steps: Optional[int] = StepsOpt,
    batch_size: Optional[int] = BatchOpt,
    num_workers: Optional[int] = LoaderWorkersOpt,
    mixed_precision: Optional[str] = PrecisionOpt,
    init: Optional[str] = typer.Option(None, help="Start from DINO-Foresight's dinof_lowres.ckpt / dinof_highres.ckpt or one of our checkpoints."),
    allow_pickle: bool = typer.Option(False, help="Allow a full unpickle of --init if the safe loader refuses it (runs code from the file)."),
) -> None:
    """Train the DINO-Foresight masked feature transformer on the cached PCA features.

    Several GPUs or nodes: `accelerate launch --num_processes N cli.py train-stage1 ...`.
    """
    from train.stage1 import train_stage1 as run

    o = TrainOptions.resolve(config, set_, cache, out, "stage1", resume, steps, batch_size, num_workers, mixed_precision)
    run(o.cfg, o.cache, o.out, **o.loop, init=init, allow_pickle=allow_pickle)


@app.command("make-predicted-pool")
@_friendly_errors
def make_predicted_pool(
    stage1: Optional[str] = typer.Option(None, "--stage1", help="Stage 1 checkpoint, or run folder with optional @best / @latest / @<step> (default: <paths.root>/stage1, the run's best)."),
    cache: Optional[str] = CacheOpt,
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    fraction: float = typer.Option(1.0, help="Fraction of the training windows to predict (chosen by a stable hash of the sample id)."),
    batch_size: int = typer.Option(8, help="Windows per rollout batch."),
    device: str = DeviceOpt,
    overwrite: bool = typer.Option(False, help="Replace a pool written by another Stage 1 checkpoint."),
    folds: str = typer.Option("auto", help="Cross-fit the pool: K Stage 1 models, each trained like --stage1 without one fold, predict that fold (costs K trainings; 1 = the given checkpoint predicts every window; auto = 2 when a probe finds the in-sample pool's cosine to the truth above the val forecasts' by more than 0.02, else 1; recorded in meta.json pool.folds_choice)."),
) -> None:
    """Roll Stage 1 out on every training window and write its predicted future features into the cache's pool/;
    prints how close the pool is to the truth next to Stage 1's forecasts of the val windows."""
    from train.pool import make_predicted_pool as run

    cfg = _config(config, set_)
    run(cache or default_cache(cfg), stage1 or str(Path(cfg.paths.root) / "stage1"), fraction=fraction, batch_size=batch_size,
        device=device, overwrite=overwrite, folds=folds)


# ------------------------------------------------------------------------------------------ stage 2


@app.command("train-stage2")
@_friendly_errors
def train_stage2(
    cache: Optional[str] = CacheOpt,
    out: Optional[str] = typer.Option(None, help="Run folder for checkpoints and TensorBoard logs (default: <paths.root>/stage2)."),
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    resume: Optional[str] = ResumeOpt,
    steps: Optional[int] = StepsOpt,
    batch_size: Optional[int] = BatchOpt,
    num_workers: Optional[int] = LoaderWorkersOpt,
    mixed_precision: Optional[str] = PrecisionOpt,
) -> None:
    """Train the Stage 2 video DiT conditioned on the cached features (Re2Pix).

    Baselines are the same trainer with another config: --set stage2.model.conditioning=none (plain diffusion),
    plus --set stage2.alignment=repa or videorepa; a deeper DiT (--set stage2.model.depth=28) is Baseline-Large.
    Mixed supervision reads the pool: run make-predicted-pool first (or --set stage2.mixed_supervision_prob=0).
    Several GPUs or nodes: `accelerate launch --num_processes N cli.py train-stage2 ...`.
    """
    from train.stage2 import train_stage2 as run

    o = TrainOptions.resolve(config, set_, cache, out, "stage2", resume, steps, batch_size, num_workers, mixed_precision)
    run(o.cfg, o.cache, o.out, **o.loop)


@app.command("predict")
@_friendly_errors
def predict(
    input: Path = typer.Option(..., "--input", help="A video file or a folder of frames (the first window.frames are used; at least window.context_frames)."),
    stage1: Optional[str] = typer.Option(None, "--stage1", help="Stage 1 checkpoint or run folder (or give --bundle)."),
    stage2: Optional[str] = typer.Option(None, "--stage2", help="Stage 2 checkpoint or run folder (or give --bundle)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="A folder written by `export` (both stages, PCA, codec): no checkpoints or cache needed."),
    out: Path = typer.Option(Path("runs/predict"), "--out", help="Output folder for the videos, grid, tensors and predict.json."),
    samples: int = typer.Option(1, help="Independent samples to draw (seeded: sample i is the same whatever the count)."),
    cache: Optional[str] = typer.Option(None, help="The cache the checkpoints were trained on (default: the one they record); gives the PCA, VFM and codec settings."),
    device: str = DeviceOpt,
    seed: int = typer.Option(0, help="Random seed of the sampler."),
    guidance_weight: Optional[float] = typer.Option(None, help="Representation guidance weight w (paper appendix 6.2); 0 = off."),
    guidance_components: Optional[int] = typer.Option(None, help="Feature channels c of the coarse guidance pass."),
    inference_components: Optional[int] = typer.Option(None, help="Use only the first c feature channels (paper Table 5)."),
    sampler: Optional[str] = typer.Option(None, help="multistep (Cosmos 2nd order) or euler."),
    sampling_steps: Optional[int] = typer.Option(None, help="Sampling steps on the Karras schedule (default: the checkpoint's config)."),
    vfm_weights: Optional[str] = typer.Option(None, help="VFM weights file, if it moved since the cache was built."),
    vae_weights: Optional[str] = typer.Option(
        None, "--codec-weights", "--vae-weights", help="Codec weights, if they moved since the cache was built."
    ),
    allow_random_weights: bool = RandomOpt,
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help="WAN codec: encode the context and decode the prediction in diffusers' spatial tiles (256 px every 192): about 4x lower codec peak memory (`bench vae`); the frames differ at the seams, and predict.json records it (codec.tiling)."),
) -> None:
    """The whole hierarchy on one clip: frames -> VFM -> PCA -> Stage 1 rollout -> Stage 2 sampling -> decode.

    Writes prediction.mp4, side_by_side.mp4 (when the clip is long enough for the truth), grid.png (context | truth |
    prediction | PCA-coloured predicted features) and tensors.safetensors.
    """
    from eval.predict import predict as run

    from_run = bundle is None and stage1 is not None and stage2 is not None
    if not from_run and not (bundle is not None and stage1 is None and stage2 is None and cache is None):
        raise typer.BadParameter("pass --stage1 and --stage2 (and optionally --cache), or --bundle alone")
    run(stage1, stage2, input, out, samples=samples, cache=cache, device=device, seed=seed, guidance_weight=guidance_weight,
        guidance_components=guidance_components, inference_components=inference_components, sampler=sampler, steps=sampling_steps,
        allow_random_weights=allow_random_weights, vfm_weights=vfm_weights, codec_weights=vae_weights, bundle=bundle,
        vae_tiling=vae_tiling)


@app.command("export")
@_friendly_errors
def export(
    stage1: str = typer.Option(..., "--stage1", help="Stage 1 checkpoint or run folder (optionally @best / @latest / @<step>)."),
    stage2: str = typer.Option(..., "--stage2", help="Stage 2 checkpoint or run folder (optionally @best / @latest / @<step>)."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write (new, empty, or an earlier bundle to replace)."),
    cache: Optional[str] = typer.Option(None, help="The cache the checkpoints were trained on (default: the one they record, found from any folder)."),
    include_vfm: bool = typer.Option(False, "--include-vfm", help="Copy the VFM weights file into the bundle (checked against the cache's fingerprint); default: named by fingerprint only."),
    vfm_weights: Optional[str] = typer.Option(None, help="The VFM weights file for --include-vfm, if it moved since the cache was built."),
) -> None:
    """A trained run as one self-contained folder in the Hugging Face layout (a bundle).

    It holds stage1/ and stage2/ (config.json + model.safetensors, EMA weights where present), pca.safetensors, codec.safetensors (the learned linear codec; a WAN
    VAE is named by fingerprint), cache.json, model_index.json and a README.md model card. `predict --bundle DIR` and
    `re2pix.Re2PixPipeline.from_pretrained(DIR)` need nothing else (but the VFM / VAE weights the card names)."""
    from eval.bundle import export_bundle

    export_bundle(stage1, stage2, out, cache=cache, include_vfm=include_vfm, vfm_weights=vfm_weights)


# ------------------------------------------------------------------------------------------ evaluation


@app.command("train-heads")
@_friendly_errors
def train_heads(
    cache: Optional[str] = CacheOpt,
    out: Optional[str] = typer.Option(None, help="Folder for the segmentation/ and depth/ runs (default: <paths.root>/heads)."),
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    resume: Optional[str] = ResumeOpt,
    steps: Optional[int] = StepsOpt,
    batch_size: Optional[int] = BatchOpt,
    num_workers: Optional[int] = LoaderWorkersOpt,
    mixed_precision: Optional[str] = PrecisionOpt,
    task: Optional[list[str]] = typer.Option(None, help="segmentation and/or depth (repeatable; default: both)."),
) -> None:
    """Train the DPT segmentation (19 classes) and depth (256 bins) heads on the PCA-reconstructed VFM features of the
    labelled frame of every training window."""
    from train.heads import HEAD_TASKS
    from train.heads import train_heads as run

    o = TrainOptions.resolve(config, set_, cache, out, "heads", resume, steps, batch_size, num_workers, mixed_precision)
    run(o.cfg, o.cache, o.out, **o.loop, tasks=tuple(task or HEAD_TASKS))


@app.command("evaluate")
@_friendly_errors
def evaluate(
    cache: Optional[str] = CacheOpt,
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    heads: Optional[str] = typer.Option(None, help="The train-heads output folder (default: <paths.root>/heads)."),
    stage1: Optional[str] = typer.Option(None, "--stage1", help="Stage 1 checkpoint, or run folder with optional @best / @latest / @<step> (default: <paths.root>/stage1, the run's best)."),
    stage2: Optional[list[str]] = typer.Option(None, "--stage2", help="NAME=PATH of a Stage 2 run, repeatable, e.g. --stage2 Re2Pix=runs/tiny/stage2 --stage2 Baseline=runs/tiny/baseline."),
    out: Optional[str] = typer.Option(None, help="Output folder (default: <paths.root>/eval)."),
    samples: Optional[int] = typer.Option(None, help="Independent samples per generative row; > 1 reports mean ± std (appendix 6.1)."),
    inference_components: Optional[int] = typer.Option(None, help="Use only the first c feature channels at inference (paper Table 5)."),
    guidance_weight: Optional[float] = typer.Option(None, help="Representation guidance weight w (Tables 8-9)."),
    guidance_components: Optional[int] = typer.Option(None, help="Channels c of the coarse guidance pass (Tables 8-9)."),
    sampling_steps: Optional[int] = typer.Option(None, help="Sampling steps on the Karras schedule (default: the config's)."),
    baseline: Optional[str] = typer.Option(None, help="Row name the deltas are computed against (default: the run trained without features)."),
    all_checkpoints: bool = typer.Option(False, help="Evaluate every saved checkpoint of each run: metric-vs-step curves (Figure 3)."),
    limit: int = typer.Option(0, help="Evaluate at most this many validation windows (0: all)."),
    fid_weights: Optional[str] = typer.Option(None, "--fid-weights", help="pt_inception-2015-12-05-6726825d.pth (FID Inception)."),
    fvd_weights: Optional[str] = typer.Option(None, "--fvd-weights", help="i3d_torchscript.pt (StyleGAN-V) or i3d_pretrained_400.pt (FVD I3D)."),
    allow_random_metric_weights: bool = typer.Option(False, "--allow-random-metric-weights", help="Run FID/FVD with random networks (every report says so)."),
    fid_fvd: bool = typer.Option(True, "--fid-fvd/--no-fid-fvd", help="Compute FID and FVD (their networks need weight files); off: every other metric still runs."),
    allow_random_weights: bool = RandomOpt,
    truth: str = typer.Option("auto", help="Ground-truth frames: auto (decode the cached latents for the lossless pixel codec, else the source frames) | latents | frames."),
    device: str = DeviceOpt,
) -> None:
    """The paper's protocol on the cache's validation split: metrics.json, report.md, plots and qualitative grids."""
    from eval.evaluate import evaluate as run

    cfg = _config(config, set_, {"eval.fid_weights": fid_weights, "eval.fvd_weights": fvd_weights})
    root = Path(cfg.paths.root)
    runs = {}
    for item in stage2 or [str(root / "stage2")]:
        name, _, path = item.rpartition("=")
        runs[name or "Re2Pix"] = path
    run(cfg, cache or default_cache(cfg), heads or str(root / "heads"), stage1 or str(root / "stage1"), runs, out or str(root / "eval"),
        samples=samples, components=inference_components, guidance_weight=guidance_weight, guidance_components=guidance_components,
        all_checkpoints=all_checkpoints, allow_random_metric_weights=allow_random_metric_weights, limit=limit, baseline=baseline,
        sampling_steps=sampling_steps, allow_random_weights=allow_random_weights, truth=truth, device=device, fid_fvd=fid_fvd)


@app.command("demo")
@_friendly_errors
def demo(
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    out: Optional[Path] = typer.Option(None, help="Folder for everything the demo writes (default: paths.root of the config)."),
    workers: int = typer.Option(0, help="Ray workers for the cache step (0: automatic)."),
) -> None:
    """Run the whole system end to end on the embedded synthetic driving set (random VFM weights, linear codec)."""
    from eval.demo import run_demo
    from pipeline.console import summary

    result = run_demo(_config(config, set_), out, workers=workers)
    summary(result.line())


@app.command("reproduce")
@_friendly_errors
def reproduce(
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    dataset: str = typer.Option("synthetic", help="synthetic (made here when --root is not given) | videos | cityscapes | nuscenes | kitti | covla."),
    root: Optional[Path] = typer.Option(None, help="Dataset folder (default: the synthetic set is rendered into --out/sample-data)."),
    seeds: int = typer.Option(3, help="Seeds per Stage 2 variant (seed, seed+1, ...); `holds` needs at least 2."),
    steps: Optional[int] = typer.Option(None, help="Stage 2 steps of EVERY variant (default: the preset's for tiny: 200 (default, about an hour on 2 cores) or 1000 (long); the config's for other configs)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: <paths.root>/reproduce, or <paths.root>/reproduce-long for --preset long). Re-running resumes: finished runs and evaluations are reused."),
    variants: Optional[list[str]] = typer.Option(None, "--variant", help="Only these Stage 2 variants (repeatable; default: the preset's: all eight of Tables 1, 3, 4, or for long Re2Pix, Baseline and the Table 3 / 4 ablations)."),
    preset: str = typer.Option("default", help="Study size: default (200 steps, every variant, about an hour on 2 cores) | long (1000 Stage 2 steps per variant, 3 seeds, Tables 3 / 4 / 5 / appendix 6.2 first; cuts Baseline-Large, REPA, VideoREPA; 80 min measured on 2 cores). See eval/presets.py."),
    sweeps: bool = typer.Option(True, "--sweeps/--no-sweeps", help="Run Table 5 (components) and appendix 6.2 (guidance) sweeps."),
    limit: int = typer.Option(0, help="Evaluate at most this many val windows (0: all; the synthetic set has 64)."),
    workers: int = typer.Option(0, help="Ray workers for the cache step (0: automatic)."),
    jobs: int = typer.Option(0, help="Stage 2 trainings / evaluations run at once, each in its own process with CPUs/jobs torch threads (0: one per CPU on a CPU machine, 1 with CUDA)."),
    device: str = DeviceOpt,
) -> None:
    """The paper's claims (Tables 1, 3, 4, 5, Figure 3, appendix 6.2) measured with seeds: reproduce.json and report.md."""
    from eval.presets import resolve_preset
    from eval.reproduce import run_reproduce

    cfg = _config(config, set_)
    chosen = resolve_preset(preset)
    run_reproduce(cfg, out or Path(cfg.paths.root) / chosen.out_name, dataset=dataset, root=root, seeds=seeds, steps=steps,
                  variants=variants, sweeps=sweeps, eval_limit=limit, workers=workers, device=device, jobs=jobs,
                  preset=preset)


@app.command("measure-plateau")
@_friendly_errors
def measure_plateau(
    cache: Optional[str] = CacheOpt,
    out: Optional[Path] = typer.Option(None, help="Run folder (default: <paths.root>/plateau/<variant>-<steps>); re-running resumes."),
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    steps: int = typer.Option(2000, help="Stage 2 steps of the run; the learning rate warms up linearly and decays linearly to 0 at this step (the paper's schedule)."),
    points: int = typer.Option(10, help="Evenly spaced checkpoints at which the val loss (every val window, fixed noise) is recorded."),
    variant: str = typer.Option("Re2Pix", help="The Stage 2 variant to train (a name of eval/variants.py, e.g. Re2Pix, Baseline)."),
    tolerance: float = typer.Option(0.02, help="The plateau is the first checkpoint after which the val loss improves by less than this fraction of its value there."),
    seed: Optional[int] = typer.Option(None, help="Stage 2 seed (default: the config's)."),
) -> None:
    """Where the Stage 2 val loss plateaus under the paper's schedule (linear warm-up and decay over the full run):
    plateau.json with the curve, the rule and the plateau step (eval/plateau.py)."""
    from eval.plateau import measure_plateau as run
    from eval.variants import slug

    cfg = _config(config, set_)
    run(cfg, cache or default_cache(cfg), out or Path(cfg.paths.root) / "plateau" / f"{slug(variant)}-{steps}", steps=steps,
        points=points, variant=variant, seed=seed, tolerance=tolerance)


# ------------------------------------------------------------------------------------------ bench


@bench_app.command("pca")
@_friendly_errors
def bench_pca(
    tokens: int = typer.Option(20_000, help="Number of token rows in the matrix."),
    dim: int = typer.Option(3072, help="Feature dimension (3072 = 4 DINOv2-B layers)."),
    components: int = typer.Option(1152, help="PCA components to keep."),
    chunk: int = typer.Option(5_000, help="Rows per streamed chunk for our accumulator."),
    seed: int = typer.Option(0, help="Random seed of the synthetic token matrix."),
    path: Optional[Path] = typer.Option(None, help="A real token matrix (.npy [N, D]) instead of synthetic tokens."),
    full: Optional[bool] = typer.Option(None, "--full/--no-full", help="Also run scikit-learn's exact full SVD (default: only when small enough)."),
) -> None:
    """Our streamed exact PCA vs scikit-learn PCA: time, peak memory, agreement of the top components."""
    from eval.bench.pca import run

    run(tokens=tokens, dim=dim, components=components, chunk=chunk, seed=seed, path=str(path) if path else None, full=full)


@bench_app.command("cache")
@_friendly_errors
def bench_cache(
    root: Optional[Path] = typer.Option(None, help="Dataset root (default: renders a small synthetic set in a temp folder)."),
    dataset: str = typer.Option("synthetic", help="Dataset kind of --root."),
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    workers: int = typer.Option(0, help="Ray workers for the DAG run (0: as `cache` plans it: one per GPU, else one per CPU)."),
    limit: int = typer.Option(8, help="Windows per split to cache (70 gives 140 windows)."),
    loop_threads: str = typer.Option("", help="Comma-separated torch thread counts to run the sequential loop with; the DAG is compared with the fastest (default: 1 and every core)."),
    repeats: int = typer.Option(1, help="Run the DAG and the loop this many times, side by side, and report the range."),
) -> None:
    """Frames/s of the Ray DAG vs a plain sequential loop over the same windows, side by side: start-up (Ray and
    workers) apart from the work, and the work split by stage (decode, VFM, codec, write)."""
    from eval.bench.cache import run

    threads = tuple(int(t) for t in loop_threads.split(",") if t.strip())
    run(_config(config, set_), dataset=dataset, root=root, workers=workers, limit=limit, loop_threads=threads,
        repeats=repeats)


@bench_app.command("dit")
@_friendly_errors
def bench_dit(
    width: int = typer.Option(96, help="Transformer width (paper: 2048)."),
    depth: int = typer.Option(2, help="Number of blocks (paper: 14)."),
    heads: int = typer.Option(4, help="Attention heads (paper: 16)."),
    frames: int = typer.Option(7, help="Latent frames (paper: 7)."),
    height: int = typer.Option(8, help="Token-grid height (paper: 27)."),
    width_tokens: int = typer.Option(16, help="Token-grid width (paper: 48)."),
    feature_channels: int = typer.Option(64, help="Semantic feature channels for early fusion (paper: 1152)."),
    latent_channels: int = typer.Option(16, help="Latent channels (WAN: 16)."),
    adaln_lora_dim: int = typer.Option(32, help="AdaLN-LoRA rank (paper: 256)."),
    batch_size: int = typer.Option(1, help="Batch size."),
    steps: int = typer.Option(3, help="Timed forward+backward steps (after one warm-up)."),
    device: str = DeviceOpt,
    dtype: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU), float32 or bfloat16."),
    checkpointing: bool = typer.Option(False, help="Activation checkpointing per block."),
    compare_checkpointing: bool = typer.Option(True, "--compare-checkpointing/--no-compare-checkpointing", help="Also run ours with the other checkpointing setting: saved-activation ratio and step-time cost."),
    compile: bool = typer.Option(False, "--compile", help="Also run ours with torch.compile per block (train.compile): compiled vs eager step time (CPU: needs a C++ compiler, minutes to compile)."),
) -> None:
    """Forward+backward time, peak memory and tokens/s: our DiT vs diffusers' CosmosTransformer3DModel at equal size.

    Paper size on a GPU: --width 2048 --depth 14 --heads 16 --height 27 --width-tokens 48 --feature-channels 1152
    --adaln-lora-dim 256 --device cuda
    """
    from eval.bench.dit import run

    run(width=width, depth=depth, heads=heads, frames=frames, height=height, width_tokens=width_tokens, device=device, steps=steps,
        batch=batch_size, latent_channels=latent_channels, feature_channels=feature_channels, adaln_lora_dim=adaln_lora_dim, dtype=dtype,
        checkpointing=checkpointing, compare_checkpointing=compare_checkpointing, compile=compile)


@bench_app.command("memory")
@_friendly_errors
def bench_memory(
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    model: Optional[list[str]] = typer.Option(None, "--model", help="Only this model (repeatable): 'stage 1', 'stage 2' or 'dpt' (default: all three)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write every figure (states, measured points, fits, batches per card) to this JSON file."),
) -> None:
    """Per-GPU memory plan at the config's sizes, without a GPU (use --config paper): exact parameter, gradient, Adam
    and EMA bytes from a meta-device model; activations per sample measured on the CPU at reduced token grids and
    extrapolated (fit and its error printed), with and without activation checkpointing; the largest per-GPU batch
    on 24/40/80/141 GB cards for DDP and FSDP over 8 GPUs, and whether the paper's effective batch fits."""
    from eval.bench.memory import run

    run(_config(config, set_), models=tuple(model or ()), json_out=json_out)


@bench_app.command("vae")
@_friendly_errors
def bench_vae() -> None:
    """WAN2.1 VAE (random weights) encode/decode activation peak at 432x768x25, untiled and tiled (`cache --vae-tiling`):
    measured on the CPU at reduced sizes and extrapolated (fit and its check error printed). Several minutes on 2 cores."""
    from eval.bench.vae import run

    run()


@bench_app.command("loader")
@_friendly_errors
def bench_loader(
    cache: Optional[str] = typer.Option(None, "--cache", help="Cache folder or URL (default: <paths.root>/cache/synthetic, else a temporary random cache)."),
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    batch_size: int = typer.Option(8, help="Batch size."),
    num_workers: int = typer.Option(2, "--loader-workers", help="DataLoader worker processes."),
    batches: int = typer.Option(20, help="Batches to time."),
) -> None:
    """Samples/s and MB/s read from the cache, for Stage 1 sub-windows and Stage 2 windows.

    Without --cache it uses <paths.root>/cache/synthetic when that exists, else writes a small random cache at the
    config's shapes in a temp folder (so it runs on a fresh clone)."""
    from eval.bench.loader import run_or_make

    cfg = _config(config, set_)
    run_or_make(cache or default_cache(cfg), cfg, batch_size=batch_size, workers=num_workers, batches=batches)


@bench_app.command("stage1")
@_friendly_errors
def bench_stage1(
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    batch_size: int = typer.Option(2, help="Clips per step."),
    steps: int = typer.Option(5, help="Timed steps (after warm-up)."),
    warmup: int = typer.Option(2, help="Warm-up steps."),
    device: str = DeviceOpt,
) -> None:
    """Stage 1 step time on cached features vs running the VFM + PCA inside the step; fused vs unfused attention."""
    from eval.bench.stage1 import run

    run(config, batch_size=batch_size, steps=steps, warmup=warmup, device=device, overrides=set_)


@bench_app.command("codec")
@_friendly_errors
def bench_codec(
    root: Optional[Path] = typer.Option(None, help="Dataset root (default: renders a small synthetic set in a temp folder)."),
    dataset: str = typer.Option("synthetic", help="Dataset kind of --root."),
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    limit: int = typer.Option(16, help="Windows per split: the linear codec is fitted on the train ones, all codecs scored on the val ones."),
    vae_weights: Optional[str] = typer.Option(None, "--codec-weights", "--vae-weights", help="WAN2.1 VAE weights: also measure the WAN codec."),
    device: str = DeviceOpt,
) -> None:
    """Reconstruction PSNR / SSIM and encode / decode seconds per clip of every codec (pixel, linear; WAN with weights)."""
    from eval.bench.codec import run

    run(_config(config, set_), dataset=dataset, root=root, limit=limit, vae_weights=vae_weights, device=device)


@bench_app.command("sample")
@_friendly_errors
def bench_sample(
    config: str = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    width: Optional[int] = typer.Option(None, help="DiT width (default: the config's)."),
    depth: Optional[int] = typer.Option(None, help="DiT blocks (default: the config's)."),
    heads: Optional[int] = typer.Option(None, help="DiT heads (default: the config's)."),
    sampling_steps: Optional[int] = typer.Option(None, help="Sampling steps on the Karras schedule (default: the config's)."),
    guidance_weight: float = typer.Option(0.4, help="Guidance weight for the guided rows."),
    guidance_components: Optional[int] = typer.Option(None, help="Channels of the coarse guidance pass (default: the config's)."),
    repeats: int = typer.Option(2, help="Timed repetitions."),
    warmup: int = typer.Option(1, help="Warm-up repetitions."),
    device: str = DeviceOpt,
) -> None:
    """Seconds per predicted clip: Euler vs multistep, with and without representation guidance (two passes as one batch)."""
    from eval.bench.sample import run

    run(_config(config, set_), width=width, depth=depth, heads=heads, steps=sampling_steps, guidance_weight=guidance_weight,
        guidance_components=guidance_components, repeats=repeats, warmup=warmup, device=device)


@bench_app.command("gpu")
@_friendly_errors
def bench_gpu(
    size: str = typer.Option("auto", help="auto (paper on a GPU, tiny without one) | paper | tiny."),
    steps: int = typer.Option(3, help="Timed steps of the Stage 2 and Stage 1 step benchmarks."),
    workers: int = typer.Option(0, help="Cache DAG actors (0 = one per GPU, or the config's cache.workers on CPU)."),
    limit: int = typer.Option(2, help="Training windows rendered and cached for the DAG and end-to-end parts."),
    e2e_steps: int = typer.Option(5, help="Optimizer steps of the end-to-end Stage 1 and Stage 2 runs."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write every figure to this JSON file."),
) -> None:
    """The GPU paths in one script (under 8 min on one GPU): paper-size Stage 2 fwd+bwd in bf16 vs diffusers' Cosmos
    DiT, the paper-size Stage 1 step, the cache DAG with GPU actors at paper resolution on random weights, and a
    5-step end-to-end run. Without a GPU it says so and runs at tiny size on the CPU."""
    from eval.bench.gpu import run

    run(size=size, steps=steps, workers=workers, limit=limit, e2e_steps=e2e_steps, json_out=json_out)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
