"""`pretrain-vfm`: pretrain the tiny config's VFM architecture on the synthetic world, probe it, export it.

Why this exists: timm builds DINOv2 with LayerScale gamma = 1e-5, so a randomly initialised tiny VFM is four copies of
a random projection of pixel patches, and every "semantic" part of the tiny study acted on a pixel spectrum. The
pretrained VFM is exported exactly like a real checkpoint (a timm state dict in safetensors) and loaded through
`cache --vfm-weights` / `vfm.weights`, the path DINOv2 itself takes; its record (`vfm.json`, beside the weights)
travels into meta.json and the reports.

The objective is masked latent prediction to an EMA teacher (models/vfm_pretraining.py), label-free by default.
`vfm_pretrain.aux_weight > 0` adds the world's segmentation and depth as targets: the issue's fallback when no
label-free objective passes the probe bar in about two minutes on two cores. The record says which ran.

Settings key: the output folder defaults to `<paths.root>/vfm/<key>`, key = fingerprint of the VFM architecture and
the `vfm_pretrain` section, so the demo and `reproduce` reuse a VFM made with the same settings and remake it when
any setting changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from configs.schema import Config, ConfigError
from models.vfm_pretraining import MaskedLatentPredictor, set_layer_scale
from pipeline.atomic import atomic_path, write_json
from pipeline.console import progress
from pipeline.fingerprint import dict_fingerprint, file_fingerprint
from pipeline.synthetic.frames import HELD_OUT_STREAM, PRETRAIN_STREAM, render_world_frames
from pipeline.vfm import VFMExtractor, create_vit, has_published_weights, read_record, record_path
from pipeline.weights import seeded
from train.vfm_probe import IGNORE, ProbeResult, run_probe, sample_logits
from train.vfm_views import ViewSpec, block_masks, colour_jitter, random_resized_crops

WEIGHTS_FILE = "vfm.safetensors"
RECORD_FILE = "vfm.json"
PROBE_FRAME = 19  # the labelled frame of every snippet (Cityscapes' frame 19)
DESCRIPTION = "tiny VFM pretrained on the synthetic world"
DEPTH_SCALE = 255.0  # the world's depth maps are 8-bit inverse depth; 0 = invalid


def settings_key(cfg: Config) -> str:
    """Fingerprint of what decides the pretrained weights: the VFM architecture and the pretraining settings."""
    arch = {k: v for k, v in asdict(cfg.vfm).items() if k not in ("weights", "batch_size")}
    recipe = {k: v for k, v in asdict(cfg.vfm_pretrain).items() if k != "out"}
    return dict_fingerprint({"vfm": arch, "vfm_pretrain": recipe})[:12]


def default_out(cfg: Config) -> Path:
    return Path(cfg.vfm_pretrain.out or Path(cfg.paths.root) / "vfm" / settings_key(cfg))


def existing(out: Path, key: str) -> dict | None:
    """The record of a finished run in `out` made with settings `key`, or None."""
    weights = out / WEIGHTS_FILE
    if not weights.is_file() or not record_path(weights).is_file():
        return None
    record = read_record(weights)
    return record if record and record.get("settings_key") == key else None


def with_pretrained_vfm(cfg: Config, root: Path | str | None = None, *, workers: int = 1) -> tuple[Config, dict | None, bool]:
    """`cfg` with `vfm.weights` set to the pretrained tiny VFM in `<root>/vfm/<settings key>` (root: paths.root),
    made now or reused: what the demo and `reproduce` cache with. Returns (config, record, reused). A config that
    already names VFM weights, or whose architecture has published weights (DINOv2 at paper size), is returned
    unchanged with record None."""
    if cfg.vfm.weights or has_published_weights(cfg.vfm):
        return cfg, None, True
    out = Path(root) / "vfm" / settings_key(cfg) if root is not None else default_out(cfg)
    record, reused = pretrain_vfm(cfg, out, workers=workers)
    return replace(cfg, vfm=replace(cfg.vfm, weights=str(out / WEIGHTS_FILE))), record, reused


def describe_run(record: dict, reused: bool) -> str:
    """The one-line summary of a pretraining run (the CLI's and the demo's)."""
    probe = record["probe"]
    state = "reused" if reused else f"made in {record['seconds']:.0f} s"
    return (f"VFM {state}: {record['objective']}; probe mIoU {probe['miou']:.1f} vs {probe['miou_random']:.1f} "
            f"random-init ({probe['val_frames']} val frames), layer difference {record['layer_difference']:.3f}")


def _lr(step: int, steps: int, base: float, warmup_fraction: float) -> float:
    warmup = max(1, int(round(warmup_fraction * steps)))
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _momentum(step: int, steps: int, start: float, end: float) -> float:
    return end - (end - start) * 0.5 * (1 + math.cos(math.pi * step / max(1, steps - 1)))


def _frame_indices(count: int) -> list[int]:
    return sorted({int(round(i)) for i in np.linspace(0, 29, count)})


def _aux_loss(model: MaskedLatentPredictor, final: torch.Tensor, seg: torch.Tensor, depth: torch.Tensor,
              num_classes: int, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Segmentation cross-entropy + depth L1 read at random label pixels of the full frames."""
    maps = model.aux_maps(final)
    b, height, width = seg.shape
    ys = torch.randint(height, (b, pixels), generator=generator)
    xs = torch.randint(width, (b, pixels), generator=generator)
    read = sample_logits(maps, ys, xs, (height, width))
    rows = torch.arange(b)[:, None]
    seg_target, depth_target = seg[rows, ys, xs], depth[rows, ys, xs]
    loss = F.cross_entropy(read[:, :num_classes], seg_target, ignore_index=IGNORE)
    valid = depth_target > 0
    if valid.any():
        loss = loss + F.l1_loss(read[:, num_classes][valid], depth_target[valid] / DEPTH_SCALE)
    return loss


