"""`python cli.py demo`: the whole system end to end on the embedded default (the synthetic driving set, tiny config).

Each step is the same function the corresponding CLI command calls, so the demo is a faithful small run of the real
pipeline. Steps whose outputs already exist are resumed or skipped (every step is resumable on its own).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from configs.schema import Config
from pipeline.console import console


@dataclass
class DemoResult:
    root: Path
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in self.steps.items())
        return f"demo: done in {self.seconds:.0f} s ({parts}) -> {self.root}"


def run_demo(cfg: Config, root: Path | None = None, *, train_snippets: int = 24, val_snippets: int = 8, workers: int = 0) -> DemoResult:
    from pipeline.dag import build_cache
    from pipeline.sources.synthetic import write_sample_dataset

    root = Path(root or cfg.paths.root)
    result = DemoResult(root=root, seconds=0.0)
    t_all = time.perf_counter()

    def step(name: str):
        console.rule(f"[bold]{name}")
        return time.perf_counter()

    data = root / "sample-data"
    t = step("1. make-sample-data")
    if not (data / "leftImg8bit_sequence").exists():
        write_sample_dataset(data, train=train_snippets, val=val_snippets, height=cfg.window.height * 2, width=cfg.window.width * 2, seed=cfg.seed)
    result.steps["data"] = time.perf_counter() - t
    result.outputs["data"] = str(data)

    cache = root / "cache" / "synthetic"
    t = step("2. cache (Ray DAG: decode -> VFM -> PCA -> codec -> Zarr)")
    summary = build_cache(cfg, "synthetic", data, cache, workers=workers, allow_random_weights=True)
    console.print(summary.line())
    result.steps["cache"] = time.perf_counter() - t
    result.outputs["cache"] = str(cache)

    from train.pool import make_predicted_pool
    from train.stage1 import train_stage1

    stage1 = root / "stage1"
    t = step("3. train-stage1 (masked feature transformer on the cached features)")
    train_stage1(cfg, str(cache), str(stage1), resume=True)
    result.steps["stage1"] = time.perf_counter() - t
    result.outputs["stage1"] = str(stage1)

    t = step("4. make-predicted-pool (Stage 1 rollouts for mixed supervision)")
    make_predicted_pool(str(cache), str(stage1))
    result.steps["pool"] = time.perf_counter() - t

    result.seconds = time.perf_counter() - t_all
    return result
