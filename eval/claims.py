"""The pure part of `reproduce`: per-seed metrics -> mean / std / values, and whether each claim of the paper holds
(DECISION_RULE: paired, seed-nested contrasts from eval/stats.py, Holm-corrected per claim, decided on the paper's
metrics only).

No I/O, no models: `reproduce.py` feeds it the numbers `evaluate` produced for every seed and the arrays of each
evaluation's windows.npz (eval/windows.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from configs.schema import Config
from eval.stats import combine, holm, mean_contrast, min_detectable, set_contrast, trend_weights
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
from eval.windows import PER_WINDOW, has_metric, metric_over_all_windows, per_window_values, set_statistic

ALPHA = 0.05
DECISION_RULE = (
    "Paired comparisons, nested in seeds. Every row of a seed is scored on the same val windows with the same noise "
    "(windows.npz keeps each row's metrics per window), so a comparison of row A against reference B on one metric "
    "is estimated per seed from the same windows (a per-window metric: the mean over windows of the per-window "
    "differences; mIoU and the Fréchet distances: the metric of A minus that of B on the same windows), sign-oriented "
    "so that positive = the paper's direction, and averaged over seeds. Its uncertainty is the LARGER of two 95 % "
    "intervals: a paired window bootstrap (window indices resampled within each seed, the same indices for A and B, "
    "the metric recomputed) and the seeds' spread (a t interval on n_seeds - 1 degrees of freedom); the p-value is "
    "the larger of the two (two-sided). A comparison holds when its Holm-Bonferroni-corrected p-value (over the "
    "comparisons of its claim) is below alpha = {alpha} AND the difference is in the paper's direction. With fewer "
    "than 2 seeds the training noise between seeds is unmeasured: p-values are reported, no verdict is given. Each "
    "claim is decided only on its decisive metrics: FID/FVD where their weight files are given, else FD-VFM and the "
    "clip-level FD-VFM (an FVD stand-in on VFM features, NOT FVD), then mIoU, mIoU-MO, AbsRel, delta1; PSNR and SSIM "
    "are shown in the tables but decide nothing (they reward blur). Table 5 is one trend test per semantic metric "
    "(slope of the metric over the ordered component levels, one-sided: more components better). Appendix 6.2: each "
    "guidance setting is pre-declared to improve mIoU (the paper: it 'enhances fine-grained semantic details'); Holm "
    "over the sweep, the claim holds when at least one setting holds after correction. 'min detectable' is the "
    "smallest true effect the comparison detects with 80 % power at Holm's strictest level alpha / m."
).format(alpha=ALPHA)

# metric -> True when higher is better. fd_vfm: Fréchet distance on the VFM's PCA features (NOT FID); fd_vfm_clip:
# the same features, one vector per clip (an FVD stand-in, NOT FVD).
HIGHER_IS_BETTER: dict[str, bool] = {
    "miou": True, "miou_moving": True, "abs_rel": False, "delta1": True,
    "fd_vfm": False, "fd_vfm_clip": False, "fid": False, "fvd": False, "psnr": True, "ssim": True,
}
SEMANTIC = ("miou", "miou_moving", "abs_rel", "delta1")
GENERATION = ("fd_vfm", "fd_vfm_clip", "fid", "fvd", "psnr", "ssim")
ALL_METRICS = SEMANTIC + GENERATION
GUIDANCE_METRIC = "miou"  # pre-declared: what every guidance setting should improve


def distribution_metrics(real_nets: bool) -> tuple[str, ...]:
    """The decisive generation metrics: FID/FVD with their weight files, else the two VFM Fréchet distances."""
    return ("fid", "fvd") if real_nets else ("fd_vfm", "fd_vfm_clip")


def decisive(metrics: Sequence[str], real_nets: bool) -> tuple[str, ...]:
    """The paper's metrics among `metrics`, in the order that decides: distribution metrics, then semantics."""
    order = distribution_metrics(real_nets) + SEMANTIC
    return tuple(m for m in order if m in metrics)


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


# ------------------------------------------------------------------------------------------ the tests