def _step(model: MaskedLatentPredictor, opt: torch.optim.Optimizer, params: list, extractor: VFMExtractor, p,
          step: int, rgb: torch.Tensor, seg: torch.Tensor, depth: torch.Tensor, spec: ViewSpec,
          gen: torch.Generator, num_classes: int) -> float:
    """One optimizer step on a batch of random frames; returns the masked regression loss."""
    for group in opt.param_groups:
        group["lr"] = _lr(step, p.steps, p.lr, p.warmup_fraction)
    idx = torch.randint(len(rgb), (p.batch_size,), generator=gen)
    frames = rgb[idx].permute(0, 3, 1, 2).float() / 255.0
    views = colour_jitter(random_resized_crops(frames, spec, gen), gen)
    masks = block_masks(p.batch_size, model.grid, tuple(p.mask_ratio), 1.0, gen)
    loss, _ = model((views - extractor.mean) / extractor.std, masks)
    total = loss
    if model.aux is not None:  # the label fallback reads the unmasked, uncropped frame so labels line up
        final = model.student.norm(model.tokens(model.student, extractor.preprocess(frames), None)[-1])
        total = loss + p.aux_weight * _aux_loss(model, final, seg[idx], depth[idx], num_classes, 1024, gen)
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(params, 3.0)
    opt.step()
    model.update_teacher(_momentum(step, p.steps, *p.ema_momentum))
    return float(loss.detach())


