"""Training checkpoints: one folder per step, written atomically, plus a `latest` pointer.

    out_dir/checkpoints/step_0000500/
        model.safetensors   the model's weights
        ema.safetensors     the EMA weights (only when EMA is on)
        config.json         model config, full Config dict, cache fingerprint, step, random-weights flags
        state.pt            optimizer, scheduler, every RNG state (per rank), data position, grad-scaler state
    out_dir/checkpoints/latest   text: the name of the newest complete folder
    out_dir/checkpoints/selection.json   which checkpoint the run hands on by default ("best" by its validation
                                         metric or "latest", and why) and its best step so far

Consumers name a checkpoint folder, or a run folder optionally followed by `@best`, `@latest` or `@<step>`
(`runs/tiny/stage1@best`); a bare run folder gives the run's own default (`select_checkpoint` says which and why).

A checkpoint is assembled in `.tmp_step_N/` and renamed into place only when every file is written; `latest` is
replaced (atomically) after that rename. A crash therefore leaves at worst a `.tmp_*` folder, which readers ignore and
the next save removes. Each folder also lists its files' sizes (`files.json`); a checkpoint whose files were truncated
later (a copy cut short, a full disk) is refused by name, and `--resume latest` falls back to the newest intact one.

`prune_checkpoints` bounds a run's folders: the newest `keep_last`, every `keep_every`-th step (milestones for a
metric-vs-step curve), the best one recorded in selection.json and the one just written are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline import atomic
from pipeline.console import warn_loud

CHECKPOINTS = "checkpoints"
LATEST = "latest"
SELECTION_FILE = "selection.json"
CHOICES = ("best", "latest")
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
FILES_FILE = "files.json"  # {binary file name: size in bytes}, written last (absent in older checkpoints)
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
    # Binary files only: config.json is JSON a person may edit (checked by parsing it).
    sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.name != CONFIG_FILE}
    (tmp / FILES_FILE).write_text(json.dumps(sizes, indent=2, sort_keys=True) + "\n")
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


def _safetensors_problem(path: Path) -> str | None:
    """Cheap integrity check without reading the tensors: the header parses and its data fits the file exactly."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{path.name} is truncated (header of {n} bytes in a {size}-byte file)"
            header = json.loads(f.read(n))
    except (struct.error, ValueError) as exc:
        return f"{path.name} has an unreadable header ({exc})"
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{path.name} is truncated or padded ({size} bytes, its header describes {8 + n + end})"
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why checkpoint folder `path` cannot be used (missing, truncated or corrupt files), or None when it is intact."""
    path = Path(path)
    if not is_complete(path):
        missing = [f for f in REQUIRED if not (path / f).is_file()] if path.is_dir() else []
        return f"it lacks {missing}" if missing else "it is not a checkpoint folder"
    if (path / FILES_FILE).is_file():
        try:
            sizes = json.loads((path / FILES_FILE).read_text())
        except ValueError:
            return f"{FILES_FILE} is corrupt"
        for name, size in sizes.items():
            if name == CONFIG_FILE:
                continue
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != size:
                return f"{name} is truncated ({f.stat().st_size} bytes, {size} were written)"
    for name in (MODEL_FILE, EMA_FILE):
        if (path / name).is_file() and (problem := _safetensors_problem(path / name)):
            return problem
    if not zipfile.is_zipfile(path / STATE_FILE):  # torch.save's zip: its directory sits at the end of the file
        return f"{STATE_FILE} is truncated or corrupt"
    try:
        json.loads((path / CONFIG_FILE).read_text())
    except ValueError as exc:
        return f"{CONFIG_FILE} is corrupt ({exc})"
    return None


def _check(path: Path) -> Path:
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(f"{path} is damaged: {problem}. Pick another checkpoint of the run (<run>@<step>) or "
                              f"resume with --resume latest, which skips damaged ones.")
    return path


def _step_folders(out_dir: str | os.PathLike) -> list[Path]:
    root = checkpoints_dir(out_dir)
    return sorted(p for p in root.glob("step_*") if is_complete(p)) if root.is_dir() else []


def newest_intact(out_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run that passes `checkpoint_problem`; each damaged newer one is skipped loudly."""
    first = latest_checkpoint(out_dir)
    candidates = ([first] if first else []) + [p for p in reversed(_step_folders(out_dir)) if p != first]
    skipped = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                warn_loud(f"resuming from {path.name}, the newest intact checkpoint, instead of {', '.join(skipped)}")
            return path
        warn_loud(f"{path} is damaged ({problem}): skipped")
        skipped.append(path.name)
    if skipped:  # starting over at step 0 would silently discard the run
        raise CheckpointError(f"every checkpoint in {checkpoints_dir(out_dir)} is damaged ({', '.join(skipped)}); "
                              f"start a new run in another --out, or remove the folder to start this one over")
    return None


