"""`bench dit`: forward+backward speed and memory of our VideoDiT against diffusers' CosmosTransformer3DModel.

Both networks get the same width, depth, heads, patch size and token grid, and the same latent input with a
condition-mask channel. Differences that are part of what is measured, and printed under the table:
- ours early-fuses semantic features (one extra Linear on the input tokens) and has no cross-attention;
- diffusers' block always has a cross-attention sub-layer, so it receives a minimal text context of ONE token of
  its cross-attention width (`text_dim`, 1024 as Predict2's T5 embeddings); no padding-mask channel and no
  learnable positional embedding, as in Predict2.

Memory: on CUDA the peak of `torch.cuda.max_memory_allocated` over a step. On CPU a per-model peak is not
observable (process RSS only grows), so the table reports, on every device, the bytes autograd saves for the
backward pass (activations, excluding parameters), which is what activation checkpointing trades for time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
from rich.table import Table

from configs.schema import DiTConfig
from models.dit import VideoDiT
from pipeline.console import console, summary
from pipeline.device import resolve_device, synchronize


@contextmanager
def saved_activation_bytes(exclude: set[int], kept_inputs: Iterable[torch.nn.Module] = ()) -> Iterator[list[int]]:
    """Count the distinct storages autograd saves for backward (skipping the `exclude` data pointers).

    `kept_inputs`: modules run under non-reentrant activation checkpointing. Their tensor inputs stay alive until
    the backward pass recomputes them, but autograd's saved-tensor hooks never see them (torch.utils.checkpoint
    installs its own hooks inside the checkpointed region), so they are counted here through forward pre-hooks.
    Storages are counted once, however many ops or blocks save them.
    """
    seen: set[int] = set()
    total = [0]

    def count(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude and ptr not in seen:
            seen.add(ptr)
            total[0] += storage.nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        count(t)
        return t

    def count_inputs(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        for arg in args:
            if isinstance(arg, torch.Tensor):
                count(arg)

    handles = [m.register_forward_pre_hook(count_inputs) for m in kept_inputs]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield total
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def quiet_diffusers() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def measure(step: Callable[[], torch.Tensor], params: list[torch.nn.Parameter], device: torch.device,
            steps: int, kept_inputs: Iterable[torch.nn.Module] = ()) -> dict[str, float]:
    """One warm-up step, then `steps` timed forward+backward steps; median time, memory figures (`kept_inputs`:
    the checkpointed blocks, see `saved_activation_bytes`)."""
    exclude = {p.untyped_storage().data_ptr() for p in params}
    step().backward()
    with saved_activation_bytes(exclude, kept_inputs) as saved:
        loss = step()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    for _ in range(steps):
        for p in params:
            p.grad = None
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        step().backward()
        synchronize(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    # cpu_step_s: this process's CPU seconds (all threads), steadier than wall time on a shared machine.
    return {"step_s": statistics.median(times), "cpu_step_s": statistics.median(cpu_times),
            "saved_mib": saved[0] / 2**20, "peak_mib": peak}


def build_diffusers_cosmos(cfg: DiTConfig, frames: int, height: int, width: int, text_dim: int) -> torch.nn.Module:
    from diffusers import CosmosTransformer3DModel

    return CosmosTransformer3DModel(
        in_channels=cfg.latent_channels + 1, out_channels=cfg.latent_channels, num_attention_heads=cfg.heads,
        attention_head_dim=cfg.width // cfg.heads, num_layers=cfg.depth, mlp_ratio=cfg.mlp_ratio,
        text_embed_dim=text_dim, adaln_lora_dim=cfg.adaln_lora_dim,
        max_size=(max(128, frames), max(240, height), max(240, width)), patch_size=(1, cfg.patch_size, cfg.patch_size),
        rope_scale=(cfg.rope_ntk_t, cfg.rope_ntk_h, cfg.rope_ntk_w), concat_padding_mask=False,
        extra_pos_embed_type=None,
    )


def run(width: int = 96, depth: int = 2, heads: int = 4, frames: int = 7, height: int = 8, width_tokens: int = 16,
        device: str = "cpu", steps: int = 3, batch: int = 1, latent_channels: int = 16, feature_channels: int = 64,
        adaln_lora_dim: int = 32, patch_size: int = 2, text_dim: int = 1024, dtype: str = "auto",
        checkpointing: bool = False, seed: int = 0, compare_checkpointing: bool = True,
        compile: bool = False) -> dict[str, Any]:
    """Benchmark both networks on a [batch, latent_channels, frames, height*p, width_tokens*p] latent.

    `compare_checkpointing` also runs ours with the other activation-checkpointing setting (same weights) and
    reports `checkpointing_saved_ratio` (bytes saved for backward, on / off) and `checkpointing_time_ratio`.
    `compile` also runs ours with every block torch.compile'd (train.compile; same weights, same checkpointing) and
    reports `compile_speedup` (eager / compiled step time) and `compile_s` (the first, compiling, step).

    `height` and `width_tokens` are the TOKEN grid (paper: 27 x 48, frames 7, width 2048, depth 14, heads 16,
    latent_channels 16, feature_channels 1152, adaln_lora_dim 256). dtype "auto" = bfloat16 on CUDA, float32 on CPU.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    dev = resolve_device(device)
    torch_dtype = {"auto": torch.bfloat16 if dev.type == "cuda" else torch.float32,
                   "float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"dtype={dtype!r}: choose auto, float32 or bfloat16")
    cfg = DiTConfig(width=width, depth=depth, heads=heads, patch_size=patch_size, adaln_lora_dim=adaln_lora_dim,
                    latent_channels=latent_channels, feature_channels=feature_channels, conditioning="features")
    lat_h, lat_w = height * patch_size, width_tokens * patch_size
    tokens = batch * frames * height * width_tokens

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, latent_channels, frames, lat_h, lat_w, generator=gen).to(dev, torch_dtype)
    c_noise = torch.rand(batch, frames, generator=gen).to(dev)
    cond_mask = (torch.arange(frames) < max(1, frames // 2)).float().expand(batch, frames).to(dev)
    feats = torch.randn(batch, feature_channels, frames, height, width_tokens, generator=gen).to(dev, torch_dtype)
    text = torch.zeros(batch, 1, text_dim, device=dev, dtype=torch_dtype)

    torch.manual_seed(seed)
    ours = VideoDiT(cfg).to(dev, torch_dtype)
    ours.set_activation_checkpointing(checkpointing)
    theirs = build_diffusers_cosmos(cfg, frames, lat_h, lat_w, text_dim)
    with quiet_diffusers():  # its .to() warns about a learnable pos-emb that this configuration does not build
        theirs = theirs.to(dev, torch_dtype)
    if checkpointing:
        theirs.enable_gradient_checkpointing()

    def step_ours() -> torch.Tensor:
        return ours(x, c_noise, cond_mask, feats).float().square().mean()

    def step_theirs() -> torch.Tensor:
        mask = cond_mask.to(torch_dtype)[:, None, :, None, None].expand(batch, 1, frames, lat_h, lat_w)
        out = theirs(x, c_noise.to(torch_dtype)[:, None, :, None, None], text, condition_mask=mask, return_dict=False)[0]
        return out.float().square().mean()

    results: dict[str, Any] = {
        "device": str(dev), "dtype": str(torch_dtype).removeprefix("torch."), "tokens": tokens,
        "shape": [batch, latent_channels, frames, lat_h, lat_w], "width": width, "depth": depth, "heads": heads,
        "checkpointing": checkpointing, "models": {},
    }

    def record(name: str, model: torch.nn.Module, step: Callable[[], torch.Tensor]) -> None:
        params = list(model.parameters())
        kept = list(model.blocks) if getattr(model, "activation_checkpointing", False) else ()
        figures = measure(step, params, dev, steps, kept_inputs=kept)
        figures["params_m"] = sum(p.numel() for p in params) / 1e6
        figures["tokens_per_s"] = tokens / figures["step_s"]
        results["models"][name] = figures

    record(OURS, ours, step_ours)
    if compare_checkpointing:  # the same network and weights with the other setting
        other = OURS_CKPT if not checkpointing else OURS_NO_CKPT
        ours.set_activation_checkpointing(not checkpointing)
        record(other, ours, step_ours)
        ours.set_activation_checkpointing(checkpointing)
        on, off = (results["models"][other], results["models"][OURS])[:: 1 if not checkpointing else -1]
        results["checkpointing_saved_ratio"] = on["saved_mib"] / off["saved_mib"]
        results["checkpointing_time_ratio"] = on["step_s"] / off["step_s"]
        results["checkpointing_cpu_time_ratio"] = on["cpu_step_s"] / off["cpu_step_s"]
    if compile:
        from train.loop import compile_problem

        problem = compile_problem(dev)
        if problem:
            raise RuntimeError(f"bench dit --compile: {problem}")
        tic = time.perf_counter()
        ours.compile_blocks()
        step_ours().backward()  # compiles; `measure` then warms up once more and times
        results["compile_s"] = time.perf_counter() - tic
        record(OURS_COMPILED, ours, step_ours)
        results["compile_speedup"] = results["models"][OURS]["step_s"] / results["models"][OURS_COMPILED]["step_s"]
        results["compile_cpu_speedup"] = (results["models"][OURS]["cpu_step_s"]
                                          / results["models"][OURS_COMPILED]["cpu_step_s"])
    record(THEIRS, theirs, step_theirs)
    _print(results, text_dim)
    return results


OURS, OURS_CKPT, OURS_NO_CKPT, OURS_COMPILED, THEIRS = (
    "ours (VideoDiT)", "ours + activation checkpointing", "ours without activation checkpointing",
    "ours compiled (torch.compile per block)", "diffusers Cosmos")


def _print(results: dict[str, Any], text_dim: int) -> None:
    table = Table(title=f"bench dit: fwd+bwd, {results['tokens']} tokens, {results['dtype']} on {results['device']}")
    for col in ("model", "params (M)", "step (ms)", "tokens/s", "saved for backward (MiB)", "CUDA peak (MiB)"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, f in results["models"].items():
        peak = "n/a (CPU)" if f["peak_mib"] != f["peak_mib"] else f"{f['peak_mib']:.0f}"
        table.add_row(name, f"{f['params_m']:.2f}", f"{1000 * f['step_s']:.1f}", f"{f['tokens_per_s']:.0f}",
                      f"{f['saved_mib']:.1f}", peak)
    console.print(table)
    console.print(
        f"width {results['width']}, depth {results['depth']}, heads {results['heads']}, latent "
        f"{results['shape']}, activation checkpointing {results['checkpointing']}. Ours: early-fused features, "
        f"no cross-attention. Diffusers: cross-attention over 1 zero text token of width {text_dim}, "
        "no padding-mask channel, no learnable pos-emb. Saved for backward under checkpointing counts the block "
        "inputs kept for the recomputation."
    )
    a, b = results["models"][OURS], results["models"][THEIRS]
    line = (f"bench dit: ours {1000 * a['step_s']:.1f} ms/step vs diffusers {1000 * b['step_s']:.1f} ms/step "
            f"({b['step_s'] / a['step_s']:.2f}x)")
    if "checkpointing_saved_ratio" in results:
        line += (f"; activation checkpointing keeps {100 * results['checkpointing_saved_ratio']:.1f}% of the saved "
                 f"activations for {results['checkpointing_time_ratio']:.2f}x the step time "
                 f"({results['checkpointing_cpu_time_ratio']:.2f}x in CPU seconds)")
    if "compile_speedup" in results:
        line += (f"; compiled {1000 * results['models'][OURS_COMPILED]['step_s']:.1f} ms/step "
                 f"({results['compile_speedup']:.2f}x eager, {results['compile_cpu_speedup']:.2f}x in CPU seconds, "
                 f"{results['compile_s']:.0f} s to compile)")
    summary(line + f", {results['tokens']} tokens on {results['device']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = dict(zip(run.__code__.co_varnames[: run.__code__.co_argcount], run.__defaults__))
    for name, default in defaults.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return run(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
