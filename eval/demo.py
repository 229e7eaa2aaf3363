"""`python cli.py demo`: the whole system end to end on the embedded default (the synthetic driving set, tiny config).

Each step is the same function the corresponding CLI command calls, so the demo is a faithful small run of the real
pipeline. Steps whose outputs already exist are resumed or skipped (every step is resumable on its own).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.schema import Config
from pipeline.console import console


@dataclass
class DemoResult:
    root: Path
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    learning: str = ""
    cache: Any = None  # the cache step's pipeline.dag.CacheSummary (shards written vs already done)

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in self.steps.items())
        return f"demo: done in {self.seconds:.0f} s ({parts}); {self.learning}; report: {self.outputs.get('report', self.root)}"


# Enough training windows that Stage 1 learns motion instead of memorising clips (24 windows: it overfit within 1,600
# steps; 160: train and validation losses stay equal), and enough validation windows for differences to mean
# something (the evaluation uses every one of them).
TRAIN_SNIPPETS = 128
VAL_SNIPPETS = 24


def run_demo(
    cfg: Config, root: Path | None = None, *, train_snippets: int = TRAIN_SNIPPETS, val_snippets: int = VAL_SNIPPETS,
    workers: int = 0, eval_windows: int = 0,
) -> DemoResult:
    from pipeline.dag import build_cache
    from pipeline.synthetic import write_sample_dataset

    root = Path(root or cfg.paths.root)
    result = DemoResult(root=root, seconds=0.0)
    t_all = time.perf_counter()

    def step(name: str):
        console.rule(f"[bold]{name}")
        return time.perf_counter()

    from train.vfm_pretrain import describe_run, with_pretrained_vfm

    t = step("0. pretrain-vfm (the tiny VFM on the synthetic world's own seed streams; reused when it exists)")
    cfg, record, reused = with_pretrained_vfm(cfg, root, workers=os.cpu_count() or 1)
    if record is not None:
        console.print(describe_run(record, reused))
        result.outputs["vfm"] = cfg.vfm.weights
    result.steps["vfm"] = time.perf_counter() - t

    data = root / "sample-data"
    t = step("1. make-sample-data")
    if not (data / "leftImg8bit_sequence").exists():
        # Rendered at the window size, one process per core (the cache would only resize larger frames down).
        write_sample_dataset(data, train=train_snippets, val=val_snippets, height=cfg.window.height, width=cfg.window.width,
                             seed=cfg.seed, workers=os.cpu_count() or 1)
    result.steps["data"] = time.perf_counter() - t
    result.outputs["data"] = str(data)

    cache = root / "cache" / "synthetic"
    t = step("2. cache (Ray DAG: decode -> VFM -> PCA -> codec -> Zarr)")
    summary = build_cache(cfg, "synthetic", data, cache, workers=workers, allow_random_weights=True)
    console.print(summary.line())
    result.cache = summary
    result.steps["cache"] = time.perf_counter() - t
    result.outputs["cache"] = str(cache)

    from train.pool import make_predicted_pool
    from train.stage1 import train_stage1

    stage1 = root / "stage1"
    t = step("3. train-stage1 (masked feature transformer on the cached features)")
    stage1_val = train_stage1(cfg, str(cache), str(stage1), resume=True).val
    result.steps["stage1"] = time.perf_counter() - t
    result.outputs["stage1"] = str(stage1)

    t = step("4. make-predicted-pool (Stage 1 rollouts for mixed supervision)")
    make_predicted_pool(str(cache), str(stage1), folds="auto")
    result.steps["pool"] = time.perf_counter() - t

    from train.stage2 import train_stage2

    stage2 = root / "stage2"
    t = step("5. train-stage2 (Re2Pix: early fusion, nested dropout, 90/10 mixed supervision)")
    train_stage2(cfg, str(cache), str(stage2), resume=True)
    result.steps["stage2"] = time.perf_counter() - t
    result.outputs["stage2"] = str(stage2)

    baseline = root / "baseline"
    t = step("6. train-stage2 --set stage2.model.conditioning=none (the plain diffusion baseline)")
    train_stage2(baseline_config(cfg), str(cache), str(baseline), resume=True)
    result.steps["baseline"] = time.perf_counter() - t
    result.outputs["baseline"] = str(baseline)

    from eval.predict import predict

    t = step("7. predict (the whole hierarchy on one validation clip)")
    clip = first_val_clip(data)
    predict(str(stage1), str(stage2), clip, root / "predict", cache=str(cache), allow_random_weights=True)
    result.steps["predict"] = time.perf_counter() - t
    result.outputs["predict"] = str(root / "predict")

    from eval.evaluate import evaluate
    from train.heads import train_heads

    heads = root / "heads"
    t = step("8. train-heads (DPT segmentation and depth heads on the labelled frames)")
    train_heads(cfg, str(cache), str(heads), resume=True)
    result.steps["heads"] = time.perf_counter() - t

    # FID/FVD are off: without their weight files the networks would be random, their numbers meaningless, and they
    # would take most of the demo's time. Every other metric of the protocol runs.
    t = step("9. evaluate (Re2Pix vs the baseline, Stage 1, copy-last, oracle; every val window)")
    report = evaluate(cfg, str(cache), str(heads), str(stage1), {"Re2Pix": str(stage2), "Baseline": str(baseline)}, str(root / "eval"),
                      allow_random_weights=True, limit=eval_windows, fid_fvd=False)
    result.steps["evaluate"] = time.perf_counter() - t
    result.outputs["report"] = report["files"]["report"]
    grids = sorted(Path(report["files"].get("qualitative", root / "eval" / "qualitative")).glob("*.png"))
    if grids:  # truth, Re2Pix and the baseline side by side (paper figures 4-8)
        shutil.copyfile(grids[0], root / "comparison.png")
        result.outputs["comparison"] = str(root / "comparison.png")
    result.learning = learning_summary(report, stage1_val)
    console.print(result.learning)

    result.seconds = time.perf_counter() - t_all
    return result


def baseline_config(cfg: Config) -> Config:
    """The plain diffusion baseline: the same DiT and training, no semantic features (so no pool either)."""
    from configs.schema import config_from_dict

    data = cfg.to_dict()
    data["stage2"]["model"]["conditioning"] = "none"
    data["stage2"]["mixed_supervision_prob"] = 0.0
    data["stage2"]["nested_dropout"] = False
    return config_from_dict(data).validate()


def first_val_clip(data: Path) -> Path:
    """A folder holding exactly one validation snippet's frames (predict reads the first K frames of a folder)."""
    import shutil

    frames = sorted((data / "leftImg8bit_sequence" / "val").rglob("*_leftImg8bit.png"))
    if not frames:
        raise FileNotFoundError(f"{data}: no validation frames to predict")
    snippet = frames[0].name.rsplit("_", 2)[0]  # city_seq
    clip = data.parent / "predict-input"
    if not clip.exists():
        tmp = data.parent / ".predict-input.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in frames:
            if f.name.startswith(snippet + "_"):
                shutil.copy(f, tmp / f.name)
        tmp.rename(clip)
    return clip


