"""REPA projector and loss, VideoREPA TRD loss (block-wise vs. the direct full-matrix formula)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.alignment import Projector, feature_tokens, grid_tokens, repa_loss, trd_loss


def trd_direct(student: torch.Tensor, teacher: torch.Tensor, margin: float) -> torch.Tensor:
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    gram_s = s @ s.transpose(1, 2)
    gram_t = t @ t.transpose(1, 2)
    return F.relu((gram_s - gram_t).abs() - margin).mean()


def test_projector_is_the_repa_mlp():
    proj = Projector(32, 64, 12)
    layers = [type(m).__name__ for m in proj.net]
    assert layers == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert [m.weight.shape for m in proj.net if isinstance(m, torch.nn.Linear)] == [(64, 32), (64, 64), (12, 64)]
    assert proj(torch.randn(2, 5, 32)).shape == (2, 5, 12)
    # Paper size (width 2048, projector 2048, DINOv2 ViT-B 768): ~10M on top of the 782M baseline = 792M.
    with torch.device("meta"):
        n = sum(p.numel() for p in Projector(2048, 2048, 768).parameters())
    assert 9.9e6 < n < 10.0e6


def test_repa_loss_equals_mean_negative_cosine():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 7, 5, generator=g), torch.randn(2, 7, 5, generator=g)
    direct = -(F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(repa_loss(a, b), direct)
    torch.testing.assert_close(repa_loss(a, 3 * a), torch.tensor(-1.0))
    torch.testing.assert_close(repa_loss(a, -a), torch.tensor(1.0))
    with pytest.raises(ValueError, match="disagree"):
        repa_loss(a, b[:, :6])


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_trd_loss_blockwise_equals_full_matrix(chunk):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 23, 6, generator=g)
    teacher = torch.randn(2, 23, 9, generator=g)  # widths may differ: only Gram matrices are compared
    torch.testing.assert_close(trd_loss(student, teacher, 0.1, chunk=chunk), trd_direct(student, teacher, 0.1))


def test_trd_loss_gradients_match_the_direct_formula():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(2, 17, 6, generator=g, requires_grad=True)
    teacher = torch.randn(2, 17, 6, generator=g)
    trd_loss(student, teacher, 0.05, chunk=5).backward()
    blockwise = student.grad.clone()
    student.grad = None
    trd_direct(student, teacher, 0.05).backward()
    torch.testing.assert_close(blockwise, student.grad)


def test_trd_loss_properties():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 10, 4, generator=g)
    # Identical relations (any positive rescaling) give zero; the margin tolerates small differences.
    assert trd_loss(x, 2.5 * x).item() == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(1, 10, 4, generator=g)
    assert trd_loss(x, y, margin=0.0) > trd_loss(x, y, margin=0.1) > trd_loss(x, y, margin=2.0) == 0
    with pytest.raises(ValueError, match="disagree"):
        trd_loss(x, y[:, :9])


def test_token_helpers_follow_the_dit_grid_order():
    hidden = torch.randn(2, 3, 4, 5, 8)
    tokens = grid_tokens(hidden)
    assert tokens.shape == (2, 60, 8)
    assert torch.equal(tokens[1, (2 * 4 + 1) * 5 + 3], hidden[1, 2, 1, 3])
    feats = torch.randn(2, 6, 3, 4, 5)
    ft = feature_tokens(feats, (4, 5))
    assert ft.shape == (2, 60, 6) and torch.equal(ft[1, (2 * 4 + 1) * 5 + 3], feats[1, :, 2, 1, 3])
    assert feature_tokens(torch.randn(2, 6, 3, 2, 2), (4, 5)).shape == (2, 60, 6)
