"""Loading pretrained weights from local files, and refusing loudly when there are none.

Shared by the VFM (timm) and the codec (diffusers). Weights can never be downloaded on some machines, so every
loader first looks for a local file, then (VFM only) for the hub when it is reachable, and otherwise either
raises `MissingWeightsError` with the exact fix or, when the caller allows it, builds a seeded random model and
says so loudly. Whatever was used is recorded as a short string:

    "file:<sha16>"   a local file or folder (sha256 of its bytes, first 16 hex digits)
    "hub:<name>"     the named hub weights (timm pretrained tag)
    "random"         seeded random initialisation: outputs are meaningless
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

import torch
from torch import nn

from pipeline.console import warn_loud
from pipeline.fingerprint import RANDOM, file_fingerprint

STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Containers that training frameworks wrap a state dict in (Lightning, DeiT/MAE-style, EMA exports).
_CONTAINER_KEYS = ("state_dict", "model", "module", "model_state_dict", "teacher")
# Prefixes that wrappers add to every key (DDP, torch.compile, Lightning modules, Cosmos' "net.").
COMMON_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "net_ema.", "backbone.")


class MissingWeightsError(RuntimeError):
    """No usable weights were found. The message says which option or file fixes it."""


class WeightsFormatError(ValueError):
    """A weights file exists but cannot be used (unreadable, wrong format, wrong shapes). The message names it."""


# ------------------------------------------------------------------------------------------- files


def file_weights_tag(path: str | Path) -> str:
    """The record written to meta.json/checkpoints for weights read from a local file or folder."""
    return f"file:{file_fingerprint(path)}"


def hub_weights_tag(name: str) -> str:
    return f"hub:{name}"


def require_local_path(path: str | Path, what: str, option: str) -> Path:
    """`path` as an existing Path, or MissingWeightsError naming the file and the option that sets it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingWeightsError(
            f"{what}: weights file {str(p)!r} does not exist. Fix: pass an existing file with {option} PATH "
            f"(check the path and that the download finished)."
        )
    return p


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat tensor state dict from .safetensors / .pth / .pt / .bin / .ckpt on the CPU.

    Pickled files are read with `weights_only=True` (no code runs). A state dict wrapped in a common container
    ({"state_dict": ...}, {"model": ...}) is unwrapped; non-tensor entries are dropped.
    """
    p = Path(path)
    if p.suffix not in STATE_DICT_SUFFIXES:
        raise WeightsFormatError(
            f"{p}: unknown weights format {p.suffix!r}; expected one of {', '.join(STATE_DICT_SUFFIXES)}"
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a state dict at all
        raise WeightsFormatError(
            f"{p}: cannot read weights ({type(exc).__name__}: {exc}). Re-download the file; pickled checkpoints "
            f"that hold Python objects beyond tensors are not accepted (they would run code when loaded)."
        ) from None
    return _unwrap_state_dict(obj, p)


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, dict):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise WeightsFormatError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsFormatError(f"{path}: no tensors found; top-level keys: {sorted(map(str, obj))[:10]}")
    return tensors


def strip_prefix(state_dict: dict[str, torch.Tensor], prefixes: Iterable[str] = COMMON_PREFIXES) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes that *every* key carries ("module.", "net.", ...), repeatedly."""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def load_into(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path, what: str, assign: bool = False
) -> None:
    """Strictly load `state_dict` into `model`, or raise WeightsFormatError listing what does not fit.

    `assign=True` adopts the file's tensors instead of copying (use it for a model built on the meta device).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:4]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:4]})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes (e.g. {mismatched[:3]})")
        raise WeightsFormatError(
            f"{source}: these weights do not fit the {what}: {'; '.join(parts)}. Check that the file is the right "
            f"model and that the config's size overrides (depth, width, ...) match it."
        )
    model.load_state_dict(state_dict, strict=True, assign=assign)


# ---------------------------------------------------------------------------------------- the hub


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline_by_env() -> bool:
    """The user said "offline" (Hugging Face's own switches)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


@functools.lru_cache(maxsize=8)
def _reachable(host: str, port: int, timeout: float) -> bool:
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # A thread bounds the wait: DNS resolution is not covered by the socket timeout and can stall.
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


def hub_online(timeout: float = 2.0) -> bool:
    """True when the Hugging Face hub can be reached; answers within about `timeout` s, never hangs."""
    if hub_offline_by_env():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    if not url.hostname:
        return False
    return _reachable(url.hostname, url.port or (443 if url.scheme == "https" else 80), timeout)


def cached_hub_file(repo_id: str, filenames: Iterable[str]) -> Path | None:
    """A file of `repo_id` already in the local Hugging Face cache (first of `filenames` found), else None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in filenames:
        found = try_to_load_from_cache(repo_id=repo_id, filename=name)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


# ------------------------------------------------------------------------------------ random weights


@contextlib.contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Run the block with a fixed torch seed without disturbing the caller's RNG state.

    Every worker that builds a random model inside this block gets bit-identical weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def refuse_or_warn_random(what: str, allow_random_weights: bool, fix: str) -> str:
    """No weights were found: raise MissingWeightsError (the default) or warn loudly and return "random"."""
    if not allow_random_weights:
        raise MissingWeightsError(
            f"No weights for the {what}. Fix: {fix}; or pass --allow-random-weights to run with a seeded random "
            f"model (a demo only: its outputs are meaningless, and everything written records weights='random')."
        )
    warn_loud(
        f"the {what} uses RANDOM weights (seeded, identical in every worker): its outputs are meaningless. "
        f"Every file this run writes records weights='{RANDOM}'."
    )
    return RANDOM
