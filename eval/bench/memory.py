"""`bench memory`: the per-GPU memory plan of Stage 1, Stage 2 and the DPT heads at a config's sizes, without a GPU.

What it counts, per GPU, for bf16 autocast training (Accelerate `mixed_precision = bf16`: fp32 weights, bf16 matmuls):

- **States, exact**, from the model built on the meta device (no memory, any size): fp32 parameters (4 B each),
  gradients (4 B per trainable), Adam's exp_avg + exp_avg_sq (8 B per trainable), the EMA shadow (4 B per
  state-dict float, train/ema.py) and, for DDP, its gradient buckets (4 B per trainable: Accelerate's DDP keeps
  `gradient_as_bucket_view=False`). torch's foreach Adam step also allocates one temporary the size of the
  trainable parameters (its sqrt(exp_avg_sq) list) after the activations are freed: counted as a second peak.
- **Activations per sample, measured** on the CPU with autograd's saved-tensor hooks (eval/bench/dit.py
  `saved_activation_bytes`, the block inputs a checkpointed model keeps included) under CPU bf16 autocast, at
  reduced token grids and at depth 1 and 2, then extrapolated:
    * depth: blocks are identical, so saved(D) = outside + D x per_block exactly (per_block = saved(2) - saved(1));
    * batch: batch-2 runs at the smallest and the largest grid separate the batch-independent part (autocast's
      bf16 copies of the weights, saved for backward; the RoPE tables) from the per-sample part;
    * tokens: per_block and outside are fitted as a + b x tokens by least squares (attention is fused, SDPA's
      flash kernels save O(tokens)); the fit's largest relative error at the measured sizes, the error of the same
      fit made without the largest size when it predicts that size (extrapolation check), and the share a quadratic
      term would add at the config's tokens are printed.
  Under activation checkpointing the backward pass recomputes one block at a time, so one block's un-checkpointed
  activations are added to the checkpointed figure.
- **Cards**: 24, 40, 80 and 141 GB, of which 5% (allocator fragmentation) and 1.5 GiB (CUDA context, cuBLAS /
  cuDNN workspaces) are held back. DDP keeps every state on every GPU; FSDP (FULL_SHARD over 8 GPUs, one unit per
  transformer block, bf16 `param_dtype`) keeps 1/8 of parameters, gradients, Adam and EMA, plus two gathered
  blocks in bf16 (the current one and the prefetched one) and one block's full fp32 gradient before its
  reduce-scatter; FSDP's bf16 gathered weights are freed after each block, so autocast's weight copies are not kept.

The CPU's autocast casts the same matmul/conv inputs to bf16 as CUDA's, but its op lists differ in details (CUDA
runs a few more reductions in fp32); `bench gpu` measures the real peak at paper size and prints it beside this
prediction, which is the check of this model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from rich.table import Table
from torch import nn

from configs.schema import Config
from eval.bench.dit import saved_activation_bytes
from pipeline import atomic
from pipeline.console import console, summary

CARDS_GB = (24, 40, 80, 141)
FSDP_SHARDS = 8
RESERVE_BYTES = 1.5 * 2**30
FRAGMENTATION = 0.05
GB = 1e9

# Reduced token grids measured on the CPU (rows x columns of the token grid); the frame count stays the config's.
DEFAULT_GRIDS = ((2, 3), (3, 4), (4, 6))
HEAD_GRIDS = ((4, 6), (6, 8), (9, 12))  # the heads are small: larger grids, away from the convolutions' borders


# ------------------------------------------------------------------------------------------- states


@dataclass
class States:
    """Exact byte counts of one model's training states (fp32 weights, Adam, EMA), from a meta-device model."""

    params: int  # parameters, all
    trainable: int  # parameters with requires_grad
    ema_floats: int  # floating-point state-dict entries (what the EMA shadow copies)
    largest_unit: int  # parameters of the largest transformer block (an FSDP unit); whole model when none
    ema: bool

    @property
    def weight_bytes(self) -> int:
        return 4 * self.params

    @property
    def grad_bytes(self) -> int:
        return 4 * self.trainable

    @property
    def adam_bytes(self) -> int:
        return 8 * self.trainable

    @property
    def ema_bytes(self) -> int:
        return 4 * self.ema_floats if self.ema else 0

    @property
    def total(self) -> int:
        return self.weight_bytes + self.grad_bytes + self.adam_bytes + self.ema_bytes


