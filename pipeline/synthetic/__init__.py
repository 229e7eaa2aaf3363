"""The procedural driving world behind `make-sample-data` (the embedded default dataset): `world` draws a scene,
`render` draws its frames, `dataset` writes snippets in the Cityscapes layout. The dataset reader is
`pipeline.sources.synthetic`."""

from pipeline.synthetic.dataset import INFO_FILE, write_sample_dataset
from pipeline.synthetic.render import render_frame
from pipeline.synthetic.world import (
    FPS,
    IGNORE,
    LABEL_VALUES,
    TRAIN_IDS,
    Scene,
    draw_scene,
)

__all__ = ["FPS", "IGNORE", "INFO_FILE", "LABEL_VALUES", "TRAIN_IDS", "Scene", "draw_scene", "render_frame", "write_sample_dataset"]
