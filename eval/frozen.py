"""The loaders every inference caller shares: checkpoints by stage, the run's cache found from any working folder, the
fit check between them, and the frozen VFM and codec rebuilt exactly as the cache made its features and latents.

`predict`, the Python API (eval/hierarchy.py), `export` and the evaluation protocol all load through here, so a
checkpoint that loads in one loads the same way in the others.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch

from configs.schema import CodecConfig, VFMConfig
from pipeline import atomic, layout
from pipeline.fingerprint import RANDOM
from pipeline.pca import PCA
from pipeline.store import CacheError
from pipeline.weights import MissingWeightsError
from train import checkpoint as ckpt
from train.stage1 import stage1_fit_problems

# ------------------------------------------------------------------------------------------ checkpoints


def checkpoint_config(path: str | Path, stage: str) -> tuple[Path, dict[str, Any]]:
    """(resolved folder, config.json) of a checkpoint or run folder, refused unless it was written by `stage`."""
    resolved, why = ckpt.select_checkpoint(path)
    config = {**ckpt.read_config(resolved), "selected": why}
    found = config.get("stage")
    if found != stage:
        raise ckpt.CheckpointError(
            f"{resolved} is a {found or 'non-Re2Pix'} checkpoint, but a {stage} checkpoint is expected here "
            "(predict takes the Stage 1 checkpoint first, then the Stage 2 checkpoint)"
        )
    return resolved, config


# ------------------------------------------------------------------------------------------------ cache


def _is_cache(root: str) -> bool:
    return atomic.exists(atomic.join(root, layout.META))


def cache_candidates(checkpoint: Path, config: dict[str, Any]) -> list[str]:
    """Where a checkpoint's cache may be, in the order tried: the absolute path recorded at training time, the recorded
    path as given (relative to this working folder), then the recorded relative path under every folder above the
    checkpoint (the folder training ran from is one of them when the run folder was inside it)."""
    recorded = str(config.get("cache") or "")
    out: list[str] = []
    if config.get("cache_absolute"):
        out.append(str(config["cache_absolute"]))
    if recorded:
        out.append(recorded)
        if not atomic.is_url(recorded) and not Path(recorded).is_absolute():
            out += [str(parent / recorded) for parent in Path(checkpoint).resolve().parents]
    return list(dict.fromkeys(out))


def find_cache(checkpoint: Path, config: dict[str, Any], cache: str | None = None) -> str:
    """The cache a checkpoint was trained on, from any working folder. `cache` (the caller's --cache) wins; otherwise
    the first candidate (see `cache_candidates`) whose meta.json exists and, where the checkpoint records it, whose
    fingerprint is the one it was trained on."""
    if cache:
        return str(cache)
    want = config.get("cache_fingerprint")
    tried, mismatched = [], []
    for root in cache_candidates(checkpoint, config):
        if not _is_cache(root):
            tried.append(root)
            continue
        found = atomic.read_json(atomic.join(root, layout.META)).get("fingerprint")
        if want and found and found != want:
            mismatched.append(f"{root} (fingerprint {found}, trained on {want})")
            continue
        return root
    if not tried and not mismatched:
        raise CacheError(f"{checkpoint} records no cache path; pass cache=PATH (--cache)")
    detail = "; ".join([*(f"{t}: no {layout.META}" for t in tried), *mismatched])
    raise CacheError(
        f"the cache {checkpoint} was trained on was not found ({detail}). Pass cache=PATH (--cache) if it lives "
        "elsewhere now, or load an exported bundle (`python cli.py export`) that needs no cache"
    )


def read_cache(root: str) -> tuple[dict[str, Any], PCA]:
    """(meta.json, the PCA) of a cache, refused naming the missing file."""
    meta_path = atomic.join(root, layout.META)
    if not atomic.exists(meta_path):
        raise CacheError(
            f"{meta_path} not found. predict needs the cache the models were trained on (its meta.json and "
            f"{layout.PCA_FILE}); pass cache=PATH (--cache) if it lives elsewhere now"
        )
    meta = atomic.read_json(meta_path)
    pca_path = atomic.join(root, layout.PCA_FILE)
    if not atomic.exists(pca_path):
        raise CacheError(f"{pca_path} not found: the cache {root} is incomplete (no PCA); rebuild it with `python cli.py cache`")
    return meta, PCA.load(pca_path)


def check_checkpoints_fit_cache(meta: dict[str, Any], pca: PCA, s1: dict[str, Any], s2: dict[str, Any], cache: str) -> None:
    """Both checkpoints must read this cache's feature space and latent space; names every mismatch."""
    problems = []
    recorded = s2.get("pca_fingerprint")
    if recorded and recorded != pca.fingerprint:
        problems.append(f"PCA fingerprint: Stage 2 checkpoint {recorded!r}, {cache}/{layout.PCA_FILE} {pca.fingerprint!r}")
    contract = layout.CacheMeta(meta)
    if contract.pca_fingerprint not in (None, pca.fingerprint):
        problems.append(f"PCA fingerprint: meta.json {contract.pca_fingerprint!r}, {layout.PCA_FILE} {pca.fingerprint!r}")
    dit = s2["model"]["dit"]
    problems += stage1_fit_problems(s1, meta, pca.fingerprint)
    if dit["feature_channels"] != pca.n_components:
        problems.append(f"Stage 2 takes {dit['feature_channels']} feature channels, the PCA has {pca.n_components}")
    if dit["latent_channels"] != contract.codec_channels:
        problems.append(f"Stage 2 takes {dit['latent_channels']} latent channels, the cache's codec has {contract.codec_channels}")
    if problems:
        raise CacheError(f"the checkpoints do not fit cache {cache}:\n  - " + "\n  - ".join(problems))


# ------------------------------------------------------------------------------------------- frozen parts


def frozen_settings(meta: dict[str, Any], full_config: dict[str, Any], section: str) -> dict[str, Any]:
    """How the cache built its VFM/codec: meta.json's `settings` (the DAG records them), else the training config."""
    recorded = (meta.get("settings") or {}).get(section)
    return dict(recorded if recorded is not None else full_config[section])


def build_frozen_vfm(meta: dict[str, Any], full_config: dict[str, Any], weights: str | None, allow_random_weights: bool, device: torch.device) -> Any:
    """The VFM that made the cache's features: same architecture, and weights whose record matches meta.json."""
    from pipeline.vfm import build_vfm

    known = {f.name for f in dataclasses.fields(VFMConfig)}
    cfg = VFMConfig(**{k: v for k, v in frozen_settings(meta, full_config, "vfm").items() if k in known})
    return _rebuild_as_recorded(build_vfm, cfg, layout.CacheMeta(meta).vfm_weights, weights, allow_random_weights, device,
                                "VFM", "features", "vfm_weights=PATH (--vfm-weights)")


def build_frozen_codec(meta: dict[str, Any], full_config: dict[str, Any], weights: str | None, allow_random_weights: bool,
                       device: torch.device, cache_root: str) -> Any:
    """The codec that made the cache's latents, checked against meta.json's weights record. A linear codec is read
    from the cache itself (meta.json codec.file), or from `weights` when given."""
    from pipeline.codec_factory import build_codec

    known = {f.name for f in dataclasses.fields(CodecConfig)}
    cfg = CodecConfig(**{k: v for k, v in frozen_settings(meta, full_config, "codec").items() if k in known})
    contract = layout.CacheMeta(meta)
    recorded = contract.codec_weights
    if cfg.name == "linear":
        path = weights or atomic.join(cache_root, contract.codec_file)
        codec = build_codec(dataclasses.replace(cfg, weights=path), device=device)
        if codec.weights != recorded:
            raise CacheError(
                f"{path}: linear codec {codec.weights} is not the one the cache's latents were made with ({recorded}); "
                f"restore {cache_root}/{layout.CODEC_FILE} or rebuild the cache"
            )
        return codec
    return _rebuild_as_recorded(build_codec, cfg, recorded, weights, allow_random_weights, device,
                                "codec", "latents", "codec_weights=PATH (--codec-weights)")


def _rebuild_as_recorded(build: Callable[..., Any], cfg: Any, recorded: str | None, weights: str | None,
                         allow_random_weights: bool, device: torch.device, part: str, made: str, option: str) -> Any:
    """A frozen part rebuilt with the weights meta.json records: the same seeded random ones (when allowed), or a
    file (`weights`, else the config's) whose fingerprint must equal the record."""
    if recorded == RANDOM:
        if not allow_random_weights:
            raise MissingWeightsError(
                f"the cache's {made} were made with a RANDOM {part} (meta.json {part.lower()}.weights = 'random'); "
                f"predicting needs that same seeded random {part}. Pass allow_random_weights=True "
                "(--allow-random-weights) to accept it (outputs are then meaningless and the provenance records it), "
                "or rebuild the cache with real weights"
            )
        return build(dataclasses.replace(cfg, weights=""), allow_random_weights=True, device=device)
    if weights:
        cfg = dataclasses.replace(cfg, weights=weights)
    rebuilt = build(cfg, allow_random_weights=False, device=device)
    if rebuilt.weights != recorded:
        raise MissingWeightsError(
            f"the {part} weights found ({rebuilt.weights}) are not the ones the cache was made with ({recorded}); "
            f"pass the same weights with {option}"
        )
    return rebuilt
