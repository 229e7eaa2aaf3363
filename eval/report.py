"""report.md for an evaluation: the paper's Table 1 layout, provenance of every weight, the exact protocol, and the
metric-vs-step curves (Figure 3) as tables and PNG plots.

`write_report(results, out_dir)` reads the dict that eval/evaluate.py writes to metrics.json:

    rows      {name: {"kind", "samples", "metrics": {metric: {"mean", "std", "values"}}, checkpoint info...}}
    baseline  the row the deltas are taken against (or None)
    steps     {run: [{"step", "checkpoint", "metrics": {...}}]}   (metric vs training step; may be empty)
    protocol  {key: value}: frames, windows, samples, FID/FVD clip protocol, depth reduction, ...
    provenance {vfm, codec, fid_net, fvd_net, heads, stage1, stage2, random_parts, random}
    notes, files, seconds

mIoU and δ1 are shown in percent, as in the paper. Values in parentheses are (row − baseline) in the shown units; the
arrow in each header says which direction is better. With several samples a cell reads mean ± std.
Plots are drawn with Pillow (matplotlib is not a dependency): one line per run, metric against step.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from eval.protocol_tag import tags_line
from eval.scoring import METRICS, SSIM_BORDER
from pipeline import atomic

if TYPE_CHECKING:
    from eval.protocol import EvalProtocol

# metric key -> (header, scale to shown units, format, higher is better)
COLUMNS: dict[str, tuple[str, float, str, bool]] = {
    "miou": ("mIoU (A) ↑", 100.0, "{:.1f}", True),
    "miou_moving": ("mIoU (M) ↑", 100.0, "{:.1f}", True),
    "abs_rel": ("AbsRel ↓", 1.0, "{:.3f}", False),
    "delta1": ("δ1 ↑", 100.0, "{:.1f}", True),
    "fid": ("FID ↓", 1.0, "{:.2f}", False),
    "fvd": ("FVD ↓", 1.0, "{:.1f}", False),
    "psnr": ("PSNR ↑", 1.0, "{:.2f}", True),
    "ssim": ("SSIM ↑", 1.0, "{:.3f}", True),
}
EXTRA_DEPTH: dict[str, tuple[str, float, str, bool]] = {
    "sq_rel": ("SqRel ↓", 1.0, "{:.3f}", False),
    "rmse": ("RMSE ↓", 1.0, "{:.2f}", False),
    "rmse_log": ("RMSE log ↓", 1.0, "{:.3f}", False),
    "delta2": ("δ2 ↑", 100.0, "{:.1f}", True),
    "delta3": ("δ3 ↑", 100.0, "{:.1f}", True),
}
STEP_METRICS = METRICS  # every metric of the protocol, in the columns' order
NA = "n/a"


# ------------------------------------------------------------------------------------------------ cells


def _value(entry: dict[str, Any] | None, scale: float) -> float | None:
    if not entry or entry.get("mean") is None:
        return None
    return float(entry["mean"]) * scale


def format_cell(entry: dict[str, Any] | None, spec: tuple[str, float, str, bool], base: dict[str, Any] | None = None) -> str:
    """"mean", "mean ± std" (several samples), plus " (+delta)" against `base`; "n/a" when there is no value."""
    _, scale, fmt, _ = spec
    value = _value(entry, scale)
    if value is None:
        return NA
    text = fmt.format(value)
    values = [v for v in (entry.get("values") or []) if v is not None]
    if len(values) > 1 and entry.get("std") is not None:
        text += " ± " + fmt.format(float(entry["std"]) * scale)
    base_value = _value(base, scale)
    if base_value is not None and base is not entry:
        delta = value - base_value
        text += " (" + ("+" if delta >= 0 else "−") + fmt.format(abs(delta)) + ")"
    return text


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def results_table(results: dict[str, Any], columns: dict[str, tuple[str, float, str, bool]] = COLUMNS) -> list[str]:
    rows = results.get("rows") or {}
    baseline = results.get("baseline")
    base_metrics = rows.get(baseline, {}).get("metrics") if baseline else None
    body = []
    for name, row in rows.items():
        metrics = row.get("metrics") or {}
        label = f"**{name}**" if name == baseline else name
        cells = [format_cell(metrics.get(k), spec, (base_metrics or {}).get(k) if name != baseline else None) for k, spec in columns.items()]
        body.append([label] + cells)
    return _table(["Method"] + [spec[0] for spec in columns.values()], body)


# ------------------------------------------------------------------------------------------------ report


def _provenance(results: dict[str, Any]) -> list[str]:
    prov = results.get("provenance") or {}
    lines = ["## Provenance of every weight", ""]
    if prov.get("random"):
        parts = ", ".join(prov.get("random_parts") or [])
        lines += [
            "> ⚠️ **WARNING: RANDOM WEIGHTS.** This evaluation used randomly initialised weights in: "
            f"**{parts}**. Every number in this report is meaningless for research: it only shows that the "
            "pipeline runs. Use real VFM / codec weights, trained checkpoints and the real FID/FVD networks "
            "(`--fid-weights`, `--fvd-weights`) for results.",
            "",
        ]
    else:
        lines += ["All weights are real (no random weights were used).", ""]
    body = [
        ["VFM", vfm_description(prov.get("vfm") or {}), str((prov.get("vfm") or {}).get("weights"))],
        ["Codec", str((prov.get("codec") or {}).get("name")), str((prov.get("codec") or {}).get("weights"))],
        ["PCA", "pca.safetensors", str(prov.get("pca_fingerprint"))],
        ["FID network", "Inception-v3 (TF 2015-12-05)", str(prov.get("fid_net"))],
        ["FVD network", "I3D Kinetics-400", str(prov.get("fvd_net"))],
    ]
    for task, info in (prov.get("heads") or {}).items():
        body.append([f"{task} head", _ckpt_text(info), _random_text(info)])
    if prov.get("stage1"):
        body.append(["Stage 1", _ckpt_text(prov["stage1"]), _random_text(prov["stage1"])])
    for run, info in (prov.get("stage2") or {}).items():
        kind = f"conditioning {info.get('conditioning')}, alignment {info.get('alignment')}"
        body.append([f"Stage 2 '{run}'", _ckpt_text(info) + f" ({kind})", _random_text(info)])
    lines += _table(["Part", "What", "Weights / trained on"], body)
    return lines + [""]


def vfm_description(vfm: dict[str, Any]) -> str:
    """The VFM's name, and for a VFM made by pretrain-vfm what it is and how semantic its probe found it."""
    pre = vfm.get("pretraining")
    if not pre:
        return str(vfm.get("name"))
    probe = pre.get("probe") or {}
    fine = ", ".join(f"C={c}: {v:.1f}" for c, v in sorted((probe.get("miou_by_components") or {}).items(), key=lambda kv: int(kv[0])))
    return (f"{vfm.get('name')}: {pre.get('description')} ({pre.get('objective')}, {pre.get('steps')} steps); linear "
            f"probe mIoU {probe.get('miou')} vs random-init {probe.get('miou_random')} ({fine}); layer difference "
            f"{pre.get('layer_difference')}")


