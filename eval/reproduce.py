"""`python cli.py reproduce`: the paper's claims measured with seeds, resumable, on one command.

Steps (each resumes on its own, so a killed run continues and a finished one is reused):
  1. data and cache: the synthetic driving set made here (>= 64 val windows) or the dataset given, cached once;
  2. Stage 1, its predicted-feature pool and the DPT heads: trained ONCE (seed = the config's), shared by every
     seed, because what is compared is Stage 2; the Stage 1, copy-last and oracle rows therefore have no spread;
  3. per seed, every Stage 2 variant trained for the SAME number of steps with `stage2.train.seed = seed`
     (<out>/runs/seed<S>/<variant>/finished.json marks a finished run: a second call does not rebuild it);
  4. per seed, `evaluate` on every val window with `seed = seed`, so within a seed every row gets the same noise
     (common random numbers): Table 1/3/4 rows, Figure 3 (every checkpoint of Re2Pix and Baseline), Table 5
     (components), appendix 6.2 (guidance). Each evaluation folder gets done.json with its request;
  5. eval/claims.py aggregates the seeds and judges every claim with paired, seed-nested comparisons on the
     windows each evaluation wrote (windows.npz), Holm-corrected per claim (DECISION_RULE); an evaluation folder
     without windows.npz (an older version) is evaluated again; reproduce.json and report.md are written.

The distribution metric is `fd_vfm`: the Fréchet distance between the VFM's PCA features (spatially averaged,
C-dimensional) of every generated future frame and of the real frame at the same position. It is NOT FID: it is
computed by handing `evaluate` this extractor in place of the Inception network (`metric_nets`), so evaluate's own
per-evaluation files call the column "FID"; reproduce.json and report.md name it plainly. Real FID/FVD run as one
more evaluation of the Table 1 rows when `eval.fid_weights` / `eval.fvd_weights` are given.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from configs.schema import Config, ConfigError, config_from_dict
from eval.claims import SEMANTIC, build_results, estimate_default
from eval.task_pool import Task, default_jobs, run_tasks
from eval.variants import (
    BASELINE,
    CURVE_VARIANTS,
    NESTED_OFF,
    PRED_ONLY,
    RE2PIX,
    TRAIN_SNIPPETS,
    VAL_SNIPPETS,
    VARIANTS,
    components_levels,
    curve_steps,
    guidance_settings,
    slug,
    variant_config,
)
from eval.windows import FILENAME as WINDOWS_FILE
from pipeline import atomic
from pipeline.console import console, summary, warn_loud

# ------------------------------------------------------------------------------------ the distribution metric


class VFMFeatureNet(nn.Module):
    """uint8 frames [N, 3, H, W] -> the VFM's PCA coefficients averaged over space [N, C] (for fd_vfm, NOT FID)."""

    def __init__(self, vfm: Any, pca: Any, batch: int = 32):
        super().__init__()
        self.vfm, self.pca, self.batch = vfm, pca, batch
        self.dim = int(pca.n_components)
        self.weights = f"vfm-pca:{pca.fingerprint}"  # evaluate records this as the 'FID' network's provenance

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in frames.split(self.batch):
            maps = self.pca.project_maps(self.vfm(chunk.float() / 255.0).float())
            out.append(maps.mean(dim=(2, 3)).double())
        return torch.cat(out)


def vfm_metric_nets(cfg: Config, cache: str, device: str | None) -> Any:
    from eval.frozen import build_frozen_vfm
    from eval.scoring import MetricNets
    from pipeline.device import resolve_device
    from pipeline.store import CacheReader

    reader = CacheReader(cache)
    dev = resolve_device(device)
    vfm = build_frozen_vfm(reader.meta, cfg.to_dict(), None, True, dev)
    pca = reader.pca().to(device=dev, dtype=torch.float32)
    return MetricNets(fid=VFMFeatureNet(vfm, pca, int(cfg.vfm.batch_size)), fvd=None)


