"""`bench codec`: reconstruction quality and speed of every codec available, on the same validation clips.

Each codec encodes and decodes whole windows (K frames at the config's window size) exactly as the cache and
`predict` do. Reported per codec: PSNR and SSIM of the decoded frames against the source frames (uint8, per frame,
averaged over frames), encode and decode seconds per clip (median over clips), and latent numbers per clip. The linear
codec is fitted here on the training windows (the same block sums the cache's first pass accumulates); the WAN2.1 VAE
runs only when its weights are given (a random VAE reconstructs nothing meaningful).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from configs.schema import Config
from models.metrics import psnr, ssim
from pipeline.codec import Codec
from pipeline.codec_factory import build_codec
from pipeline.codec_linear import add_video, block_accumulator, fit_linear_codec
from pipeline.codec_pixel import PixelCodec
from pipeline.console import console, summary
from pipeline.decode import read_frames
from pipeline.device import resolve_device, synchronize


def _video(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(frames).to(device).permute(3, 0, 1, 2)[None].float().div(127.5).sub(1.0)


def _windows(cfg: Config, dataset: str, root: Path, limit: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from pipeline.dag import select_windows

    windows = select_windows(cfg, dataset, str(root), ["train", "val"], limit)
    frames = {"train": [], "val": []}
    for w in windows:
        frames[w.clip.split].append(read_frames(w.clip, list(w.indices), cfg.window.height, cfg.window.width))
    if not frames["val"] or not frames["train"]:
        raise ValueError(f"{root}: bench codec needs train and val windows (got {len(frames['train'])} / {len(frames['val'])})")
    return frames["train"], frames["val"]


def _score(codec: Codec, clips: list[np.ndarray], device: torch.device) -> dict[str, Any]:
    encode_s, decode_s, psnrs, ssims, numbers = [], [], [], [], 0
    with torch.no_grad():
        for frames in clips:
            video = _video(frames, device)
            synchronize(device)
            t0 = time.perf_counter()
            z = codec.encode(video)
            synchronize(device)
            t1 = time.perf_counter()
            out = codec.decode(z)
            synchronize(device)
            encode_s.append(t1 - t0)
            decode_s.append(time.perf_counter() - t1)
            numbers = z[0].numel()
            decoded = ((out[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 0, 2, 3).double().cpu() / 255.0
            truth = torch.from_numpy(frames).permute(0, 3, 1, 2).double() / 255.0
            psnrs.append(psnr(decoded, truth, data_range=1.0).clamp(max=100.0))  # 100 dB stands for exact
            ssims.append(ssim(decoded, truth, data_range=1.0))
    return {
        "psnr_db": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "encode_s": statistics.median(encode_s),
        "decode_s": statistics.median(decode_s),
        "latent_numbers": int(numbers),
        "channels": codec.channels,
        "weights": codec.weights,
    }


def run(cfg: Config, dataset: str = "synthetic", root: Path | None = None, limit: int = 16, vae_weights: str | None = None,
        device: str = "cpu") -> dict[str, Any]:
    """Fit the linear codec on up to `limit` training windows, score every codec on up to `limit` val windows."""
    dev = resolve_device(device)
    r, s = cfg.codec.temporal_factor, cfg.codec.spatial_factor
    with tempfile.TemporaryDirectory(prefix="re2pix-bench-codec-") as tmp:
        if root is None:
            from pipeline.synthetic import write_sample_dataset

            root = Path(tmp) / "data"
            write_sample_dataset(root, train=limit, val=limit, height=cfg.window.height, width=cfg.window.width,
                                 seed=cfg.seed, progress=False, workers=2)
        train, val = _windows(cfg, dataset, Path(root), limit)

    t0 = time.perf_counter()
    accumulator = block_accumulator(r, s)
    unshuffle = PixelCodec(r, s)
    for frames in train:
        add_video(accumulator, unshuffle, _video(frames, torch.device("cpu")))
    linear = fit_linear_codec(accumulator, cfg.codec.latent_channels, r, s)
    fit_seconds = time.perf_counter() - t0

    codecs: dict[str, Codec] = {"pixel (lossless)": PixelCodec(r, s), f"linear ({cfg.codec.latent_channels} ch)": linear}
    if vae_weights:
        from dataclasses import replace

        codecs["wan2.1 vae"] = build_codec(replace(cfg.codec, name="wan", weights=vae_weights))
    figures: dict[str, Any] = {}
    for name, codec in codecs.items():
        figures[name] = _score(codec.to(dev), val, dev)
    figures["linear_fit"] = {"windows": len(train), "seconds": fit_seconds,
                             "fit_bound_psnr_db": 10 * np.log10(255.0**2 / (linear.discarded_variance * 127.5**2))}

    table = Table(title=f"bench codec: {len(val)} val clips of {cfg.window.frames} frames at "
                        f"{cfg.window.height}x{cfg.window.width}, {dataset}, {cfg.name} config, {device}")
    for col in ("codec", "channels", "numbers/clip", "PSNR dB", "SSIM", "encode s/clip", "decode s/clip"):
        table.add_column(col, justify="right")
    for name, f in figures.items():
        if name == "linear_fit":
            continue
        shown_psnr = "exact" if f["psnr_db"] >= 100.0 else f"{f['psnr_db']:.2f}"
        table.add_row(name, str(f["channels"]), str(f["latent_numbers"]), shown_psnr, f"{f['ssim']:.4f}",
                      f"{f['encode_s']:.4f}", f"{f['decode_s']:.4f}")
    console.print(table)
    fit = figures["linear_fit"]
    console.print(f"linear codec fitted on {fit['windows']} training windows in {fit['seconds']:.2f} s; "
                  f"on its fit data it reaches {fit['fit_bound_psnr_db']:.1f} dB (the discarded variance)")
    if not vae_weights:
        console.print("WAN2.1 VAE not measured: give its weights with --codec-weights PATH")
    shown = ", ".join(f"{k} {v['psnr_db']:.1f} dB" for k, v in figures.items() if k != "linear_fit")
    summary(f"bench codec: {shown} on {len(val)} val clips")
    return figures