@dataclass(frozen=True)
class Comparison:
    """One statement of the paper: `row` is better than `reference` on each of `metrics`."""

    row: str
    reference: str
    metrics: tuple[str, ...] = ALL_METRICS

    def contrast(self) -> tuple[list[str], list[float], bool]:
        return [self.row, self.reference], [1.0, -1.0], False


@dataclass(frozen=True)
class Trend:
    """A shape claim: the metric improves monotonically with `levels` (rows in the same order); tested as the
    slope over the levels' ranks, one-sided."""

    rows: tuple[str, ...]
    levels: tuple[float, ...]
    metrics: tuple[str, ...] = SEMANTIC

    def contrast(self) -> tuple[list[str], list[float], bool]:
        return list(self.rows), trend_weights(self.levels), True


# windows: {seed: {"rows": {row name: windows.npz arrays}, "real_features": [W, T, D] or None}}
Windows = dict[int, dict[str, Any]]


def contrast(windows: Windows, per_seed: dict[int, dict[str, dict[str, float | None]]], rows: list[str],
             weights: list[float], metric: str, one_sided: bool, alpha: float = ALPHA) -> dict[str, Any]:
    """The paired, seed-nested contrast sum_r weights[r] * metric(row r) (eval/stats.py), positive = better. Rows
    without per-window data for this metric (FID/FVD of a 2048-d net) are judged on the seeds alone
    (`window_bootstrap`: false)."""
    higher = HIGHER_IS_BETTER[metric]
    seeds = sorted(per_seed)
    with_windows = [s for s in seeds if all(has_metric(windows.get(s, {}).get("rows", {}).get(r, {}),
                                                        windows.get(s, {}).get("real_features"), metric) for r in rows)]
    if with_windows and len(with_windows) == len(seeds):
        if metric in PER_WINDOW:
            data = [[per_window_values(windows[s]["rows"][r], metric) for r in rows] for s in seeds]
            out = mean_contrast(data, weights, higher, alpha=alpha, one_sided=one_sided)
        else:
            data = [[(windows[s]["rows"][r], windows[s]["real_features"]) for r in rows] for s in seeds]
            n = [len(windows[s]["windows"]) for s in seeds]
            out = set_contrast(data, weights, set_statistic(metric), n, higher, alpha=alpha, one_sided=one_sided)
        return {**out, "window_bootstrap": True}
    values = [[per_seed[s].get(r, {}).get(metric) for r in rows] for s in seeds]
    usable = [v for v in values if all(x is not None and math.isfinite(x) for x in v)]
    if not usable:
        return {"difference": None, "why": "no value"}
    sign = 1.0 if higher else -1.0
    estimates = [sign * sum(w * x for w, x in zip(weights, v)) for v in usable]
    out = combine(estimates, [0.0] * len(estimates), [0] * len(estimates), alpha, one_sided, window_bootstrap=False)
    return {**out, "n_windows": None, "window_bootstrap": False}


