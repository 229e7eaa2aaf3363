"""CoVLA front-camera videos (20 fps, 600 frames per 30 s scene), one clip per scene video.

Layout:   <root>/videos/<scene_id>.mp4
Split: `<root>/splits/{train,val,test}.txt` (scene ids) when present (scenes listed in none are skipped);
otherwise a stable hash rule: a scene is val when sha1(scene id) falls in the lowest 20 % (`VAL_FRACTION`),
so a scene's split never changes when scenes are added or removed.
The frame rate and frame count come from each container; a video whose header cannot be read is reported
through `on_error` and skipped.
"""

from __future__ import annotations

from pathlib import Path

from configs.schema import SourceConfig
from pipeline.console import console
from pipeline.decode import probe_video
from pipeline.errors import DatasetLayoutError, InputError
from pipeline.sources.base import (
    Clip,
    OnError,
    hashed_split,
    read_split_files,
    report_unreadable,
)

FPS = 20.0  # nominal; the container's rate is used
VAL_FRACTION = 0.2
LAYOUT = "<root>/videos/<scene_id>.mp4 (optional <root>/splits/{train,val}.txt)"


def list_covla(root: Path, cfg: SourceConfig, *, on_error: OnError | None = None) -> list[Clip]:
    root = Path(root)
    videos_dir = root / "videos"
    videos = sorted(videos_dir.glob("*.mp4")) if videos_dir.is_dir() else []
    if not videos:
        raise DatasetLayoutError(f"{root}: no CoVLA videos found; expected {LAYOUT}")
    split_of = read_split_files(root / "splits")
    clips, unlisted = [], []
    for video in videos:
        scene = video.stem
        split = hashed_split(scene, VAL_FRACTION) if split_of is None else split_of.get(scene)
        if split is None:
            unlisted.append(scene)
            continue
        try:
            fps, frames = probe_video(str(video))
        except InputError as error:
            report_unreadable(error, on_error)
            continue
        clips.append(Clip(dataset="covla", split=split, clip_id=scene, fps=fps, num_frames=frames, video=str(video)))
    if unlisted:
        console.print(f"[yellow]note[/yellow] covla: {len(unlisted)} scene(s) in no split file skipped, e.g. {unlisted[:3]}")
    return clips

