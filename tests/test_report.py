"""report.md: Table 1 layout with deltas and mean ± std, a loud provenance warning for random weights, the protocol,
metric-vs-step tables, and the Pillow line plot."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from eval.report import (
    COLUMNS,
    format_cell,
    plot_metric_vs_step,
    render_report,
    write_report,
)


def _entry(*values):
    finite = [v for v in values if v is not None]
    return {"mean": float(np.mean(finite)) if finite else None, "std": float(np.std(finite)) if len(finite) > 1 else 0.0,
            "values": list(values)}


def _results(random: bool = False, steps: bool = False) -> dict:
    metrics = lambda miou, fid: {"miou": _entry(miou), "miou_moving": _entry(miou / 2), "abs_rel": _entry(0.2),  # noqa: E731
                                 "delta1": _entry(0.8), "fid": _entry(fid), "fvd": _entry(300.0), "psnr": _entry(20.0),
                                 "ssim": _entry(0.6)}
    rows = {
        "Copy last frame": {"kind": "copy_last", "samples": 1, "metrics": metrics(0.40, 50.0)},
        "Baseline": {"kind": "generated", "samples": 1, "metrics": metrics(0.50, 20.0)},
        "Re2Pix": {"kind": "generated", "samples": 2, "metrics": {**metrics(0.60, 15.0), "miou": _entry(0.59, 0.61)},
                   "sampling": {"sampler": "multistep", "steps": 35}},
        "Re2Pix (Stage 1)": {"kind": "stage1", "samples": 1,
                             "metrics": {**metrics(0.65, 0.0), "fid": _entry(None), "fvd": _entry(None), "psnr": _entry(None), "ssim": _entry(None)}},
    }
    results = {
        "rows": rows,
        "baseline": "Baseline",
        "steps": {},
        "protocol": {"dataset": "cityscapes", "split": "val", "windows": 500, "context_frames": 13, "predicted_frames": 12,
                     "annotated_index": 16, "annotated_native_frame": 19, "samples": 2,
                     "fvd": "one clip of 12 predicted frames per window", "depth": "bins compared directly, per image"},
        "provenance": {
            "vfm": {"name": "dinov2", "weights": "random" if random else "file:abc"},
            "codec": {"name": "wan", "weights": "file:def"},
            "pca_fingerprint": "0123", "fid_net": "file:111", "fvd_net": "file:222",
            "heads": {"segmentation": {"checkpoint": "h/seg", "step": 10, "random_weights": random}},
            "stage1": {"checkpoint": "s1", "step": 5, "random_weights": random},
            "stage2": {"Re2Pix": {"checkpoint": "s2", "step": 7, "random_weights": random, "conditioning": "features", "alignment": "none"}},
            "random_parts": ["VFM"] if random else [],
            "random": random,
        },
        "notes": ["a note"],
        "files": {"report": "out/report.md"},
    }
    if steps:
        results["steps"] = {"Re2Pix": [{"step": 1000, "checkpoint": "a", "metrics": metrics(0.3, 40.0)},
                                       {"step": 2000, "checkpoint": "b", "metrics": metrics(0.5, 25.0)}]}
        results["files"]["plot_fid"] = "out/plots/fid_vs_step.png"
    return results


def _row(text: str, name: str) -> list[str]:
    line = next(l for l in text.splitlines() if l.startswith(f"| {name} |") or l.startswith(f"| **{name}** |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_has_paper_columns_percentages_and_deltas_against_the_baseline():
    text = render_report(_results())
    header = next(l for l in text.splitlines() if l.startswith("| Method"))
    for title in ("mIoU (A)", "mIoU (M)", "AbsRel", "δ1", "FID", "FVD", "PSNR", "SSIM"):
        assert title in header
    copy = _row(text, "Copy last frame")
    assert copy[1] == "40.0 (−10.0)"  # mIoU in %, delta to the baseline's 50.0
    assert copy[5] == "50.00 (+30.00)"  # FID
    base = _row(text, "Baseline")
    assert base[0] == "**Baseline**" and base[1] == "50.0"  # no delta against itself
    stage1 = _row(text, "Re2Pix (Stage 1)")
    assert stage1[5:] == ["n/a"] * 4  # no pixels


def test_several_samples_show_mean_and_std():
    text = render_report(_results())
    cell = _row(text, "Re2Pix")[1]
    assert cell == "60.0 ± 1.0 (+10.0)"


def test_format_cell_closed_forms():
    spec = COLUMNS["abs_rel"]
    assert format_cell(_entry(0.1234), spec) == "0.123"
    assert format_cell(_entry(0.1, 0.3), spec) == "0.200 ± 0.100"
    assert format_cell(_entry(0.3), spec, _entry(0.1)) == "0.300 (+0.200)"
    assert format_cell(_entry(None), spec) == "n/a"
    assert format_cell(None, spec) == "n/a"


def test_provenance_warns_loudly_only_when_weights_are_random():
    loud = render_report(_results(random=True))
    assert "RANDOM WEIGHTS" in loud and "MEANINGLESS" in loud
    assert "**trained on RANDOM-weight features**" in loud
    quiet = render_report(_results(random=False))
    assert "RANDOM WEIGHTS" not in quiet
    assert "All weights are real" in quiet
    for text in (loud, quiet):  # every part of the provenance is named
        for part in ("VFM", "Codec", "PCA", "FID network", "FVD network", "segmentation head", "Stage 1", "Stage 2 'Re2Pix'"):
            assert f"| {part} |" in text


def test_protocol_and_metric_vs_step_sections():
    text = render_report(_results(steps=True))
    assert "## Protocol" in text and "one clip of 12 predicted frames per window" in text
    assert "## Metric vs training step" in text
    assert _row(text, "1000")[1] == "30.0" and _row(text, "2000")[5] == "25.00"
    assert "![fid vs step](plots/fid_vs_step.png)" in text
    assert "a note" in text
    assert "Metric vs training step" not in render_report(_results(steps=False))


def test_write_report_writes_atomically(tmp_path):
    path = write_report(_results(), tmp_path / "eval")
    assert path == tmp_path / "eval" / "report.md"
    assert path.read_text().startswith("# Re2Pix evaluation")
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]  # no temporary file left behind


def test_plot_metric_vs_step_draws_every_run(tmp_path):
    series = {"Re2Pix": [(1000, 30.0), (2000, 20.0), (3000, 15.0)], "Baseline": [(1000, 40.0), (2000, None), (3000, 35.0)]}
    path = plot_metric_vs_step(series, "fid", tmp_path / "plots" / "fid.png", size=(320, 200))
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (200, 320, 3)
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # one colour per run
    with pytest.raises(ValueError, match="no finite fid values"):
        plot_metric_vs_step({"a": [(1, None)]}, "fid", tmp_path / "empty.png")
