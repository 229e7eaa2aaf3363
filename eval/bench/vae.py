"""`bench vae`: activation memory of the WAN2.1 VAE (diffusers AutoencoderKLWan, random weights) for encode and
decode at the paper's clip size (432 x 768, 25 frames), untiled and with diffusers' spatial tiling, on the CPU.

Inference runs under no_grad, so nothing is saved for a backward pass: the figure is the peak of the bytes held by
the tensors the VAE creates (intermediates and outputs; the input clip and the weights are not counted), tracked
by a dispatch mode that records every new storage an op returns and drops it when its last reference dies.

Measured at reduced sizes and extrapolated with a stated fit: the VAE is convolutional and processes the clip in
causal chunks (frame 0, then 4 frames at a time, keeping a small per-layer cache), so the peak is linear in the
pixels per frame and nearly flat in the frames: peak(P, F) = P (a + b F), fitted on (P1, F1), (P1, F2) and checked
on (P2, F1). With tiling the peak follows the tile, not the frame: the same fit with P the tile's pixels (tile 32 /
stride 24 at the reduced sizes, diffusers' 256 / 192 at the paper's); the full-frame outputs that it leaves out
show up as its check error.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pipeline.console import console, summary

PAPER = (432, 768, 25)
# diffusers' AutoencoderKLWan tiling defaults (pixels): tiles of 256 x 256 every 192.
TILE, STRIDE = 256, 192


class LivePeak(TorchDispatchMode):
    """Peak bytes of the storages created inside the mode that are still referenced (not counting its inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if torch.UntypedStorage._expired(ref)]:
            ref, size = self.live.pop(key)
            self.current -= size
            torch.UntypedStorage._free_weak_ref(ref)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.live and storage.nbytes() > 0:
                    self.live[key] = (storage._weak_ref(), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out

    def __exit__(self, *exc):
        for ref, _ in self.live.values():
            torch.UntypedStorage._free_weak_ref(ref)
        self.live.clear()
        return super().__exit__(*exc)


def peak_bytes(fn: Callable[[], Any]) -> tuple[int, Any]:
    with torch.no_grad(), LivePeak() as mode:
        out = fn()
    return mode.peak, out


def build_vae(tiling: bool = False, tile: int = TILE, stride: int = STRIDE, **overrides):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**overrides).eval().requires_grad_(False)
    if tiling:
        vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                          tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    return vae


def measure(vae, height: int, width: int, frames: int) -> dict[str, int]:
    video = torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    encode, z = peak_bytes(lambda: vae.encode(video).latent_dist.mode())
    decode, _ = peak_bytes(lambda: vae.decode(z).sample)
    return {"encode": encode, "decode": decode}


def fit(points: dict[tuple[int, int, int], dict[str, int]], sizes: tuple[tuple[int, int, int], ...],
        tile: int | None = None) -> dict[str, Any]:
    """peak = P (a + b F) from sizes[0] and sizes[1] (same pixels, two frame counts); error at sizes[2]. P: the
    frame's pixels, or with `tile` the tile's (the full-frame outputs it leaves out show up as the check's error)."""
    (h1, w1, f1), (_, _, f2), check = sizes

    def pixels(h: int, w: int) -> int:
        return h * w if tile is None else min(h, tile) * min(w, tile)

    out: dict[str, Any] = {}
    for what in ("encode", "decode"):
        p1 = pixels(h1, w1)
        b = (points[sizes[1]][what] - points[sizes[0]][what]) / p1 / (f2 - f1)
        a = points[sizes[0]][what] / p1 - b * f1
        predicted = pixels(check[0], check[1]) * (a + b * check[2])
        out[what] = {"a": a, "b": b, "check_rel_error": abs(predicted - points[check][what]) / points[check][what]}
    return out


def run(heights: tuple[int, int] = (48, 64), widths: tuple[int, int] = (64, 96), frames: tuple[int, int] = (5, 9),
        tile: int = 32, stride: int = 24, target: tuple[int, int, int] = PAPER) -> dict[str, Any]:
    """Untiled and tiled (`tile`/`stride` scaled down with the frames, as the reduced sizes are) at the reduced
    sizes, extrapolated to `target` (tiles of the diffusers default 256/192 there)."""
    sizes = ((heights[0], widths[0], frames[0]), (heights[0], widths[0], frames[1]), (heights[1], widths[1], frames[0]))
    tic = time.perf_counter()
    results: dict[str, Any] = {"target": list(target), "sizes": [list(s) for s in sizes], "tile": tile, "stride": stride}
    h, w, f = target
    for name, vae in (("untiled", build_vae()), ("tiled", build_vae(True, tile, stride))):
        points = {s: measure(vae, *s) for s in sizes}
        fits = fit(points, sizes, None if name == "untiled" else tile)
        pixels = h * w if name == "untiled" else min(h, TILE) * min(w, TILE)
        results[name] = {
            "measured": {f"{s[0]}x{s[1]}x{s[2]}": v for s, v in points.items()},
            "fit": fits,
            "predicted_gib": {k: pixels * (v["a"] + v["b"] * f) / 2**30 for k, v in fits.items()},
        }
    results["seconds"] = time.perf_counter() - tic
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    h, w, f = results["target"]
    table = Table(title=f"bench vae: WAN2.1 VAE activation peak (random weights, fp32, CPU), at {h}x{w}x{f}")
    for col in ("setting", "measured encode / decode MiB", "predicted encode GiB", "predicted decode GiB", "fit check"):
        table.add_column(col, justify="left" if col in ("setting", "measured encode / decode MiB") else "right")
    for name in ("untiled", "tiled"):
        r = results[name]
        measured = "; ".join(f"{k}: {v['encode'] / 2**20:.0f} / {v['decode'] / 2**20:.0f}" for k, v in r["measured"].items())
        check = max(v["check_rel_error"] for v in r["fit"].values())
        table.add_row(name, measured, f"{r['predicted_gib']['encode']:.2f}", f"{r['predicted_gib']['decode']:.2f}",
                      f"{100 * check:.1f}%")
    console.print(table)
    console.print("peak = pixels x (a + b frames), fitted at the first two sizes, checked at the third (fit check); "
                  f"tiled: diffusers' spatial tiling, tile {results['tile']} / stride {results['stride']} px at the "
                  f"measured sizes, {TILE} / {STRIDE} extrapolated. fp32; bf16 halves every figure.")
    u, t = results["untiled"]["predicted_gib"], results["tiled"]["predicted_gib"]
    summary(f"bench vae: {h}x{w}x{f} encode {u['encode']:.1f} GiB / decode {u['decode']:.1f} GiB untiled, "
            f"{t['encode']:.1f} / {t['decode']:.1f} GiB tiled ({results['seconds']:.0f} s)")
