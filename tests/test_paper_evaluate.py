"""`evaluate --config paper` end to end on a Cityscapes-layout fixture at the paper's resolution (issue 24).

Every paper-scale code path of the evaluation runs: 2048x1024 snippets read through the Cityscapes reader, the cache
at 432x768 with the WAN2.1 VAE architecture and the DINOv2-Reg ViT-B/14 at 378x672 (random weights), the 1152-d PCA,
native-resolution scoring against the 1024x2048 frame-19 labels (bicubic logits, chunked argmax), the real random
Inception and I3D, and the codec rows through the WAN decoder.

CPU-sized limits, and why each one leaves the evaluation's code paths as they are: one val window; two sampling
steps; one sample; the WAN VAE in float32 (bf16 is a GPU setting); Stage 1 and Stage 2 at depth 1 (and Stage 2 at
width 64) because a model's depth and width are not an evaluation path, only its cost (the paper's 800M Stage 2 costs
about 15 TFLOP per sampling step at 9072 tokens). The WAN2.1 VAE keeps its layout (4 stages, 2 res blocks, causal
chunks of 4 frames, 16 latent channels, 8x / 4x, the published latent normalisation) at base width 16 instead of 96
for the same reason: at 96 one 432x768 frame took 40 s to encode and 58 s to decode on one CPU thread (measured), so
the 50 frames cached and the 50 decoded here would take 80 min; at 16, 3.0 s and 4.0 s. The trainers run one step
each, only to produce checkpoints the evaluation can load.

Opt-in (`python3 -m pytest -m paper`): minutes on a CPU, above the suite's budget; its time is in the README.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from configs.schema import load_config
from tests.fixtures_datasets import CITYSCAPES_SAMPLE, REAL_FRANKFURT, cityscapes_long_recording, need, write_png

pytestmark = [pytest.mark.paper, pytest.mark.slow, pytest.mark.timeout(6 * 3600),  # the suite's 900 s would stop it
              pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")]

NATIVE = (1024, 2048)
CPU_LIMITS = {
    "stage1.model.depth": 1, "stage1.train.batch_size": 1, "stage1.train.val_every": 0,
    "stage2.model.width": 64, "stage2.model.depth": 1, "stage2.model.heads": 2, "stage2.model.adaln_lora_dim": 8,
    "stage2.train.batch_size": 1, "stage2.train.val_every": 0, "stage2.train.mixed_precision": "no",
    "stage2.train.activation_checkpointing": False, "stage2.mixed_supervision_prob": 0.0,
    "heads.train.batch_size": 1, "heads.train.val_every": 0, "vfm.batch_size": 4,
    "codec.dtype": "float32",  # bf16 convolutions are emulated on most CPUs (the WAN encode crawled): a GPU setting
    "codec.overrides.base_dim": 16,  # the WAN2.1 layout at 1/6 of its width: 13x cheaper on CPU (module docstring)
}


def _labels(root, split: str, city: str, stem: str, rgb: np.ndarray) -> None:
    """Full-size labels made from the real frame: road below the middle row, sky above, an ignored band; pseudo-depth
    from the frame's brightness (never 0, which means invalid)."""
    seg = np.where(np.arange(NATIVE[0])[:, None] >= NATIVE[0] // 2, 0, 10).astype(np.uint8).repeat(NATIVE[1], 1)
    seg[500:524] = 255
    write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", seg)
    write_png(root / "leftImg8bit_sequence_depthv2" / split / city / f"{stem}_leftImg8bit_depth.png",
              (1 + rgb.mean(2) // 2).astype(np.uint8))


def cityscapes_at_paper_size(root) -> None:
    """val/frankfurt: one 30-frame snippet at 2048x1024 from the five real frames (frame 19 = the real 017101);
    train/frankfurt: the same snippet's frames under another sequence number, so the PCA and heads have a train split."""
    cityscapes_long_recording(root, size=NATIVE, snippets=1)
    val = root / "leftImg8bit_sequence" / "val" / "frankfurt"
    train = root / "leftImg8bit_sequence" / "train" / "frankfurt"
    train.mkdir(parents=True)
    first = REAL_FRANKFURT[-1] - 19
    for n in range(first, first + 30):
        (train / f"frankfurt_000002_{n:06d}_leftImg8bit.png").write_bytes((val / f"frankfurt_000001_{n:06d}_leftImg8bit.png").read_bytes())
    rgb = np.asarray(Image.open(val / f"frankfurt_000001_{REAL_FRANKFURT[-1]:06d}_leftImg8bit.png").convert("RGB"))
    _labels(root, "val", "frankfurt", f"frankfurt_000001_{REAL_FRANKFURT[-1]:06d}", rgb)
    _labels(root, "train", "frankfurt", f"frankfurt_000002_{REAL_FRANKFURT[-1]:06d}", rgb)


def test_evaluate_at_paper_config_end_to_end(tmp_path):
    from eval.evaluate import CODEC_ROW, COPY_ROW, STAGE1_ROW, evaluate
    from pipeline.dag import build_cache
    from pipeline.store import CacheReader
    from train.heads import train_heads
    from train.stage1 import train_stage1
    from train.stage2 import train_stage2

    need(CITYSCAPES_SAMPLE)
    pytest.importorskip("diffusers")
    data, cache = tmp_path / "cityscapes", str(tmp_path / "cache")
    cityscapes_at_paper_size(data)
    cfg = load_config("paper", CPU_LIMITS)
    assert cfg.protocol.label_resolution == "native" and (cfg.window.height, cfg.window.width) == (432, 768)
    build_cache(cfg, "cityscapes", data, cache, workers=1, allow_random_weights=True)
    meta = CacheReader(cache).meta
    assert meta["pca"]["components"] == 1152 and meta["codec"]["name"] == "wan"
    codec = meta["codec"]
    assert (codec["channels"], codec["spatial_factor"], codec["temporal_factor"]) == (16, 8, 4)

    train_heads(cfg, cache, str(tmp_path / "heads"), steps=1)
    train_stage1(cfg, cache, str(tmp_path / "stage1"), steps=1)
    train_stage2(cfg, cache, str(tmp_path / "re2pix"), steps=1)
    out = tmp_path / "eval"
    results = evaluate(cfg, cache, str(tmp_path / "heads"), str(tmp_path / "stage1"), {"Re2Pix": str(tmp_path / "re2pix")},
                       str(out), samples=1, limit=1, sampling_steps=2, allow_random_metric_weights=True,
                       allow_random_weights=True)

    protocol = results["protocol"]
    assert protocol["windows"] == 1 and protocol["windows_with_segmentation"] == 1
    assert protocol["label_resolution"] == "native" and protocol["annotated_native_frame"] == 19
    rows = results["rows"]
    for name in (COPY_ROW, CODEC_ROW, "Re2Pix"):
        for metric in ("psnr", "ssim", "miou", "abs_rel", "delta1"):
            assert np.isfinite(rows[name]["metrics"][metric]["mean"]), (name, metric)
    assert np.isfinite(rows[STAGE1_ROW]["metrics"]["miou"]["mean"])
    assert "native" in (out / "report.md").read_text()
