"""Segmentation, depth, PSNR and SSIM metrics against torchmetrics and hand-computed values."""

import math

import pytest
import torch

from models.metrics import MOVING_CLASSES, ConfusionMatrix, DepthMetrics, psnr, ssim

torchmetrics = pytest.importorskip("torchmetrics")


def _random_labels(seed: int, shape=(3, 24, 40), num_classes=19, ignore_fraction=0.2):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    target[torch.rand(shape, generator=g) < ignore_fraction] = 255
    # Predictions agree with the target most of the time so IoUs are spread out, not all ~1/37.
    noise = torch.randint(0, num_classes, shape, generator=g)
    pred = torch.where(torch.rand(shape, generator=g) < 0.6, target.clamp_max(num_classes - 1), noise)
    return pred, target


def test_iou_matches_torchmetrics_jaccard():
    from torchmetrics.classification import MulticlassJaccardIndex

    reference = MulticlassJaccardIndex(num_classes=19, ignore_index=255, average=None)
    cm = ConfusionMatrix(19, 255)
    for seed in range(3):  # streamed over several batches
        pred, target = _random_labels(seed)
        reference.update(pred, target)
        cm.update(pred, target)
    expected = reference.compute().double()
    torch.testing.assert_close(cm.iou(), expected, rtol=1e-6, atol=1e-7)
    assert cm.miou() == pytest.approx(float(expected.mean()), rel=1e-6)
    assert cm.moving_miou() == pytest.approx(float(expected[11:19].mean()), rel=1e-6)
    assert list(MOVING_CLASSES) == list(range(11, 19))


def test_merge_equals_single_pass_and_absent_classes_are_nan():
    pred, target = _random_labels(7)
    whole = ConfusionMatrix().update(pred, target)
    halves = ConfusionMatrix().update(pred[:1], target[:1]).merge(ConfusionMatrix().update(pred[1:], target[1:]))
    assert torch.equal(whole.matrix, halves.matrix)

    cm = ConfusionMatrix(4, 255).update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 255]]))
    iou = cm.iou()
    assert iou[0] == 1 and iou[1] == 1 and iou[2:].isnan().all()  # class 2, 3 absent from both
    assert cm.miou() == 1.0  # NaN classes are left out
    assert cm.matrix.sum() == 2  # the ignore pixel is not counted


def test_confusion_matrix_refuses_bad_labels():
    cm = ConfusionMatrix()
    with pytest.raises(ValueError, match="train ids"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 33))  # a raw label id
    with pytest.raises(ValueError, match="argmax"):
        cm.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="differ"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))


def test_depth_metrics_by_hand():
    gt = torch.tensor([[[100, 200], [0, 50]], [[10, 10], [10, 10]]])  # integer bins, as the labels are
    pred = torch.tensor([[[110, 100], [7, 0]], [[10, 10], [10, 10]]])  # pred 0 is clamped to 1; gt 0 is invalid
    # Image 0, valid pixels (gt, pred): (100, 110), (200, 100), (50, 1).
    g, p = torch.tensor([100.0, 200.0, 50.0], dtype=torch.float64), torch.tensor([110.0, 100.0, 1.0], dtype=torch.float64)
    img0 = {
        "abs_rel": float(((g - p).abs() / g).mean()),
        "sq_rel": float(((g - p) ** 2 / g).mean()),
        "rmse": math.sqrt(float(((g - p) ** 2).mean())),
        "rmse_log": math.sqrt(float(((g.log() - p.log()) ** 2).mean())),
        "delta1": 1 / 3,  # ratios 1.1, 2, 50
        "delta2": 1 / 3,
        "delta3": 1 / 3,
    }
    img1 = {"abs_rel": 0.0, "sq_rel": 0.0, "rmse": 0.0, "rmse_log": 0.0, "delta1": 1.0, "delta2": 1.0, "delta3": 1.0}
    m = DepthMetrics().update(pred, gt)
    per_image = m.compute()
    for k in DepthMetrics.NAMES:
        assert per_image[k] == pytest.approx((img0[k] + img1[k]) / 2, rel=1e-12), k
    pooled = m.compute("pooled")  # 3 + 4 valid pixels pooled
    assert pooled["abs_rel"] == pytest.approx(img0["abs_rel"] * 3 / 7, rel=1e-12)
    assert pooled["rmse"] == pytest.approx(math.sqrt(img0["rmse"] ** 2 * 3 / 7), rel=1e-12)
    assert pooled["delta1"] == pytest.approx(5 / 7, rel=1e-12)


def test_depth_metrics_skip_images_without_valid_pixels_and_merge():
    gt = torch.tensor([[[0, 0]], [[20, 40]]])
    pred = torch.tensor([[[5, 5]], [[20, 40]]])
    a = DepthMetrics().update(pred[:1], gt[:1])
    assert a.skipped_images == 1 and math.isnan(a.compute()["abs_rel"])
    a.merge(DepthMetrics().update(pred[1:], gt[1:]))
    assert a.images == 1 and a.compute()["abs_rel"] == 0.0 and a.compute()["delta1"] == 1.0
    with pytest.raises(ValueError, match="reduction"):
        DepthMetrics(reduction="median")


def test_psnr_closed_form():
    target = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    values = psnr(pred, target, data_range=1.0)
    assert values[0].item() == pytest.approx(20.0, abs=1e-9)
    assert math.isinf(values[1].item())
    assert psnr(pred * 255, target * 255, data_range=255.0)[0].item() == pytest.approx(20.0, abs=1e-9)


def test_ssim_identity_and_agreement_with_torchmetrics():
    from torchmetrics.functional.image import (
        structural_similarity_index_measure as tm_ssim,
    )

    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 32, 40, generator=g)
    pred = (target + 0.15 * torch.randn(2, 3, 32, 40, generator=g)).clamp(0, 1)
    assert torch.allclose(ssim(target, target), torch.ones(2, dtype=torch.float64), atol=1e-12)
    ours = ssim(pred, target)
    theirs, full_map = tm_ssim(
        pred.double(), target.double(), data_range=1.0, kernel_size=11, sigma=1.5, reduction="none", return_full_image=True
    )
    torch.testing.assert_close(ours, theirs.double(), atol=1e-4, rtol=0)
    assert (ours < 1).all()
    # "valid" = the mean of torchmetrics' map without its 5-pixel reflected border.
    valid = full_map[..., 5:-5, 5:-5].flatten(1).mean(1).double()
    torch.testing.assert_close(ssim(pred, target, border="valid"), valid, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