def count_states(model: nn.Module, ema: bool, blocks: list[nn.Module] | None = None) -> States:
    """States of `model` (built on any device, meta included): parameter counts times bytes."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ema_floats = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    largest = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=params) if blocks else params
    return States(params, trainable, ema_floats, largest, ema)


# ------------------------------------------------------------------------------------------- probes


@dataclass
class Probe:
    """One trained model: how to build it at a depth and token grid, and run its training loss on a batch."""

    name: str
    build: Callable[[int | None, tuple[int, int]], nn.Module]  # (depth or None = the config's, grid) -> model
    loss: Callable[[nn.Module, int, tuple[int, int], torch.Generator], torch.Tensor]  # (model, batch, grid, gen)
    grid: tuple[int, int]  # the config's token grid
    frames: int  # token frames per sample
    depth: int | None  # blocks (None: no repeated blocks, e.g. the DPT heads)
    batch: int  # the config's per-GPU batch
    effective_batch: int  # the paper's samples per optimizer step
    ema: bool
    checkpointing: bool  # whether the model has the activation-checkpointing switch
    blocks: Callable[[nn.Module], list[nn.Module]] = lambda m: []
    grids: tuple[tuple[int, int], ...] = ()  # its own reduced grids (default: the run's)

    def tokens(self, grid: tuple[int, int]) -> int:
        return self.frames * grid[0] * grid[1]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _stage1_probe(cfg: Config) -> Probe:
    from models.foresight import FeatureForesight

    m = cfg.stage1.model
    frames = m.context_frames + 1

    def build(depth: int | None, grid: tuple[int, int]) -> nn.Module:
        model_cfg = dataclasses.replace(m, in_channels=cfg.pca.components, grid_h=grid[0], grid_w=grid[1],
                                        depth=m.depth if depth is None else depth)
        model = FeatureForesight(model_cfg)
        # Attention-probability dropout sends the CPU's SDPA to its math kernel, which saves the [L, L] weights;
        # CUDA's flash kernel applies it in place and saves O(L). So the probe measures the fused path without it
        # (the MLP dropouts, whose masks are saved on every device, stay).
        for module in model.modules():
            if hasattr(module, "fused") and hasattr(module, "dropout"):
                module.dropout = 0.0
        return model

    def loss(model: nn.Module, batch: int, grid: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
        feats = torch.randn(batch, frames, cfg.pca.components, *grid, generator=gen)
        return model.loss(feats.to(_device(model)))

    return Probe("Stage 1", build, loss, cfg.token_grid, frames, m.depth, cfg.stage1.train.batch_size,
                 cfg.stage1.train.batch_size * FSDP_SHARDS, cfg.stage1.train.ema_decay > 0, True,
                 lambda model: list(model.blocks))


def _stage2_probe(cfg: Config) -> Probe:
    from models.stage2 import Stage2Model, stage2_model_spec

    meta = {"pca": {"components": cfg.pca.components}, "codec": {"channels": cfg.codec.channels}}
    spec = stage2_model_spec(cfg, meta)
    p, frames, context = spec.dit.patch_size, cfg.latent_frames, cfg.context_latent_frames

    def build(depth: int | None, grid: tuple[int, int]) -> nn.Module:
        dit = spec.dit if depth is None else dataclasses.replace(spec.dit, depth=depth)
        return Stage2Model(dataclasses.replace(spec, dit=dit))

    def loss(model: nn.Module, batch: int, grid: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
        dev = _device(model)
        x0 = torch.randn(batch, spec.dit.latent_channels, frames, grid[0] * p, grid[1] * p, generator=gen).to(dev)
        mask = (torch.arange(frames) < context).float().expand(batch, frames).to(dev)
        feats = torch.randn(batch, spec.dit.feature_channels, frames, *grid, generator=gen).to(dev)
        return model(x0, mask, feats if model.net.uses_features else None, generator=gen)[0]

    return Probe("Stage 2", build, loss, cfg.token_grid, frames, spec.dit.depth, cfg.stage2.train.batch_size,
                 cfg.stage2.train.batch_size * FSDP_SHARDS, cfg.stage2.train.ema_decay > 0, True,
                 lambda model: list(model.net.blocks))


def _heads_probe(cfg: Config) -> Probe:
    from models.dpt import segmentation_loss
    from models.heads import build_head
    from pipeline.vfm import create_vit
    from train.heads import head_model_config

    with torch.device("meta"):
        embed_dim = int(create_vit(cfg.vfm).embed_dim)
    layers = len(cfg.vfm.layers)
    meta = {"vfm": {"layers": cfg.vfm.layers, "out_channels": embed_dim * layers}}
    model_cfg = head_model_config(cfg, meta, "segmentation")  # depth differs only in its 256 output channels
    # Labels at the window size (what the cache stores), i.e. (window / token grid) pixels per token.
    scale = (cfg.window.height // cfg.token_grid[0], cfg.window.width // cfg.token_grid[1])

    def build(depth: int | None, grid: tuple[int, int]) -> nn.Module:
        return build_head({**model_cfg, "num_outputs": max(cfg.heads.num_classes, cfg.heads.depth_bins)})

    def loss(model: nn.Module, batch: int, grid: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
        dev = _device(model)
        tokens = [torch.randn(batch, embed_dim, *grid, generator=gen).to(dev) for _ in range(layers)]
        labels = torch.randint(0, cfg.heads.num_classes, (batch, grid[0] * scale[0], grid[1] * scale[1]), generator=gen)
        return segmentation_loss(model(tokens), labels.to(dev))

    return Probe("DPT head", build, loss, cfg.token_grid, 1, None, cfg.heads.train.batch_size,
                 cfg.heads.train.batch_size, cfg.heads.train.ema_decay > 0, False, grids=HEAD_GRIDS)


def probes(cfg: Config) -> list[Probe]:
    return [_stage1_probe(cfg), _stage2_probe(cfg), _heads_probe(cfg)]


# -------------------------------------------------------------------------------------- measurement


def _cheap_model(probe: Probe, depth: int | None, grid: tuple[int, int]) -> nn.Module:
    """The probe's model in train mode with every parameter and buffer set to 0.01: saved bytes do not depend on
    values, and building on the meta device skips the initialisers (seconds per build at width 2048)."""
    with torch.device("meta"):
        model = probe.build(depth, grid)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(0.01)
            else:
                tensor.zero_()
    return model.train()


def saved_bytes(probe: Probe, depth: int | None, grid: tuple[int, int], batch: int, checkpointing: bool,
                autocast: bool = True, seed: int = 0) -> int:
    """Bytes autograd keeps for backward after one training-loss forward at this size (CPU, bf16 autocast)."""
    model = _cheap_model(probe, depth, grid)
    if checkpointing:
        model.activation_checkpointing = True
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = probe.blocks(model) if checkpointing else ()
    gen = torch.Generator().manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), saved_activation_bytes(exclude, kept) as count:
        loss = probe.loss(model, batch, grid, gen)
    del loss, model
    return count[0]


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares a + b x."""
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(b)