def study_tags(seed_evals: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The study's protocol tags (eval/protocol_tag.py): Figure 3's evaluation (its 'fid' is FD-VFM) and, when run,
    the real FID / FVD evaluation's."""
    tags = dict((seed_evals.get("figure3") or {}).get("protocol_tags") or {})
    if "fid" in tags:
        tags["fd_vfm"] = tags.pop("fid")
    real = (seed_evals.get("fid_fvd") or {}).get("protocol_tags") or {}
    tags.update({k: v for k, v in real.items() if k in ("fid", "fvd")})
    return tags


# --------------------------------------------------------------------------------------------- orchestration


@dataclass
class Reproduction:
    out: Path
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)  # runs trained in this call (the rest were reused)
    evaluated: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        claims = self.results.get("claims", {})
        held = ", ".join(f"{k} {'holds' if v.get('holds') else 'n/a' if v.get('holds') is None else 'does not hold'}"
                         for k, v in claims.items())
        return (f"reproduce: {self.seconds:.0f} s ({len(self.trained)} runs trained, {len(self.evaluated)} evaluations run, "
                f"the rest reused); {held}; report: {self.out / 'report.md'}")


def _timed(timings: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    tic = time.perf_counter()
    try:
        return fn()
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - tic


def _param_count(checkpoint: str) -> int:
    from train import checkpoint as ckpt

    state, _ = ckpt.read_weights(checkpoint, prefer_ema=False)
    return int(sum(t.numel() for t in state.values()))


def _unlabelled(cache: str) -> bool:
    """True when no training window has a usable segmentation label (a folder of videos)."""
    from pipeline.store import CacheError, CacheReader
    from train.heads import labelled_samples

    try:
        return len(labelled_samples(CacheReader(cache), "train", "segmentation")[0]) == 0
    except CacheError:  # no label array at all
        return True


def prepare_heads(cfg: Config, cache: str, out: Path, workers: int) -> str:
    """The heads folder for `cache`. An unlabelled dataset (a folder of videos) cannot train heads, but evaluate needs
    some on the same VFM and PCA: they are trained on a small synthetic set cached with this cache's PCA. They score
    nothing here (the val windows have no labels: mIoU / depth are n/a); they only let the protocol run."""
    from pipeline.dag import build_cache
    from pipeline.synthetic import write_sample_dataset
    from train.heads import train_heads

    heads = out / "heads"
    if not _unlabelled(cache):
        train_heads(cfg, cache, str(heads), resume=True)
        return str(heads)
    data = cfg.to_dict()
    data["pca"]["checkpoint"] = str(Path(cache) / "pca.safetensors")
    head_cfg = config_from_dict(data).validate()
    labelled = out / "heads-data"
    if not (labelled / "leftImg8bit_sequence").exists():
        write_sample_dataset(labelled, train=8, val=2, height=cfg.window.height, width=cfg.window.width, seed=cfg.seed,
                             workers=os.cpu_count() or 1)
    head_cache = out / "cache" / "heads-synthetic"
    build_cache(head_cfg, "synthetic", labelled, head_cache, workers=workers, allow_random_weights=True)
    train_heads(head_cfg, str(head_cache), str(heads), resume=True)
    return str(heads)


def train_variant(cfg: Config, cache: str, run: str, steps: int, curve: bool) -> tuple[dict[str, Any], bool]:
    """Train (or resume, or reuse) one Stage 2 run: (its finished.json, whether it trained in this call). A `curve`
    run (Figure 3) is reused only with every curve checkpoint on disk; a finished one without them (pruned by an
    older version) is moved aside to <run>.stale, not deleted, and trained again."""
    from train.checkpoint import step_name
    from train.stage2 import train_stage2

    marker = Path(run) / "finished.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        missing = [s for s in curve_steps(steps) if not (Path(run) / "checkpoints" / step_name(s)).is_dir()] if curve else []
        if done.get("steps") == steps and not missing:
            return done, False
        if missing:
            stale = Path(f"{run}.stale")
            if stale.exists():
                shutil.rmtree(stale)
            os.replace(run, stale)
            print(f"{run}: curve checkpoints {missing} are missing; moved to {stale}, training again", flush=True)
    tic = time.perf_counter()
    trained = train_stage2(cfg, cache, run, resume=True)
    seconds = time.perf_counter() - tic
    run_now = len(trained.losses)  # a resumed run trains only the steps it was missing
    done = {"steps": steps, "seed": cfg.stage2.train.seed, "checkpoint": trained.checkpoint,
            "params": _param_count(trained.checkpoint), "seconds": seconds, "steps_run_in_last_call": run_now,
            "seconds_per_step": seconds / run_now if run_now else None, "torch_threads": torch.get_num_threads(),
            "finished_at": time.time()}
    atomic.write_json(marker, done)
    return done, True


_NETS: dict[tuple[str, str | None], Any] = {}  # fd_vfm networks built once per process (a worker runs many evaluations)


def evaluate_once(cfg: Config, request: dict[str, Any], folder: str, fd_vfm: bool, **kw: Any) -> tuple[dict[str, Any], bool]:
    """One `evaluate` call, reused when done.json holds the same request: (its metrics, whether it ran in this call).
    fd_vfm: score the distribution metric with the VFM's PCA features; False: evaluate's own FID/FVD weights."""
    from eval.evaluate import evaluate

    marker = Path(folder) / "done.json"
    # reused only with its windows.npz: an evaluation from before it existed is redone (its rows could not be paired)
    if (marker.is_file() and json.loads(marker.read_text()).get("request") == request
            and (Path(folder) / "metrics.json").is_file() and (Path(folder) / WINDOWS_FILE).is_file()):
        return json.loads((Path(folder) / "metrics.json").read_text()), False
    nets = None
    if fd_vfm:
        key = (kw["cache"], kw.get("device"))
        if key not in _NETS:
            _NETS[key] = vfm_metric_nets(cfg, kw["cache"], kw.get("device"))
        nets = _NETS[key]
    tic = time.perf_counter()
    metrics = evaluate(cfg, out=folder, allow_random_weights=True, metric_nets=nets, allow_random_metric_weights=True, **kw)
    atomic.write_json(marker, {"request": request, "seconds": time.perf_counter() - tic})
    return metrics, True


def _row_metrics(row: dict[str, Any], fd_name: str = "fd_vfm") -> dict[str, float | None]:
    """One evaluate row -> {metric: value of this seed} (mean over its samples); evaluate's 'fid' column is fd_vfm."""
    m = row.get("metrics") or {}
    out = {k: (m.get(k) or {}).get("mean") for k in SEMANTIC + ("psnr", "ssim")}
    out[fd_name] = (m.get("fid") or {}).get("mean")
    return out


def _run_dir(out: Path, seed: int, variant: str) -> Path:
    return out / "runs" / f"seed{seed}" / slug(variant)


def _evaluations(cfg: Config, variants: list[str], run_of: dict[str, str], sweeps: bool,
                 real_nets: bool) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """One seed's evaluations as (folder name, {row: Stage 2 run}, evaluate options): Figure 3 (every checkpoint of
    Re2Pix and Baseline, which are also their Table 1 rows), the other variants, Table 5, appendix 6.2, real FID/FVD."""
    main = {v: run_of[v] for v in CURVE_VARIANTS if v in run_of}
    out: list[tuple[str, dict[str, str], dict[str, Any]]] = [("figure3", main, {"all_checkpoints": BASELINE in main})]
    others = {v: run_of[v] for v in variants if v not in main}
    if others:
        out.append(("variants", others, {}))
    if sweeps:
        out += [(f"components_{c}", {RE2PIX: run_of[RE2PIX]}, {"components": c}) for c in components_levels(cfg)]
        out += [(f"guidance_w{w}_c{c}", {RE2PIX: run_of[RE2PIX]}, {"guidance_weight": w, "guidance_components": c})
                for w, c in guidance_settings(cfg)]
    if real_nets:  # FID / FVD with the weight files given, on the Table 1 rows
        out.append(("fid_fvd", {v: run_of[v] for v in variants}, {"fid_fvd": True}))
    return out


def _seed_rows(cfg: Config, variants: list[str], seed_evals: dict[str, dict[str, Any]], sweeps: bool,
               real_nets: bool) -> tuple[dict[str, dict[str, float | None]], dict[str, list[tuple[int, dict[str, float | None]]]]]:
    """One seed's evaluations -> (the study's rows: {row name: {metric: value}}, Figure 3's {run: [(step, metrics)]})."""
    fig = seed_evals["figure3"]
    rows = {name: _row_metrics(row) for name, row in fig["rows"].items()}
    curves = {run: [(e["step"], _row_metrics({"metrics": e["metrics"]})) for e in entries] for run, entries in fig["steps"].items()}
    if "variants" in seed_evals:
        rows.update({name: _row_metrics(row) for name, row in seed_evals["variants"]["rows"].items() if name in variants})
    if sweeps:
        for c in components_levels(cfg):
            rows[f"Re2Pix, C = {c}"] = _row_metrics(seed_evals[f"components_{c}"]["rows"][RE2PIX])
        for w, c in guidance_settings(cfg):
            rows[f"Re2Pix, guidance w = {w}, c = {c}"] = _row_metrics(seed_evals[f"guidance_w{w}_c{c}"]["rows"][RE2PIX])
    if real_nets:
        for name, row in seed_evals["fid_fvd"]["rows"].items():
            m = row.get("metrics") or {}
            rows.setdefault(name, {}).update(fid=(m.get("fid") or {}).get("mean"), fvd=(m.get("fvd") or {}).get("mean"))
    return rows, curves


def _seed_windows(cfg: Config, variants: list[str], folders: dict[str, Path], sweeps: bool) -> dict[str, Any]:
    """One seed's windows.npz files -> {"rows": {study row name: arrays}, "real_features", "windows"}, every
    evaluation checked to have scored the same windows in the same order (else its rows could not be paired)."""
    from eval.windows import read_windows

    names: dict[str, dict[str, str]] = {"figure3": {}, "variants": {v: v for v in variants}}
    if sweeps:
        names.update({f"components_{c}": {RE2PIX: f"Re2Pix, C = {c}"} for c in components_levels(cfg)})
        names.update({f"guidance_w{w}_c{c}": {RE2PIX: f"Re2Pix, guidance w = {w}, c = {c}"} for w, c in guidance_settings(cfg)})
    out: dict[str, Any] = {"rows": {}, "real_features": None, "windows": None}
    for name, rename in names.items():
        if name not in folders:
            continue
        path = folders[name] / WINDOWS_FILE
        data = read_windows(path)
        if out["windows"] is None:
            out["windows"], out["real_features"] = data["windows"], data["real_features"]
        elif not (len(data["windows"]) == len(out["windows"]) and (data["windows"] == out["windows"]).all()):
            raise ValueError(f"{path}: scored other val windows than {folders['figure3'] / WINDOWS_FILE}; delete "
                             f"{folders[name]} so that reproduce evaluates it again")
        for row, arrays in data["rows"].items():
            if name == "figure3":
                out["rows"][row] = arrays
            elif row in rename:
                out["rows"][rename[row]] = arrays
    return out


def run_reproduce(
    cfg: Config, out: Path | str, *, dataset: str = "synthetic", root: Path | str | None = None, seeds: int = 3,
    steps: int | None = None, variants: list[str] | None = None, sweeps: bool = True,
    train_snippets: int = TRAIN_SNIPPETS, val_snippets: int = VAL_SNIPPETS, workers: int = 0, eval_limit: int = 0,
    device: str | None = None, jobs: int | None = None, preset: str = "default",
) -> Reproduction:
    """Run (or resume) the whole study into `out`; returns what was done and the results written to reproduce.json.
    `preset` (eval/presets.py) gives the default steps and variants; `steps` / `variants` given here win."""
    from eval.presets import describe, resolve_preset
    from eval.reproduce_report import write_reproduction
    from pipeline.dag import build_cache
    from pipeline.synthetic import write_sample_dataset
    from train.pool import make_predicted_pool
    from train.stage1 import train_stage1

    out = Path(out)
    t_all = time.perf_counter()
    result = Reproduction(out=out)
    timings = result.timings
    chosen = resolve_preset(preset)
    steps = int(steps or (chosen.steps if cfg.name == "tiny" else cfg.stage2.train.steps))
    variants = list(variants or chosen.variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or RE2PIX not in variants:
        raise ConfigError(f"variants {unknown or variants}: choose from {list(VARIANTS)} (Re2Pix is always needed)")
    if seeds < 1 or steps < 1:
        raise ConfigError(f"seeds={seeds} and steps={steps} must be >= 1")
    seed_list = [cfg.seed + i for i in range(seeds)]
    jobs = int(jobs or default_jobs(device))

    # ---- 0. the tiny VFM: pretrained on the synthetic world's own streams (made once, reused by its settings)
    from train.vfm_pretrain import describe_run, with_pretrained_vfm

    console.rule("[bold]reproduce: pretrain-vfm")
    cfg, record, reused = _timed(timings, "vfm", lambda: with_pretrained_vfm(cfg, out, workers=os.cpu_count() or 1))
    if record is not None:
        console.print(describe_run(record, reused))

    # ---- 1. data and cache
    if root is None:
        if dataset != "synthetic":
            raise FileNotFoundError(f"--dataset {dataset} needs --root PATH (the dataset folder); only 'synthetic' is made here")
        root = out / "sample-data"
        if not (root / "leftImg8bit_sequence").exists():
            console.rule("[bold]reproduce: make the synthetic set")
            _timed(timings, "data", lambda: write_sample_dataset(
                root, train=train_snippets, val=val_snippets, height=cfg.window.height, width=cfg.window.width,
                seed=cfg.seed, workers=os.cpu_count() or 1))
    cache = str(out / "cache" / dataset)
    console.rule("[bold]reproduce: cache")
    _timed(timings, "cache", lambda: build_cache(cfg, dataset, root, cache, workers=workers, allow_random_weights=True))

    # ---- 2. shared: Stage 1, pool, heads
    stage1 = str(out / "stage1")
    console.rule("[bold]reproduce: Stage 1, pool, heads (shared by every seed)")
    _timed(timings, "stage1", lambda: train_stage1(cfg, cache, stage1, resume=True))
    pool_folds = None  # make-predicted-pool --folds auto's choice and why (reproduce.json, report.md)
    if any(v in variants for v in (RE2PIX, NESTED_OFF, PRED_ONLY)):
        pool = _timed(timings, "pool", lambda: make_predicted_pool(cache, stage1, folds="auto"))
        pool_folds = {k: v for k, v in pool["folds_choice"].items() if k != "probe"}
    heads = _timed(timings, "heads", lambda: prepare_heads(cfg, cache, out, workers))

    # ---- 3. Stage 2 variants per seed, `jobs` at a time
    console.rule(f"[bold]reproduce: {len(seed_list)} seed(s) x {len(variants)} Stage 2 variants, {steps} steps each")
    train_tasks = [Task(f"seed {seed}, {variant}", train_variant,
                        (variant_config(cfg, variant, seed, steps), cache, str(_run_dir(out, seed, variant)), steps,
                         variant in CURVE_VARIANTS),
                        log=_run_dir(out, seed, variant) / "train.log")
                   for seed in seed_list for variant in variants]
    trained = _timed(timings, "train (wall)", lambda: run_tasks(train_tasks, jobs, "Stage 2 runs"))
    runs: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in seed_list:
        for variant in variants:
            done, now = trained[f"seed {seed}, {variant}"]
            runs.setdefault(seed, {})[variant] = {**done, "run": str(_run_dir(out, seed, variant))}
            if now:
                result.trained.append(str(_run_dir(out, seed, variant)))
                timings[f"train {variant}"] = timings.get(f"train {variant}", 0.0) + float(done["seconds"])

    # ---- 4. evaluations per seed, `jobs` at a time (within a seed every evaluation uses the seed's noise)
    real_nets = bool(cfg.eval.fid_weights or cfg.eval.fvd_weights)
    eval_tasks: list[Task] = []
    names: dict[int, list[str]] = {}  # each seed's evaluations, in the order their rows are assembled
    for seed in seed_list:
        data = cfg.to_dict()
        data["seed"] = seed
        eval_cfg = config_from_dict(data).validate()
        base = out / "evals" / f"seed{seed}"
        run_of = {v: runs[seed][v]["run"] for v in variants}
        common = {"cache": cache, "heads": heads, "stage1": stage1, "limit": eval_limit, "device": device}
        for name, stage2_runs, kw in _evaluations(cfg, variants, run_of, sweeps, real_nets):
            names.setdefault(seed, []).append(name)
            # the runs' finish times: an evaluation is redone when a run it scores was trained again
            trained_at = {v: runs[seed][v].get("finished_at") for v in stage2_runs}
            request = {"seed": seed, "steps": steps, "limit": eval_limit, "name": name, "runs": stage2_runs,
                       "trained_at": trained_at, **kw}
            eval_tasks.append(Task(f"seed {seed}, {name}", evaluate_once, (eval_cfg, request, str(base / name), name != "fid_fvd"),
                                   {"stage2_runs": stage2_runs, **common, **kw}, log=base / f"{name}.log"))
    eval_tasks.sort(key=lambda t: -len(t.kwargs["stage2_runs"]) * (4 if t.kwargs.get("all_checkpoints") else 1))  # longest first
    evaluated = _timed(timings, "evaluate (wall)", lambda: run_tasks(eval_tasks, jobs, "evaluations"))
    per_seed: list[dict[str, dict[str, float | None]]] = []
    curves: dict[int, dict[str, list[tuple[int, dict[str, float | None]]]]] = {}
    evals: dict[int, dict[str, dict[str, Any]]] = {}
    windows: dict[int, dict[str, Any]] = {}
    for seed in seed_list:
        seed_evals: dict[str, dict[str, Any]] = {}
        for name in names[seed]:
            metrics, now = evaluated[f"seed {seed}, {name}"]
            seed_evals[name] = metrics
            if now:
                result.evaluated.append(str(out / "evals" / f"seed{seed}" / name))
                key = f"evaluate {name.split('_')[0]}"
                timings[key] = timings.get(key, 0.0) + float((metrics.get("seconds") or {}).get("total") or 0.0)
        rows, curves[seed] = _seed_rows(cfg, variants, seed_evals, sweeps, real_nets)
        per_seed.append(rows)
        evals[seed] = seed_evals
        windows[seed] = _seed_windows(cfg, variants, {n: out / "evals" / f"seed{seed}" / n for n in names[seed]}, sweeps)

    # ---- 5. claims: paired, seed-nested, Holm-corrected (eval/claims.py DECISION_RULE)
    console.rule("[bold]reproduce: paired comparisons")
    results = _timed(timings, "claims", lambda: build_results(cfg, per_seed, curves, runs, evals, variants, steps, seed_list,
                                                              dataset, str(root), sweeps, windows))
    results["protocol_tags"] = study_tags(evals[seed_list[0]])
    results["preset"] = describe(chosen)
    if pool_folds:
        results["pool_folds"] = pool_folds
    results["estimate"] = {**estimate_default(runs, evals, timings, seeds=chosen.seeds, steps=chosen.steps,
                                              windows=chosen.val_snippets, parallel=jobs), "preset": chosen.name}
    result.seconds = time.perf_counter() - t_all
    results["seconds"] = {**{k: round(v, 1) for k, v in timings.items()}, "total": round(result.seconds, 1)}
    results["this_call"] = {"trained": result.trained, "evaluated": result.evaluated, "jobs": jobs}
    result.results = results
    write_reproduction(results, out, evals[seed_list[0]])
    summary(result.line())
    if any(p for p in results["provenance"].get("random_parts", [])):
        warn_loud("reproduce ran with RANDOM VFM weights (no weights offline): the study compares methods on the same "
                  "random features; absolute numbers mean nothing outside this run (report.md says so)")
    return result
