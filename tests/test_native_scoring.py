"""Native-resolution scoring (protocol.label_resolution = "native"): the chunked upsample-argmax equals the one-shot
one, labels are read at the file's own size through the manifest, and the real Cityscapes sample frame's label
(made here: a 1024x2048 train-id image) is scored at 1024x2048."""

from __future__ import annotations

import numpy as np
import torch

import eval.protocol as protocol_module
from eval.native_labels import read_native_label
from eval.protocol import EvalBatch, EvalProtocol
from eval.scoring import RowMetrics
from models.dpt import segmentation_from_logits, upsample_logits, upsampled_argmax
from tests.fixtures_datasets import CITYSCAPES_SAMPLE, need, write_png


def test_chunked_argmax_equals_one_shot_argmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 70, 6, 10)
    logits[:, 40] = logits[:, 3]  # a tie between chunks: the first channel must win, as torch.argmax
    expected = upsample_logits(logits, (24, 40)).argmax(1)
    assert torch.equal(upsampled_argmax(logits, (24, 40), chunk=16), expected)


def test_native_label_is_read_at_its_own_size(tmp_path):
    label = np.full((40, 96), 7, np.uint8)
    path = write_png(tmp_path / "x_gtFine_labelTrainIds.png", label)
    got = read_native_label({"segmentation_path": str(path), "depth_path": ""}, "segmentation")
    assert got.shape == (40, 96) and (got == 7).all()
    assert read_native_label({"segmentation_path": str(path), "depth_path": ""}, "depth") is None


def test_real_cityscapes_frame_is_scored_at_1024x2048(tmp_path, monkeypatch):
    from PIL import Image

    frame = need(CITYSCAPES_SAMPLE) / "leftImg8bit_sequence" / "val" / "frankfurt" / "frankfurt_000001_017101_leftImg8bit.png"
    # The stored sample is 448x896 (DINO-Foresight's demo copy, not 2048x1024 as its README says): brought to
    # Cityscapes' native size here, as the label files are.
    rgb = np.asarray(Image.open(frame).convert("RGB").resize((2048, 1024), Image.Resampling.BICUBIC))
    # A label made from the real frame: train id 0 (road) below the middle row, 10 (sky) above, an ignored band.
    seg = np.where(np.arange(1024)[:, None] >= 512, 0, 10).astype(np.uint8).repeat(2048, 1)
    seg[500:524] = 255
    depth = (1 + rgb.mean(2) // 2).astype(np.uint8)  # 1..128, never 0 (invalid)
    row = {"segmentation_path": str(write_png(tmp_path / "seg.png", seg)),
           "depth_path": str(write_png(tmp_path / "depth.png", depth))}
    seg_label, depth_label = (torch.from_numpy(read_native_label(row, k).astype(np.int64)) for k in ("segmentation", "depth"))

    sizes = []

    def fake_predict(head, task, pca, coefficients, size):  # logits at 8x a 27x48 token grid, as the paper's heads
        sizes.append((task, tuple(size)))
        channels = 19 if task == "segmentation" else 256
        logits = torch.zeros(coefficients.shape[0], channels, 216, 384)
        logits[:, 0 if task == "segmentation" else 64] = 1.0
        return segmentation_from_logits(logits, size)

    monkeypatch.setattr(protocol_module, "predict_labels", fake_predict)
    p = object.__new__(EvalProtocol)
    p.label_resolution, p.heads, p.pca_on_device, p.height, p.width = "native", {"segmentation": (None, {}), "depth": (None, {})}, None, 432, 768
    batch = EvalBatch([0], None, None, None, None, [seg_label], [depth_label], torch.tensor([True]), torch.tensor([True]))
    scores = RowMetrics(19, 0, 0)
    p.score_features(scores, batch, torch.zeros(1, 8, 27, 48))
    assert sizes == [("segmentation", (1024, 2048)), ("depth", (1024, 2048))]
    assert int(scores.confusion.matrix.sum()) == 1024 * 2048 - 24 * 2048  # every full-size pixel but the ignored band
    assert int(scores.confusion.matrix[0, 0]) == 512 * 2048 - 12 * 2048  # road predicted right at full size
    assert scores.depth.pixels == 1024 * 2048