@dataclass
class Fit:
    """y(tokens) = a + b tokens, with its errors."""

    a: float
    b: float
    max_rel_error: float  # at the measured sizes
    holdout_rel_error: float  # fitted without the largest size, predicting it
    quadratic_share: float  # |c t^2| / y at the target tokens, c from a quadratic least-squares fit

    def __call__(self, tokens: float) -> float:
        return self.a + self.b * tokens


def fit_tokens(tokens: list[int], values: list[float], target: int) -> Fit:
    x, y = np.asarray(tokens, float), np.asarray(values, float)
    a, b = linear_fit(x, y)
    pred = a + b * x
    max_rel = float(np.max(np.abs(pred - y) / np.maximum(np.abs(y), 1.0)))
    holdout = float("nan")
    if len(x) >= 3:
        a2, b2 = linear_fit(x[:-1], y[:-1])
        holdout = abs(a2 + b2 * x[-1] - y[-1]) / max(abs(y[-1]), 1.0)
    share = float("nan")
    if len(x) >= 3:
        c = np.polyfit(x, y, 2)[0]
        share = abs(c) * target**2 / max(abs(a + b * target), 1.0)
    return Fit(a, b, max_rel, holdout, share)


@dataclass
class Activations:
    """Per-sample activation bytes at the config's tokens, for one model and checkpointing setting."""

    per_sample: float  # saved for backward, per sample, at the config's depth and tokens
    constant: float  # batch-independent saved bytes (autocast's bf16 weight copies), at the config's depth
    recompute: float  # per sample: one block's un-checkpointed activations (checkpointing only; else 0)
    saved_constant: float = 0.0  # the batch-independent part of the saved bytes as measured (<= constant)
    fits: dict[str, Fit] = field(default_factory=dict)
    measured: list[dict[str, Any]] = field(default_factory=list)


