"""The procedural world behind `make-sample-data` (the embedded default dataset): `world` draws a scene,
`render` draws its frames (per-pixel loops compiled by numba in `kernels`), `dataset` writes snippets in the
Cityscapes layout. The dataset reader is `pipeline.sources.synthetic`.

`render_frame` and `write_sample_dataset` are imported on first use, so that readers of the dataset (which need
`world` only, e.g. in every cache worker) do not import numba."""

import importlib

from pipeline.synthetic.world import (
    FPS,
    IGNORE,
    INFO_FILE,
    LABEL_VALUES,
    TRAIN_IDS,
    Scene,
    draw_scene,
)

_LAZY = {"render_frame": "pipeline.synthetic.render", "write_sample_dataset": "pipeline.synthetic.dataset"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FPS", "IGNORE", "INFO_FILE", "LABEL_VALUES", "TRAIN_IDS", "Scene", "draw_scene", "render_frame", "write_sample_dataset"]
