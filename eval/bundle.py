"""`export`: a trained run as one self-contained folder in the Hugging Face layout, and the reader that loads it.

    DIR/model_index.json         names every part, with the fingerprints that tie them together
    DIR/stage1/config.json       the Stage 1 checkpoint's config.json (model section, training config, step, val)
    DIR/stage1/model.safetensors its weights (EMA where the checkpoint has them, as predict loads them)
    DIR/stage2/config.json       the same for Stage 2
    DIR/stage2/model.safetensors
    DIR/pca.safetensors          the cache's PCA (the feature space both stages were trained in)
    DIR/codec.safetensors        the learned linear codec, when the cache fitted one; a WAN VAE is named by
                                 fingerprint instead (its weights are not redistributed), the pixel codec needs none
    DIR/cache.json               the cache's meta.json: window, VFM and codec settings and weight records
    DIR/vfm/<name>               the VFM weights file (+ its record), only with `include_vfm` (e.g. the tiny VFM)
    DIR/README.md                the model card

`read_bundle` (used by `Re2PixPipeline.from_pretrained` and `predict --bundle`) needs nothing outside the folder but
the VFM weights (and a WAN VAE), which it finds where the record says or where the caller points, checked by
fingerprint. A bundle whose parts do not fit each other is refused, naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from eval.frozen import check_checkpoints_fit_cache, checkpoint_config, find_cache, read_cache
from pipeline import atomic, layout
from pipeline.console import summary
from pipeline.fingerprint import RANDOM, file_fingerprint
from pipeline.pca import PCA
from pipeline.store import CacheError
from train import checkpoint as ckpt

FORMAT = "re2pix-bundle-v1"
INDEX = "model_index.json"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PCA_FILE = "pca.safetensors"
CODEC_FILE = "codec.safetensors"
CACHE_META = "cache.json"
CARD = "README.md"
STAGES = ("stage1", "stage2")
UPLOAD = 'HfApi().upload_folder(folder_path=DIR, repo_id="<user>/<name>", repo_type="model")'


class BundleError(ckpt.CheckpointError):
    """A bundle is missing a part, or its parts do not fit each other."""


@dataclasses.dataclass
class Bundle:
    root: Path
    index: dict[str, Any]
    stage1: dict[str, Any]  # config.json of each stage
    stage2: dict[str, Any]
    stage1_weights: dict[str, torch.Tensor]
    stage2_weights: dict[str, torch.Tensor]
    meta: dict[str, Any]  # the cache's meta.json, with codec.file naming the bundle's codec file
    pca: PCA


# ------------------------------------------------------------------------------------------------ export


def export_bundle(stage1: str | Path, stage2: str | Path, out: str | Path, cache: str | None = None,
                  include_vfm: bool = False, vfm_weights: str | None = None) -> dict[str, Any]:
    """Write the bundle of two checkpoints (and the cache they were trained on) into `out`; returns model_index.json.
    `include_vfm` copies the VFM weights file the cache was made with (`vfm_weights` where it moved) into the bundle,
    checked against the cache's fingerprint; otherwise the bundle names them by fingerprint."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / INDEX).is_file():
        raise BundleError(f"{out} exists and is not a bundle (no {INDEX}); choose an empty or new folder for --out")
    s1_path, s1_config = checkpoint_config(stage1, "stage1")
    s2_path, s2_config = checkpoint_config(stage2, "stage2")
    cache_root = find_cache(s2_path, s2_config, cache)
    meta, pca = read_cache(cache_root)
    check_checkpoints_fit_cache(meta, pca, s1_config, s2_config, cache_root)

    files: dict[str, Any] = {"pca": PCA_FILE, "cache_meta": CACHE_META, "codec": None}
    fingerprints: dict[str, Any] = {}
    stages: dict[str, dict[str, Any]] = {}
    for stage, path, config in (("stage1", s1_path, s1_config), ("stage2", s2_path, s2_config)):
        weights, which = ckpt.read_weights(path, prefer_ema=True)
        exported = {k: v for k, v in config.items() if k != "selected"}
        exported["loaded_weights"] = which
        exported["exported_from"] = {"checkpoint": str(path), "selected": config["selected"], "weights": which}
        blob = save_safetensors({k: v.contiguous() for k, v in weights.items()},
                                metadata={"format": FORMAT, "stage": stage, "weights": which})
        atomic.write_bytes(out / stage / MODEL_FILE, blob)
        atomic.write_json(out / stage / CONFIG_FILE, exported)
        fingerprints[stage] = file_fingerprint(out / stage / MODEL_FILE)
        files[stage] = stage
        stages[stage] = exported
    pca.save(out / PCA_FILE)
    fingerprints["pca"] = pca.fingerprint
    bundled_meta = json.loads(json.dumps(meta))
    contract = layout.CacheMeta(meta)
    if contract.codec_name == "linear":
        src = atomic.join(cache_root, contract.codec_file)
        atomic.write_bytes(out / CODEC_FILE, Path(src).read_bytes())
        bundled_meta["codec"]["file"] = CODEC_FILE
        files["codec"] = CODEC_FILE
    if include_vfm:
        files["vfm"] = _copy_vfm(meta, vfm_weights, out)
    bundled_meta["exported_from_cache"] = str(cache_root)
    atomic.write_json(out / CACHE_META, bundled_meta)
    fingerprints.update(codec=contract.codec_weights, vfm=contract.vfm_weights, cache=contract.fingerprint)
    index = {
        "_class_name": "Re2PixPipeline",
        "_library": "re2pix",
        "format": FORMAT,
        "stage1": ["re2pix", "Stage1 (DINO-Foresight masked feature transformer)"],
        "stage2": ["re2pix", f"Stage2Model ({stages['stage2'].get('conditioning', 'features')} conditioning)"],
        "files": files,
        "fingerprints": fingerprints,
        "window": dict(meta["window"]),
        "needs": needs(meta, included_vfm=include_vfm),
    }
    atomic.write_json(out / INDEX, index)
    atomic.write_text(out / CARD, model_card(index, stages, bundled_meta, run_metrics(s2_path)))
    summary(f"export: {s1_path.name} + {s2_path.name} ({fingerprints['stage2']}) -> {out} "
            f"({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")
    return index


