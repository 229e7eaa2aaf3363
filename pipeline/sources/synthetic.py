"""The reader of the sample dataset (`make-sample-data`, rendered by `pipeline.synthetic`): the Cityscapes layout,
listed as dataset "synthetic" at the world's frame rate."""

from __future__ import annotations

from pathlib import Path

from configs.schema import SourceConfig
from pipeline.sources.base import Clip, OnError
from pipeline.sources.cityscapes import list_cityscapes
from pipeline.synthetic.world import FPS


def list_synthetic(root: Path, cfg: SourceConfig, *, on_error: OnError | None = None) -> list[Clip]:
    """The reader: the sample dataset is the Cityscapes layout, listed as dataset "synthetic" at 17 fps."""
    return list_cityscapes(root, cfg, on_error=on_error, dataset="synthetic", fps=FPS)

