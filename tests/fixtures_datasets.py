"""Tiny on-disk datasets in the real layouts, written into a test's tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()
DRIVING_CLIPS = SHARED_DATA / "driving_clips"
CITYSCAPES_SAMPLE = SHARED_DATA / "cityscapes_sample"
# The five real frames: every third frame of one snippet, ending at its annotated frame 017101.
REAL_FRANKFURT = [17089, 17092, 17095, 17098, 17101]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real sample data not found at {path} (see /work/shared/data/README.md)")
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def noise_image(rng: np.random.Generator, height: int = 16, width: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ cityscapes


def cityscapes_long_recording(root: Path, size: tuple[int, int] = (128, 256), snippets: int = 2) -> list[int]:
    """val/frankfurt, sequence 000001: `snippets` back-to-back 30-frame snippets built from the five real frames
    (linear interpolation in time, clamped at the ends), so the first snippet is 017082..017111 and its frame
    19 is the real annotated frame 017101. Returns the frame numbers written."""
    source = need(CITYSCAPES_SAMPLE) / "leftImg8bit_sequence" / "val" / "frankfurt"
    real = [
        np.asarray(Image.open(source / f"frankfurt_000001_{n:06d}_leftImg8bit.png").convert("RGB").resize(size[::-1]), np.float32)
        for n in REAL_FRANKFURT
    ]
    first = REAL_FRANKFURT[-1] - 19
    numbers = list(range(first, first + 30 * snippets))
    city = root / "leftImg8bit_sequence" / "val" / "frankfurt"
    for n in numbers:
        position = np.clip((n - REAL_FRANKFURT[0]) / 3.0, 0, len(real) - 1)
        lo = int(np.floor(position))
        hi = min(lo + 1, len(real) - 1)
        w = position - lo
        frame = np.round(real[lo] * (1 - w) + real[hi] * w).astype(np.uint8)
        write_png(city / f"frankfurt_000001_{n:06d}_leftImg8bit.png", frame)
    return numbers


def cityscapes_short_snippets(root: Path, split: str = "train", city: str = "aachen", sequences: int = 10,
                              short_sequence: int | None = None, size: tuple[int, int] = (16, 32)) -> None:
    """`sequences` snippets of frames 000000..000029 (frame 19 annotated, as in the short-snippet cities);
    sequence `short_sequence`, if given, lacks its last frame."""
    rng = np.random.default_rng(0)
    folder = root / "leftImg8bit_sequence" / split / city
    for seq in range(sequences):
        frames = 29 if seq == short_sequence else 30
        for n in range(frames):
            write_png(folder / f"{city}_{seq:06d}_{n:06d}_leftImg8bit.png", noise_image(rng, *size))


def cityscapes_labels(root: Path, split: str, city: str, stem: str, size=(16, 32), depth_variant: int = 0) -> dict:
    """gtFine train ids and a pseudo-depth map for one annotated stem; depth_variant 0 = *_leftImg8bit_depth.png
    under leftImg8bit_sequence_depthv2, 1 = DINO-Foresight's *_leftImg8bit_depthv2.png under leftImg8bit_depthv2."""
    rng = np.random.default_rng(1)
    seg = write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png",
                    rng.choice(np.array([0, 1, 2, 13, 255], np.uint8), size))
    folder, suffix = [("leftImg8bit_sequence_depthv2", "_leftImg8bit_depth.png"),
                      ("leftImg8bit_depthv2", "_leftImg8bit_depthv2.png")][depth_variant]
    depth = write_png(root / folder / split / city / f"{stem}{suffix}", rng.integers(0, 256, size, dtype=np.uint8))
    return {"segmentation": str(seg), "depth": str(depth)}


# ------------------------------------------------------------------------------------------ nuscenes