def _copy_vfm(meta: dict[str, Any], weights: str | None, out: Path) -> str:
    """Copy the VFM weights (and the record beside them) into out/vfm/, under their own name (the fingerprint
    includes it); refused unless they are the weights the cache's features were made with."""
    from pipeline.vfm import record_path
    from pipeline.weights import file_weights_tag

    recorded = layout.CacheMeta(meta).vfm_weights
    if recorded == RANDOM:
        raise BundleError("include_vfm: the cache was made with a RANDOM VFM, there are no weights to include")
    src = Path(weights or ((meta.get("settings") or {}).get("vfm") or {}).get("weights") or "")
    if not src.is_file():
        raise BundleError(f"include_vfm: VFM weights file {str(src) or '(none recorded)'} not found; pass it with "
                          "--vfm-weights")
    if file_weights_tag(src) != recorded:
        raise BundleError(f"include_vfm: {src} is {file_weights_tag(src)}, the cache's features were made with "
                          f"{recorded}; pass those weights with --vfm-weights")
    atomic.write_bytes(out / "vfm" / src.name, src.read_bytes())
    if record_path(src).is_file():
        atomic.write_bytes(out / "vfm" / record_path(src).name, record_path(src).read_bytes())
    return f"vfm/{src.name}"


def needs(meta: dict[str, Any], included_vfm: bool = False) -> dict[str, Any]:
    """The weights a bundle does not carry: the VFM always (unless random), a WAN VAE (by fingerprint)."""
    settings = meta.get("settings") or {}
    vfm = {"name": layout.CacheMeta(meta).vfm_name, "weights": layout.CacheMeta(meta).vfm_weights,
           "recorded_path": (settings.get("vfm") or {}).get("weights", ""),
           "option": "vfm_weights= / --vfm-weights"}
    out: dict[str, Any] = {"vfm": None if vfm["weights"] == RANDOM or included_vfm else vfm}
    codec = meta["codec"]
    out["codec"] = None if codec.get("name") in ("linear", "pixel") or codec.get("weights") == RANDOM else {
        "name": codec.get("name"), "weights": codec.get("weights"),
        "recorded_path": (settings.get("codec") or {}).get("weights", ""), "option": "codec_weights= / --codec-weights"}
    return out


