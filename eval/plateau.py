"""`python cli.py measure-plateau`: where the Stage 2 validation loss stops improving under the paper's schedule.

One Stage 2 run (Re2Pix by default; any variant of eval/variants.py) of `steps` optimizer steps with the paper's
learning-rate schedule: linear warm-up, then linear decay to 0 over the rest of the run's full length (paper §4.1,
"linear warmup and decay"; tiny and paper configs' `stage2.optim.schedule = "linear"`). The validation loss (the
mean of the fixed-noise denoising losses at the validation sigmas, train/stage2.py, on ALL val windows: `val_batches
= 0`) is recorded at `points` evenly spaced checkpoints.

**The rule** (PLATEAU_RULE, `plateau_step`): the plateau is the first checkpoint step s such that the val loss still
to be gained after s, loss(s) − min over later checkpoints, is below PLATEAU_TOLERANCE × loss(s). The final
checkpoint always satisfies it, so a run whose plateau step is its last step has NOT plateaued (`plateaued:
false`): measure a longer run.

What the number means: it is a property of THIS schedule at THIS length. With a decaying learning rate the last
part of a run always gains (annealing), so a plateau found inside a run of length L says "beyond s the rest of an
L-step run adds less than the tolerance", which is what sizing a study of L steps needs. It does not say that a
longer run would not gain more; that is what running `measure-plateau` at two lengths shows.

Writes `<out>/plateau.json` (points, rule, plateau step, seconds per step measured) atomically; the summary line
says where it plateaus.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from configs.schema import Config, ConfigError, config_from_dict
from eval.variants import RE2PIX, VARIANTS, variant_config
from pipeline import atomic
from pipeline.console import summary

PLATEAU_TOLERANCE = 0.02  # 2 %: a chosen threshold (not measured): gains below it are not worth a longer study; --tolerance changes it
DEFAULT_POINTS = 10
PLATEAU_RULE = ("the plateau is the first checkpoint step s after which the val loss improves by less than "
                "{tol:g} % of loss(s) over the rest of the run (loss(s) - min of the later checkpoints' losses < "
                "{tol:g} % x loss(s)); if that is the run's last step, the run has not plateaued")


def plateau_step(points: list[tuple[int, float]], tolerance: float = PLATEAU_TOLERANCE) -> int:
    """The first step s of `points` [(step, val loss)] with loss(s) − min(later losses) < tolerance × loss(s)."""
    if not points:
        raise ValueError("plateau_step: no (step, loss) points")
    if tolerance < 0:
        raise ValueError(f"plateau_step: tolerance={tolerance} must be >= 0")
    ordered = sorted(points)
    for i, (step, loss) in enumerate(ordered):
        later = [value for _, value in ordered[i + 1:]]
        if not later or loss - min(later) < tolerance * abs(loss):
            return int(step)
    raise AssertionError("unreachable: the last point always qualifies")


def plateau_config(cfg: Config, variant: str, seed: int, steps: int, points: int) -> Config:
    """The variant's config for a `steps`-step plateau run: the paper's schedule (linear warm-up, linear decay over
    the whole run; warm-up = the config's, at most a tenth of the run), validation on every val window at `points`
    evenly spaced checkpoints, every one kept."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant {variant!r}: choose from {list(VARIANTS)}")
    if steps < 2 or points < 2 or points > steps:
        raise ConfigError(f"steps={steps} and points={points}: need 2 <= points <= steps")
    data = variant_config(cfg, variant, seed, steps).to_dict()
    every = steps // points
    data["stage2"]["train"].update(ckpt_every=every, val_every=every, keep_every=every, val_batches=0)
    optim = data["stage2"]["optim"]
    optim.update(schedule="linear", warmup_steps=min(int(optim["warmup_steps"]), steps // 10))
    return config_from_dict(data).validate()


def read_val_curve(run: str | Path) -> list[tuple[int, float]]:
    """[(step, val loss)] of every checkpoint of `run` that recorded a validation."""
    from train import checkpoint as ckpt

    out = []
    for folder in sorted(ckpt.checkpoints_dir(run).glob("step_*")):
        if ckpt.is_complete(folder):
            config = ckpt.read_config(folder)
            if (config.get("val") or {}).get("loss") is not None:
                out.append((int(config["step"]), float(config["val"]["loss"])))
    return out


def measure_plateau(cfg: Config, cache: str, out: str | Path, *, steps: int, points: int = DEFAULT_POINTS,
                    variant: str = RE2PIX, seed: int | None = None, tolerance: float = PLATEAU_TOLERANCE) -> dict[str, Any]:
    """Train (or resume) the plateau run into `out`, write `out/plateau.json`, return its content."""
    from train.stage2 import train_stage2

    seed = cfg.seed if seed is None else seed
    run_cfg = plateau_config(cfg, variant, seed, steps, points)
    tic = time.perf_counter()
    trained = train_stage2(run_cfg, cache, str(out), resume=True)
    seconds = time.perf_counter() - tic
    curve = read_val_curve(out)
    if not curve:
        raise ConfigError(f"{out}: no checkpoint recorded a validation loss; does the cache {cache} have val windows?")
    step = plateau_step(curve, tolerance)
    final = curve[-1][0]
    result = {
        "variant": variant, "seed": seed, "steps": steps, "points": points, "tolerance": tolerance,
        "rule": PLATEAU_RULE.format(tol=tolerance * 100),
        "schedule": {"name": "linear", "warmup_steps": run_cfg.stage2.optim.warmup_steps, "decay_to_zero_at": steps},
        "val_loss": [{"step": s, "loss": v} for s, v in curve],
        "plateau_step": step, "plateaued": step < final,
        "steps_run_in_this_call": len(trained.losses),
        "seconds_per_step": seconds / len(trained.losses) if trained.losses else None,
        "cache": str(cache),
    }
    atomic.write_json(Path(out) / "plateau.json", result)
    first, last = curve[0][1], curve[-1][1]
    summary(f"measure-plateau: {variant}, {steps} steps (linear warm-up {result['schedule']['warmup_steps']}, decay to 0): "
            f"val loss {first:.4g} at step {curve[0][0]} -> {last:.4g} at step {final}; "
            + (f"plateaus at step {step} (< {tolerance * 100:g} % still to gain after it)" if result["plateaued"]
               else f"has NOT plateaued within {steps} steps (still >= {tolerance * 100:g} % to gain before the end)")
            + f" -> {Path(out) / 'plateau.json'}")
    return result
