"""evaluate: the paper's protocol end to end on a tiny synthetic cache, with heads, Stage 1 and two Stage 2 runs
(Re2Pix and a plain baseline) trained for a few steps. Every row and metric is produced, the copy-last PSNR equals
a direct computation on the source frames, several samples give mean ± std, every checkpoint gives metric vs step,
and evaluation refuses to run without FID/FVD weights unless random ones are allowed.

The FID/FVD builders are replaced by small stand-ins with the same interface (a real random Inception + I3D and a
2048-d Fréchet distance take minutes on a CPU); test_build_metric_nets checks the real builders on their own.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import eval.evaluate as evaluate_module
import eval.scoring as scoring_module
from configs.schema import load_config
from eval.evaluate import (
    CODEC_COPY_ROW,
    CODEC_ROW,
    COPY_ROW,
    METRICS,
    ORACLE_ROW,
    PIXEL_METRICS,
    SEMANTIC_METRICS,
    STAGE1_ROW,
    build_metric_nets,
    evaluate,
)
from eval.feature_nets import MissingMetricWeightsError
from eval.frozen import build_frozen_codec
from eval.scoring import quantize
from pipeline import layout
from pipeline.store import CacheError, CacheReader
from train.heads import train_heads
from train.stage1 import train_stage1
from train.stage2 import train_stage2

# Copy-last frames repeat one frame per window, so their FID covariance is singular: scipy says so, as it should.
pytestmark = [pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning"),
              pytest.mark.slow]  # end to end: trains every stage on a tiny cache

TRAIN = {
    "heads.train.batch_size": 3, "heads.train.val_every": 0, "heads.train.ckpt_every": 0,
    "stage1.train.batch_size": 3, "stage1.train.val_every": 0,
    "stage2.train.batch_size": 1, "stage2.train.val_every": 0, "stage2.train.ckpt_every": 1, "stage2.train.ema_decay": 0.0,
    "stage2.mixed_supervision_prob": 0.0,
    "stage2.model.width": 64, "stage2.model.depth": 1, "stage2.model.heads": 2, "stage2.model.adaln_lora_dim": 8,
}


class TinyFID(nn.Module):
    """Per-channel mean and std of a frame: 6-d, full rank over a few dozen frames."""

    dim = 6
    weights = "random"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.ndim == 4
        x = images.float() / 255.0
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


class TinyFVD(nn.Module):
    """Mean intensity of a clip: 1-d, so a covariance over 2 clips is defined."""

    dim = 1
    weights = "random"
    min_frames = 10

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        assert videos.dtype == torch.uint8 and videos.ndim == 5
        return (videos.float() / 255.0).mean((1, 2, 3, 4))[:, None]


def _tiny_builders(monkeypatch_ctx, calls: list):
    def fid(weights, allow_random=False, device="cpu", seed=0):
        calls.append(("fid", weights, allow_random))
        assert allow_random, "evaluate must pass allow_random_metric_weights through"
        return TinyFID()

    def fvd(weights, allow_random=False, device="cpu", seed=0):
        calls.append(("fvd", weights, allow_random))
        assert allow_random
        return TinyFVD()

    monkeypatch_ctx.setattr(scoring_module, "build_fid_extractor", fid)
    monkeypatch_ctx.setattr(scoring_module, "build_fvd_extractor", fvd)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pipeline.dag import build_cache
    from pipeline.synthetic import write_sample_dataset

    root = tmp_path_factory.mktemp("evaluate")
    data, cache = root / "data", str(root / "cache")
    write_sample_dataset(data, train=3, val=2, height=64, width=128)
    build_cache(load_config("tiny"), "synthetic", data, cache, workers=1, allow_random_weights=True)
    cfg = load_config("tiny", TRAIN)
    train_heads(cfg, cache, str(root / "heads"), steps=3)
    train_stage1(cfg, cache, str(root / "stage1"), steps=2)
    train_stage2(cfg, cache, str(root / "re2pix"), steps=2)
    train_stage2(load_config("tiny", {**TRAIN, "stage2.model.conditioning": "none"}), cache, str(root / "baseline"), steps=2)
    return {"root": root, "data": data, "cache": cache, "cfg": cfg, "heads": str(root / "heads"), "stage1": str(root / "stage1"),
            "runs": {"Re2Pix": str(root / "re2pix"), "Baseline": str(root / "baseline")}}


@pytest.fixture(scope="module")
def evaluation(setup):
    calls: list = []
    out = setup["root"] / "eval"
    with pytest.MonkeyPatch.context() as mp:
        _tiny_builders(mp, calls)
        results = evaluate(setup["cfg"], setup["cache"], setup["heads"], setup["stage1"], setup["runs"], str(out), samples=2,
                           all_checkpoints=True, allow_random_metric_weights=True, allow_random_weights=True, sampling_steps=2)
    return out, results, calls


def test_every_row_and_metric(evaluation):
    out, results, calls = evaluation
    assert [c[0] for c in calls] == ["fid", "fvd"] and all(c[2] for c in calls)
    rows = results["rows"]
    assert list(rows) == [COPY_ROW, CODEC_COPY_ROW, CODEC_ROW, "Re2Pix", "Baseline", STAGE1_ROW, ORACLE_ROW]
    assert results["baseline"] == "Baseline"  # found from the checkpoint: no features, no alignment
    for name in (COPY_ROW, CODEC_COPY_ROW, CODEC_ROW, "Re2Pix", "Baseline"):  # pixel rows: every metric
        for metric in METRICS:
            value = rows[name]["metrics"][metric]["mean"]
            assert value is not None and math.isfinite(value), (name, metric)
    for name in (STAGE1_ROW, ORACLE_ROW):  # feature-space rows: no pixels
        assert all(rows[name]["metrics"][m]["mean"] is not None for m in SEMANTIC_METRICS)
        assert all(rows[name]["metrics"][m]["mean"] is None for m in PIXEL_METRICS)
    for name, row in rows.items():
        m = row["metrics"]
        assert 0 <= m["miou"]["mean"] <= 1 and 0 <= m["delta1"]["mean"] <= 1 and m["abs_rel"]["mean"] >= 0, name
    assert rows["Re2Pix"]["conditioning"] == "features" and rows["Baseline"]["conditioning"] == "none"
    protocol = results["protocol"]
    assert protocol["windows"] == 2 and protocol["windows_with_segmentation"] == 2
    assert protocol["first_window_native_frames"] == {"context": [3, 15], "predicted": [16, 27]}
    assert protocol["annotated_native_frame"] == 19 and protocol["annotated_feature_frame"] == 4
    assert json.loads((out / "metrics.json").read_text())["rows"].keys() == rows.keys()


def test_report_says_loudly_that_weights_are_random(evaluation):
    out, results, _ = evaluation
    prov = results["provenance"]
    assert prov["random"] and {"VFM", "FID Inception", "FVD I3D", "Stage 1"} <= set(prov["random_parts"])
    assert prov["fid_net"] == "random" and prov["codec"]["weights"].startswith("fit:")  # the cache's linear codec
    text = (out / "report.md").read_text()
    assert "RANDOM WEIGHTS WERE USED" in text and "WARNING: RANDOM WEIGHTS" in text
    assert "| Re2Pix (Stage 1) |" in text and "| **Baseline** |" in text


def test_copy_last_psnr_equals_a_direct_computation(evaluation, setup):
    _, results, _ = evaluation
    reader = CacheReader(setup["cache"])
    m = setup["cfg"].window.context_frames
    values = []
    for row in reader.samples("val"):
        paths = reader.manifest["frame_paths"][int(row)].to_list()
        frames = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0 for p in paths])
        for t in range(m, len(paths)):
            mse = np.mean((frames[m - 1] - frames[t]) ** 2)
            values.append(10 * np.log10(1.0 / mse))
    assert results["rows"][COPY_ROW]["metrics"]["psnr"]["mean"] == pytest.approx(np.mean(values), rel=1e-10)


def test_codec_rows_equal_a_direct_decode_of_the_cached_latents(evaluation, setup):
    # "Codec reconstruction" is the ceiling any Stage 2 can reach through this codec; "copy last (through the codec)"
    # is the copy baseline a generated row really competes with. Both are recomputed here from the cached latents.
    _, results, _ = evaluation
    reader = CacheReader(setup["cache"])
    m = setup["cfg"].window.context_frames
    codec = build_frozen_codec(reader.meta, setup["cfg"].to_dict(), None, True, torch.device("cpu"), setup["cache"])
    latents = reader.array(layout.LATENTS)
    recon, copy = [], []
    for row in reader.samples("val"):
        paths = reader.manifest["frame_paths"][int(row)].to_list()
        frames = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0 for p in paths])
        with torch.no_grad():
            cached = torch.from_numpy(np.asarray(latents[int(row)], dtype=np.float32))  # stored [T', C, h, w]
            video = quantize(codec.decode(cached.permute(1, 0, 2, 3)[None]))
        decoded = video[0].permute(1, 2, 3, 0).numpy().astype(np.float64) / 255.0  # [T, H, W, 3]
        for t in range(m, len(paths)):
            recon.append(10 * np.log10(1.0 / np.mean((decoded[t] - frames[t]) ** 2)))
            copy.append(10 * np.log10(1.0 / np.mean((decoded[m - 1] - frames[t]) ** 2)))
    rows = results["rows"]
    assert rows[CODEC_ROW]["metrics"]["psnr"]["mean"] == pytest.approx(np.mean(recon), rel=1e-6)
    assert rows[CODEC_COPY_ROW]["metrics"]["psnr"]["mean"] == pytest.approx(np.mean(copy), rel=1e-6)
    assert np.mean(recon) > np.mean(copy)  # reconstructing a frame beats repeating the last one


def test_samples_give_mean_and_std(evaluation):
    out, results, _ = evaluation
    for name in ("Re2Pix", "Baseline"):
        row = results["rows"][name]
        assert row["samples"] == 2
        for metric in ("psnr", "fid", "miou"):
            entry = row["metrics"][metric]
            assert len(entry["values"]) == 2
            assert entry["mean"] == pytest.approx(np.mean(entry["values"]))
            assert entry["std"] == pytest.approx(np.std(entry["values"]))
        assert row["metrics"]["psnr"]["values"][0] != row["metrics"]["psnr"]["values"][1]  # independent samples
    assert results["rows"][STAGE1_ROW]["samples"] == 1
    assert " ± " in (out / "report.md").read_text()


def test_metric_vs_step_over_every_checkpoint(evaluation):
    out, results, _ = evaluation
    for run in ("Re2Pix", "Baseline"):
        entries = results["steps"][run]
        assert [e["step"] for e in entries] == [1, 2]
        assert entries[-1]["metrics"] == results["rows"][run]["metrics"]  # the latest checkpoint is the table's row
    assert results["steps"]["Re2Pix"][0]["metrics"]["psnr"] != results["steps"]["Re2Pix"][1]["metrics"]["psnr"]
    plot = out / "plots" / "fid_vs_step.png"
    assert plot.is_file() and Image.open(plot).size == (640, 400)
    assert "## Metric vs training step" in (out / "report.md").read_text()
    grids = sorted((out / "qualitative").glob("*.png"))
    assert len(grids) == 2


def test_truth_is_the_source_frames_unless_the_codec_is_lossless(setup, tmp_path):
    # The linear codec is lossy: `auto` reads the source frames again, so copy-last scores exactly the real frames
    # (test_copy_last_psnr_equals_a_direct_computation); asking for the decoded latents instead gives other pixel
    # scores (the codec's reconstruction error) and the same semantic scores (those read the cached features).
    scores = {}
    with pytest.MonkeyPatch.context() as mp:
        _tiny_builders(mp, [])
        for truth in ("auto", "frames", "latents"):
            res = evaluate(setup["cfg"], setup["cache"], setup["heads"], setup["stage1"], {}, str(tmp_path / truth),
                           allow_random_metric_weights=True, allow_random_weights=True, limit=1, truth=truth, oracle=False)
            assert list(res["rows"]) == [COPY_ROW, CODEC_COPY_ROW, CODEC_ROW, STAGE1_ROW]
            scores[truth] = res["rows"]
    assert scores["auto"] == scores["frames"]
    assert scores["latents"][STAGE1_ROW] == scores["frames"][STAGE1_ROW]
    assert scores["latents"][COPY_ROW]["metrics"]["psnr"] != scores["frames"][COPY_ROW]["metrics"]["psnr"]


def test_components_and_guidance_pass_through_to_sampling(setup, tmp_path):
    nets = evaluate_module.MetricNets(TinyFID(), TinyFVD())
    common = dict(allow_random_weights=True, limit=1, sampling_steps=1, oracle=False, metric_nets=nets)
    plain = evaluate(setup["cfg"], setup["cache"], setup["heads"], setup["stage1"], setup["runs"], str(tmp_path / "a"), **common)
    coarse = evaluate(setup["cfg"], setup["cache"], setup["heads"], setup["stage1"], setup["runs"], str(tmp_path / "b"),
                      components=16, guidance_weight=0.4, guidance_components=8, **common)
    sampling = coarse["rows"]["Re2Pix"]["sampling"]
    assert (sampling["inference_components"], sampling["guidance_weight"], sampling["guidance_components"], sampling["steps"]) == (16, 0.4, 8, 1)
    assert plain["rows"]["Re2Pix"]["sampling"]["inference_components"] == 0
    assert coarse["rows"]["Re2Pix"]["metrics"]["psnr"] != plain["rows"]["Re2Pix"]["metrics"]["psnr"]
    # The baseline has no features: the options do not apply to it, its samples are unchanged, and a note says so.
    assert coarse["rows"]["Baseline"]["sampling"]["guidance_weight"] == 0.0
    assert coarse["rows"]["Baseline"]["metrics"] == plain["rows"]["Baseline"]["metrics"]
    assert any("do not apply" in n for n in coarse["notes"])


def test_refuses_without_metric_weights(setup, tmp_path):
    cfg = setup["cfg"]
    assert cfg.eval.fid_weights == "" and not cfg.eval.allow_random_metric_weights
    with pytest.raises(MissingMetricWeightsError, match="--allow-random-metric-weights") as info:
        evaluate(cfg, setup["cache"], setup["heads"], setup["stage1"], setup["runs"], str(tmp_path / "out"), allow_random_weights=True)
    assert "--fid-weights" in str(info.value) and "pt_inception-2015-12-05" in str(info.value)
    missing = load_config("tiny", {**TRAIN, "eval.fid_weights": str(tmp_path / "nope.pth")})
    with pytest.raises(MissingMetricWeightsError, match="nope.pth"):
        evaluate(missing, setup["cache"], setup["heads"], setup["stage1"], {}, str(tmp_path / "out"), allow_random_weights=True)
    assert not (tmp_path / "out").exists()  # nothing written


def test_refuses_an_annotated_frame_without_features(setup, tmp_path):
    cfg = load_config("tiny", {**TRAIN, "eval.annotated_index": 17})
    with pytest.raises(CacheError, match="not a feature frame"):
        evaluate(cfg, setup["cache"], setup["heads"], setup["stage1"], {}, str(tmp_path / "out"), allow_random_weights=True,
                 metric_nets=evaluate_module.MetricNets(TinyFID(), TinyFVD()))


def test_build_metric_nets_uses_the_real_architectures():
    nets = build_metric_nets(load_config("tiny"), allow_random=True)
    assert (nets.fid.dim, nets.fvd.dim) == (2048, 400)
    assert nets.fid.weights == "random" and nets.fvd.weights == "random"


def test_native_labels_score_like_window_labels_when_the_source_is_window_sized(setup, tmp_path):
    """The synthetic source is written at the window size (64x128), so native scoring (the label files read through
    the manifest) must give exactly the window scoring's semantic metrics: same labels, same logits, same argmax."""
    results = {}
    for mode in ("window", "native"):
        cfg = load_config("tiny", {**TRAIN, "protocol.label_resolution": mode})
        with pytest.MonkeyPatch.context() as mp:
            _tiny_builders(mp, [])
            results[mode] = evaluate(cfg, setup["cache"], setup["heads"], setup["stage1"], {}, str(tmp_path / mode),
                                     allow_random_metric_weights=True, allow_random_weights=True, fid_fvd=False)
    assert results["native"]["protocol"]["label_resolution"] == "native"
    assert results["native"]["protocol"]["windows_with_segmentation"] > 0
    assert results["native"]["rows"][STAGE1_ROW]["metrics"]["miou"]["mean"] is not None
    for row in (COPY_ROW, STAGE1_ROW, ORACLE_ROW):
        for metric in SEMANTIC_METRICS:
            assert results["native"]["rows"][row]["metrics"][metric] == results["window"]["rows"][row]["metrics"][metric]
    # and the per-window record (windows.npz) is the same in both modes
    from eval.windows import read_windows

    native, window = read_windows(tmp_path / "native" / "windows.npz"), read_windows(tmp_path / "window" / "windows.npz")
    for row in (COPY_ROW, STAGE1_ROW, ORACLE_ROW):
        np.testing.assert_array_equal(native["rows"][row]["confusion"], window["rows"][row]["confusion"])
        np.testing.assert_array_equal(native["rows"][row]["abs_rel"], window["rows"][row]["abs_rel"])