def _ckpt_text(info: dict[str, Any]) -> str:
    return f"`{info.get('checkpoint')}` step {info.get('step')}" + (f" ({info['loaded_weights']} weights)" if info.get("loaded_weights") else "")


def _random_text(info: dict[str, Any]) -> str:
    return "**trained on RANDOM-weight features**" if info.get("random_weights") else "real features"


def describe_protocol(p: EvalProtocol, *, samples: int, seed: int, limit: int, windows_with_segmentation: int,
                      windows_with_depth: int, sampling_overrides: dict[str, Any]) -> dict[str, Any]:
    """The protocol as run, in words and numbers: metrics.json's `protocol` and report.md's *Protocol* section."""
    m, k, future, ctx = p.context_frames, p.window_frames, p.predicted_frames, p.context_latent_frames
    native = [int(i) for i in p.reader.manifest.row(int(p.rows[0]), named=True)["frame_indices"]]
    windows = len(p.rows)
    fid_dim = int(p.nets.fid.dim) if p.nets.fid is not None else 0
    fvd_dim = int(p.nets.fvd.dim) if p.nets.fvd is not None else 0
    copy_index = p.feature_indices[ctx - 1]
    return {
        "cache": p.cache,
        "dataset": p.meta.get("dataset"),
        "split": "val",
        "windows": windows,
        "limit": limit,
        "windows_with_segmentation": windows_with_segmentation,
        "windows_with_depth": windows_with_depth,
        "window_frames": k,
        "context_frames": m,
        "predicted_frames": future,
        "context_window_indices": [0, m - 1],
        "predicted_window_indices": [m, k - 1],
        "first_window_native_frames": {"context": [native[0], native[m - 1]], "predicted": [native[m], native[-1]]},
        "annotated_index": p.annotated,
        "annotated_native_frame": native[p.annotated],
        "annotated_feature_frame": p.annotated_feature,
        "copy_last_feature_index": copy_index,
        "resolution": [p.height, p.width],
        "samples": samples,
        "seed": seed,
        "batch_size": p.batch_size,
        "truth": "decoded cached latents (lossless pixel codec: exact source frames)" if p.truth_from == "latents"
                 else "source frames read again from the manifest's files",
        "fid": f"Inception pool3 ({fid_dim}-d) of every predicted frame vs the real frame at the same position "
               f"({windows * future} frames per side); uint8 frames, resized to 299x299 by the extractor",
        "fvd": (f"one clip of {future} predicted frames per window vs the real clip ({windows} clips per side); "
                f"every frame squashed to 224x224 (no crop), I3D Kinetics-400 logits averaged over time ({fvd_dim}-d); "
                "Fréchet distance with N-1 covariances") if p.fvd_clips else "n/a (clips too short)",
        "label_resolution": p.label_resolution,
        "segmentation": f"{p.num_classes} classes, one confusion matrix over the set, ignore 255; moving objects = train ids "
                        "11-18; head logits (8x the token grid) upsampled bicubically to the label resolution, "
                        + ("each label file's own size, read through the manifest (native, as DINO-Foresight: 1024x2048 "
                           "on Cityscapes)" if p.label_resolution == "native"
                           else f"{p.height}x{p.width}, the cache's window-size labels (not DINO-Foresight's 1024x2048)"),
        "depth": "8-bit pseudo-disparity bins compared directly (no scale/shift alignment), argmax of the 256 upsampled bins, valid = gt > 0, predicted bin 0 "
                 "clamped to 1, per-image metrics averaged over images",
        "psnr_ssim": "frames quantised to uint8, scaled to [0, 1]; per frame, averaged over all predicted frames; "
                     f"SSIM Gaussian 11x11 sigma 1.5, {SSIM_BORDER} borders",
        "generated_semantics": "VFM on the generated annotated frame (uint8 -> [0, 1]), PCA projection and reconstruction, heads",
        "stage1_row": f"heads on Stage 1's rollout of feature frame {p.annotated_feature} (window index {p.annotated})",
        "copy_last_row": f"pixels: window frame {m - 1} repeated; features: feature frame {ctx - 1} (window index {copy_index})",
        "copy_last_codec_row": f"window frame {m - 1} as the codec reconstructs it from the cached latents, repeated; "
                               "scored like a generated row (VFM + PCA + heads on its pixels)",
        "codec_reconstruction_row": "the true future decoded from the cached latents, scored like a generated row: the "
                                    "ceiling of any generated row through this codec",
        "sampling_overrides": sampling_overrides,
        "noise_seeds": "per (sample index, first window of the batch): the same noise for every method and checkpoint",
    }


