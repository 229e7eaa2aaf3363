"""The pure part of `reproduce`: per-seed metrics -> mean / std / values, and whether each claim of the paper holds.

No I/O, no models: `reproduce.py` feeds it the numbers `evaluate` produced for every seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from configs.schema import Config
from eval.variants import (
    BASELINE,
    COPY_ROW,
    LARGE,
    NESTED_OFF,
    ORACLE_ROW,
    PRED_ONLY,
    RE2PIX,
    REPA,
    STAGE1_ROW,
    TRUE_ONLY,
    VARIANTS,
    VIDEOREPA,
    components_levels,
    guidance_settings,
)

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
            "direction_seen": sum(seen), "compared": len(seen), "rule": "holds when any comparison holds" if any_of else "holds when every comparison holds"}


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


# ------------------------------------------------------------------------ the study's claims and its results


def estimate_default(runs: dict[int, dict[str, dict[str, Any]]], evals: dict[int, dict[str, Any]], timings: dict[str, float],
                     seeds: int, steps: int, windows: int, parallel: int = 1) -> dict[str, Any]:
    """The default study's time predicted from THIS run's measurements: Stage 2 seconds per step of each variant
    (finished.json, mean over seeds) x steps x seeds, plus evaluation seconds per (window x generative job) x the
    same jobs per seed x windows x seeds, plus the shared steps as measured here (data, cache, Stage 1, pool, heads).
    Runs reused from an earlier call keep the times they were measured with. With `parallel` tasks at a time the task
    seconds are divided by it (the tasks are many and similar, so they pack well)."""
    per_step: dict[str, list[float]] = {}
    for variants in runs.values():
        for v, done in variants.items():
            if done.get("seconds_per_step"):
                per_step.setdefault(v, []).append(float(done["seconds_per_step"]))
    measured = {v: sum(x) / len(x) for v, x in per_step.items()}
    fallback = sum(measured.values()) / len(measured) if measured else 0.0  # a variant only ever resumed: no clean time
    names = {v for variants in runs.values() for v in variants}
    train = sum(measured.get(v, fallback) for v in names) * steps * seeds
    cost, units, jobs_per_seed = 0.0, 0, []
    for seed_evals in evals.values():
        jobs_here = 0
        for metrics in seed_evals.values():
            jobs = [k for k in (metrics.get("seconds") or {}) if k not in ("reference", "total")]
            n = int((metrics.get("protocol") or {}).get("windows") or 0)
            cost += float((metrics.get("seconds") or {}).get("total") or 0.0)
            units += n * len(jobs)
            jobs_here += len(jobs)
        jobs_per_seed.append(jobs_here)
    per_unit = cost / units if units else 0.0
    evaluation = per_unit * (max(jobs_per_seed) if jobs_per_seed else 0) * windows * seeds
    shared = sum(v for k, v in timings.items() if k in ("data", "cache", "stage1", "pool", "heads"))
    train, evaluation = train / max(1, parallel), evaluation / max(1, parallel)
    return {"seeds": seeds, "stage2_steps": steps, "windows": windows, "jobs": parallel,
            "stage2_seconds_per_step": measured,
            "eval_seconds_per_window_job": per_unit, "eval_jobs_per_seed": max(jobs_per_seed) if jobs_per_seed else 0,
            "train_seconds": train, "eval_seconds": evaluation, "shared_seconds": shared,
            "total_seconds": train + evaluation + shared}



def claim_specs(variants: list[str], cfg: Config, sweeps: bool) -> dict[str, tuple[list[str], list[Comparison], bool, str]]:
    """claim -> (rows shown, comparisons, any_of, what the paper says). Only rows that were run are compared."""
    have = set(variants)
    t1 = [v for v in (RE2PIX, BASELINE, LARGE, REPA, VIDEOREPA) if v in have]
    specs = {
        "table1": (t1 + [STAGE1_ROW, COPY_ROW, ORACLE_ROW],
                   [Comparison(RE2PIX, v) for v in t1 if v != RE2PIX] + ([Comparison(LARGE, BASELINE)] if {LARGE, BASELINE} <= have else []),
                   False, "Re2Pix beats every baseline on every metric; Baseline-Large beats Baseline but not Re2Pix (Table 1)"),
    }
    if NESTED_OFF in have:
        specs["nested_dropout"] = ([NESTED_OFF, RE2PIX], [Comparison(RE2PIX, NESTED_OFF)], False,
                                   "nested dropout improves every metric, most of all generation quality (Table 3)")
    mixed = [Comparison(RE2PIX, TRUE_ONLY, GENERATION)] if TRUE_ONLY in have else []
    mixed += [Comparison(RE2PIX, PRED_ONLY, SEMANTIC)] if PRED_ONLY in have else []
    if mixed:
        specs["mixed_supervision"] = ([r for r in (TRUE_ONLY, PRED_ONLY, RE2PIX) if r in have], mixed, False,
                                      "90/10 mixing generates better than true-only and keeps semantics better than "
                                      "predicted-only (Table 4)")
    if sweeps:
        levels = components_levels(cfg)
        specs["components"] = ([f"Re2Pix, C = {c}" for c in levels] + [RE2PIX],
                               [Comparison(RE2PIX, f"Re2Pix, C = {c}", SEMANTIC) for c in levels], False,
                               f"all C = {cfg.pca.components} channels give the best semantic consistency; fewer degrade "
                               "gracefully (Table 5)")
        g = [f"Re2Pix, guidance w = {w}, c = {c}" for w, c in guidance_settings(cfg)]
        specs["guidance"] = (g + [RE2PIX], [Comparison(r, RE2PIX) for r in g], True,
                             "some (c, w) improves semantic fidelity or generation quality over no guidance (appendix 6.2)")
    return specs


def build_results(cfg: Config, per_seed: list[dict[str, dict[str, float | None]]], curves: dict[int, Any],
                  runs: dict[int, dict[str, dict[str, Any]]], evals: dict[int, dict[str, Any]], variants: list[str],
                  steps: int, seeds: list[int], dataset: str, root: str, sweeps: bool) -> dict[str, Any]:
    rows = aggregate_rows(per_seed)
    claims: dict[str, Any] = {}
    for name, (shown, comparisons, any_of, paper) in claim_specs(variants, cfg, sweeps).items():
        claims[name] = {"paper": paper, "rows": {r: rows[r] for r in shown if r in rows}, **judge(rows, comparisons, any_of)}

    if BASELINE in variants:  # Figure 3: per step, per seed; the rule at every step, the speed-up per seed
        step_rows: list[dict[str, dict[str, float | None]]] = []
        speedups: dict[str, list[dict[str, Any]]] = {}
        for seed in seeds:
            c = curves.get(seed, {})
            step_rows.append({f"{run} @ {s}": m for run, pts in c.items() for s, m in pts})
            for metric in ("fd_vfm", "psnr", "ssim", "miou"):
                speedups.setdefault(metric, []).append({"seed": seed, **speedup(
                    [(s, m.get(metric)) for s, m in c.get(RE2PIX, [])], [(s, m.get(metric)) for s, m in c.get(BASELINE, [])], metric)})
        curve_rows = aggregate_rows(step_rows)
        points = sorted({s for c in curves.values() for pts in c.values() for s, _ in pts})
        judged = judge(curve_rows, [Comparison(f"{RE2PIX} @ {s}", f"{BASELINE} @ {s}", ("fd_vfm", "psnr", "ssim", "miou")) for s in points])
        claims["convergence"] = {
            "paper": "Re2Pix is better than the baseline at every checkpoint; the baseline needs 7x (generation) and 14x "
                     "(segmentation) the steps to reach Re2Pix's values (Figure 3)",
            "rows": curve_rows, "steps": points, "speedup": speedups, **judged,
        }

    first = evals[seeds[0]]
    prov = (first.get("figure3") or {}).get("provenance") or {}
    params = {v: runs[seeds[0]][v].get("params") for v in variants}
    return {
        "rule": HOLDS_RULE,
        "dataset": dataset, "root": root, "config": cfg.name, "seeds": seeds, "stage2_steps": steps,
        "windows": ((first.get("figure3") or {}).get("protocol") or {}).get("windows"),
        "variants": {v: VARIANTS[v][0] for v in variants},
        "params": params,
        "fd_vfm": "Fréchet distance between the VFM's PCA features (spatially averaged) of every generated future frame "
                  "and of the real frame at the same position. It is NOT FID (no Inception network).",
        "shared": "the cache, Stage 1, its pool and the heads are trained once (config seed) and shared by every seed; "
                  "seeds vary Stage 2 (weights, data order, noise) and the sampling noise of the evaluation",
        "claims": claims,
        "rows": rows,
        "per_seed": {str(s): r for s, r in zip(seeds, per_seed)},
        "runs": {str(s): r for s, r in runs.items()},
        "provenance": {
            "vfm": prov.get("vfm"), "codec": prov.get("codec"), "pca_fingerprint": prov.get("pca_fingerprint"),
            "heads": prov.get("heads"), "stage1": prov.get("stage1"),
            "stage2": {str(s): {v: {"checkpoint": r.get("checkpoint"), "params": r.get("params")} for v, r in rs.items()} for s, rs in runs.items()},
            "distribution_net": "the cache's VFM + PCA (fd_vfm), no downloaded weights",
            "fid_fvd": "computed with the given weight files" if (cfg.eval.fid_weights or cfg.eval.fvd_weights) else
                       "not computed: no FID/FVD weight files given (eval.fid_weights / eval.fvd_weights)",
            # the Inception / I3D entries only count when real FID / FVD ran (fid_fvd evaluation): fd_vfm needs neither
            "random_parts": [p for p in prov.get("random_parts", []) if p not in ("FID Inception", "FVD I3D")]
            + [p for p in ((first.get("fid_fvd") or {}).get("provenance") or {}).get("random_parts", []) if p in ("FID Inception", "FVD I3D")],
        },
        "evaluations": {str(s): {k: (v.get("files") or {}).get("report") for k, v in e.items()} for s, e in evals.items()},
    }