def test_windows_npz_recomputes_every_metric_of_metrics_json(evaluation):
    """windows.npz splits every row by window, in one order for every row; every metric recomputed from it over all
    windows is metrics.json's value (psnr / ssim / depth: the mean of per-window values; mIoU: from the summed
    confusion matrices; the 'fid' column: the Fréchet distance of the stored frame features)."""
    from eval.windows import metric_over_all_windows, read_windows

    out, results, _ = evaluation
    data = read_windows(out / "windows.npz")
    assert [int(w) for w in data["windows"]] == [int(r) for r in CacheReader(results["protocol"]["cache"]).samples("val")]
    assert data["real_features"].shape == (2, 12, TinyFID.dim)
    expected = {**{name: row["metrics"] for name, row in results["rows"].items()},
                **{f"{run} @ {e['step']}": e["metrics"] for run, entries in results["steps"].items() for e in entries}}
    assert set(data["rows"]) == set(expected)
    checked = 0
    for name, metrics in expected.items():
        arrays = data["rows"][name]
        for metric, key in (("psnr", "psnr"), ("ssim", "ssim"), ("abs_rel", "abs_rel"), ("delta1", "delta1"),
                            ("miou", "miou"), ("miou_moving", "miou_moving"), ("fid", "fd_vfm")):
            want = metrics.get(metric, {}).get("mean")
            got = metric_over_all_windows(arrays, data["real_features"], key)
            if want is None:
                assert got is None or not math.isfinite(got), (name, metric)
                continue
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (name, metric)
            checked += 1
    assert checked >= 40
    assert data["rows"]["Re2Pix"]["psnr"].shape == (2, 2)  # 2 samples x 2 windows
