"""One writer per folder: a lock file holding the writer's host, pid, purpose and start time.

Used by the cache (`cache.lock`, pipeline/store.py) and by training runs (`run.lock` in `--out`, train/loop.py).
A lock whose holder is a dead process on this host is taken over; one held on another host is never guessed
stale (we cannot see its processes), so the message says how to remove it by hand.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import fsspec

from pipeline import atomic


class LockError(RuntimeError):
    """Another live process writes to this folder."""


class WriterLock:
    """`with WriterLock(path, purpose):` holds `path` (a lock file) or raises `error` naming the holder."""

    def __init__(self, path: str, purpose: str, *, what: str = "folder", error: type[Exception] = LockError):
        self.path = str(path)
        self.purpose = purpose
        self.what = what  # "cache", "training run": named in the refusal
        self.error = error
        self.held = False

    def __enter__(self) -> "WriterLock":
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "purpose": self.purpose}
        payload = json.dumps(info).encode()
        if atomic.is_url(self.path):
            # Object stores have no O_EXCL: best effort (check, then write), documented in README.
            if atomic.exists(self.path):
                self._refuse(atomic.read_json(self.path))
            atomic.write_bytes(self.path, payload)
        else:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            # The lock appears with its content in one step (hard link of a filled temp file, which fails if the lock
            # exists): a second writer never reads a half-written lock and mistakes it for a stale one.
            tmp = f"{self.path}.{socket.gethostname()}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(payload)
            try:
                while True:
                    try:
                        os.link(tmp, self.path)
                        break
                    except FileExistsError:
                        holder = self.holder()
                        if not holder and not os.path.exists(self.path):  # released meanwhile: try again
                            continue
                        if self._is_stale(holder) and self.holder() == holder:  # re-read: not just taken over
                            os.unlink(self.path)
                            continue
                        self._refuse(holder)
            finally:
                os.unlink(tmp)
        self.held = True
        return self

    def holder(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                return json.loads(f.read() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    @staticmethod
    def _is_stale(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return False  # unreadable: never guessed stale (the refusal says how to remove it)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _refuse(self, holder: dict[str, Any]) -> None:
        raise self.error(
            f"{self.path}: another writer holds this {self.what} (pid {holder.get('pid')} on {holder.get('host')}, "
            f"{holder.get('purpose', '?')} since {holder.get('since')}). Wait for it to finish; if that process is "
            f"dead on another machine, delete {self.path} and re-run."
        )

    def __exit__(self, *exc: Any) -> None:
        if not self.held:
            return
        if atomic.is_url(self.path):
            fs, p = fsspec.core.url_to_fs(self.path)
            fs.rm(p)
        elif os.path.exists(self.path):
            os.unlink(self.path)
        self.held = False
