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
        return f"demo: done in {self.seconds:.0f} s ({parts}); report: {self.outputs.get('report', self.root)}"


def run_demo(
    cfg: Config, root: Path | None = None, *, train_snippets: int = 24, val_snippets: int = 8, workers: int = 0, eval_windows: int = 4
) -> DemoResult:
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

    t = step("9. evaluate (Re2Pix vs the baseline, Stage 1, copy-last; FID/FVD with RANDOM metric networks)")
    report = evaluate(cfg, str(cache), str(heads), str(stage1), {"Re2Pix": str(stage2), "Baseline": str(baseline)}, str(root / "eval"),
                      allow_random_metric_weights=True, allow_random_weights=True, limit=eval_windows)
    result.steps["evaluate"] = time.perf_counter() - t
    result.outputs["report"] = report["files"]["report"]

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
