"""`bench gpu`: the GPU paths in one script, sized for a lent GPU (under 8 minutes on one H100/H200-class card).

1. Stage 2 forward+backward in bf16 at paper size (width 2048, 14 blocks, 7 x 27 x 48 tokens), ours vs diffusers'
   CosmosTransformer3DModel of the same width/depth/heads (eval/bench/dit.py): time, peak memory.
2. The paper-size Stage 1 step (eval/bench/stage1.py): cached features vs VFM online.
3. The cache DAG with GPU actors at paper resolution (432 x 768, 25 frames) on random VFM/VAE weights.
4. A 5-step end-to-end run at paper size on that cache: Stage 1 then Stage 2 (bf16, EMA, one checkpoint each).
5. The Stage 2 training step (bf16 autocast, Adam, EMA) at the config's size, with and without activation
   checkpointing, at batch 1 and 2: `torch.cuda.max_memory_allocated` beside `bench memory`'s prediction for the
   same setting (one process: the DDP figure without its buckets), seconds per sample against the paper's
   0.63 s/sample/GPU, and the paper setting (checkpointing, batch 1) compiled (train.compile) vs eager. CUDA only:
   without a GPU this part is skipped and says why.

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


# Paper: 40k iterations of effective batch 8 in about 7 h on 8 GPUs.
PAPER_S_PER_SAMPLE = 7 * 3600 * 8 / (40_000 * 8)
NEEDS_CUDA = ("the Stage 2 memory check measures torch.cuda.max_memory_allocated and needs a CUDA GPU; none is "
              "visible (torch.cuda.is_available() is False). `bench memory --config paper` prints the CPU prediction")


def train_steps(cfg: Config, probe: Any, ckpt: bool, batch: int, steps: int, device: torch.device,
                compiled: bool = False) -> tuple[float, float]:
    """`steps` Stage 2 training steps (bf16 autocast forward and backward, Adam, EMA) after one warm-up step that
    allocates gradients and Adam state (and compiles): (peak GiB over the timed steps on CUDA, else nan; median
    seconds per step)."""
    from train.ema import EMA
    from train.optim import build_optimizer

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    with torch.device(device):
        model = probe.build(None, probe.grid).train()
    model.activation_checkpointing = ckpt
    if compiled:
        model.compile_blocks()
    optimizer = build_optimizer(model, cfg.stage2.optim, batch)
    ema = EMA(model, cfg.stage2.train.ema_decay) if probe.ema else None
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):
        if i == 1 and cuda:
            torch.cuda.reset_peak_memory_stats()
        if cuda:
            torch.cuda.synchronize()
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = probe.loss(model, batch, probe.grid, gen)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    timed = sorted(times[1:])
    return peak, timed[len(timed) // 2]


def stage2_memory(cfg: Config, steps: int = 3, batches: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Peak CUDA memory and s/sample of the Stage 2 training step, measured vs predicted (see the module doc)."""
    if not torch.cuda.is_available():
        raise RuntimeError(NEEDS_CUDA)
    from eval.bench import memory

    probe = next(p for p in memory.probes(cfg) if p.name == "Stage 2")
    with torch.device("meta"):
        meta_model = probe.build(None, probe.grid)
    states = memory.count_states(meta_model, probe.ema, probe.blocks(meta_model))
    del meta_model
    acts = memory.measure_activations(probe)  # on the CPU, as `bench memory` does
    figures: dict[str, Any] = {"state_gib": states.total / 2**30}

    def one(ckpt: bool, batch: int, compiled: bool = False) -> tuple[float, float]:
        torch.cuda.empty_cache()
        try:
            return train_steps(cfg, probe, ckpt, batch, steps, torch.device("cuda"), compiled)
        except torch.cuda.OutOfMemoryError:
            return float("inf"), float("nan")

    for ckpt in (False, True):
        name = "ckpt" if ckpt else "plain"
        for batch in batches:
            peak, step_s = one(ckpt, batch)
            predicted = memory.peak_bytes(states, acts[ckpt], batch, "single") / 2**30
            figures[f"{name}_b{batch}_peak_gib"] = peak
            figures[f"{name}_b{batch}_predicted_gib"] = predicted
            figures[f"{name}_b{batch}_measured_over_predicted"] = peak / predicted
            figures[f"{name}_b{batch}_s_per_sample"] = step_s / batch
    eager = figures["ckpt_b1_s_per_sample"]
    tic = time.perf_counter()
    peak, step_s = one(True, 1, compiled=True)
    figures.update({"compiled_ckpt_b1_s_per_sample": step_s, "compiled_ckpt_b1_peak_gib": peak,
                    "compiled_total_s": time.perf_counter() - tic, "compile_speedup": eager / step_s,
                    "paper_s_per_sample": PAPER_S_PER_SAMPLE})
    return figures


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
    # Compiling is timed in the stage2_memory part only; the 5-step end-to-end run stays eager to stay short.
    overrides = ["stage2.mixed_supervision_prob=0", "stage1.train.val_every=0", "stage2.train.val_every=0",
                 "stage1.train.compile=false", "stage2.train.compile=false"]
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
        if gpu:
            _part(results, "stage2_memory", lambda: stage2_memory(cfg, steps), device)
        else:
            results["stage2_memory"] = {"skipped": NEEDS_CUDA}
    _print(results)
    if json_out:
        atomic.write_text(json_out, json.dumps(results, indent=2, default=str) + "\n")
    return results


PARTS = ("stage2_fwd_bwd", "stage1_step", "cache_dag", "end_to_end", "stage2_memory")


def _print(results: dict[str, Any]) -> None:
    table = Table(title=f"bench gpu: {results['size']} size on {results['device']} (torch {results['torch']})")
    for col in ("part", "figures", "wall s", "peak GiB"):
        table.add_column(col, justify="left" if col == "figures" else "right")
    for name in PARTS:
        r = dict(results.get(name, {}))
        wall, peak = r.pop("wall_s", float("nan")), r.pop("peak_gib", float("nan"))
        text = r.pop("error", None) or r.pop("skipped", None) or ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
        table.add_row(name, text, f"{wall:.1f}", f"{peak:.1f}")
    console.print(table)
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    d = results.get("stage2_fwd_bwd", {})
    line = (f"bench gpu ({results['size']}, {results['device']}): stage 2 fwd+bwd ours {1000 * d['ours_step_s']:.0f} ms vs "
            f"diffusers {1000 * d['diffusers_step_s']:.0f} ms" if "ours_step_s" in d else f"bench gpu ({results['size']}, {results['device']})")
    m = results.get("stage2_memory", {})
    if "ckpt_b1_peak_gib" in m:
        line += (f"; stage 2 step (checkpointing, batch 1) peak {m['ckpt_b1_peak_gib']:.1f} GiB vs predicted "
                 f"{m['ckpt_b1_predicted_gib']:.1f}, {m['ckpt_b1_s_per_sample']:.2f} s/sample eager, "
                 f"{m['compiled_ckpt_b1_s_per_sample']:.2f} compiled (paper {PAPER_S_PER_SAMPLE:.2f})")
    skipped = [k for k, v in results.items() if isinstance(v, dict) and "skipped" in v]
    summary(line + (f"; FAILED parts: {', '.join(failed)}" if failed else "; all parts ran")
            + (f" (skipped without CUDA: {', '.join(skipped)})" if skipped else ""))