def judge(per_seed: dict[int, dict[str, dict[str, float | None]]], windows: Windows, tests: Sequence[Comparison | Trend],
          real_nets: bool, rule: str = "all", alpha: float = ALPHA) -> dict[str, Any]:
    """Every test on its decisive metrics, Holm-corrected together; the claim holds when every judged comparison
    holds (`rule` "all") or at least one does ("any": a sweep such as guidance, where the paper says some setting
    helps). With fewer than 2 seeds nothing is judged (holds: None)."""
    results: list[dict[str, Any]] = []
    for t in tests:
        rows, weights, one_sided = t.contrast()
        for m in decisive(t.metrics, real_nets):
            r = contrast(windows, per_seed, rows, weights, m, one_sided, alpha)
            if r.get("why") == "no value" or r.get("difference") is None:
                continue
            head = ({"row": t.row, "reference": t.reference} if isinstance(t, Comparison) else
                    {"test": "trend", "rows": list(t.rows), "levels": list(t.levels)})
            results.append({**head, "metric": m, "better": "higher" if HIGHER_IS_BETTER[m] else "lower", **r})
    adjusted = holm([r.get("p_value") for r in results])
    m_tests = sum(p is not None for p in adjusted)
    n_seeds = min((r["n_seeds"] for r in results), default=0)
    for r, p in zip(results, adjusted):
        r["p_holm"] = p
        judged = p is not None and r["n_seeds"] >= 2
        r["holds"] = bool(p < alpha and r["difference"] > 0) if judged else None
        # no variation at all (rows identical on every window and seed): no standard error, nothing to detect with
        r["min_detectable"] = None if not r.get("se") else min_detectable(
            r["se"], alpha / max(1, m_tests), 0.8, math.inf if r.get("df") is None else r["df"], r.get("one_sided", False))
    verdicts = [r["holds"] for r in results if r["holds"] is not None]
    holds = None if not verdicts else (any(verdicts) if rule == "any" else all(verdicts))
    return {"comparisons": results, "holds": holds, "held": sum(verdicts), "judged": len(verdicts),
            "direction_seen": sum(r["difference"] > 0 for r in results), "compared": len(results),
            "decisive_metrics": list(dict.fromkeys(r["metric"] for r in results)) or
                                list(dict.fromkeys(m for t in tests for m in decisive(t.metrics, real_nets))),
            "correction": "holm", "alpha": alpha, "n_seeds": n_seeds,
            "rule": ("holds when at least one pre-declared comparison holds after Holm" if rule == "any"
                     else "holds when every decisive comparison holds after Holm")}


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



def claim_specs(variants: list[str], cfg: Config, sweeps: bool) -> dict[str, tuple[list[str], list[Comparison | Trend], str, str]]:
    """claim -> (rows shown, tests, rule "all" / "any", what the paper says). Only rows that were run are compared;
    each test is decided on its decisive metrics only (`decisive`)."""
    have = set(variants)
    t1 = [v for v in (RE2PIX, BASELINE, LARGE, REPA, VIDEOREPA) if v in have]
    specs: dict[str, tuple[list[str], list[Comparison | Trend], str, str]] = {
        "table1": (t1 + [STAGE1_ROW, COPY_ROW, ORACLE_ROW],
                   [Comparison(RE2PIX, v) for v in t1 if v != RE2PIX] + ([Comparison(LARGE, BASELINE)] if {LARGE, BASELINE} <= have else []),
                   "all", "Re2Pix beats every baseline on every metric; Baseline-Large beats Baseline but not Re2Pix (Table 1)"),
    }
    if NESTED_OFF in have:
        specs["nested_dropout"] = ([NESTED_OFF, RE2PIX], [Comparison(RE2PIX, NESTED_OFF)], "all",
                                   "nested dropout improves every metric, most of all generation quality (Table 3)")
    mixed: list[Comparison | Trend] = [Comparison(RE2PIX, TRUE_ONLY, GENERATION)] if TRUE_ONLY in have else []
    mixed += [Comparison(RE2PIX, PRED_ONLY, SEMANTIC)] if PRED_ONLY in have else []
    if mixed:
        specs["mixed_supervision"] = ([r for r in (TRUE_ONLY, PRED_ONLY, RE2PIX) if r in have], mixed, "all",
                                      "90/10 mixing generates better than true-only and keeps semantics better than "
                                      "predicted-only (Table 4)")
    if sweeps:
        levels = components_levels(cfg)
        shown = [f"Re2Pix, C = {c}" for c in levels] + [RE2PIX]
        specs["components"] = (shown, [Trend(tuple(shown), tuple(float(c) for c in levels + [cfg.pca.components]), SEMANTIC)],
                               "all", f"all C = {cfg.pca.components} channels give the best semantic consistency; fewer "
                               "degrade gracefully: semantics worsen as components are removed (Table 5; a trend test)")
        g = [f"Re2Pix, guidance w = {w}, c = {c}" for w, c in guidance_settings(cfg)]
        specs["guidance"] = (g + [RE2PIX], [Comparison(r, RE2PIX, (GUIDANCE_METRIC,)) for r in g], "any",
                             "some (c, w) improves semantic fidelity over no guidance (appendix 6.2); pre-declared: "
                             f"each setting should improve {GUIDANCE_METRIC}, Holm over the sweep")
    return specs


