"""Re2Pix's public Python API.

    from re2pix import Re2PixPipeline
    pipe = Re2PixPipeline.from_checkpoints("runs/tiny/stage1", "runs/tiny/stage2")  # or .from_pretrained(bundle_dir)
    out = pipe(frames)  # uint8 [T, H, W, 3] (T >= M context frames, any size) -> out.frames uint8 [S, K - M, H, W, 3]

The implementation lives in the project's layers (eval/hierarchy.py, eval/frozen.py, eval/bundle.py); this package
only names what a user imports, so the design card's folders stay as they are. Names are imported on first use, so
`re2pix --help` (the console script, re2pix/cli.py) starts without loading torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Prediction", "Re2PixPipeline"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from eval import hierarchy

        return getattr(hierarchy, name)
    raise AttributeError(f"module 're2pix' has no attribute {name!r}")
