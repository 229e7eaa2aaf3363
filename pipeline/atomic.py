"""Writes that never leave a half-written file: write to a temporary sibling, fsync, then rename.

Works for local paths and for fsspec URLs (object stores replace whole objects atomically on PUT).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import fsspec


def local(path: str | os.PathLike) -> str:
    """`file://` URLs are local paths (so they get atomic renames); every other string is returned unchanged."""
    p = str(path)
    return p[len("file://"):] if p.startswith("file://") else p


def is_url(path: str | os.PathLike) -> bool:
    return "://" in local(path)


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts for local paths and URLs alike."""
    base = local(base)
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base).joinpath(*parts))


def _umask() -> int:
    """The process's umask, read without changing it where the OS says it (Linux: /proc/self/status); elsewhere set
    and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (so a record of it means the same from any working folder); URLs unchanged."""
    return local(path) if is_url(path) else str(Path(local(path)).absolute())


def exists(path: str | os.PathLike) -> bool:
    if is_url(path):
        fs, p = fsspec.core.url_to_fs(str(path))
        return fs.exists(p)
    return Path(path).exists()


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[str]:
    """Yield a temporary local path next to `path`; on success it is renamed over `path`. `fsync=False` skips
    flushing the data to disk before the rename: still never a half-written file after a crashed process, but a
    power loss may leave an empty one (for files that are regenerated rather than recovered, e.g. sample data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; the file we leave behind gets the mode a plain open() would give (0644 under umask 022),
    # so a cache or checkpoint written by one user is readable by the others the umask lets read it.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    if is_url(path):
        with fsspec.open(str(path), "wb") as f:
            f.write(data)
        return
    with atomic_path(path, fsync=fsync) as tmp:
        Path(tmp).write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with fsspec.open(str(path), "rt") as f:
        return json.load(f)
