"""Training checkpoints: one folder per step, written atomically, plus a `latest` pointer.

    out_dir/checkpoints/step_0000500/
        model.safetensors   the model's weights
        ema.safetensors     the EMA weights (only when EMA is on)
        config.json         model config, full Config dict, cache fingerprint, step, random-weights flags
        state.pt            optimizer, scheduler, every RNG state (per rank), data position, grad-scaler state
    out_dir/checkpoints/latest   text: the name of the newest complete folder

A checkpoint is assembled in `.tmp_step_N/` and renamed into place only when every file is written; `latest` is
replaced (atomically) after that rename. A crash therefore leaves at worst a `.tmp_*` folder, which readers ignore and
the next save removes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline import atomic

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
REQUIRED = (MODEL_FILE, CONFIG_FILE, STATE_FILE)
TMP_PREFIX = ".tmp_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not match the run that wants to use it."""


def step_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoints_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINTS


def is_complete(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and not path.name.startswith(TMP_PREFIX) and all((path / f).is_file() for f in REQUIRED)


def _tensors_for_file(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Own contiguous CPU copies: safetensors refuses shared or strided storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(
    out_dir: str | os.PathLike,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    train_state: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint `step` atomically and point `latest` at it. Returns its folder."""
    root = checkpoints_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = root / f"{TMP_PREFIX}{step_name(step)}"
    if tmp.exists():  # left by a crash during an earlier save
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_tensors_for_file(model_state), str(tmp / MODEL_FILE), metadata={"format": "pt"})
    if ema_state is not None:
        save_file(_tensors_for_file(ema_state), str(tmp / EMA_FILE), metadata={"format": "pt"})
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    torch.save(train_state, tmp / STATE_FILE)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # re-saving the same step (a resumed run that repeats it): replace the old folder
        old = root / f"{TMP_PREFIX}old_{step_name(step)}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    atomic.write_text(root / LATEST, final.name + "\n")
    return final


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run: the one `latest` names, else the highest complete step folder."""
    root = checkpoints_dir(out_dir)
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if is_complete(named):
            return named
    candidates = sorted(p for p in root.glob("step_*") if is_complete(p)) if root.is_dir() else []
    return candidates[-1] if candidates else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or a run folder (-> its latest checkpoint). Raises CheckpointError naming the path."""
    path = Path(path)
    if is_complete(path):
        return path
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is not None:
            return found
    missing = [f for f in REQUIRED if not (path / f).is_file()] if path.is_dir() else []
    detail = f"it lacks {missing}" if missing else "it does not exist" if not path.exists() else "it holds no complete checkpoint"
    raise CheckpointError(
        f"{path} is not a usable checkpoint ({detail}). Pass a folder like <run>/{CHECKPOINTS}/step_0000500 "
        f"or the run folder itself (its {CHECKPOINTS}/{LATEST} is used)."
    )


def resolve_resume(out_dir: str | os.PathLike, resume: bool | str | os.PathLike) -> Path | None:
    """`resume=False`: none. True: the latest checkpoint in out_dir, or None when there is none yet (fresh start).
    A path: that checkpoint (or run folder); it must exist."""
    if resume is False or resume is None or resume == "":
        return None
    if resume is True:
        return latest_checkpoint(out_dir)
    return resolve_checkpoint(resume)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / CONFIG_FILE).read_text())


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)


def read_weights(path: str | os.PathLike, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, "ema" | "model"): the EMA weights when present and preferred."""
    path = Path(path)
    if prefer_ema and (path / EMA_FILE).is_file():
        return load_file(str(path / EMA_FILE)), "ema"
    return load_file(str(path / MODEL_FILE)), "model"


def load_model_for_inference(
    ckpt_path: str | os.PathLike,
    model_factory: Callable[[dict[str, Any]], nn.Module],
    prefer_ema: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from the checkpoint alone: `model_factory(config["model"])`, then its weights (EMA when present
    and `prefer_ema`), in eval mode. Returns (model, config.json contents + {"checkpoint", "loaded_weights"})."""
    path = resolve_checkpoint(ckpt_path)
    config = read_config(path)
    if "model" not in config:
        raise CheckpointError(f"{path / CONFIG_FILE} has no 'model' section; it was not written by train/loop.py")
    model = model_factory(config["model"])
    weights, which = read_weights(path, prefer_ema)
    current = model.state_dict()
    missing = sorted(set(current) - set(weights))
    unexpected = sorted(set(weights) - set(current))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the model built from its config (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); was the model code changed since this checkpoint was written?"
        )
    model.load_state_dict({k: v.to(current[k].dtype) for k, v in weights.items()})
    model.to(device).eval()
    return model, {**config, "checkpoint": str(path), "loaded_weights": which}
