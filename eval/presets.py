"""`reproduce --preset default|long`: the study's sizes by name, with what each leaves out and its time estimate.

* **default** (`<paths.root>/reproduce`): every Stage 2 variant of Tables 1, 3, 4 for LAPTOP_STEPS = 200 steps, 3
  seeds, 64 val windows, the Table 5 and appendix 6.2 sweeps: about an hour on 2 cores (README, measured).
* **long** (`<paths.root>/reproduce-long`): the ablations trained long enough to mean something. At 200 steps
  (about 6 epochs of the 128 training windows) nothing can overfit yet, so a regulariser (nested dropout, mixed
  supervision) can only cost; the long preset gives the Table 3 / 4 / 5 / appendix 6.2 claims LONG_STEPS = 1,000
  Stage 2 steps per variant (5x, about 31 epochs), 3 seeds, the same 64 val windows, sampling steps and sweeps.
  To fit 120 minutes on 2 cores it CUTS the three Table 1 baselines that only Table 1 uses: Baseline-Large, REPA
  and VideoREPA (they stay in the default study). It keeps Re2Pix, the Baseline (Table 1's main row and Figure 3),
  nested dropout off (Table 3), true-only and predicted-only (Table 4), and the Table 5 / appendix 6.2 sweeps (they
  only evaluate the Re2Pix run). 1,000 is the issue's floor, not a measured plateau: `measure-plateau` (eval/
  plateau.py) measures where the tiny Re2Pix val loss plateaus under the paper's schedule, but it was not run at
  full length on the development machine (2 shared CPU cores); `--steps` overrides the preset's steps.

**Figure 3's curves** come, in both presets, from the checkpoints of ONE run per model and seed (4 evenly spaced
checkpoints, `curve_steps`), trained with the study's schedule (linear warm-up, linear decay to 0 at the run's last
step), not from separate runs of each length. Why: separate runs of lengths L/4, L/2, 3L/4, L cost 2.5x the
training of one run, which neither preset can afford; and both models share the schedule, so the comparison at a
given checkpoint is fair. The cost: an intermediate checkpoint has not had its learning rate annealed, so it
understates what a run of that length would reach, for both models alike. The paper's Figure 3 instead trains both
models 140k iterations with a constant learning rate after warm-up and compares their checkpoints, where no
checkpoint is annealed: closer to ours than separate runs would be.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from configs.schema import Config, ConfigError
from eval.claims import estimate_default
from eval.variants import (
    BASELINE,
    LAPTOP_STEPS,
    LARGE,
    NESTED_OFF,
    PRED_ONLY,
    RE2PIX,
    REPA,
    TRAIN_SNIPPETS,
    TRUE_ONLY,
    VAL_SNIPPETS,
    VARIANTS,
    VIDEOREPA,
    curve_steps,
    guidance_settings,
)

LONG_STEPS = 1000
BUDGET_MINUTES = {"default": 60, "long": 120}  # the goals on 2 CPU cores

# What the default study measured (README "Measured: the default study": tiny config, 2 quiet cores, --jobs 2,
# 56 min): 24 Stage 2 runs x 200 steps in 17.0 min wall = 0.425 s per step per process (two at a time, mean over
# the 8 variants); 30 evaluations (10 per seed, 22 generative jobs per seed) x 64 windows in 35.9 min wall = 1.02 s
# per window and job per process; shared steps (data, cache, Stage 1, pool, heads) 3.2 min + pretrain-vfm about
# 2 min (README "The tiny VFM"). The second machine measured there was faster (46.6 min in all).
MEASURED = {"stage2_seconds_per_step": 0.425, "eval_seconds_per_window_job": 1.02, "shared_seconds": 3.2 * 60 + 120,
            "jobs": 2}


@dataclass(frozen=True)
class Preset:
    name: str
    out_name: str  # the output folder under <paths.root>
    steps: int  # Stage 2 steps of every variant (tiny config; other configs use their own train.steps)
    seeds: int
    variants: tuple[str, ...]
    sweeps: bool
    train_snippets: int
    val_snippets: int
    cut: tuple[str, ...]  # what this preset leaves out, in words
    figure3: str


FIGURE3 = ("checkpoints of one run per model and seed (linear warm-up and decay to 0 at the run's end), not separate "
           "runs per length: 2.5x cheaper and the same schedule for both models; intermediate checkpoints are not annealed")

PRESETS = {
    "default": Preset("default", "reproduce", LAPTOP_STEPS, 3, tuple(VARIANTS), True, TRAIN_SNIPPETS, VAL_SNIPPETS,
                      (), FIGURE3),
    "long": Preset("long", "reproduce-long", LONG_STEPS, 3, (RE2PIX, BASELINE, NESTED_OFF, TRUE_ONLY, PRED_ONLY), True,
                   TRAIN_SNIPPETS, VAL_SNIPPETS,
                   (f"variants {LARGE}, {REPA}, {VIDEOREPA} (Table 1 only; they stay in the default study)",),
                   FIGURE3),
}


def resolve_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r}: choose from {', '.join(PRESETS)} (eval/presets.py says what each runs and cuts)")
    return PRESETS[name]


def describe(preset: Preset) -> dict[str, object]:
    """reproduce.json's `preset` record."""
    return {**asdict(preset), "variants": list(preset.variants), "cut": list(preset.cut)}


def eval_jobs_per_seed(preset: Preset, cfg: Config) -> int:
    """Generative jobs evaluate runs per seed: Figure 3 (every curve checkpoint of Re2Pix and Baseline), the other
    variants' final checkpoints, Table 5's component levels and appendix 6.2's guidance settings."""
    from eval.variants import CURVE_VARIANTS, components_levels

    curve = [v for v in CURVE_VARIANTS if v in preset.variants]
    jobs = len(curve) * (len(curve_steps(preset.steps)) if BASELINE in curve else 1)
    jobs += len([v for v in preset.variants if v not in curve])
    if preset.sweeps:
        jobs += len(components_levels(cfg)) + len(guidance_settings(cfg))
    return jobs


def estimate_preset(preset: Preset, cfg: Config, measured: dict[str, float] = MEASURED) -> dict[str, object]:
    """The preset's time from measured per-step and per-window costs, through eval/claims.py's estimate_default (the
    same arithmetic as every reproduce.json's estimate): Stage 2 s/step x steps x variants x seeds + evaluation s per
    (window x job) x jobs per seed x windows x seeds, both divided by the parallel jobs, + the shared steps."""
    jobs = int(measured["jobs"])
    runs = {0: {v: {"seconds_per_step": measured["stage2_seconds_per_step"]} for v in preset.variants}}
    per_seed = eval_jobs_per_seed(preset, cfg)
    windows = preset.val_snippets
    evals = {0: {"all": {"seconds": {**{f"job {i}": 0.0 for i in range(per_seed)},
                                     "total": measured["eval_seconds_per_window_job"] * per_seed * windows},
                         "protocol": {"windows": windows}}}}
    est = estimate_default(runs, evals, {"shared": 0.0}, seeds=preset.seeds, steps=preset.steps, windows=windows,
                           parallel=jobs)
    est["shared_seconds"] = float(measured["shared_seconds"])
    est["total_seconds"] = est["train_seconds"] + est["eval_seconds"] + est["shared_seconds"]
    est["budget_minutes"] = BUDGET_MINUTES.get(preset.name)
    est["measured_from"] = "README 'Measured: the default study' (2 quiet cores, --jobs 2)" if measured is MEASURED else "given"
    return est
