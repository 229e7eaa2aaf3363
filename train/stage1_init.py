"""Where a Stage 1 run's starting weights come from: DINO-Foresight's released checkpoints or one of ours.

`dinof_lowres.ckpt` / `dinof_highres.ckpt` are converted (models/foresight_import.py); their position tables are
resized to our token grid the way DINO-Foresight's own high-resolution adaptation does. Their model works in the
coordinates of DINO-Foresight's PCA, so the cache should be built with that PCA (`cache --pca
dinov2_pca_448_l[2_5_8_11]_1152.pth --allow-pickle`); a cache with another PCA is accepted with a loud warning
(fine-tuning from a foreign feature basis is a legitimate, if odd, experiment).
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
from pathlib import Path
from typing import Any

import torch

from configs.schema import ConfigError, Stage1ModelConfig
from models.foresight import FeatureForesight
from models.foresight_import import convert_dino_foresight_state_dict
from pipeline.console import warn_loud
from pipeline.pca import PCA


def _check_shape(model_cfg: Stage1ModelConfig, found: dict, source: str) -> None:
    fields = ("width", "depth", "mlp_ratio", "in_channels", "context_frames")
    wrong = [f"stage1.model.{f}: checkpoint has {found[f]!r}, this run has {getattr(model_cfg, f)!r}" for f in fields
             if f in found and found[f] != getattr(model_cfg, f)]
    if wrong:
        raise ConfigError(f"{source} does not fit this Stage 1 model: " + "; ".join(wrong) + ". Set those values with --set.")


def initial_state_dict(path: str | Path, model_cfg: Stage1ModelConfig, pca: PCA | None = None, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict for `FeatureForesight(model_cfg)` from `path` (our checkpoint folder or a DINO-Foresight .ckpt)."""
    path = Path(path)
    if path.is_dir():
        from train.checkpoint import read_config, read_weights, resolve_checkpoint

        ckpt = resolve_checkpoint(path)
        found = read_config(ckpt)["model"]
        state, _ = read_weights(ckpt, prefer_ema=True)
        source_grid = (found["grid_h"], found["grid_w"])
        heads = found["heads"]
    else:
        state, info = load_dino_foresight_checkpoint(path, heads=model_cfg.heads, allow_pickle=allow_pickle)
        found = info["model"]
        source_grid = (found["grid_h"], found["grid_w"])
        heads = model_cfg.heads
        _warn_if_other_pca(info.get("pca", {}), pca, path)
    _check_shape(model_cfg, found, str(path))
    source = FeatureForesight(dataclasses.replace(model_cfg, heads=heads, grid_h=source_grid[0], grid_w=source_grid[1]))
    source.load_state_dict(state, strict=True)
    if source_grid != (model_cfg.grid_h, model_cfg.grid_w):
        source.resize_grid(model_cfg.grid_h, model_cfg.grid_w)
    return source.state_dict()


def _warn_if_other_pca(found: dict, pca: PCA | None, path: Path) -> None:
    comps = found.get("pca_components")
    if pca is None or comps is None:
        return
    ours = pca.components.to(torch.float64)
    theirs = comps.to(torch.float64)
    same = ours.shape == theirs.shape and torch.allclose(ours.abs(), theirs.abs(), atol=1e-4)
    if not same:
        warn_loud(
            f"{path} was trained in DINO-Foresight's PCA basis, but this cache has its own PCA: the imported model sees "
            "other coordinates. Build the cache with --pca <DINO-Foresight pca .pth> --allow-pickle to use it as released."
        )


def load_dino_foresight_checkpoint(
    path: str | Path, heads: int = 8, allow_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a DINO-Foresight Lightning `.ckpt` (or a bare state dict file) and convert it.

    The file is opened with `weights_only=True`, allowing `argparse.Namespace` (the hyper-parameters Lightning pickles
    from `save_hyperparameters()` on DINO-Foresight's `args`). If it holds any other Python object the safe loader
    refuses it; `allow_pickle=True` then falls back to a full unpickle, which can run code: only for trusted files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DINO-Foresight checkpoint {path} not found; download dinof_lowres.ckpt or "
                                "dinof_highres.ckpt (HF Sta8is/DINO-Foresight) and pass its local path")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise ValueError(
                f"{path}: the safe loader (torch.load weights_only=True) refused it: {str(exc).splitlines()[0]} "
                "Pass allow_pickle=True only if you trust the file: a full unpickle can execute code"
            ) from None
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: expected a Lightning checkpoint with a 'state_dict' of tensors, or a state dict")
    state_dict, info = convert_dino_foresight_state_dict(checkpoint, heads=heads)
    info["source"] = str(path)
    return state_dict, info
