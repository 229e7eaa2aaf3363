"""A lossless codec: space-time pixel-unshuffle with the WAN causal frame rule.

It lets a run without VAE weights still produce real, decodable videos. Latent frame 0 holds pixel frame 0
repeated r times (so every latent frame has the same 3·r·s² channels); latent frame j >= 1 holds pixel frames
r(j-1)+1 .. rj. Within a latent frame, for the r frames t of its group, colour c and the s x s sub-pixel
offset (dy, dx) of each latent cell, the channel index is

    t · 3s² + c · s² + dy · s + dx      (time-major, then colour, then torch.pixel_unshuffle's order)

Decoding inverts this exactly; pixel frame 0 is read from the last copy of latent frame 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.codec import Codec

LOSSLESS = "lossless"


class PixelCodec(Codec):
    """Exact space-time rearrangement; no parameters, bit-exact round trip."""

    def __init__(self, temporal_factor: int, spatial_factor: int):
        super().__init__()
        if temporal_factor < 1 or spatial_factor < 1:
            raise ValueError(
                f"pixel codec factors must be >= 1, got temporal {temporal_factor}, spatial {spatial_factor}"
            )
        self.name = "pixel"
        self.temporal_factor = int(temporal_factor)
        self.spatial_factor = int(spatial_factor)
        self.channels = 3 * self.temporal_factor * self.spatial_factor**2
        self.weights = LOSSLESS

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.check_video(video)
        r, s = self.temporal_factor, self.spatial_factor
        b, c, _, h, w = video.shape
        x = video.float()
        # Frame 0 alone fills the first group of r frames; every later group is r consecutive frames.
        x = torch.cat([x[:, :, :1].expand(b, c, r, h, w), x[:, :, 1:]], dim=2)
        groups = x.shape[2] // r
        x = x.reshape(b, c, groups, r, h, w).permute(0, 2, 3, 1, 4, 5)  # [B, G, r, 3, H, W]
        x = F.pixel_unshuffle(x.reshape(b * groups, r * c, h, w), s)  # channel (t·3 + c)·s² + dy·s + dx
        return x.reshape(b, groups, self.channels, h // s, w // s).permute(0, 2, 1, 3, 4).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        r, s = self.temporal_factor, self.spatial_factor
        b, _, groups, h, w = latents.shape
        x = latents.float().permute(0, 2, 1, 3, 4).reshape(b * groups, self.channels, h, w)
        x = F.pixel_shuffle(x, s).reshape(b, groups, r, 3, h * s, w * s)
        x = x.permute(0, 3, 1, 2, 4, 5).reshape(b, 3, groups * r, h * s, w * s)
        # The first group is r copies of pixel frame 0: keep the last one.
        return x[:, :, r - 1 :].contiguous()
