"""`build_codec`: the frozen codec a `CodecConfig` names, checked against the config's factors.

It sits above the implementations (pipeline/codec_{pixel,linear,wan}.py), which sit above the interface
(pipeline/codec.py), so no arrow points back.
"""

from __future__ import annotations

import torch

from configs.schema import CodecConfig
from pipeline.codec import Codec


def build_codec(cfg: CodecConfig, allow_random_weights: bool = False, device: str | torch.device = "cpu") -> Codec:
    """The frozen codec named by `cfg.name`, on `device`, matching the config's factors.

    The linear codec is read from `cfg.weights` (a codec.safetensors; the cache fits one in its first pass)."""
    if cfg.name == "pixel":
        from pipeline.codec_pixel import PixelCodec

        codec: Codec = PixelCodec(cfg.temporal_factor, cfg.spatial_factor)
    elif cfg.name == "wan":
        from pipeline.codec_wan import build_wan_codec

        codec = build_wan_codec(cfg, allow_random_weights=allow_random_weights)
    elif cfg.name == "linear":
        from pipeline.codec_linear import LinearCodec, LinearCodecError

        if not cfg.weights:
            raise LinearCodecError(
                "the linear codec is fitted by `python cli.py cache` (codec.safetensors in the cache); "
                "give that file as codec.weights (--codec-weights) to use it elsewhere"
            )
        codec = LinearCodec.load(cfg.weights)
    else:
        raise ValueError(f"codec.name={cfg.name!r}: choose 'wan', 'linear' or 'pixel'")
    got = (codec.temporal_factor, codec.spatial_factor, codec.channels)
    want = (cfg.temporal_factor, cfg.spatial_factor, cfg.channels)
    if got != want:
        raise ValueError(
            f"the {cfg.name} codec has (temporal factor, spatial factor, channels) = {got} but the config says {want}; "
            f"set codec.temporal_factor / codec.spatial_factor / codec.latent_channels to match the weights"
        )
    return codec.to(device)