def nuscenes_mini(root: Path) -> dict:
    """A v1.0-mini-like dataset: CAM_FRONT key frames + sweeps (rows shuffled), a CAM_BACK and a LIDAR_TOP
    stream that must be ignored, two calibrations of CAM_FRONT (two logs), scenes scene-0061 (mini_train),
    scene-0103 (mini_val) and scene-9999 (in no split). Returns the expected CAM_FRONT files per scene, in
    timestamp order."""
    rng = np.random.default_rng(2)
    tables = {"sensor": [], "calibrated_sensor": [], "sample_data": [], "sample": [], "scene": []}
    for channel, modality in (("CAM_FRONT", "camera"), ("CAM_BACK", "camera"), ("LIDAR_TOP", "lidar")):
        tables["sensor"].append({"token": f"sensor-{channel}", "channel": channel, "modality": modality})
    expected: dict[str, list[str]] = {}
    for s, (scene, log) in enumerate((("scene-0061", "n015-2018-07-18"), ("scene-0103", "n008-2018-08-01"),
                                      ("scene-9999", "n008-2018-08-01"))):
        tables["scene"].append({"token": f"scene-tok-{s}", "name": scene, "log_token": log, "nbr_samples": 3,
                                "first_sample_token": f"sample-{s}-0", "last_sample_token": f"sample-{s}-2"})
        for channel in ("CAM_FRONT", "CAM_BACK", "LIDAR_TOP"):
            tables["calibrated_sensor"].append({
                "token": f"calib-{channel}-{s}", "sensor_token": f"sensor-{channel}",
                "translation": [1.7, 0.0, 1.5], "rotation": [0.5, -0.5, 0.5, -0.5],
                "camera_intrinsic": [] if channel == "LIDAR_TOP" else [[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]],
            })
        base = 1_532_402_927_000_000 + s * 100_000_000
        for k in range(3):
            tables["sample"].append(
                {"token": f"sample-{s}-{k}", "scene_token": f"scene-tok-{s}", "timestamp": base + k * 500_000})
        front = []
        for i in range(13):  # key frame every 6th image (~2 Hz of 12 Hz)
            timestamp = base + i * 83_333
            key = i % 6 == 0
            for channel in ("CAM_FRONT", "CAM_BACK"):
                folder = "samples" if key else "sweeps"
                name = f"{folder}/{channel}/{log}__{channel}__{timestamp}.jpg"
                tables["sample_data"].append({
                    "token": f"sd-{channel}-{s}-{i}", "sample_token": f"sample-{s}-{min(i // 6 + (not key), 2)}",
                    "ego_pose_token": f"ego-{s}-{i}", "calibrated_sensor_token": f"calib-{channel}-{s}",
                    "timestamp": timestamp, "fileformat": "jpg", "is_key_frame": key, "height": 9, "width": 16,
                    "filename": name, "prev": "", "next": "",
                })
                path = root / name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(noise_image(rng, 9, 16)).save(path, quality=90)
                if channel == "CAM_FRONT":
                    front.append(str(root / name))
        expected[scene] = front
    order = rng.permutation(len(tables["sample_data"]))
    tables["sample_data"] = [tables["sample_data"][i] for i in order]
    version = root / "v1.0-mini"
    version.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (version / f"{name}.json").write_text(json.dumps(rows, indent=0))
    return expected


# ------------------------------------------------------------------------------------------ kitti, videos


def kitti_raw(root: Path, drives: dict[str, int]) -> None:
    """`drives`: {"2011_09_26_drive_0001_sync": frame count}; writes image_02 (and an image_03 to ignore)."""
    rng = np.random.default_rng(3)
    for drive, count in drives.items():
        date = drive[:10]
        for camera in ("image_02", "image_03"):
            for n in range(count if camera == "image_02" else 2):
                write_png(root / date / drive / camera / "data" / f"{n:010d}.png", noise_image(rng, 12, 40))
        (root / date / "calib_cam_to_cam.txt").write_text("calib_time: 09-Jan-2012 13:57:47\n")


def link_clips(folder: Path, names: list[str], rename=lambda name: name) -> list[Path]:
    """Symlink real driving clips into `folder` (no copy of the shared data)."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for name in names:
        link = folder / rename(name)
        os.symlink(need(DRIVING_CLIPS / name), link)
        links.append(link)
    return links
