"""reproduce.json and report.md for `reproduce`: the paper's tables with deltas to the Baseline, Figure 3 as PNG,
qualitative grids, the decision rule (paired, Holm-corrected) with each comparison's difference, interval, p-values
and smallest detectable effect, provenance and time."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from eval.protocol_tag import tags_line
from eval.report import COLUMNS, format_cell, plot_metric_vs_step
from pipeline import atomic

# reproduce's columns: evaluate's, with FID / FVD (only when their weight files were given) after the weight-free ones
SHOWN: dict[str, tuple[str, float, str, bool]] = {
    **{k: COLUMNS[k] for k in ("miou", "miou_moving", "abs_rel", "delta1")},
    "fd_vfm": ("FD-VFM ↓ (not FID)", 1.0, "{:.3f}", False),
    "fd_vfm_clip": ("FD-VFM-clip ↓ (not FVD)", 1.0, "{:.3f}", False),
    **{k: COLUMNS[k] for k in ("psnr", "ssim", "fid", "fvd")},
}
TITLES = {
    "table1": "Table 1: comparison with baselines",
    "nested_dropout": "Table 3: nested dropout",
    "mixed_supervision": "Table 4: mixed supervision",
    "components": "Table 5: feature channels at inference (Re2Pix model)",
    "guidance": "Appendix 6.2: representation guidance",
    "convergence": "Figure 3: metrics vs training step",
}


def _columns(rows: dict[str, Any]) -> dict[str, tuple[str, float, str, bool]]:
    present = {m for r in rows.values() for m, v in r.items() if v.get("mean") is not None}
    return {k: v for k, v in SHOWN.items() if k in present}


def table(rows: dict[str, Any], reference: str | None) -> list[str]:
    """Markdown rows: mean ± std over seeds, (delta to `reference`) in the shown units."""
    columns = _columns(rows)
    base = rows.get(reference) if reference else None
    lines = ["| Method | " + " | ".join(c[0] for c in columns.values()) + " |", "|---|" + ":---:|" * len(columns)]
    for name, metrics in rows.items():
        cells = [format_cell(metrics.get(k), spec, None if name == reference or base is None else base.get(k)) for k, spec in columns.items()]
        lines.append(f"| {'**' + name + '**' if name == reference else name} | " + " | ".join(cells) + " |")
    return lines


def _fmt(x: float | None, scale: float = 1.0, spec: str = "{:+.3g}") -> str:
    return "n/a" if x is None else spec.format(x * scale)


def comparisons(claim: dict[str, Any]) -> list[str]:
    """One line per test: the paired difference (positive = the paper's direction) with its 95 % interval, p, p after
    Holm, the smallest effect detectable at 80 % power, the verdict."""
    lines = ["| comparison | metric | difference (+ = paper's direction) | 95 % CI | interval | p | p (Holm) | "
             "min detectable (80 %) | n seeds x windows | holds |", "|---|---|---:|---|---|---:|---:|---:|---|:---:|"]
    for c in claim["comparisons"]:
        scale = SHOWN.get(c["metric"], ("", 1.0))[1]
        what = (f"{c['row']} better than {c['reference']}" if "row" in c else
                "trend over " + ", ".join(c["rows"]) + " (more components better)")
        ci = "n/a" if not c.get("ci95") else f"[{_fmt(c['ci95'][0], scale)}, {_fmt(c['ci95'][1], scale)}]"
        holds = {True: "yes", False: "no", None: "n/a"}[c["holds"]]
        interval = c.get("interval", "n/a") + ("" if c.get("window_bootstrap", True) else " (no per-window data)")
        lines.append(f"| {what} | {c['metric']} ({c['better']} is better) | {_fmt(c['difference'], scale)} | {ci} | "
                     f"{interval} | {_fmt(c.get('p_value'), 1, '{:.3g}')} | {_fmt(c.get('p_holm'), 1, '{:.3g}')} | "
                     f"{_fmt(c.get('min_detectable'), scale, '{:.3g}')} | {c['n_seeds']} x {c.get('n_windows') or 'n/a'} | {holds} |")
    return lines


def _verdict(claim: dict[str, Any]) -> str:
    holds = {True: "**holds**", False: "**does not hold**",
             None: "**not judged** (fewer than 2 seeds: the training noise is unmeasured)"}[claim["holds"]]
    return (f"{holds} ({claim['rule']}, alpha {claim['alpha']}, {claim['correction']} over {claim['compared']} "
            f"comparisons; {claim['held']} of {claim['judged']} judged comparisons hold; paper's direction seen in "
            f"{claim['direction_seen']} of {claim['compared']}; decided on {', '.join(claim['decisive_metrics']) or 'nothing'})")


def _detectable(claim: dict[str, Any]) -> str:
    """The smallest effect per decisive metric this study could detect at 80 % power (the median over the claim's
    comparisons on that metric), in the table's units."""
    parts = []
    for metric in claim["decisive_metrics"]:
        values = sorted(c["min_detectable"] for c in claim["comparisons"] if c["metric"] == metric and c.get("min_detectable") is not None)
        if values:
            parts.append(f"{metric} {values[len(values) // 2] * SHOWN.get(metric, ('', 1.0))[1]:.3g}")
    return "; ".join(parts) or "n/a"


def plots(results: dict[str, Any], out: Path) -> dict[str, str]:
    """Figure 3: seed-mean curves of Re2Pix and Baseline per metric."""
    conv = results["claims"].get("convergence")
    files: dict[str, str] = {}
    if not conv:
        return files
    for metric in ("fd_vfm", "psnr", "miou"):
        series: dict[str, list[tuple[int, float | None]]] = {}
        for name, metrics in conv["rows"].items():
            run, _, step = name.rpartition(" @ ")
            series.setdefault(run, []).append((int(step), (metrics.get(metric) or {}).get("mean")))
        if any(v is not None for pts in series.values() for _, v in pts):
            path = out / "plots" / f"{metric}_vs_step.png"
            plot_metric_vs_step(series, SHOWN[metric][0], path)
            files[metric] = str(path)
    return files


def render(results: dict[str, Any], files: dict[str, Any]) -> str:
    claims = results["claims"]
    seconds = results.get("seconds", {})
    lines = [
        "# Re2Pix: the paper's claims, reproduced at this scale",
        "",
        f"Config `{results['config']}`, dataset `{results['dataset']}` ({results['root']}), {results['windows']} val windows, "
        f"seeds {results['seeds']}, {results['stage2_steps']} Stage 2 steps for every variant. Total time "
        f"{seconds.get('total', 0):.0f} s (this call; reused runs cost nothing).",
        "",
    ]
    preset = results.get("preset") or {}
    if preset:
        lines += [f"Preset `{preset['name']}`" + (f"; cut: {'; '.join(preset['cut'])}" if preset.get("cut") else "")
                  + f". Figure 3: {preset['figure3']}.", ""]
    if results.get("protocol_tags"):
        lines += [tags_line(results["protocol_tags"]) + " (compare numbers only under equal tags)", ""]
    if results.get("pool_folds"):
        f = results["pool_folds"]
        lines += [f"Predicted-feature pool (Table 4's mixed supervision): folds {f['requested']} -> {f['chosen']}: {f['reason']}.", ""]
    if (results.get("windows") or 0) < 64:
        lines += [f"> Only {results['windows']} val windows: differences this small a set shows are hardly measurable "
                  "(the default synthetic set has 64).", ""]
    random_parts = results["provenance"].get("random_parts") or []
    if random_parts:
        lines += [f"> ⚠️ **RANDOM WEIGHTS** in {', '.join(random_parts)}: the rows are compared on the same random features; "
                  "absolute numbers mean nothing outside this study"
                  + ("; FID / FVD from random networks are meaningless" if {"FID Inception", "FVD I3D"} & set(random_parts) else "")
                  + ".", ""]
    lines += ["## The rule", "", results["rule"], "", f"Correction: {results.get('correction', 'holm')} "
              f"(Holm-Bonferroni over the comparisons of each claim), alpha {results.get('alpha')}.", "",
              f"**FD-VFM**: {results['fd_vfm']}", "", f"**FD-VFM-clip**: {results.get('fd_vfm_clip', 'n/a')}", "",
              f"**Shared parts**: {results['shared']}.", "", "## Summary", "",
              "| claim | paper | verdict | smallest effect detectable at 80 % power |", "|---|---|---|---|"]
    lines += [f"| {TITLES.get(k, k)} | {c['paper']} | {_verdict(c)} | {_detectable(c)} |" for k, c in claims.items()]
    lines.append("")
    refs = {"table1": "Baseline", "nested_dropout": "Re2Pix, nested dropout off", "mixed_supervision": "Re2Pix",
            "components": "Re2Pix", "guidance": "Re2Pix"}
    for key, claim in claims.items():
        lines += [f"## {TITLES.get(key, key)}", "", claim["paper"] + ".", "", _verdict(claim), "",
                  f"Smallest effect this study could detect at 80 % power (Holm's strictest level): {_detectable(claim)}.", ""]
        if key == "convergence":
            lines += table(claim["rows"], None) + [""]
            for metric, per_seed in claim["speedup"].items():
                parts = []
                for s in per_seed:
                    seed = f"seed {s['seed']}: " if "seed" in s else ""
                    if s["speedup"] is None:
                        parts.append(f"{seed}n/a")
                    else:
                        parts.append(f"{seed}{'>' if s['lower_bound'] else ''}{s['speedup']:.2g}x (Re2Pix at step {s['step']}, "
                                     f"baseline {'never' if s['baseline_step'] is None else 'at step ' + str(s['baseline_step'])})")
                lines.append(f"- speed-up in {metric}: " + "; ".join(parts))
            lines.append("")
            lines += [f"![{m}]({Path(p).relative_to(files['out'])})" for m, p in files.get("plots", {}).items()] + [""]
        else:
            if key == "table1":
                params = results.get("params") or {}
                lines += ["Parameters: " + ", ".join(f"{v} {n:,}" for v, n in params.items() if n) + "."]
                if params.get("Baseline-Large") and params.get("Re2Pix"):
                    more = params["Baseline-Large"] > params["Re2Pix"]
                    lines.append(f"Baseline-Large has {'more' if more else 'NOT more'} parameters than Re2Pix, as the paper's control requires.")
                lines.append("")
            lines += table(claim["rows"], refs.get(key)) + [""]
        lines += comparisons(claim) + [""]
    if files.get("grids"):
        lines += ["## Qualitative", ""] + [f"![{k}]({Path(p).relative_to(files['out'])})" for k, p in files["grids"].items()] + [""]
    prov = results["provenance"]
    lines += ["## Provenance of every weight", "",
              f"- VFM: {prov.get('vfm')}", f"- codec: {prov.get('codec')}", f"- PCA: {prov.get('pca_fingerprint')}",
              f"- Stage 1: {(prov.get('stage1') or {}).get('checkpoint')} ({(prov.get('stage1') or {}).get('selected')})",
              *[f"- {t} head: {i.get('checkpoint')} ({i.get('selected')})" for t, i in (prov.get("heads") or {}).items()],
              f"- distribution metric: {prov.get('distribution_net')}", f"- FID / FVD: {prov.get('fid_fvd')}", "",
              "| seed | variant | checkpoint | parameters |", "|---|---|---|---:|"]
    for seed, variants in prov.get("stage2", {}).items():
        lines += [f"| {seed} | {v} | {i['checkpoint']} | {i['params']:,} |" for v, i in variants.items()]
    jobs = (results.get("this_call") or {}).get("jobs", 1)
    lines += ["", "## Time", "", f"{jobs} task(s) at a time: the '(wall)' rows are the phases' wall time, the per-variant and "
              "per-evaluation rows sum the tasks' own seconds (they overlap when more than one runs at a time).", "",
              "| step | seconds |", "|---|---:|"] + [f"| {k} | {v:.0f} |" for k, v in seconds.items()]
    est = results.get("estimate") or {}
    if est:
        lines += ["", f"Estimated time of the {est.get('preset', 'default')} study ({est['seeds']} seeds, {est['stage2_steps']} Stage 2 steps, "
                  f"{est['windows']} val windows) from this run's measured step times: {est['total_seconds'] / 60:.0f} min "
                  f"(Stage 2 training {est['train_seconds'] / 60:.0f} min, evaluation {est['eval_seconds'] / 60:.0f} min at "
                  f"{est['eval_seconds_per_window_job']:.2f} s per window and generative job x {est['eval_jobs_per_seed']} jobs "
                  f"per seed, shared steps {est['shared_seconds'] / 60:.0f} min; {est.get('jobs', 1)} task(s) at a time)."]
    lines += ["", "Per-evaluation reports (seed: name -> report.md): see `evaluations` in reproduce.json.", ""]
    return "\n".join(lines)


def copy_grids(evals: dict[str, Any], out: Path) -> dict[str, str]:
    """One qualitative grid per evaluation of methods (truth + each method's frames), copied to out/qualitative."""
    grids = {}
    for name in ("figure3", "variants"):
        folder = ((evals.get(name) or {}).get("files") or {}).get("qualitative")
        pngs = sorted(Path(folder).glob("*.png")) if folder else []
        if pngs:
            target = out / "qualitative" / f"{name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pngs[0], target)
            grids[name] = str(target)
    return grids


def write_reproduction(results: dict[str, Any], out: Path, first_seed_evals: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = {"out": out, "plots": plots(results, out), "grids": copy_grids(first_seed_evals, out)}
    results["files"] = {"plots": files["plots"], "grids": files["grids"], "json": str(out / "reproduce.json"),
                        "report": str(out / "report.md")}
    atomic.write_json(out / "reproduce.json", results)
    atomic.write_text(out / "report.md", render(results, files))
