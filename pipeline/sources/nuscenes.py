"""nuScenes front camera at its full 12 Hz: every CAM_FRONT image, key frames and sweeps, one clip per scene.

Read straight from the JSON tables, no devkit:
    <root>/v1.0-{trainval,mini,test}/{sensor,calibrated_sensor,sample_data,sample,scene}.json
    <root>/samples/CAM_FRONT/*.jpg  (key frames, ~2 Hz)   <root>/sweeps/CAM_FRONT/*.jpg  (the frames between)
Link chain: sensor (channel CAM_FRONT) -> calibrated_sensor -> sample_data -> sample -> scene; each scene's
images are sorted by timestamp.

Splits are the official scene lists of nuscenes-devkit (`nuscenes_splits.json`, copied from devkit 1.2.0
`utils/splits.py`): v1.0-trainval uses train (700) / val (150), v1.0-mini uses mini_train (8) / mini_val (2),
v1.0-test is test. When both trainval and mini are present, mini is ignored (its scenes are a subset).
`<root>/splits/{train,val,test}.txt` (scene names), if present, replaces the official lists. Scenes in no list,
and scenes whose image files are not on disk (a partial blob download), are skipped with a note.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import polars as pl

from configs.schema import SourceConfig
from pipeline.console import console
from pipeline.errors import DatasetLayoutError
from pipeline.sources.base import Clip, OnError, read_split_files

FPS = 12.0
CHANNEL = "CAM_FRONT"
SPLITS_FILE = Path(__file__).with_name("nuscenes_splits.json")
# version folder -> {official list name: our split}
VERSIONS = {
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-mini": {"mini_train": "train", "mini_val": "val"},
    "v1.0-test": {"test": "test"},
}
LAYOUT = (
    "<root>/v1.0-{trainval,mini,test}/{sensor,calibrated_sensor,sample_data,sample,scene}.json and "
    "<root>/{samples,sweeps}/CAM_FRONT/*.jpg"
)

_TABLES = {
    "sensor": {"token": pl.String, "channel": pl.String},
    "calibrated_sensor": {"token": pl.String, "sensor_token": pl.String},
    "sample_data": {
        "token": pl.String,
        "sample_token": pl.String,
        "calibrated_sensor_token": pl.String,
        "timestamp": pl.Int64,
        "filename": pl.String,
    },
    "sample": {"token": pl.String, "scene_token": pl.String},
    "scene": {"token": pl.String, "name": pl.String},
}


@cache
def official_splits() -> dict[str, tuple[str, ...]]:
    """The devkit's scene lists: train, val, test, mini_train, mini_val."""
    data = json.loads(SPLITS_FILE.read_text())
    return {name: tuple(scenes) for name, scenes in data.items() if isinstance(scenes, list)}


def list_nuscenes(root: Path, cfg: SourceConfig, *, on_error: OnError | None = None) -> list[Clip]:
    root = Path(root)
    versions = [v for v in VERSIONS if (root / v).is_dir()]
    if "v1.0-trainval" in versions and "v1.0-mini" in versions:
        versions.remove("v1.0-mini")
    if not versions:
        raise DatasetLayoutError(f"{root}: not a nuScenes root (no v1.0-trainval, v1.0-mini or v1.0-test); expected {LAYOUT}")
    custom = read_split_files(root / "splits")
    clips: list[Clip] = []
    unlisted, not_downloaded = [], []
    for version in versions:
        if custom is not None:
            split_of = custom
        else:
            lists = official_splits()
            split_of = {scene: split for name, split in VERSIONS[version].items() for scene in lists[name]}
        for scene, filenames in _scene_frames(root / version).items():
            split = split_of.get(scene)
            if split is None:
                unlisted.append(scene)
                continue
            paths = tuple(str(root / name) for name in filenames)
            if not (Path(paths[0]).is_file() and Path(paths[-1]).is_file()):
                not_downloaded.append(scene)
                continue
            clips.append(Clip(dataset="nuscenes", split=split, clip_id=scene, fps=FPS, num_frames=len(paths), frame_paths=paths))
    if unlisted:
        console.print(f"[yellow]note[/yellow] nuscenes: {len(unlisted)} scene(s) in no split list skipped, e.g. {unlisted[:3]}")
    if not_downloaded:
        console.print(
            f"[yellow]note[/yellow] nuscenes: {len(not_downloaded)} scene(s) skipped because their {CHANNEL} images are "
            f"not under {root} (partial download?), e.g. {not_downloaded[:3]}"
        )
    return clips


def _scene_frames(version_dir: Path) -> dict[str, list[str]]:
    """scene name -> CAM_FRONT image file names (relative to the root) sorted by timestamp."""
    t = {name: _read_table(version_dir, name) for name in _TABLES}
    camera = t["sensor"].filter(pl.col("channel") == CHANNEL)["token"]
    if camera.len() == 0:
        raise DatasetLayoutError(f"{version_dir / 'sensor.json'}: no sensor with channel {CHANNEL}; expected {LAYOUT}")
    calibrations = t["calibrated_sensor"].filter(pl.col("sensor_token").is_in(camera.implode()))["token"]
    frames = (
        t["sample_data"]
        .filter(pl.col("calibrated_sensor_token").is_in(calibrations.implode()))
        .join(t["sample"].rename({"token": "sample_token"}), on="sample_token", how="inner")
        .join(t["scene"].rename({"token": "scene_token"}), on="scene_token", how="inner")
        .sort(["name", "timestamp", "filename"])
    )
    grouped = frames.group_by("name", maintain_order=True).agg(pl.col("filename"))
    return {row["name"]: list(row["filename"]) for row in grouped.iter_rows(named=True)}


def _read_table(version_dir: Path, name: str) -> pl.DataFrame:
    path = version_dir / f"{name}.json"
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: missing nuScenes table; expected {LAYOUT}")
    schema = _TABLES[name]
    try:
        table = pl.read_json(path, schema=schema)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise DatasetLayoutError(f"{path}: cannot read as a nuScenes table ({exc})") from None
    for column in schema:
        if table.height and table[column].null_count() == table.height:
            raise DatasetLayoutError(f"{path}: field {column!r} missing from every row; is this a nuScenes {name} table?")
    return table
