"""The one-writer lock (pipeline/lock.py) shared by the cache and training runs."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from pipeline.lock import LockError, WriterLock


def _try(path, start, results):
    while time.time() < start:  # all processes reach for the lock at the same moment
        pass
    try:
        with WriterLock(path, "race"):
            results.put("won")
            time.sleep(0.5)
    except LockError:
        results.put("refused")


def test_writers_started_together_get_exactly_one_lock(tmp_path):
    ctx = mp.get_context("fork")
    for trial in range(3):
        path, results = str(tmp_path / f"run{trial}.lock"), ctx.Queue()
        start = time.time() + 0.3
        procs = [ctx.Process(target=_try, args=(path, start, results)) for _ in range(4)]
        for p in procs:
            p.start()
        outcomes = sorted(results.get(timeout=30) for _ in procs)
        for p in procs:
            p.join()
        assert outcomes == ["refused", "refused", "refused", "won"]
        assert not (tmp_path / f"run{trial}.lock").exists()


def test_an_unreadable_lock_is_refused_not_taken_over(tmp_path):
    (tmp_path / "run.lock").write_text("")  # e.g. a lock file cut short: whose it is cannot be known
    with pytest.raises(LockError, match="another writer holds this folder"):
        WriterLock(str(tmp_path / "run.lock"), "test").__enter__()