def run_metrics(s2_path: Path) -> list[dict[str, Any]]:
    """Rows of evaluation records (`<root>/eval*/metrics.json` beside the run) that scored this checkpoint."""
    run = s2_path.parent.parent if s2_path.parent.name == ckpt.CHECKPOINTS else s2_path.parent
    found = []
    for path in sorted(run.parent.glob("eval*/metrics.json")):
        try:
            rows = (json.loads(path.read_text()).get("rows") or {})
        except (OSError, ValueError):
            continue
        for name, row in rows.items():
            recorded = Path(str(row.get("checkpoint") or ""))
            if recorded.parts[-3:] == s2_path.parts[-3:]:
                metrics = {k: v.get("mean") if isinstance(v, dict) else v for k, v in (row.get("metrics") or {}).items()}
                found.append({"file": str(path), "row": name, "samples": row.get("samples"), "metrics": metrics})
    return found


def model_card(index: dict[str, Any], stages: dict[str, dict[str, Any]], meta: dict[str, Any],
               evaluations: list[dict[str, Any]]) -> str:
    """The bundle's README.md: what it is, the data, the training steps, the run's own metrics, what it needs."""
    s1, s2 = stages["stage1"], stages["stage2"]
    window = meta["window"]

    def val(config: dict[str, Any]) -> str:
        v = config.get("val") or {}
        return ", ".join(f"{k} {x:.4g}" for k, x in sorted(v.items()) if isinstance(x, (int, float))) or "none recorded"

    need_lines = []
    for part, need in index["needs"].items():
        if need:
            need_lines.append(f"- {part}: `{need['name']}` with weights `{need['weights']}` (pass them with "
                              f"{need['option']}; recorded path at export: `{need['recorded_path'] or '-'}`)")
        else:
            why = ("its weights are in this folder" if index["files"].get(part) else
                   "the lossless pixel codec" if meta[part].get("name") == "pixel" else "the cache used RANDOM weights")
            need_lines.append(f"- {part}: nothing ({why})")
    eval_lines = [f"- `{e['row']}` in `{e['file']}` ({e['samples']} sample(s)): "
                  + ", ".join(f"{k} {v:.4g}" for k, v in sorted(e["metrics"].items()) if isinstance(v, (int, float)))
                  for e in evaluations] or ["- no evaluation of this checkpoint was found beside the run"]
    random_parts = [p for p, flag in (("Stage 1", s1.get("random_weights")), ("Stage 2", s2.get("random_weights")),
                                      ("VFM", layout.CacheMeta(meta).vfm_weights == RANDOM)) if flag]
    return "\n".join([
        "---",
        "library_name: re2pix",
        "license: other  # fill in: the licence of the training data and of the VFM / VAE weights apply",
        "tags: [video-prediction, re2pix, dino-foresight, diffusion]",
        "---",
        "",
        "# Re2Pix video prediction bundle",
        "",
        "Re2Pix (Representations Before Pixels: semantics-guided hierarchical video prediction): Stage 1 forecasts "
        "the future in PCA-reduced VFM feature space, Stage 2 renders it with a latent video diffusion transformer "
        "conditioned on those features.",
        *(["", f"**RANDOM weights in {', '.join(random_parts)}: the predictions are meaningless.**"] if random_parts else []),
        "",
        "## Use",
        "",
        "```python",
        "from re2pix import Re2PixPipeline",
        "pipe = Re2PixPipeline.from_pretrained(\"<this folder>\")",
        "out = pipe(frames)  # uint8 [T, H, W, 3], T >= context frames, any size",
        "```",
        "",
        "or `python cli.py predict --bundle <this folder> --input CLIP`.",
        "",
        "## Data and window",
        "",
        f"- dataset: `{meta.get('dataset')}` (cache fingerprint `{meta.get('fingerprint')}`, "
        f"{meta.get('num_samples')} windows, splits {meta.get('splits')})",
        f"- window: {window['frames']} frames at {window['height']}x{window['width']}, "
        f"the first {window['context_frames']} observed",
        f"- VFM `{meta['vfm']['name']}` layers {meta['vfm'].get('layers')}, PCA {meta['pca']['components']} components "
        f"(`{index['fingerprints']['pca']}`); codec `{meta['codec']['name']}` ({meta['codec'].get('channels')} channels, "
        f"`{meta['codec'].get('weights')}`)",
        "",
        "## Training",
        "",
        f"- Stage 1: step {s1.get('step')} ({s1['loaded_weights']} weights), validation at that step: {val(s1)}",
        f"- Stage 2: step {s2.get('step')} ({s2['loaded_weights']} weights), conditioning "
        f"`{s2.get('conditioning')}`, alignment `{s2.get('alignment')}`, validation at that step: {val(s2)}",
        "",
        "## Metrics (from the run's own records)",
        "",
        *eval_lines,
        "",
        "## Weights this folder does not carry",
        "",
        *need_lines,
        "",
        "## Files",
        "",
        f"`{INDEX}` names the parts and their fingerprints; " + ", ".join(
            f"`{v}`" for v in index["files"].values() if v) + ".",
        "",
        "## Publishing",
        "",
        f"`from huggingface_hub import HfApi; {UPLOAD}`",
        "",
        "## Citation",
        "",
        "```bibtex",
        "@article{re2pix,",
        "  title = {Representations Before Pixels: Semantics-Guided Hierarchical Video Prediction},",
        "  note  = {fill in the authors, venue and year of the paper},",
        "}",
        "```",
        "",
    ])