def _protocol(results: dict[str, Any]) -> list[str]:
    protocol = results.get("protocol") or {}
    lines = ["## Protocol", ""]
    for key, value in protocol.items():
        lines.append(f"- **{key.replace('_', ' ')}**: {value}")
    rows = results.get("rows") or {}
    sampling = [(name, row["sampling"]) for name, row in rows.items() if row.get("sampling")]
    if sampling:
        lines += ["", "Sampling settings per Stage 2 run:", ""]
        keys = ("sampler", "steps", "sigma_max", "sigma_min", "rho", "guidance_weight", "guidance_components", "inference_components")
        lines += _table(["Run", *keys], [[name, *[str(s.get(k)) for k in keys]] for name, s in sampling])
    return lines + [""]


def _steps(results: dict[str, Any]) -> list[str]:
    steps = results.get("steps") or {}
    if not steps:
        return []
    lines = ["## Metric vs training step (Figure 3)", ""]
    files = results.get("files") or {}
    for run, entries in steps.items():
        lines += [f"### {run}", ""]
        body = [[str(e["step"])] + [format_cell(e["metrics"].get(k), COLUMNS[k]) for k in STEP_METRICS] for e in entries]
        lines += _table(["Step"] + [COLUMNS[k][0] for k in STEP_METRICS], body) + [""]
    plots = [(k[len("plot_"):], v) for k, v in files.items() if k.startswith("plot_")]
    for metric, path in plots:
        link = os.path.relpath(path, Path(files["report"]).parent) if files.get("report") else path
        lines += [f"![{metric} vs step]({link})", ""]
    return lines


