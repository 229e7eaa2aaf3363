"""The pure part of `reproduce`: per-seed metrics -> mean / std / values, and whether each claim of the paper holds.

No I/O, no models: `reproduce.py` feeds it the numbers `evaluate` produced for every seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

HOLDS_RULE = (
    "A comparison (row A against reference row B on one metric) holds when BOTH (1) the paper's direction is seen: "
    "mean(A) is better than mean(B) in that metric's better direction, and (2) the difference is larger than the "
    "seeds' spread: |mean(A) - mean(B)| > pooled std = sqrt((std(A)^2 + std(B)^2) / 2), where std is the sample "
    "standard deviation (ddof 1) of the per-seed values. With fewer than 2 seeds there is no spread to compare "
    "against: `holds` is null and only `direction_seen` is reported. Means and stds are over seeds (one value per "
    "seed: the mean over that seed's samples)."
)

# metric -> True when higher is better. fd_vfm: Fréchet distance on the VFM's PCA features (NOT FID).
HIGHER_IS_BETTER: dict[str, bool] = {
    "miou": True, "miou_moving": True, "abs_rel": False, "delta1": True,
    "fd_vfm": False, "fid": False, "fvd": False, "psnr": True, "ssim": True,
}
SEMANTIC = ("miou", "miou_moving", "abs_rel", "delta1")
GENERATION = ("fd_vfm", "fid", "fvd", "psnr", "ssim")
ALL_METRICS = SEMANTIC + GENERATION


def aggregate(values: Sequence[float | None]) -> dict[str, Any]:
    """{"mean", "std" (ddof 1; 0 for a single value), "n", "values"} over seeds; None where no value is finite."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    out: dict[str, Any] = {"values": [None if v is None else float(v) for v in values], "n": len(finite)}
    if not finite:
        return {**out, "mean": None, "std": None}
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return {**out, "mean": mean, "std": std}


def aggregate_rows(per_seed: Sequence[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """[{row: {metric: value}} per seed] -> {row: {metric: aggregate over seeds}}; a row missing in a seed counts None."""
    rows: list[str] = []
    for seed_rows in per_seed:
        rows += [r for r in seed_rows if r not in rows]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        metrics: list[str] = []
        for seed_rows in per_seed:
            metrics += [m for m in seed_rows.get(row, {}) if m not in metrics]
        out[row] = {m: aggregate([seed_rows.get(row, {}).get(m) for seed_rows in per_seed]) for m in metrics}
    return out


def compare(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str) -> dict[str, Any]:
    """The HOLDS_RULE applied to two aggregates of `metric` (row A claimed better than reference B)."""
    higher = HIGHER_IS_BETTER[metric]
    out: dict[str, Any] = {"metric": metric, "better": "higher" if higher else "lower", "difference": None,
                           "pooled_std": None, "direction_seen": None, "holds": None}
    if not a or not b or a.get("mean") is None or b.get("mean") is None:
        out["why"] = "no value"
        return out
    diff = a["mean"] - b["mean"]
    seen = diff > 0 if higher else diff < 0
    out.update(difference=diff, direction_seen=seen)
    n = min(a.get("n", 0), b.get("n", 0))
    if n < 2:
        out["why"] = "fewer than 2 seeds: no spread to compare against"
        return out
    pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
    out.update(pooled_std=pooled, holds=bool(seen and abs(diff) > pooled))
    return out


@dataclass(frozen=True)
class Comparison:
    """One statement of the paper: `row` is better than `reference` on each of `metrics`."""

    row: str
    reference: str
    metrics: tuple[str, ...] = ALL_METRICS


def judge(rows: dict[str, dict[str, dict[str, Any]]], comparisons: Sequence[Comparison], any_of: bool = False) -> dict[str, Any]:
    """Every comparison under HOLDS_RULE; the claim `holds` when all judged comparisons hold (or any, `any_of`:
    claims such as guidance, where the paper says some setting helps). Metrics without values are left out."""
    results = []
    for c in comparisons:
        for m in c.metrics:
            r = compare(rows.get(c.row, {}).get(m), rows.get(c.reference, {}).get(m), m)
            if r.get("why") == "no value":
                continue
            results.append({"row": c.row, "reference": c.reference, **r})
    judged = [r["holds"] for r in results if r["holds"] is not None]
    seen = [r["direction_seen"] for r in results if r["direction_seen"] is not None]
    holds = None if not judged else (any(judged) if any_of else all(judged))
    return {"comparisons": results, "holds": holds, "held": sum(judged), "judged": len(judged),
            "direction_seen": sum(seen), "compared": len(seen), "rule": "any comparison holds" if any_of else "every comparison holds"}


def speedup(re2pix: Sequence[tuple[int, float | None]], baseline: Sequence[tuple[int, float | None]], metric: str) -> dict[str, Any]:
    """Figure 3's speed-up: Re2Pix's value at its first checkpoint step s; the first baseline step b at which the
    baseline is at least as good; speed-up b / s. When the baseline never gets there, b is unknown and the speed-up
    is only bounded below by (last baseline step) / s ("lower_bound": true)."""
    higher = HIGHER_IS_BETTER[metric]
    ours = [(s, v) for s, v in re2pix if v is not None]
    theirs = [(s, v) for s, v in sorted(baseline) if v is not None]
    if not ours or not theirs:
        return {"metric": metric, "step": None, "target": None, "baseline_step": None, "speedup": None, "lower_bound": False}
    step, target = ours[0]
    reached = [s for s, v in theirs if (v >= target if higher else v <= target)]
    if reached:
        return {"metric": metric, "step": step, "target": target, "baseline_step": reached[0],
                "speedup": reached[0] / step, "lower_bound": False}
    return {"metric": metric, "step": step, "target": target, "baseline_step": None,
            "speedup": theirs[-1][0] / step, "lower_bound": True}