def prune_checkpoints(out_dir: str | os.PathLike, keep_last: int, keep_every: int = 0,
                      protect: tuple[str | os.PathLike, ...] = ()) -> list[Path]:
    """Delete step folders beyond the newest `keep_last` (0 = keep all), keeping multiples of `keep_every`, the best
    one of selection.json, the one `latest` names and the `protect`ed ones. Returns the deleted folders."""
    if keep_last <= 0:
        return []
    folders = _step_folders(out_dir)
    keep = {p.name for p in folders[-keep_last:]} | {Path(p).name for p in protect}
    best = (read_selection(out_dir).get("best") or {}).get("checkpoint")
    if best:
        keep.add(best)
    pointer = checkpoints_dir(out_dir) / LATEST
    if pointer.is_file():
        keep.add(pointer.read_text().strip())
    if keep_every > 0:
        keep |= {p.name for p in folders if int(p.name.split("_")[1]) % keep_every == 0}
    deleted = [p for p in folders if p.name not in keep]
    for p in deleted:
        # Renamed first so that a crash mid-delete leaves a `.tmp_*` folder readers ignore, never half a checkpoint.
        doomed = p.with_name(f"{TMP_PREFIX}pruned_{p.name}")
        os.replace(p, doomed)
        shutil.rmtree(doomed)
    return deleted


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


