"""`bench stage1`: one Stage 1 training step (forward, backward, Adam) fed three ways.

- cached:         PCA features as the cache delivers them [B, M_f + 1, C, h, w] (Re2Pix), fused SDPA attention;
- cached unfused: the same with explicit softmax(QK^T)V attention (what nn.MultiheadAttention with need_weights=True
                  runs in DINO-Foresight);
- online VFM:     raw frames [B (M_f + 1), 3, H, W] through the frozen VFM and the PCA projection inside the step, as
                  DINO-Foresight trains, then the fused step.

The VFM has random weights (speed does not depend on them) and the PCA is a random orthonormal projection of the
VFM's channels. Sizes come from the config (`tiny` by default; `paper` on a GPU) and the arguments.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from rich.table import Table

from configs.schema import Config, load_config
from models.foresight import FeatureForesight
from pipeline.console import console, summary
from pipeline.device import inference_autocast, resolve_device, synchronize
from pipeline.pca import PCA
from pipeline.vfm import build_vfm
from train.stage1 import stage1_model_config


def _time(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        tic = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - tic)
    return sorted(times)[len(times) // 2]


def _random_pca(dim: int, components: int, device: torch.device) -> PCA:
    q, _ = torch.linalg.qr(torch.randn(dim, components))
    ev = torch.linspace(1.0, 0.1, components)
    return PCA(torch.zeros(dim), torch.ones(dim), q.T.contiguous(), ev, ev / ev.sum(), source="bench").to(device)


def run(
    config: str | Config = "tiny",
    batch_size: int = 2,
    steps: int = 5,
    warmup: int = 2,
    device: str = "auto",
    overrides: list[str] | None = None,
    skip_unfused: bool = False,
) -> dict[str, Any]:
    """Time a Stage 1 step fed by cached features (fused / unfused attention) and by the VFM online."""
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    dev = resolve_device(device)
    amp = inference_autocast(dev)

    vfm = build_vfm(cfg.vfm, allow_random_weights=True, device=dev)
    grid = list(vfm.grid)
    meta = {"pca": {"components": cfg.pca.components}, "vfm": {"grid": grid}}
    model_cfg = stage1_model_config(cfg, meta)
    torch.manual_seed(0)
    model = FeatureForesight(model_cfg).to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=tuple(cfg.stage1.optim.betas))
    pca = _random_pca(vfm.out_channels, cfg.pca.components, dev)
    t = model_cfg.context_frames + 1
    c, (h, w) = cfg.pca.components, grid
    feats = torch.randn(batch_size, t, c, h, w, device=dev)
    frames = torch.rand(batch_size * t, 3, cfg.window.height, cfg.window.width, device=dev)
    beta = cfg.stage1.smooth_l1_beta

    def train_step(x: torch.Tensor) -> None:
        with amp:
            loss = F.smooth_l1_loss(model(x).float(), x[:, -1].float(), beta=beta)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.stage1.train.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def online_features() -> torch.Tensor:
        with torch.no_grad(), amp:
            f = vfm(frames)  # [B T, D, h, w]
        z = pca.project_maps(f.float())
        return z.reshape(batch_size, t, c, h, w)

    def vfm_only() -> None:
        online_features()

    rows: dict[str, dict[str, float]] = {}
    model.use_fused_attention(True)
    rows["cached"] = {"step_s": _time(lambda: train_step(feats), steps, warmup, dev)}
    if not skip_unfused:
        model.use_fused_attention(False)
        rows["cached_unfused"] = {"step_s": _time(lambda: train_step(feats), steps, warmup, dev)}
        model.use_fused_attention(True)
    rows["online_vfm"] = {"step_s": _time(lambda: train_step(online_features()), steps, warmup, dev)}
    rows["vfm_and_pca_only"] = {"step_s": _time(vfm_only, steps, warmup, dev)}
    for r in rows.values():
        r["samples_per_s"] = batch_size / r["step_s"]
    base = rows["cached"]["step_s"]
    for r in rows.values():
        r["vs_cached"] = r["step_s"] / base

    results: dict[str, Any] = {
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "config": cfg.name,
        "batch_size": batch_size,
        "tokens": t * h * w,
        "frames": [cfg.window.height, cfg.window.width],
        "model": {"width": model_cfg.width, "depth": model_cfg.depth, "heads": model_cfg.heads, "in_channels": c, "grid": grid},
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": rows,
    }
    if dev.type == "cuda":
        results["max_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30

    table = Table(title=f"Stage 1 step on {results['device']} ({cfg.name}: batch {batch_size}, {t}x{h}x{w} tokens, width {model_cfg.width}, depth {model_cfg.depth})")
    for col in ("fed by", "ms/step", "samples/s", "x cached"):
        table.add_column(col, justify="right")
    labels = {
        "cached": "cached features, fused SDPA",
        "cached_unfused": "cached features, unfused attention",
        "online_vfm": "frames -> VFM + PCA online, fused",
        "vfm_and_pca_only": "(VFM + PCA alone, no training)",
    }
    for key, r in rows.items():
        table.add_row(labels[key], f"{1000 * r['step_s']:.1f}", f"{r['samples_per_s']:.2f}", f"{r['vs_cached']:.2f}")
    console.print(table)
    summary(
        "bench stage1: " + ", ".join(f"{k} {1000 * r['step_s']:.1f} ms" for k, r in rows.items()) + f" ({results['device']}, batch {batch_size})"
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--skip-unfused", action="store_true")
    args = parser.parse_args()
    run(args.config, args.batch_size, args.steps, args.warmup, args.device, args.overrides, args.skip_unfused)


if __name__ == "__main__":
    main()