def measure_activations(probe: Probe, grids: tuple[tuple[int, int], ...] = DEFAULT_GRIDS,
                        autocast: bool = True) -> dict[bool, Activations]:
    """Measure at the reduced `grids` (and depth 1, 2) and extrapolate to the probe's depth and grid, without and
    (when the model has the switch) with activation checkpointing: {checkpointing: Activations}."""
    target = probe.tokens(probe.grid)
    grids = probe.grids or grids
    grids = tuple(g for g in grids if probe.tokens(g) < target) or (probe.grid,)
    tokens = [probe.tokens(g) for g in grids]
    depths = (1, 2) if probe.depth is not None else (None,)

    def series(ckpt: bool, measured: list[dict[str, Any]]) -> tuple[dict[Any, list[float]], dict[Any, tuple[float, float]]]:
        def one(depth, grid, batch):
            value = saved_bytes(probe, depth, grid, batch, ckpt, autocast)
            measured.append({"depth": depth, "grid": list(grid), "batch": batch, "checkpointing": ckpt, "bytes": value})
            return value

        per_sample, constants = {}, {}
        for depth in depths:
            ones = [one(depth, g, 1) for g in grids]
            # The batch-independent part (autocast's weight copies; RoPE tables, which grow with the tokens): from
            # batch 2 at the smallest and the largest grid, linear in the tokens in between and beyond.
            ends = [0, len(grids) - 1] if len(grids) > 1 else [0]
            fixed = [2 * ones[i] - one(depth, grids[i], 2) for i in ends]
            a, b = linear_fit([tokens[i] for i in ends], fixed) if len(ends) > 1 else (fixed[0], 0.0)
            constants[depth] = (a, b)
            per_sample[depth] = [v - (a + b * t) for v, t in zip(ones, tokens)]
        return per_sample, constants

    out: dict[bool, Activations] = {}
    plain_block: Fit | None = None
    plain_constant = 0.0
    for ckpt in ((False, True) if probe.checkpointing and probe.depth is not None else (False,)):
        measured: list[dict[str, Any]] = []
        values, constants = series(ckpt, measured)
        fits: dict[str, Fit] = {}
        if probe.depth is None:
            fits["per sample"] = fit_tokens(tokens, values[None], target)
            fixed = constants[None][0] + constants[None][1] * target
            out[ckpt] = Activations(fits["per sample"](target), max(fixed, 0.0), 0.0, fixed, fits, measured)
            continue
        block = [b - a for a, b in zip(values[1], values[2])]
        outside = [a - blk for a, blk in zip(values[1], block)]
        fits["per block"] = fit_tokens(tokens, block, target)
        fits["outside blocks"] = fit_tokens(tokens, outside, target)
        per_sample = fits["outside blocks"](target) + probe.depth * fits["per block"](target)
        fixed = {d: constants[d][0] + constants[d][1] * target for d in depths}
        constant = saved_constant = fixed[1] + (probe.depth - 1) * (fixed[2] - fixed[1])
        recompute = 0.0
        if ckpt:
            # The backward pass recomputes one block at a time, with its full activations. Autocast's cache still
            # holds every block's bf16 weight copy until the forward ends, as without checkpointing.
            fits["recomputed block"] = plain_block
            recompute = plain_block(target)
            constant = plain_constant
        else:
            plain_block, plain_constant = fits["per block"], constant
        out[ckpt] = Activations(per_sample, max(constant, 0.0), recompute, saved_constant, fits, measured)
    return out


# ------------------------------------------------------------------------------------------- budget