def _split_choice(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """"run@best" -> (run, "best"); "run@1200" -> (run, "1200"); anything else -> (path, None)."""
    text = str(spec)
    if "@" in text:
        head, tail = text.rsplit("@", 1)
        if tail in CHOICES or tail.isdigit():
            return Path(head), tail
    return Path(text), None


def read_selection(out_dir: str | os.PathLike) -> dict[str, Any]:
    path = checkpoints_dir(out_dir) / SELECTION_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def update_selection(out_dir: str | os.PathLike, step: int, val: dict[str, float], metric: str, mode: str, default: str,
                     why: str) -> bool:
    """Record checkpoint `step` as the best when its validation `metric` beats the best so far (`mode` min | max).
    Also records the run's default choice. Returns whether `step` is now the best."""
    if mode not in ("min", "max") or default not in CHOICES:
        raise ValueError(f"selection mode={mode!r} must be min|max and default={default!r} one of {CHOICES}")
    selection = read_selection(out_dir)
    best = selection.get("best")
    value = val.get(metric)
    improved = value is not None and (
        best is None or (value < best["value"] if mode == "min" else value > best["value"])
    )
    if improved:
        best = {"step": int(step), "value": float(value), "checkpoint": step_name(step)}
    selection = {"default": default, "metric": metric, "mode": mode, "why": why, "best": best}
    atomic.write_text(checkpoints_dir(out_dir) / SELECTION_FILE, json.dumps(selection, indent=2, sort_keys=True) + "\n")
    return improved


def select_checkpoint(spec: str | os.PathLike) -> tuple[Path, str]:
    """(checkpoint folder, why it was chosen) for a checkpoint folder or `run[@best|@latest|@<step>]`."""
    path, choice = _split_choice(spec)
    if choice is None and is_complete(path):
        return _check(path), f"{path.name} (a checkpoint folder was given)"
    if path.is_dir() and (checkpoints_dir(path).is_dir() or choice is not None):
        selection = read_selection(path)
        wanted = choice or selection.get("default", "latest")
        if wanted.isdigit():
            found = checkpoints_dir(path) / step_name(int(wanted))
            if is_complete(found):
                return _check(found), f"step {int(wanted)} (asked for)"
            have = sorted(p.name for p in checkpoints_dir(path).glob("step_*") if is_complete(p))
            raise CheckpointError(f"{path}: no complete checkpoint at step {int(wanted)}; it has {have}")
        latest = latest_checkpoint(path)
        if wanted == "best":
            best = selection.get("best")
            if best and is_complete(checkpoints_dir(path) / best["checkpoint"]):
                origin = "asked for" if choice else f"the run's default: {selection.get('why', '')}"
                return (_check(checkpoints_dir(path) / best["checkpoint"]),
                        f"best by validation {selection['metric']} = {best['value']:.6g} at step {best['step']} ({origin})")
            if choice == "best":
                raise CheckpointError(f"{path} records no best checkpoint (no validation ran at a saved step); use @latest")
        if latest is not None:
            reason = "asked for" if choice else (
                f"the run's default: {selection['why']}" if selection.get("default") == "latest" and selection.get("why")
                else "the newest checkpoint")
            return _check(latest), f"latest, step {int(latest.name.split('_')[1])} ({reason})"
    missing = [f for f in REQUIRED if not (path / f).is_file()] if path.is_dir() else []
    detail = f"it lacks {missing}" if missing else "it does not exist" if not path.exists() else "it holds no complete checkpoint"
    raise CheckpointError(
        f"{path} is not a usable checkpoint ({detail}). Pass a folder like <run>/{CHECKPOINTS}/step_0000500 "
        f"or the run folder itself, optionally with @best, @latest or @<step>."
    )


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or a run folder (-> the run's default or the @choice). Raises CheckpointError naming the path."""
    return select_checkpoint(path)[0]


def resolve_resume(out_dir: str | os.PathLike, resume: bool | str | os.PathLike) -> Path | None:
    """`resume=False`: none. True: the newest intact checkpoint in out_dir (damaged newer ones are skipped, loudly),
    or None when there is none yet (fresh start). A path: that checkpoint (or run folder); it must exist and be intact."""
    if resume is False or resume is None or resume == "":
        return None
    if resume is True:
        return newest_intact(out_dir)
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
    and `prefer_ema`), in eval mode. Returns (model, config.json contents + {"checkpoint", "loaded_weights",
    "selected": which checkpoint and why})."""
    path, why = select_checkpoint(ckpt_path)
    config = read_config(path)
    if "model" not in config:
        raise CheckpointError(f"{path / CONFIG_FILE} has no 'model' section; it was not written by train/loop.py")
    weights, which = read_weights(path, prefer_ema)
    model = build_with_weights(model_factory, config["model"], weights, path, device)
    return model, {**config, "checkpoint": str(path), "loaded_weights": which, "selected": why}


def build_with_weights(
    model_factory: Callable[[dict[str, Any]], nn.Module], model_config: dict[str, Any], weights: dict[str, torch.Tensor],
    where: str | os.PathLike, device: str | torch.device = "cpu",
) -> nn.Module:
    """`model_factory(model_config)` with exactly `weights` loaded (every key, none extra), on `device`, in eval mode.
    `where` names the weights in the error (a checkpoint or bundle folder)."""
    model = model_factory(model_config)
    current = model.state_dict()
    missing = sorted(set(current) - set(weights))
    unexpected = sorted(set(weights) - set(current))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not fit the model built from its config (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); was the model code changed since these weights were written?"
        )
    model.load_state_dict({k: v.to(current[k].dtype) for k, v in weights.items()})
    return model.to(device).eval()