# -------------------------------------------------------------------------------------------------- read


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"{path} not found: the bundle {path.parent} is incomplete; export it again")
    return json.loads(path.read_text())


def read_bundle(path: str | Path) -> Bundle:
    """Every part of a bundle, refused naming the field when one does not fit the others."""
    root = Path(path)
    if not (root / INDEX).is_file():
        raise BundleError(f"{root} is not a Re2Pix bundle (no {INDEX}); write one with `python cli.py export`")
    index = _json(root / INDEX)
    if index.get("format") != FORMAT:
        raise BundleError(f"{root / INDEX}: format {index.get('format')!r}, this code reads {FORMAT!r}")
    files, prints = index.get("files") or {}, index.get("fingerprints") or {}
    configs, weights = {}, {}
    problems = []
    for stage in STAGES:
        folder = root / (files.get(stage) or stage)
        configs[stage] = _json(folder / CONFIG_FILE)
        if configs[stage].get("stage") != stage:
            problems.append(f"{folder / CONFIG_FILE}: stage is {configs[stage].get('stage')!r}, {INDEX} files.{stage} expects {stage!r}")
        if not (folder / MODEL_FILE).is_file():
            raise BundleError(f"{folder / MODEL_FILE} not found: the bundle {root} is incomplete; export it again")
        found = file_fingerprint(folder / MODEL_FILE)
        if prints.get(stage) != found:
            problems.append(f"{INDEX} fingerprints.{stage} = {prints.get(stage)!r}, {folder / MODEL_FILE} is {found!r}")
        weights[stage] = load_file(str(folder / MODEL_FILE))
    meta = _json(root / (files.get("cache_meta") or CACHE_META))
    pca_path = root / (files.get("pca") or PCA_FILE)
    if not pca_path.is_file():
        raise BundleError(f"{pca_path} not found: the bundle {root} is incomplete; export it again")
    try:
        pca = PCA.load(pca_path)
    except ValueError as exc:
        raise BundleError(f"{pca_path}: {exc}") from None
    if prints.get("pca") != pca.fingerprint:
        problems.append(f"{INDEX} fingerprints.pca = {prints.get('pca')!r}, {PCA_FILE} is {pca.fingerprint!r}")
    for key in ("codec", "vfm"):
        if prints.get(key) != meta[key].get("weights"):
            problems.append(f"{INDEX} fingerprints.{key} = {prints.get(key)!r}, {CACHE_META} {key}.weights is {meta[key].get('weights')!r}")
    for key, value in (index.get("window") or {}).items():
        if meta["window"].get(key) != value:
            problems.append(f"{INDEX} window.{key} = {value!r}, {CACHE_META} window.{key} is {meta['window'].get(key)!r}")
    if meta["codec"].get("name") == "linear" and not (root / str(meta["codec"].get("file", ""))).is_file():
        problems.append(f"{CACHE_META} codec.file = {meta['codec'].get('file')!r}: no such file in {root}")
    if problems:
        raise BundleError(f"the bundle {root} does not fit together:\n  - " + "\n  - ".join(problems))
    try:
        check_checkpoints_fit_cache(meta, pca, configs["stage1"], configs["stage2"], str(root))
    except CacheError as exc:
        raise BundleError(str(exc)) from None
    return Bundle(root, index, configs["stage1"], configs["stage2"], weights["stage1"], weights["stage2"], meta, pca)