def usable_bytes(card_gb: float) -> float:
    return card_gb * GB * (1 - FRAGMENTATION) - RESERVE_BYTES


def _resident(states: States, acts: Activations, strategy: str) -> tuple[float, float]:
    """(bytes held through the step, the optimizer step's extra temporary) per GPU under `strategy`."""
    if strategy == "ddp":  # every state, DDP's gradient buckets, autocast's bf16 weight copies
        return states.total + states.grad_bytes + acts.constant, 4.0 * states.trainable
    if strategy == "single":  # one process: as DDP without the buckets (what `bench gpu` measures)
        return states.total + acts.constant, 4.0 * states.trainable
    if strategy == "fsdp":  # 1/8 of the states, two gathered bf16 blocks and one block's full fp32 gradient
        return states.total / FSDP_SHARDS + states.largest_unit * (2 * 2 + 4), 4.0 * states.trainable / FSDP_SHARDS
    raise ValueError(f"strategy={strategy!r}: choose ddp, fsdp or single")


def peak_bytes(states: States, acts: Activations, batch: int, strategy: str) -> float:
    """Predicted peak per GPU for `batch` samples per micro-step under `strategy` ("ddp" or "fsdp"): the larger of
    the backward pass (activations) and the optimizer step (its temporary, after the activations are freed)."""
    resident, optimizer_temp = _resident(states, acts, strategy)
    return max(resident + batch * (acts.per_sample + acts.recompute), resident + optimizer_temp)


