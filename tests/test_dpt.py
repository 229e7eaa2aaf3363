"""DPT head: shapes at paper and small widths, the layer split, one training step, losses and bad input."""

import pytest
import torch

from models.dpt import (
    DPTHead,
    depth_from_logits,
    depth_loss,
    segmentation_loss,
    split_layers,
    upsample_logits,
)


def _tokens(batch, dim, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, h, w, generator=g) for _ in range(4)]


def test_split_layers_slices_channels_in_order():
    feats = torch.arange(2 * 12 * 3 * 5, dtype=torch.float32).reshape(2, 12, 3, 5)
    parts = split_layers(feats, layers=4)
    assert len(parts) == 4 and all(p.shape == (2, 3, 3, 5) for p in parts)
    for i, p in enumerate(parts):
        assert torch.equal(p, feats[:, 3 * i : 3 * (i + 1)])
    with pytest.raises(ValueError, match="equal layers"):
        split_layers(torch.zeros(1, 10, 2, 2), layers=4)


def test_paper_size_head_output_is_8x_the_token_grid():
    torch.manual_seed(0)
    head = DPTHead(in_channels=768, features=256, out_channels=[128, 256, 512, 512], num_outputs=19).eval()
    with torch.no_grad():
        logits = head(_tokens(1, 768, 4, 6))
    assert logits.shape == (1, 19, 32, 48) == (1, 19, *DPTHead.output_size(4, 6))


@pytest.mark.parametrize("h,w", [(6, 10), (5, 7)])  # odd grids: the stride-2 level is ceil(h/2)
def test_small_head_shapes(h, w):
    torch.manual_seed(0)
    head = DPTHead(in_channels=32, features=16, out_channels=[8, 16, 32, 32], num_outputs=256).eval()
    with torch.no_grad():
        logits = head(_tokens(2, 32, h, w))
    assert logits.shape == (2, 256, 8 * h, 8 * w)
    assert upsample_logits(logits, (50, 90)).shape == (2, 256, 50, 90)
    assert depth_from_logits(logits, (50, 90)).shape == (2, 50, 90)


def test_one_training_step_reduces_segmentation_loss_and_updates_weights():
    torch.manual_seed(0)
    head = DPTHead(in_channels=32, features=16, out_channels=[8, 16, 32, 32], num_outputs=19)
    tokens = _tokens(2, 32, 4, 6, seed=1)
    labels = torch.randint(0, 19, (2, 40, 56), generator=torch.Generator().manual_seed(2))
    labels[:, :5] = 255  # ignored rows
    optim = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-3)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    losses = []
    for _ in range(3):
        loss = segmentation_loss(head(tokens), labels)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    after = head.state_dict()
    assert not torch.equal(before["scratch.output_conv.4.weight"], after["scratch.output_conv.4.weight"])
    # The coarsest fusion block's skip RCU never runs: it is frozen and unchanged (DDP-safe).
    frozen = "scratch.refinenet4.resConfUnit1.conv1.weight"
    assert torch.equal(before[frozen], after[frozen])
    assert not any(p.requires_grad for p in head.scratch.refinenet4.resConfUnit1.parameters())


def test_losses_ignore_their_labels():
    torch.manual_seed(0)
    logits = torch.randn(1, 256, 4, 4)
    bins = torch.randint(1, 256, (1, 8, 8))
    all_invalid = torch.zeros(1, 8, 8, dtype=torch.long)
    mixed = bins.clone()
    mixed[:, :4] = 0  # top half invalid
    # Only valid pixels count: the loss equals the cross-entropy over the bottom half alone.
    up = upsample_logits(logits, (8, 8))
    expected_depth = torch.nn.functional.cross_entropy(up[:, :, 4:], bins[:, 4:])
    assert torch.allclose(depth_loss(logits, mixed), expected_depth, atol=1e-6)
    assert torch.isnan(depth_loss(logits, all_invalid))  # mean over zero pixels, as torch defines it
    seg = torch.full((1, 8, 8), 255)
    seg[0, 0, 0] = 3
    expected = torch.nn.functional.cross_entropy(upsample_logits(logits[:, :19], (8, 8))[:, :, 0, 0], torch.tensor([3]))
    assert torch.allclose(segmentation_loss(logits[:, :19], seg), expected, atol=1e-6)


def test_bad_input_is_refused():
    head = DPTHead(in_channels=32, features=16, out_channels=[8, 16, 32, 32], num_outputs=19)
    with pytest.raises(ValueError, match="expected 4 token maps"):
        head(_tokens(1, 32, 4, 4)[:3])
    with pytest.raises(ValueError, match=r"\[B, 32, h, w\]"):
        head(_tokens(1, 16, 4, 4))
    with pytest.raises(ValueError, match="out_channels"):
        DPTHead(in_channels=32, out_channels=[8, 16, 32])
    with pytest.raises(ValueError, match="depth bin"):
        depth_loss(torch.randn(1, 19, 2, 2), torch.full((1, 4, 4), 200))
