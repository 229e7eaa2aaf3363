"""Rendering the future with a Stage 2 checkpoint, and the noise seeds every sampling caller derives the same way.

`sample_future` is the one Stage 2 sampling call. `FrameRenderer` runs the lower half of the hierarchy on a batch of val windows: Stage 2 samples the future latents from
the clean context latents and the (true context + Stage 1 predicted) features, and the codec decodes them to uint8
frames. `noise_seed` gives evaluate, predict and `bench sample` independent, reproducible noise streams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from configs.schema import DiffusionConfig
from eval.scoring import quantize
from models.diffusion import context_inputs
from models.samplers import sample
from pipeline.device import inference_autocast

if TYPE_CHECKING:
    from eval.protocol import EvalBatch


def noise_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for the stream (seed, *keys): independent across keys, and stream k does not depend on how many
    other streams are drawn (numpy SeedSequence). evaluate keys by (sample index, first window of the batch), so every
    method and checkpoint sees the same noise (common random numbers); predict keys by sample index."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0])


def sample_future(model: nn.Module, context_latents: torch.Tensor, latent_frames: int, features: torch.Tensor | None,
                  sampling: DiffusionConfig, generator: torch.Generator, autocast: Any) -> torch.Tensor:
    """The one Stage 2 sampling path (evaluate's FrameRenderer and the API's Re2PixPipeline both call it): latents
    [B, Cz, Tl, H', W'] (float32) whose first frames are the clean `context_latents` [B, Cz, ctx, H', W'], conditioned
    on `features` [B, Tf, C, h, w] (context then forecast; None for a model without features)."""
    context, cond_mask = context_inputs(context_latents, latent_frames)
    dit_features = features.permute(0, 2, 1, 3, 4) if features is not None else None  # [B, C, Tf, h, w]
    with autocast:
        z = sample(model.denoiser, tuple(context.shape), context, cond_mask, dit_features, sampling, generator=generator)
    return z.float()


class FrameRenderer:
    """The full hierarchy below Stage 1 for one Stage 2 checkpoint: (features given) -> Stage 2 sampling -> decode.

    Called as renderer(batch, sample_index) -> uint8 future frames [B, 3, K - M, H, W]. Anything with that signature
    (another model, a stand-in) can be scored the same way by eval/evaluate.py.
    """

    def __init__(self, model: nn.Module, codec: nn.Module, sampling: DiffusionConfig, context_latent_frames: int,
                 context_frames: int, seed: int, device: torch.device):
        self.model, self.codec, self.sampling = model, codec, sampling
        self.context_latent_frames, self.context_frames = context_latent_frames, context_frames
        self.seed, self.device = seed, device
        self.uses_features = model.feature_channels > 0

    @torch.no_grad()
    def __call__(self, batch: EvalBatch, sample_index: int) -> torch.Tensor:
        ctx, latents = self.context_latent_frames, batch.latents
        features = None
        if self.uses_features:
            features = torch.cat([batch.features[:, :ctx], batch.predicted_features.to(batch.features.dtype)], dim=1)
        generator = torch.Generator().manual_seed(noise_seed(self.seed, sample_index, batch.rows[0]))
        z = sample_future(self.model, latents[:, :, :ctx], latents.shape[2], features, self.sampling, generator,
                          inference_autocast(self.device))
        return quantize(self.codec.decode(z)[:, :, self.context_frames :])
