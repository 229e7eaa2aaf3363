"""How one cache worker uses the resources Ray gave it (not the machine's core count), so the same code fills a
laptop, a GPU box and a cluster node.

CPU worker (c CPUs): torch runs c intra-op threads; one background thread decodes the next window while the
models run, and the finished shard is written on another while the next shard is computed (decode, inference and
writing overlap, each core stays busy). Two workers of 1 CPU on 2 cores, not two workers of 2 threads each: torch
threads beyond the CPUs Ray assigned oversubscribe the cores and slow every worker down.

GPU worker (1 GPU, c CPUs): the GPU computes (torch keeps 1 CPU thread to drive it); decoding runs on separate
CPU workers (Ray tasks, the CPUs not held by GPU workers) that feed decoded shards ahead through the object store,
so the GPU does not wait for the decoder; the worker's own CPUs write shards behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerPlan:
    threads: int  # torch intra-op threads
    prefetch: int  # windows decoded ahead of the models on background threads (inline decoding)
    write_behind: bool  # write a finished shard on a background thread while the next one is computed

    def line(self) -> str:
        return f"{self.threads} torch threads, {self.prefetch} window(s) decoded ahead, write-behind {'on' if self.write_behind else 'off'}"


def plan_worker(cpus: float, gpus: float) -> WorkerPlan:
    """The plan of a worker holding `cpus` CPUs and `gpus` GPUs (Ray's assigned resources)."""
    whole = max(1, int(cpus))
    if gpus > 0:
        return WorkerPlan(threads=1, prefetch=max(1, whole - 1), write_behind=True)
    return WorkerPlan(threads=whole, prefetch=1, write_behind=True)


def assigned_resources() -> dict[str, float] | None:
    """{"CPU": ..., "GPU": ...} that Ray assigned to the calling actor or task; None outside a Ray worker."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return None
    if not ray.is_initialized():
        return None
    context: Any = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:  # the driver: nothing was assigned to it
        return None
    return dict(context.get_assigned_resources())


def dag_plan(cluster: dict[str, float], requested: int) -> dict[str, Any]:
    """How `cache` spreads over a cluster with `cluster` resources ({"CPU": n, "GPU": m}):

    - GPUs: one worker per GPU (at most `requested` when > 0), each with 1 CPU; the other CPUs decode
      (`decode_tasks` at a time, each 1 CPU), feeding 2 shards ahead per GPU worker.
    - CPUs only: `requested` workers (0: one per CPU) of cpus // workers CPUs each, decoding inline.

    Returns {"workers", "actor": Ray actor options, "decode_tasks", "in_flight": shards queued per worker}."""
    gpus, cpus = int(cluster.get("GPU", 0)), max(1, int(cluster.get("CPU", 1)))
    if gpus > 0:
        n = min(requested, gpus) if requested > 0 else gpus
        return {"workers": n, "actor": {"num_gpus": 1, "num_cpus": 1}, "decode_tasks": max(1, cpus - n), "in_flight": 2}
    n = max(1, min(requested if requested > 0 else cpus, cpus))
    return {"workers": n, "actor": {"num_cpus": cpus // n}, "decode_tasks": 0, "in_flight": 1}