def add_window_metrics(per_seed: dict[int, dict[str, dict[str, float | None]]], windows: Windows) -> None:
    """Add the metrics only windows.npz has (fd_vfm_clip) to every row of every seed, in place."""
    for seed, seed_rows in per_seed.items():
        data = windows.get(seed) or {}
        for row, metrics in seed_rows.items():
            arrays = (data.get("rows") or {}).get(row)
            if arrays is not None:
                metrics["fd_vfm_clip"] = metric_over_all_windows(arrays, data.get("real_features"), "fd_vfm_clip")


def build_results(cfg: Config, per_seed: list[dict[str, dict[str, float | None]]], curves: dict[int, Any],
                  runs: dict[int, dict[str, dict[str, Any]]], evals: dict[int, dict[str, Any]], variants: list[str],
                  steps: int, seeds: list[int], dataset: str, root: str, sweeps: bool,
                  windows: Windows | None = None) -> dict[str, Any]:
    """reproduce.json's content. `windows`: {seed: {"rows": {row: windows.npz arrays}, "real_features", "windows"}}
    (every study row of that seed, including the Figure 3 steps as '<run> @ <step>')."""
    windows = windows or {}
    real_nets = bool(cfg.eval.fid_weights or cfg.eval.fvd_weights)
    by_seed = dict(zip(seeds, per_seed))
    add_window_metrics(by_seed, windows)
    rows = aggregate_rows(per_seed)
    claims: dict[str, Any] = {}
    for name, (shown, tests, rule, paper) in claim_specs(variants, cfg, sweeps).items():
        claims[name] = {"paper": paper, "rows": {r: rows[r] for r in shown if r in rows},
                        **judge(by_seed, windows, tests, real_nets, rule)}

    if BASELINE in variants:  # Figure 3: per step, per seed; the test at every step (Holm over steps), speed-up per seed
        step_rows: dict[int, dict[str, dict[str, float | None]]] = {}
        speedups: dict[str, list[dict[str, Any]]] = {}
        for seed in seeds:
            c = curves.get(seed, {})
            step_rows[seed] = {f"{run} @ {s}": dict(m) for run, pts in c.items() for s, m in pts}
        add_window_metrics(step_rows, windows)
        for seed in seeds:
            c = curves.get(seed, {})
            for metric in ("fd_vfm", "fd_vfm_clip", "miou", "psnr"):
                speedups.setdefault(metric, []).append({"seed": seed, **speedup(
                    [(s, step_rows[seed][f"{RE2PIX} @ {s}"].get(metric)) for s, _ in c.get(RE2PIX, [])],
                    [(s, step_rows[seed][f"{BASELINE} @ {s}"].get(metric)) for s, _ in c.get(BASELINE, [])], metric)})
        curve_rows = aggregate_rows([step_rows[s] for s in seeds])
        points = sorted({s for c in curves.values() for pts in c.values() for s, _ in pts})
        judged = judge(step_rows, windows, [Comparison(f"{RE2PIX} @ {s}", f"{BASELINE} @ {s}",
                                                        distribution_metrics(real_nets) + ("miou",)) for s in points],
                       real_nets, "all")
        claims["convergence"] = {
            "paper": "Re2Pix is better than the baseline at every checkpoint; the baseline needs 7x (generation) and 14x "
                     "(segmentation) the steps to reach Re2Pix's values (Figure 3)",
            "rows": curve_rows, "steps": points, "speedup": speedups, **judged,
        }

    first = evals[seeds[0]]
    prov = (first.get("figure3") or {}).get("provenance") or {}
    params = {v: runs[seeds[0]][v].get("params") for v in variants}
    return {
        "rule": DECISION_RULE, "correction": "holm", "alpha": ALPHA,
        "fd_vfm_clip": "a clip-level Fréchet distance on the VFM features: each window's predicted future frames' "
                       "spatially pooled PCA features concatenated over time into one vector per clip, against the real "
                       "clips. An FVD stand-in on VFM features, NOT FVD (no I3D network).",
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