def learning_summary(report: dict, stage1_val: dict[str, float] | None = None) -> str:
    """One line with what the demo is for: does each stage beat its reference on the val windows?"""
    rows = report["rows"]
    parts = []
    if stage1_val and "cos_step1" in stage1_val:
        parts.append(f"Stage 1 cosine at rollout step 1 {stage1_val['cos_step1']:.3f} vs copy-last "
                     f"{stage1_val['cos_copy_last_step1']:.3f}")

    def mean(row: str, metric: str) -> float | None:
        return ((rows.get(row) or {}).get("metrics", {}).get(metric) or {}).get("mean")

    for metric, label, scale in (("psnr", "PSNR", 1.0), ("ssim", "SSIM", 1.0), ("miou", "mIoU", 100.0)):
        values = [mean(r, metric) for r in ("Re2Pix", "Baseline", "Copy last frame")]
        if None not in values:
            a, b, c = (v * scale for v in values)
            parts.append(f"{label} Re2Pix {a:.3g} / Baseline {b:.3g} / copy-last {c:.3g}")
    s1, copy = mean("Re2Pix (Stage 1)", "miou"), mean("Copy last frame", "miou")
    if s1 is not None and copy is not None:
        parts.append(f"Stage 1 mIoU {100 * s1:.1f} vs copy-last {100 * copy:.1f}")
    return "; ".join(parts)
