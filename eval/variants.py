"""The Stage 2 variants of `reproduce` (paper Tables 1, 3, 4) as changes to the base config, the sweep levels of
Table 5 and appendix 6.2 at a config's size, and the default study's sizes."""

from __future__ import annotations

from typing import Any, Callable

from configs.schema import Config, config_from_dict

# Sizes of the default (tiny config, synthetic set), chosen by measurement (README "Reproducing the paper's claims"):
# 128 training snippets is what the demo measured Stage 1 needs not to memorise; 64 val windows is the floor
# for differences to be measurable. LAPTOP_STEPS (Stage 2 steps of every variant) is what fits the 60-minute goal:
# per seed, 8 variants x steps x ~0.3 s/step (batch 4, one free core) plus ~20 evaluation rows x 64 windows x
# ~0.45 s; see estimate_seconds(), fitted to the reduced run's measured times.
TRAIN_SNIPPETS = 128
VAL_SNIPPETS = 64
LAPTOP_STEPS = 200
CURVE_POINTS = 4  # checkpoints per Stage 2 run: the points of Figure 3

RE2PIX, BASELINE, LARGE = "Re2Pix", "Baseline", "Baseline-Large"
REPA, VIDEOREPA = "REPA", "VideoREPA"
NESTED_OFF, TRUE_ONLY, PRED_ONLY = "Re2Pix, nested dropout off", "Re2Pix, true features only", "Re2Pix, predicted features only"
STAGE1_ROW, COPY_ROW, ORACLE_ROW = "Re2Pix (Stage 1)", "Copy last frame", "Oracle (true features)"


def _plain(s2: dict[str, Any]) -> None:
    s2["model"]["conditioning"] = "none"
    s2["mixed_supervision_prob"] = 0.0
    s2["nested_dropout"] = False


def _large(s2: dict[str, Any]) -> None:
    _plain(s2)
    d = s2["model"]["depth"]
    s2["model"]["depth"] = d + max(1, d // 2)  # the paper: 1.5B vs Re2Pix 1.1B; counts are checked and reported


def _align(kind: str) -> Callable[[dict[str, Any]], None]:
    def apply(s2: dict[str, Any]) -> None:
        _plain(s2)
        s2["alignment"] = kind
        s2["align_block"] = min(s2["align_block"], max(1, s2["model"]["depth"] // 2))  # an early block, as REPA's 4 of 14

    return apply


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(s2: dict[str, Any]) -> None:
        s2[key] = value

    return apply


# variant -> (what it is, how the base config's stage2 section changes)
VARIANTS: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    RE2PIX: ("early fusion of Stage 1 features, nested dropout, 90/10 mixed supervision", lambda s2: None),
    BASELINE: ("the same DiT without features", _plain),
    LARGE: ("the baseline with 1.5x the DiT blocks (more parameters than Re2Pix)", _large),
    REPA: ("the baseline + REPA alignment of an early block to the VFM features", _align("repa")),
    VIDEOREPA: ("the baseline + VideoREPA token-relation alignment", _align("videorepa")),
    NESTED_OFF: ("Re2Pix trained with all channels always (Table 3)", _set("nested_dropout", False)),
    TRUE_ONLY: ("Re2Pix trained on true features only (Table 4)", _set("mixed_supervision_prob", 0.0)),
    PRED_ONLY: ("Re2Pix trained on Stage 1's predicted features only (Table 4)", _set("mixed_supervision_prob", 1.0)),
}
FEATURE_VARIANTS = (RE2PIX, NESTED_OFF, TRUE_ONLY, PRED_ONLY)
CURVE_VARIANTS = (RE2PIX, BASELINE)  # evaluated at every checkpoint (Figure 3); also their Table 1 rows


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def variant_config(cfg: Config, variant: str, seed: int, steps: int) -> Config:
    """The base config with the variant's Stage 2 changes, `steps` Stage 2 steps, CURVE_POINTS checkpoints, `seed`."""
    data = cfg.to_dict()
    s2 = data["stage2"]
    VARIANTS[variant][1](s2)
    every = curve_every(steps)
    # every curve point is kept (keep_every): Figure 3 evaluates them all, and pruning to keep_last would drop the first
    s2["train"].update(steps=steps, seed=seed, ckpt_every=every, val_every=every, keep_every=every)
    data["seed"] = seed
    return config_from_dict(data).validate()


def curve_every(steps: int) -> int:
    """Checkpoint spacing of a `steps`-step variant run: CURVE_POINTS points of Figure 3."""
    return max(1, steps // CURVE_POINTS)


def curve_steps(steps: int) -> list[int]:
    """The checkpoint steps of a `steps`-step variant run (the points of Figure 3)."""
    every = curve_every(steps)
    return sorted({*range(every, steps + 1, every), steps})


def guidance_settings(cfg: Config) -> list[tuple[float, int]]:
    """Appendix 6.2 at this config's size: c over the nested levels below C at w = 0.4 (Table 8), and w in
    {0.2, 0.4, 0.8} at c = the level nearest C / 9 (the paper's 128 of 1152; Table 9)."""
    channels = cfg.pca.components
    levels = [c for c in cfg.stage2.nested_dropout_levels if c < channels]
    if not levels:
        return []
    c0 = min(levels, key=lambda c: abs(c - channels / 9))
    settings = [(0.4, c) for c in levels] + [(w, c0) for w in (0.2, 0.8)]
    return list(dict.fromkeys(settings))


def components_levels(cfg: Config) -> list[int]:
    return [c for c in cfg.stage2.nested_dropout_levels if c < cfg.pca.components]