def render_report(results: dict[str, Any]) -> str:
    """The markdown text of report.md."""
    protocol = results.get("protocol") or {}
    prov = results.get("provenance") or {}
    lines = ["# Re2Pix evaluation", ""]
    if prov.get("random"):
        lines += ["> ⚠️ **RANDOM WEIGHTS WERE USED — THESE NUMBERS ARE MEANINGLESS.** See *Provenance* below.", ""]
    samples = protocol.get("samples", 1)
    lines += [
        f"{protocol.get('windows', '?')} {protocol.get('split', 'val')} windows of {protocol.get('dataset', '?')}: "
        f"{protocol.get('context_frames', '?')} context frames, {protocol.get('predicted_frames', '?')} predicted; "
        f"segmentation and depth on window index {protocol.get('annotated_index', '?')} "
        f"(native frame {protocol.get('annotated_native_frame', '?')}). "
        + (f"Mean ± std over {samples} independent samples per generative row. " if samples > 1 else "")
        + "mIoU and δ1 in %. "
        + (f"Parentheses: difference to **{results['baseline']}**." if results.get("baseline") else "No plain baseline run was given, so no deltas."),
        "",
        "## Results",
        "",
    ]
    lines += results_table(results) + [""]
    if results.get("protocol_tags"):
        lines += [tags_line(results["protocol_tags"]) + " (compare numbers only under equal tags; eval/protocol_tag.py)", ""]
    lines += ["Additional depth metrics:", ""] + results_table(results, EXTRA_DEPTH) + [""]
    lines += _provenance(results)
    lines += _protocol(results)
    lines += _steps(results)
    files = results.get("files") or {}
    if files.get("qualitative"):
        lines += ["## Qualitative", "", f"Frame grids of the first windows: `{files['qualitative']}`", ""]
    notes = results.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    seconds = results.get("seconds") or {}
    if seconds:
        lines += ["## Time", ""] + [f"- {k}: {v:.1f} s" for k, v in seconds.items() if isinstance(v, (int, float))] + [""]
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `out_dir/report.md` atomically; returns its path."""
    path = Path(out_dir) / "report.md"
    atomic.write_text(path, render_report(results))
    return path


# -------------------------------------------------------------------------------------------------- plots

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194))


def plot_metric_vs_step(series: dict[str, Sequence[tuple[int, float | None]]], metric: str, path: str | Path,
                        size: tuple[int, int] = (640, 400)) -> Path:
    """A line plot (PNG) of `metric` against training step, one line per run; missing values are skipped."""
    points = {name: [(float(s), float(v)) for s, v in pts if v is not None and math.isfinite(float(v))] for name, pts in series.items()}
    every = [p for pts in points.values() for p in pts]
    if not every:
        raise ValueError(f"plot_metric_vs_step: no finite {metric} values to plot")
    width, height = size
    left, right, top, bottom = 70, 20, 30, 50
    font = ImageFont.load_default()
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    xs, ys = [p[0] for p in every], [p[1] for p in every]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.08 or abs(y0) * 0.05 or 1.0  # keep lines off the frame
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for frac in (0.0, 0.5, 1.0):
        yv, xv = y0 + frac * (y1 - y0), x0 + frac * (x1 - x0)
        _, py = to_px(x0, yv)
        px, _ = to_px(xv, y0)
        draw.text((4, py - 6), f"{yv:.4g}", fill=(0, 0, 0), font=font)
        draw.text((px - 12, height - bottom + 6), f"{xv:.0f}", fill=(0, 0, 0), font=font)
    draw.text((width // 2 - 40, height - 20), "training step", fill=(0, 0, 0), font=font)
    header, _, _, higher = COLUMNS.get(metric, (metric, 1.0, "", True))
    # The default bitmap font has no arrows: plain ASCII in the picture.
    title = header.replace(" ↑", "").replace(" ↓", "").replace("δ", "delta")
    draw.text((left, 8), f"{title} vs training step ({'higher' if higher else 'lower'} is better)", fill=(0, 0, 0), font=font)
    for i, (name, pts) in enumerate(points.items()):
        color = PALETTE[i % len(PALETTE)]
        pixels = [to_px(x, y) for x, y in sorted(pts)]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        ly = top + 10 + 14 * i
        draw.line([(width - right - 160, ly), (width - right - 140, ly)], fill=color, width=2)
        draw.text((width - right - 135, ly - 6), name, fill=color, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
