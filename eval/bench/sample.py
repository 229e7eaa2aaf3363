"""`bench sample`: seconds per predicted clip of Stage 2 sampling, Euler vs multistep, with and without guidance.

A randomly initialised Stage 2 model of the config's shape (latent channels, frames and grid from the codec and window,
feature channels = PCA components; width/depth/heads overridable) samples one clip's future latents with
`models.samplers.sample`, exactly as `predict` does. Representation guidance (paper appendix 6.2) runs the full and
the coarse pass as one batch of 2, so it costs one batched evaluation per step, not two sequential ones. Each cell is
the median of `repeats` timed clips after `warmup` untimed ones. Weights are random: only the time is meaningful.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Sequence

import torch
from rich.table import Table

from configs.schema import SAMPLERS, Config, check_sampler, load_config
from eval.generate import noise_seed
from models.diffusion import context_inputs
from models.samplers import sample
from models.stage2 import TRAINING_DIFFUSION_FIELDS, Stage2Model, Stage2ModelSpec
from pipeline.console import console, summary
from pipeline.device import inference_autocast, resolve_device, synchronize


def run(
    cfg: Config | str = "tiny",
    width: int | None = None,
    depth: int | None = None,
    heads: int | None = None,
    steps: int | None = None,
    samplers: Sequence[str] = SAMPLERS,
    guidance_weight: float = 0.4,
    guidance_components: int | None = None,
    repeats: int = 2,
    warmup: int = 1,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Time `sample()` for every sampler x {no guidance, guidance}; print a table and return the figures.

    cfg: a Config or preset name (sizes: window, codec, PCA components, stage2.model). steps: sampler steps
    (default stage2.diffusion.steps). guidance_components: channels of the coarse pass (default the config's, capped
    at half the feature channels so it is always a real truncation).
    """
    cfg = load_config(cfg) if isinstance(cfg, str) else cfg
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    for name in samplers:
        check_sampler(name, "samplers")
    if not samplers:
        raise ValueError(f"samplers=[]: choose at least one of {SAMPLERS}")
    if guidance_weight <= 0:
        raise ValueError(f"guidance_weight={guidance_weight} must be > 0 (the guided rows are compared with unguided ones)")
    dev = resolve_device(device)

    channels = cfg.pca.components
    model_cfg = dataclasses.replace(
        cfg.stage2.model, conditioning="features", latent_channels=cfg.codec.channels, feature_channels=channels,
        **{k: v for k, v in (("width", width), ("depth", depth), ("heads", heads)) if v is not None},
    )
    coarse = guidance_components or cfg.stage2.diffusion.guidance_components
    coarse = max(1, min(coarse, channels // 2))
    spec = Stage2ModelSpec(dit=model_cfg, diffusion={k: getattr(cfg.stage2.diffusion, k) for k in TRAINING_DIFFUSION_FIELDS})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Stage2Model(spec).to(dev).eval()
    latent_frames, ctx = cfg.latent_frames, cfg.context_latent_frames
    (lh, lw), (gh, gw) = cfg.latent_hw, cfg.token_grid
    shape = (1, cfg.codec.channels, latent_frames, lh, lw)
    gen = torch.Generator().manual_seed(seed)
    context, cond_mask = context_inputs(torch.randn(shape, generator=gen)[:, :, :ctx].to(dev), latent_frames)
    features = torch.randn(1, channels, latent_frames, gh, gw, generator=gen).to(dev)
    autocast = inference_autocast(dev)
    n_steps = steps or cfg.stage2.diffusion.steps

    rows: list[dict[str, Any]] = []
    for method in samplers:
        for weight in (0.0, guidance_weight):
            sampling = dataclasses.replace(
                cfg.stage2.diffusion, sampler=method, steps=n_steps, guidance_weight=weight, guidance_components=coarse,
                inference_components=0,
            )
            times = []
            for i in range(warmup + repeats):
                synchronize(dev)
                tic = time.perf_counter()
                with torch.no_grad(), autocast:
                    sample(model.denoiser, shape, context, cond_mask, features, sampling, generator=torch.Generator().manual_seed(noise_seed(seed, i)))
                synchronize(dev)
                if i >= warmup:
                    times.append(time.perf_counter() - tic)
            rows.append({
                "sampler": method, "guidance_weight": weight, "guidance_components": coarse if weight > 0 else None,
                "evaluations": n_steps + 1, "batch_per_evaluation": 2 if weight > 0 else 1,
                "seconds_per_clip": statistics.median(times),
            })
    base = rows[0]["seconds_per_clip"]
    for row in rows:
        row["relative"] = row["seconds_per_clip"] / base

    table = Table(title=f"Stage 2 sampling, one clip: {latent_frames} latent frames of {cfg.codec.channels}x{lh}x{lw}, "
                        f"DiT width {model_cfg.width} depth {model_cfg.depth}, {n_steps} steps, {dev.type}")
    for name in ("sampler", "guidance", "evaluations", "batch / eval", "s / clip", "relative"):
        table.add_column(name, justify="right")
    for row in rows:
        guidance = f"w={row['guidance_weight']:g}, c={row['guidance_components']}" if row["guidance_weight"] > 0 else "off"
        table.add_row(row["sampler"], guidance, str(row["evaluations"]), str(row["batch_per_evaluation"]),
                      f"{row['seconds_per_clip']:.3f}", f"{row['relative']:.2f}x")
    console.print(table)
    console.print("Random weights: only the time is meaningful. Guidance batches its two passes (appendix 6.2).")
    result = {
        "device": str(dev), "steps": n_steps, "width": model_cfg.width, "depth": model_cfg.depth, "heads": model_cfg.heads,
        "latent_shape": list(shape), "feature_shape": [1, channels, latent_frames, gh, gw], "rows": rows,
    }
    for row in rows:  # guided vs unguided with the same sampler
        plain = next(r for r in rows if r["sampler"] == row["sampler"] and r["guidance_weight"] == 0)
        row["guidance_cost"] = row["seconds_per_clip"] / plain["seconds_per_clip"]
    summary("bench sample: " + ", ".join(
        f"{r['sampler']} {r['seconds_per_clip']:.3f} s/clip" + (f" guided ({r['guidance_cost']:.2f}x)" if r["guidance_weight"] > 0 else "")
        for r in rows
    ))
    return result
