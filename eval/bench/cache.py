"""`bench cache`: the Ray DAG vs a plain sequential loop over the same windows, side by side in one run.

Both write the same arrays (the loop reuses the PCA and codec the DAG fitted; tests/test_cache_equality.py checks
it bit for bit). Each run's wall time is split into start-up (DAG: starting Ray, then every worker built and ready;
loop: building its one worker) and work (pass 1's sums, every shard, finalize); frames/s are given over the work and
end to end. Stage times (decode, VFM, codec, write) are summed over workers. The loop keeps its best settings: it
runs once per torch thread count in `loop_threads` (1 and every core by default: on a busy 2-core machine one
thread is several times faster, on a quiet one two can be) and the DAG is compared with the fastest of them.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from configs.schema import Config
from pipeline.cache_loop import build_cache_sequential
from pipeline.console import console, summary
from pipeline.dag import build_cache


def run(cfg: Config, dataset: str = "synthetic", root: Path | None = None, workers: int = 0, limit: int = 8,
        loop_threads: tuple[int, ...] = (), repeats: int = 1) -> dict[str, Any]:
    loop_threads = tuple(loop_threads) or tuple(sorted({1, os.cpu_count() or 1}))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="re2pix-bench-cache-") as tmp:
        if root is None:
            from pipeline.synthetic import write_sample_dataset

            root = Path(tmp) / "data"
            write_sample_dataset(root, train=limit, val=limit, height=cfg.window.height * 2, width=cfg.window.width * 2,
                                 seed=0, progress=False)
        for r in range(repeats):
            dag_out = str(Path(tmp) / f"dag{r}")
            dag = build_cache(cfg, dataset, root, dag_out, workers=workers, allow_random_weights=True, limit=limit)
            p = dag.phases
            runs = {"DAG": _figures(dag.frames, dag.seconds, p.get("ray_init", 0.0) + p.get("workers_ready", 0.0),
                                        dag.times, p)}
            for threads in loop_threads:
                t0 = time.perf_counter()
                loop_times, loop_phases = build_cache_sequential(cfg, dataset, str(root), str(Path(tmp) / f"loop{r}-{threads}"),
                                                                 dag_out, limit=limit, threads=threads)
                runs[f"loop, {threads} thread(s)"] = _figures(loop_times.frames, time.perf_counter() - t0,
                                                              loop_phases["start"], loop_times, loop_phases)
            results.append(runs)
    _print(results, dataset, cfg, dag.samples, workers)
    return {"runs": results}


def _figures(frames: int, seconds: float, start: float, t: Any, phases: dict[str, float]) -> dict[str, Any]:
    work = seconds - start
    return {"frames": frames, "seconds": seconds, "start_s": start, "work_s": work,
            "work_frames_per_s": frames / work if work > 0 else 0.0, "frames_per_s": frames / seconds if seconds > 0 else 0.0,
            "decode_s": t.decode, "vfm_s": t.vfm, "codec_s": t.codec, "write_s": t.write,
            "phases": {k: round(v, 3) for k, v in phases.items()}}


def _print(results: list[dict[str, Any]], dataset: str, cfg: Config, samples: int, workers: int) -> None:
    table = Table(title=f"bench cache: {dataset}, {cfg.name} config, {samples} windows, DAG workers={workers or 'auto'}")
    for col in ("run", "start s", "work s", "work f/s", "total s", "total f/s", "decode s", "vfm s", "codec s",
                "write s"):
        table.add_column(col, justify="right")
    for i, runs in enumerate(results):
        for name, f in runs.items():
            table.add_row(f"{name.replace(' thread(s)', 't')} #{i + 1}", f"{f['start_s']:.1f}", f"{f['work_s']:.1f}", f"{f['work_frames_per_s']:.0f}",
                          f"{f['seconds']:.1f}", f"{f['frames_per_s']:.0f}", f"{f['decode_s']:.1f}", f"{f['vfm_s']:.1f}",
                          f"{f['codec_s']:.1f}", f"{f['write_s']:.1f}")
    console.print(table)
    console.print("start: DAG = starting Ray (only the first run in a process) + building every worker; loop = building "
                  "its worker. work = pass 1 (PCA/codec sums) + every shard + finalize; f/s = frames/s; stage times "
                  "are summed over workers.")
    for i, runs in enumerate(results):
        console.print(f"run {i + 1}: DAG phases {runs['DAG']['phases']}")
    work = [r["DAG"]["work_frames_per_s"] / max(v["work_frames_per_s"] for k, v in r.items() if k != "DAG")
            for r in results]
    e2e = [r["DAG"]["frames_per_s"] / max(v["frames_per_s"] for k, v in r.items() if k != "DAG") for r in results]
    summary(f"bench cache: DAG / fastest loop = {_span(work)}x over the work (start-up excluded), {_span(e2e)}x end to end")


def _span(values: list[float]) -> str:
    return f"{values[0]:.2f}" if len(values) == 1 else f"{min(values):.2f}-{max(values):.2f}"