def largest_batch(states: States, acts: Activations, card_gb: float, strategy: str, cap: int = 4096) -> int:
    """The largest micro-batch whose predicted peak fits the card's usable memory (0: not even one sample)."""
    budget = usable_bytes(card_gb)
    resident, optimizer_temp = _resident(states, acts, strategy)
    if resident + optimizer_temp > budget:
        return 0
    return int(max(0, min(cap, (budget - resident) // (acts.per_sample + acts.recompute))))


def accumulation_plan(effective: int, micro: int, gpus: int) -> str:
    """How `effective` samples per optimizer step are made of `gpus` x micro-batch x accumulation."""
    if micro < 1:
        return "no"
    per_gpu = math.ceil(effective / gpus)
    micro = min(micro, per_gpu)
    while per_gpu % micro:
        micro -= 1
    accum = per_gpu // micro
    return f"{micro}x{accum}"


# --------------------------------------------------------------------------------------------- run


def run(cfg: Config, grids: tuple[tuple[int, int], ...] = DEFAULT_GRIDS, models: tuple[str, ...] = (),
        json_out: str | None = None) -> dict[str, Any]:
    """Measure and print the plan; returns (and optionally writes as JSON) every figure (states, activations, fits,
    batches per card). `models`: only those whose name starts with one of these ("stage 1", "stage 2", "dpt")."""
    tic = time.perf_counter()
    threads = torch.get_num_threads()
    results: dict[str, Any] = {"config": cfg.name, "cards_gb": list(CARDS_GB), "fsdp_shards": FSDP_SHARDS,
                               "reserve_bytes": RESERVE_BYTES, "fragmentation": FRAGMENTATION, "models": {}}
    for probe in probes(cfg):
        if models and not any(probe.name.lower().startswith(m.lower()) for m in models):
            continue
        with torch.device("meta"):
            meta_model = probe.build(None, probe.grid)
        states = count_states(meta_model, probe.ema, probe.blocks(meta_model))
        entry: dict[str, Any] = {"states": dataclasses.asdict(states), "state_bytes": states.total,
                                 "tokens": probe.tokens(probe.grid), "batch": probe.batch,
                                 "effective_batch": probe.effective_batch, "settings": {}}
        for ckpt, acts in measure_activations(probe, grids).items():
            setting = {"per_sample_bytes": acts.per_sample, "constant_bytes": acts.constant,
                       "recompute_bytes": acts.recompute,
                       "fits": {k: dataclasses.asdict(v) for k, v in acts.fits.items()}, "measured": acts.measured,
                       "cards": {}}
            for card in CARDS_GB:
                ddp, fsdp = largest_batch(states, acts, card, "ddp"), largest_batch(states, acts, card, "fsdp")
                setting["cards"][card] = {
                    "ddp": ddp, "fsdp": fsdp,
                    "ddp_peak_at_config_batch": peak_bytes(states, acts, probe.batch, "ddp"),
                    "fsdp_peak_at_config_batch": peak_bytes(states, acts, probe.batch, "fsdp"),
                    "effective_ddp": accumulation_plan(probe.effective_batch, ddp, FSDP_SHARDS),
                    "effective_fsdp": accumulation_plan(probe.effective_batch, fsdp, FSDP_SHARDS),
                }
            entry["settings"]["checkpointing" if ckpt else "plain"] = setting
        results["models"][probe.name] = entry
    results["seconds"] = time.perf_counter() - tic
    results["threads"] = threads
    _print(results)
    if json_out:
        atomic.write_text(json_out, json.dumps(results, indent=2, default=str) + "\n")
    return results


def _gb(x: float) -> str:
    return f"{x / GB:.2f}"


def _smallest(results: dict[str, Any], setting: dict[str, Any], strategy: str) -> str:
    for card in results["cards_gb"]:
        plan = setting["cards"][card][f"effective_{strategy}"]
        if plan != "no":
            return f"{card} GB {plan}"
    return "none"


def _print(results: dict[str, Any]) -> None:
    table = Table(title=f"bench memory: per-GPU plan, config {results['config']}, bf16 autocast, GB = 1e9 bytes")
    cols = ["model", "ckpt", "params M", "states GB", "act/sample GB", "casts GB"]
    cols += [f"{c} GB" for c in results["cards_gb"]] + ["eff. batch"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "ckpt") else "right")
    for name, entry in results["models"].items():
        st = entry["states"]
        for setting, s in entry["settings"].items():
            cells = [f"{s['cards'][c]['ddp']} / {s['cards'][c]['fsdp']}" for c in results["cards_gb"]]
            cells.append(f"{entry['effective_batch']}: " + " | ".join(_smallest(results, s, k) for k in ("ddp", "fsdp")))
            table.add_row(name, "yes" if setting == "checkpointing" else "no", f"{st['params'] / 1e6:.1f}",
                          _gb(entry["state_bytes"]), _gb(s["per_sample_bytes"] + s["recompute_bytes"]),
                          _gb(s["constant_bytes"]), *cells)
    console.print(table)
    console.print(
        "Card columns: largest per-GPU batch with DDP / with FSDP over 8 GPUs (0: does not fit). "
        "States are exact (meta-device model: fp32 weights 4 B, grads 4 B, Adam 8 B, EMA 4 B per parameter; DDP adds "
        "4 B gradient buckets); casts: autocast's bf16 weight copies (DDP only). Activations: saved-tensor hooks on the CPU under bf16 autocast at reduced grids and "
        "depth 1-2, fitted a + b x tokens (errors below); under checkpointing one recomputed block is added. "
        f"Usable = card x {1 - results['fragmentation']:.2f} - {results['reserve_bytes'] / 2**30:.1f} GiB. "
        f"eff. batch: the paper's samples per optimizer step on {results['fsdp_shards']} GPUs, DDP | FSDP: the "
        "smallest card it fits and micro-batch x accumulation steps (`none`: no card)."
    )
    for name, entry in results["models"].items():
        for setting, s in entry["settings"].items():
            fits = "; ".join(f"{k}: {f['a'] / 2**20:.1f} MiB + {f['b'] / 2**10:.2f} KiB/token, max error "
                             f"{100 * f['max_rel_error']:.2f}%, hold-out {100 * f['holdout_rel_error']:.2f}%, "
                             f"quadratic share {100 * f['quadratic_share']:.2f}%" for k, f in s["fits"].items())
            console.print(f"  {name} ({setting}, {entry['tokens']} tokens): {fits}")
    s2 = results["models"].get("Stage 2", {}).get("settings", {})
    best = s2.get("checkpointing") or s2.get("plain")
    line = f"bench memory ({results['config']}) in {results['seconds']:.0f} s"
    if best:
        line += ("; Stage 2 with checkpointing, largest per-GPU batch DDP / FSDP-8: " +
                 ", ".join(f"{c} GB {best['cards'][c]['ddp']}/{best['cards'][c]['fsdp']}" for c in results["cards_gb"]))
    summary(line)