def pretrain_vfm(cfg: Config, out: Path | None = None, *, workers: int = 1, force: bool = False,
                 on_step: Callable[[int, float], None] | None = None) -> tuple[dict, bool]:
    """Pretrain, probe and export. Returns (record, reused): an existing run with the same settings is reused
    unless `force`. Writes `out/vfm.safetensors` (the EMA teacher, timm keys) and `out/vfm.json`."""
    p = cfg.vfm_pretrain
    if has_published_weights(cfg.vfm):
        raise ConfigError(
            f"vfm.name={cfg.vfm.name!r} without size overrides has published weights: pretrain-vfm is for architectures "
            f"that have none (the tiny config). Pass the DINOv2 checkpoint with --vfm-weights instead")
    if p.steps < 1 or p.batch_size < 1 or p.snippets < 1:
        raise ConfigError(f"vfm_pretrain.steps={p.steps}, batch_size={p.batch_size} and snippets={p.snippets} must be >= 1")
    if len(p.mask_ratio) != 2 or not 0 < p.mask_ratio[0] <= p.mask_ratio[1] < 1:
        raise ConfigError(f"vfm_pretrain.mask_ratio={p.mask_ratio}: give [low, high] with 0 < low <= high < 1")
    key = settings_key(cfg)
    out = Path(out or default_out(cfg))
    if not force and (record := existing(out, key)) is not None:
        return record, True
    started = time.perf_counter()
    height, width = cfg.window.height, cfg.window.width
    world = render_world_frames(p.seed, PRETRAIN_STREAM, p.snippets, _frame_indices(p.frames_per_snippet),
                                height, width, workers)
    probe_train = render_world_frames(p.seed, PRETRAIN_STREAM, min(p.probe_snippets, p.snippets), [PROBE_FRAME],
                                      height, width, workers)
    probe_val = render_world_frames(p.seed, HELD_OUT_STREAM, p.probe_val_snippets, [PROBE_FRAME], height, width, workers)
    render_seconds = time.perf_counter() - started

    num_classes = cfg.heads.num_classes
    with seeded(p.seed):
        student = create_vit(cfg.vfm)
        set_layer_scale(student, p.layer_scale_init)
        model = MaskedLatentPredictor(student, p.target_layers, aux_channels=num_classes + 1 if p.aux_weight > 0 else 0)
    extractor = VFMExtractor(create_vit(cfg.vfm), cfg.vfm.layers, (cfg.vfm.input_height, cfg.vfm.input_width), "")
    params = [q for n, q in model.named_parameters() if not n.startswith("teacher.")]
    decay = [q for q in params if q.ndim >= 2]
    no_decay = [q for q in params if q.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=p.lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(p.seed)
    spec = ViewSpec(size=extractor.input_size, count=1, scale=tuple(p.crop_scale))
    rgb = torch.from_numpy(world.rgb)
    seg = torch.from_numpy(world.segmentation).long()
    depth = torch.from_numpy(world.depth).float()
    curve = []
    model.train()
    model.teacher.eval()
    train_started = time.perf_counter()
    with progress() as bar:
        job = bar.add_task("pretrain-vfm", total=p.steps, status="")
        for step in range(p.steps):
            loss = _step(model, opt, params, extractor, p, step, rgb, seg, depth, spec, gen, num_classes)
            curve.append(loss)
            bar.update(job, advance=1, status=f"loss {loss:.3f}")
            if on_step:
                on_step(step + 1, loss)
    train_seconds = time.perf_counter() - train_started

    pretrained = VFMExtractor(model.teacher, cfg.vfm.layers, extractor.input_size, "pretrained")
    with seeded(0):  # build_vfm's random weights: what the tiny config caches without --vfm-weights
        random_vit = create_vit(cfg.vfm)
    random = VFMExtractor(random_vit, cfg.vfm.layers, extractor.input_size, "random")
    probe_args = dict(components=cfg.pca.components, num_classes=num_classes, steps=p.probe_steps, seed=p.seed)
    result, _ = run_probe(pretrained, probe_train.rgb, probe_train.segmentation, probe_val.rgb,
                          probe_val.segmentation, **probe_args)
    baseline, _ = run_probe(random, probe_train.rgb, probe_train.segmentation, probe_val.rgb,
                            probe_val.segmentation, **probe_args)

    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    state = {k: v.detach().contiguous().clone() for k, v in model.teacher.state_dict().items()}
    with atomic_path(weights) as tmp:
        # one metadata key: safetensors writes the header from a hash map, so several keys change the bytes (and the
        # fingerprint meta.json records) from run to run; the architecture lives in the record
        save_file(state, tmp, metadata={"format": "pt"})
    record = _record(cfg, key, weights, result, baseline, curve, render_seconds, train_seconds,
                     time.perf_counter() - started, len(world))
    write_json(record_path(weights), record)
    return record, False


def _record(cfg: Config, key: str, weights: Path, result: ProbeResult, baseline: ProbeResult, curve: list[float],
            render_seconds: float, train_seconds: float, seconds: float, frames: int) -> dict:
    p = cfg.vfm_pretrain
    label_free = p.aux_weight <= 0
    objective = ("masked latent prediction to an EMA teacher (data2vec-style, label-free)" if label_free else
                 f"masked latent prediction to an EMA teacher + segmentation and depth targets (aux_weight {p.aux_weight})")
    tail = curve[-max(1, len(curve) // 10) :]
    return {
        "description": DESCRIPTION,
        "objective": objective,
        "label_free": label_free,
        "auxiliary_targets": [] if label_free else ["segmentation", "depth"],
        "architecture": {"name": cfg.vfm.name, "overrides": cfg.vfm.overrides, "layers": cfg.vfm.layers,
                         "input_size": [cfg.vfm.input_height, cfg.vfm.input_width]},
        "steps": p.steps,
        "batch_size": p.batch_size,
        "data_seed": p.seed,
        "data": {"snippets": p.snippets, "frames": frames, "stream": PRETRAIN_STREAM,
                 "probe_val_stream": HELD_OUT_STREAM, "size": [cfg.window.height, cfg.window.width]},
        "seconds": round(seconds, 1),
        "seconds_render": round(render_seconds, 1),
        "seconds_train": round(train_seconds, 1),
        "loss": {"first": curve[0], "last_10pct_mean": float(np.mean(tail))},
        "probe": {"miou": round(result.miou, 2), "miou_random": round(baseline.miou, 2),
                  "miou_by_components": {str(c): round(v, 2) for c, v in result.miou_by_components.items()},
                  "miou_by_components_random": {str(c): round(v, 2) for c, v in baseline.miou_by_components.items()},
                  "components": cfg.pca.components, "steps": p.probe_steps,
                  "train_frames": min(p.probe_snippets, p.snippets), "val_frames": p.probe_val_snippets},
        "layer_difference": round(result.layer_difference, 4),
        "layer_differences": [round(d, 4) for d in result.layer_differences],
        "layer_difference_random": baseline.layer_difference,
        "explained_variance": result.explained_variance,
        "settings": {k: v for k, v in asdict(p).items() if k != "out"},
        "settings_key": key,
        "weights_fingerprint": file_fingerprint(weights),
    }
