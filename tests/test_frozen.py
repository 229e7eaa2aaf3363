"""eval/frozen.py: the frozen VFM / codec rebuilt as the cache's meta.json records them, or refused clearly."""

from __future__ import annotations

import pytest
import torch

from eval.frozen import build_frozen_codec
from pipeline.weights import MissingWeightsError

CPU = torch.device("cpu")
TINY_WAN = {"name": "wan", "overrides": {"base_dim": 8, "num_res_blocks": 1}}


def _meta(weights: str, codec: dict) -> dict:
    return {"codec": {"weights": weights}, "settings": {"codec": codec}}


def test_a_random_codec_is_rebuilt_only_when_allowed():
    meta = _meta("random", TINY_WAN)
    with pytest.raises(MissingWeightsError, match=r"RANDOM codec \(meta.json codec.weights = 'random'\)"):
        build_frozen_codec(meta, {}, None, False, CPU, "/nowhere")
    first, again = (build_frozen_codec(meta, {}, None, True, CPU, "/nowhere") for _ in range(2))
    assert first.name == "wan" and first.weights == "random"
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(first.encode(video), again.encode(video))  # the same seeded random VAE the cache used


def test_weights_other_than_the_recorded_ones_are_refused_with_the_option_to_fix_it():
    pixel = {"name": "pixel", "temporal_factor": 4, "spatial_factor": 2}
    assert build_frozen_codec(_meta("lossless", pixel), {}, None, False, CPU, "/nowhere").weights == "lossless"
    with pytest.raises(MissingWeightsError, match=r"\(lossless\) are not the ones the cache was made with "
                                                  r"\(file:0123\); pass the same weights with codec_weights=PATH"):
        build_frozen_codec(_meta("file:0123", pixel), {}, None, False, CPU, "/nowhere")
