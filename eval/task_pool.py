"""Independent study tasks (Stage 2 trainings, evaluations) run side by side, for `reproduce`.

On a small CPU machine, two tiny trainings in two processes with one torch thread each do 1.45x the work of the same
trainings one after the other with two threads (measured on 2 cores: 21 s vs 30 s for two 40-step Re2Pix runs; two
evaluations 62 s vs 88 s): a tiny model cannot keep two threads busy. So `reproduce --jobs N` runs N tasks at a time,
each in its own spawned process with CPUs / N torch threads, its console output in its own log file, and a progress
bar of tasks done in the parent. A task that fails does not stop the others; the failures are raised together at the
end, each with its log file. With jobs = 1 every task runs inline in this process (tests, debugging, one GPU).
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.console import console, progress


@dataclass
class Task:
    name: str
    fn: Callable[..., Any]  # a module-level function (it is pickled into a spawned process)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    log: Path | None = None  # where its console output goes when it runs in a worker process


class TaskFailures(RuntimeError):
    def __init__(self, failures: list[tuple[Task, str]]):
        self.failures = failures
        lines = [f"  {t.name}: {err.strip().splitlines()[-1]} (log: {t.log})" for t, err in failures]
        super().__init__(f"{len(failures)} task(s) failed; the others finished and are kept (re-run to resume):\n" + "\n".join(lines))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def default_jobs(device: str | None) -> int:
    """One task per CPU on a CPU machine; one at a time when CUDA may be used (each task would want the whole GPU)."""
    import torch

    if device not in (None, "auto", "cpu") or (device != "cpu" and torch.cuda.is_available()):
        return 1
    return cpu_count()


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_logged(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], log: str) -> Any:
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as f, redirect_stdout(f), redirect_stderr(f):
        try:
            return fn(*args, **kwargs)
        except BaseException:
            traceback.print_exc()
            raise


def run_tasks(tasks: list[Task], jobs: int, label: str) -> dict[str, Any]:
    """Run every task (at most `jobs` at a time) and return {task name: its return value}, in the order given."""
    if len({t.name for t in tasks}) != len(tasks):
        raise ValueError("task names must be unique")
    results: dict[str, Any] = {}
    failures: list[tuple[Task, str]] = []
    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            try:
                results[t.name] = t.fn(*t.args, **t.kwargs)
            except Exception:
                failures.append((t, traceback.format_exc()))
    else:
        threads = max(1, cpu_count() // jobs)
        ctx = multiprocessing.get_context("spawn")  # fork after torch threads exist can deadlock; spawn is safe with CUDA
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool, \
                progress() as bar:
            task_id = bar.add_task(label, total=len(tasks), status=f"{jobs} at a time, {threads} thread(s) each")
            pending: dict[Future[Any], Task] = {}
            for t in tasks:
                log = t.log or Path(os.devnull)
                pending[pool.submit(_run_logged, t.fn, t.args, t.kwargs, str(log))] = t
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    t = pending.pop(fut)
                    try:
                        results[t.name] = fut.result()
                        console.print(f"  {label}: {t.name} done")
                    except Exception as exc:  # recorded; the others carry on
                        failures.append((t, "".join(traceback.format_exception(exc))))
                        console.print(f"  [red]{label}: {t.name} failed[/red] (log: {t.log})")
                    bar.update(task_id, advance=1)
    if failures:
        raise TaskFailures(failures)
    return {t.name: results[t.name] for t in tasks}
