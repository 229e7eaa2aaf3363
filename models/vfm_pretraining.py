"""Masked latent prediction for a small timm ViT: the objective that pretrains the tiny VFM on the synthetic world.

A student ViT sees a view with block-masked patches (a learned mask token in their place) and regresses, at the masked
patches, the teacher's targets; the teacher is an exponential moving average of the student and sees the same view
unmasked. The target is the mean of the teacher's last `target_layers` block outputs, each LayerNorm-ed without affine
parameters (data2vec's target, the regression member of iBOT's family of masked-token objectives: iBOT distils the
teacher's softmax over prototypes at masked patches, data2vec regresses its normalised hidden states). Both are
DINOv2-style (EMA teacher, masked tokens, no labels); the regression form is used because the prototype form
collapsed to a uniform assignment at this size (batch 16-32, a few hundred steps; README "The tiny VFM").

`aux_channels` adds a linear read-out of the student's final tokens for label targets (segmentation logits and a depth
value per patch grid cell); 0 keeps the objective label-free. The trainer (train/vfm_pretrain.py) owns the losses
on labels, the views and the schedule; this module owns the networks and the masked regression.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn


def set_layer_scale(model: VisionTransformer, value: float) -> None:
    """Re-initialise every LayerScale gamma to `value`. timm's DINOv2 starts at 1e-5, which makes each block the identity
    at initialisation; training from there for a few hundred steps leaves the blocks nearly unused."""
    for module in model.modules():
        if hasattr(module, "gamma") and isinstance(module.gamma, nn.Parameter):
            with torch.no_grad():
                module.gamma.fill_(value)


class MaskedLatentPredictor(nn.Module):
    """Student + EMA teacher over one timm VisionTransformer architecture."""

    def __init__(self, student: VisionTransformer, target_layers: int, aux_channels: int = 0):
        super().__init__()
        depth = len(student.blocks)
        if not 1 <= target_layers <= depth:
            raise ValueError(f"target_layers={target_layers} must be in 1..{depth} (the ViT's depth)")
        self.student = student
        self.teacher = copy.deepcopy(student).requires_grad_(False).eval()
        self.target_layers = target_layers
        dim = int(student.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.predictor = nn.Linear(dim, dim)  # data2vec: a linear regression head on the student's final tokens
        self.aux = nn.Linear(dim, aux_channels) if aux_channels else None

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.student.patch_embed.grid_size)

    def tokens(self, vit: VisionTransformer, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Patch tokens [B, N, D] after every block (prefix tokens dropped); masked patches replaced by the mask
        token before the position embedding is added, as in iBOT/DINOv2."""
        t = vit.patch_embed(x)
        if mask is not None:
            t = torch.where(mask.unsqueeze(-1), self.mask_token.to(t.dtype), t)
        t = vit.norm_pre(vit.patch_drop(vit._pos_embed(t)))
        prefix = vit.num_prefix_tokens
        out = []
        for block in vit.blocks:
            t = block(t)
            out.append(t[:, prefix:])
        return out

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher targets [B, N, D]: mean of its last `target_layers` block outputs, each LayerNorm-ed (no affine)."""
        layers = self.tokens(self.teacher, x, None)[-self.target_layers :]
        return torch.stack([F.layer_norm(t, t.shape[-1:]) for t in layers]).mean(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, H, W] normalised frames, mask bool [B, N] -> (masked regression loss, student's final tokens
        [B, N, D] after the final norm, for the auxiliary read-out)."""
        final = self.student.norm(self.tokens(self.student, x, mask)[-1])
        target = self.targets(x)
        if not mask.any():
            raise ValueError("masked latent prediction needs at least one masked patch in the batch")
        loss = F.smooth_l1_loss(self.predictor(final[mask]), target[mask], beta=1.0)
        return loss, final

    def aux_maps(self, final: torch.Tensor) -> torch.Tensor:
        """Student final tokens [B, N, D] -> auxiliary maps [B, aux_channels, grid_h, grid_w]."""
        if self.aux is None:
            raise ValueError("aux_maps needs aux_channels > 0")
        h, w = self.grid
        return self.aux(final).transpose(1, 2).reshape(final.shape[0], -1, h, w)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.lerp_(s.detach(), 1.0 - momentum)
