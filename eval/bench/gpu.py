"""`bench gpu`: the GPU paths in one script, sized for a lent GPU (under 8 minutes on one H100/H200-class card).

1. Stage 2 forward+backward in bf16 at paper size (width 2048, 14 blocks, 7 x 27 x 48 tokens), ours vs diffusers'
   CosmosTransformer3DModel of the same width/depth/heads (eval/bench/dit.py): time, peak memory.
2. The paper-size Stage 1 step (eval/bench/stage1.py): cached features vs VFM online.
3. The cache DAG with GPU actors at paper resolution (432 x 768, 25 frames) on random VFM/VAE weights.
4. A 5-step end-to-end run at paper size on that cache: Stage 1 then Stage 2 (bf16, EMA, one checkpoint each).

Without a GPU it says so and runs the same script at tiny size (configs/tiny.toml, CPU), so the script stays working;
those figures are not GPU figures. Each part runs on its own: a failure is recorded and the next part still runs.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from rich.table import Table

from configs.schema import Config, load_config
from pipeline import atomic
from pipeline.console import console, summary, warn_loud

# The DiT of each size (the token grid comes from the config's window and codec).
DIT = {"paper": {"width": 2048, "depth": 14, "heads": 16, "adaln_lora_dim": 256},
       "tiny": {"width": 96, "depth": 2, "heads": 4, "adaln_lora_dim": 32}}


def _peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _part(results: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]], device: str) -> None:
    console.rule(f"bench gpu: {name}")
    _reset_peak(device)
    tic = time.perf_counter()
    try:
        figures = fn()
        results[name] = {**figures, "wall_s": time.perf_counter() - tic, "peak_gib": _peak_gib(device)}
    except Exception as exc:  # one broken part must not lose the others' figures on a scarce GPU
        console.print(traceback.format_exc())
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "wall_s": time.perf_counter() - tic}


def _dit(cfg: Config, size: str, device: str, steps: int) -> dict[str, Any]:
    from eval.bench.dit import run as bench_dit

    h, w = cfg.token_grid
    r = bench_dit(**DIT[size], frames=cfg.latent_frames, height=h, width_tokens=w, device=device, steps=steps,
                  latent_channels=cfg.codec.channels, feature_channels=cfg.pca.components,
                  dtype="bfloat16" if device == "cuda" else "float32",  # CPU bf16 is emulated, ~2x slower; tests/test_*_train cover it
                  checkpointing=cfg.stage2.train.activation_checkpointing)
    ours, theirs = r["models"]["ours (VideoDiT)"], r["models"]["diffusers Cosmos"]
    return {"dtype": r["dtype"], "tokens": r["tokens"], "ours_step_s": ours["step_s"], "ours_peak_mib": ours["peak_mib"],
            "ours_params_m": ours["params_m"], "diffusers_step_s": theirs["step_s"], "diffusers_peak_mib": theirs["peak_mib"],
            "diffusers_params_m": theirs["params_m"], "checkpointing": r["checkpointing"]}


def _stage1(cfg: Config, device: str, steps: int) -> dict[str, Any]:
    from eval.bench.stage1 import run as bench_stage1

    r = bench_stage1(cfg, batch_size=cfg.stage1.train.batch_size, steps=steps, warmup=1, device=device, skip_unfused=True)
    return {"params_m": r["parameters"] / 1e6, "tokens": r["tokens"], "batch": r["batch_size"],
            **{f"{k}_step_s": v["step_s"] for k, v in r["steps"].items()}}


def _cache(cfg: Config, root: Path, out: Path, workers: int, limit: int) -> dict[str, Any]:
    from pipeline.dag import build_cache
    from pipeline.synthetic import write_sample_dataset

    tic = time.perf_counter()
    write_sample_dataset(root, train=limit, val=1, height=cfg.window.height, width=cfg.window.width, seed=0, progress=False)
    render_s = time.perf_counter() - tic
    r = build_cache(cfg, "synthetic", root, out, workers=workers, allow_random_weights=True, limit=limit)
    t = r.times
    return {"render_s": render_s, "windows": r.samples, "frames": r.frames, "seconds": r.seconds,
            "frames_per_s": r.frames / r.seconds if r.seconds else 0.0, "vfm_s": t.vfm, "codec_s": t.codec,
            "decode_s": t.decode, "write_s": t.write}


def _end_to_end(cfg: Config, cache: Path, out: Path, steps: int) -> dict[str, Any]:
    from train.stage1 import train_stage1
    from train.stage2 import train_stage2

    figures: dict[str, Any] = {}
    for name, train in (("stage1", train_stage1), ("stage2", train_stage2)):
        tic = time.perf_counter()
        result = train(cfg, str(cache), str(out / name), steps=steps, batch_size=1, num_workers=0)
        figures[f"{name}_s"] = time.perf_counter() - tic
        figures[f"{name}_loss"] = result.loss
        figures[f"{name}_samples_per_s"] = result.samples_per_s
    return figures


def run(size: str = "auto", steps: int = 3, workers: int = 0, limit: int = 2, e2e_steps: int = 5,
        json_out: str | None = None) -> dict[str, Any]:
    """Run the four parts; `size` auto = paper on a GPU, tiny without one. Returns (and optionally writes) the figures."""
    gpu = torch.cuda.is_available()
    if size == "auto":
        size = "paper" if gpu else "tiny"
    if size not in ("paper", "tiny"):
        raise ValueError(f"size={size!r}: choose auto, paper or tiny")
    device = "cuda" if gpu else "cpu"
    if not gpu:
        warn_loud("no GPU: running the same script at tiny size on the CPU so it stays working; these are NOT GPU figures")
    if size == "paper" and not gpu:
        warn_loud("paper size without a GPU will take hours and may not fit in memory")
    # Stage 2 without mixed supervision (no Stage 1 pool to mix in); validation off so the 5 steps are all training.
    overrides = ["stage2.mixed_supervision_prob=0", "stage1.train.val_every=0", "stage2.train.val_every=0"]
    cfg = load_config(size, overrides)
    results: dict[str, Any] = {"size": size, "device": torch.cuda.get_device_name() if gpu else "cpu",
                               "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="re2pix-bench-gpu-") as tmp:
        _part(results, "stage2_fwd_bwd", lambda: _dit(cfg, size, device, steps), device)
        _part(results, "stage1_step", lambda: _stage1(cfg, device, steps), device)
        cache = Path(tmp) / "cache"
        _part(results, "cache_dag", lambda: _cache(cfg, Path(tmp) / "data", cache, workers, limit), device)
        if "error" in results["cache_dag"]:
            results["end_to_end"] = {"error": "skipped: no cache"}
        else:
            _part(results, "end_to_end", lambda: _end_to_end(cfg, cache, Path(tmp) / "runs", e2e_steps), device)
    _print(results)
    if json_out:
        atomic.write_text(json_out, json.dumps(results, indent=2, default=str) + "\n")
    return results


def _print(results: dict[str, Any]) -> None:
    table = Table(title=f"bench gpu: {results['size']} size on {results['device']} (torch {results['torch']})")
    for col in ("part", "figures", "wall s", "peak GiB"):
        table.add_column(col, justify="left" if col == "figures" else "right")
    for name in ("stage2_fwd_bwd", "stage1_step", "cache_dag", "end_to_end"):
        r = dict(results.get(name, {}))
        wall, peak = r.pop("wall_s", float("nan")), r.pop("peak_gib", float("nan"))
        text = r.pop("error", None) or ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
        table.add_row(name, text, f"{wall:.1f}", f"{peak:.1f}")
    console.print(table)
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    d = results.get("stage2_fwd_bwd", {})
    line = (f"bench gpu ({results['size']}, {results['device']}): stage 2 fwd+bwd ours {1000 * d['ours_step_s']:.0f} ms vs "
            f"diffusers {1000 * d['diffusers_step_s']:.0f} ms" if "ours_step_s" in d else f"bench gpu ({results['size']}, {results['device']})")
    summary(line + (f"; FAILED parts: {', '.join(failed)}" if failed else "; all parts ran"))
