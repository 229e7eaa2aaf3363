"""Stable fingerprints for weights files, configs and tensors, recorded in meta.json and checkpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

RANDOM = "random"


def file_fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file (or of every file below a folder, in sorted order), first 16 hex digits."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()[:16]


def dict_fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differences(recorded: Any, current: Any, where: str = "", holder: str = "cache") -> list[str]:
    """Every leaf where two nested configs differ, as "a.b: <holder> has X, this run has Y" (sorted keys): how the
    cache and the trainers explain why a resume or a reuse is refused."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(recorded) | set(current)):
            out += differences(recorded.get(key), current.get(key), f"{where}.{key}" if where else str(key), holder)
        return out
    return [] if recorded == current else [f"{where}: {holder} has {recorded!r}, this run has {current!r}"]
