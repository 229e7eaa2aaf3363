"""The procedural world of the sample dataset: what one snippet contains (a `Scene`), drawn from a seeded
generator. `render.py` turns a scene into frames; `dataset.py` writes snippets in the Cityscapes layout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FPS = 17.0
TRAIN_IDS = {"road": 0, "sidewalk": 1, "building": 2, "vegetation": 8, "sky": 10, "person": 11, "car": 13}
IGNORE = 255  # ego hood, street lamps
LABEL_VALUES = frozenset(TRAIN_IDS.values()) | {IGNORE}
DEPTH_NEAR = 3.0  # metres mapped to depth value 255
CAMERA_HEIGHT = 1.5
SNIPPETS_PER_CITY = 12
INFO_FILE = "sample_dataset.json"

# ------------------------------------------------------------------------------------------ the scene

_BUILDING_COLOURS = np.array(
    [[0.74, 0.67, 0.55], [0.58, 0.57, 0.56], [0.56, 0.33, 0.26], [0.82, 0.80, 0.76], [0.80, 0.68, 0.44],
     [0.40, 0.41, 0.43], [0.66, 0.56, 0.50], [0.70, 0.74, 0.72]]
)
_CAR_COLOURS = np.array(
    [[0.85, 0.85, 0.86], [0.12, 0.12, 0.14], [0.55, 0.56, 0.58], [0.62, 0.09, 0.08], [0.10, 0.20, 0.45],
     [0.30, 0.32, 0.35], [0.90, 0.90, 0.88], [0.75, 0.72, 0.62], [0.15, 0.30, 0.20]]
)
_SHIRT_COLOURS = np.array(
    [[0.70, 0.12, 0.10], [0.15, 0.25, 0.55], [0.85, 0.85, 0.80], [0.20, 0.20, 0.22], [0.85, 0.65, 0.15], [0.30, 0.50, 0.30]]
)


@dataclass
class Scene:
    """Everything that stays fixed during one snippet; `render_frame` animates it."""

    speed: float  # ego speed, m/s
    lane_width: float
    lanes: int  # per direction
    ego_x: float  # ego lateral position from the road centre line (right-hand traffic: > 0)
    road_half: float  # road centre line to curb
    sidewalk: tuple[float, float]  # widths, left and right
    curvature: float  # 1/m, road centre at lateral 0.5 k Z^2
    yaw_amp: float
    yaw_freq: float
    yaw_phase: float
    focal: float  # focal length / image width
    horizon: float  # horizon row / image height
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    clouds: float
    light: float
    sun_side: int  # which facade side (-1 left, +1 right) faces the sun
    fog: float  # haze distance, m
    segments: tuple  # per side: (starts, kinds (0 building, 1 trees), heights, colours, window spacing, phases)
    sprites: list  # dicts: kind, s0, speed, x (road coordinate), size, colours, ...
    salt: int


def draw_scene(rng: np.random.Generator) -> Scene:
    lanes = int(rng.choice([1, 1, 2]))
    lane_width = rng.uniform(3.0, 3.6)
    road_half = lanes * lane_width + rng.uniform(0.2, 2.4)  # extra room: parking strip
    overcast = rng.random() < 0.35
    sky_top = np.array([0.62, 0.65, 0.70]) if overcast else np.array([0.30, 0.50, 0.82]) + rng.uniform(-0.05, 0.05, 3)
    sky_horizon = np.array([0.83, 0.85, 0.87]) if overcast else np.array([0.76, 0.84, 0.93])
    speed = rng.uniform(6.0, 13.0)
    scene = Scene(
        speed=speed,
        lane_width=lane_width,
        lanes=lanes,
        ego_x=(int(rng.integers(lanes)) + 0.5) * lane_width,
        road_half=road_half,
        sidewalk=(rng.uniform(2.5, 5.0), rng.uniform(2.5, 5.0)),
        curvature=rng.choice([0.0, 1.0]) * rng.uniform(-1.2e-3, 1.2e-3),
        yaw_amp=rng.uniform(0.002, 0.008),
        yaw_freq=rng.uniform(0.2, 0.6),
        yaw_phase=rng.uniform(0, 2 * np.pi),
        focal=rng.uniform(0.85, 1.0),
        horizon=rng.uniform(0.40, 0.46),
        sky_top=sky_top,
        sky_horizon=sky_horizon,
        clouds=rng.uniform(0.0, 0.35) if not overcast else rng.uniform(0.05, 0.15),
        light=rng.uniform(0.8, 1.0) if overcast else rng.uniform(0.95, 1.15),
        sun_side=int(rng.choice([-1, 1])),
        fog=rng.uniform(150.0, 320.0),
        segments=(_draw_segments(rng), _draw_segments(rng)),
        sprites=[],
        salt=int(rng.integers(1 << 30)),
    )
    scene.sprites = _draw_traffic(rng, scene) + _draw_pedestrians(rng, scene) + _draw_lamps(rng, scene)
    return scene


def _draw_segments(rng: np.random.Generator, length: float = 600.0):
    starts, kinds, heights, colours, spacing, phases = [], [], [], [], [], []
    s = -20.0
    while s < length:
        starts.append(s)
        trees = rng.random() < 0.3
        kinds.append(1 if trees else 0)
        heights.append(rng.uniform(5.0, 9.0) if trees else rng.uniform(7.0, 24.0))
        colours.append(_BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))] * rng.uniform(0.9, 1.08))
        spacing.append(rng.uniform(2.3, 3.4))
        phases.append(rng.uniform(0, 10))
        s += rng.uniform(10.0, 30.0)
    return (np.array(starts), np.array(kinds), np.array(heights), np.array(colours), np.array(spacing), np.array(phases))


def _draw_traffic(rng: np.random.Generator, scene: Scene) -> list[dict]:
    sprites = []
    lane_xs = [(j + 0.5) * scene.lane_width for j in range(scene.lanes)]
    for lane_x in lane_xs + [-x for x in lane_xs]:
        oncoming = lane_x < 0
        same_lane = abs(lane_x - scene.ego_x) < 0.1
        lane_speed = -rng.uniform(7.0, 13.0) if oncoming else scene.speed + rng.uniform(0.0 if same_lane else -3.0, 2.5)
        s = rng.uniform(10.0, 30.0) if same_lane else rng.uniform(-5.0, 25.0)
        for _ in range(int(rng.integers(1, 4))):
            sprites.append(_car(rng, s, lane_x + rng.uniform(-0.25, 0.25), lane_speed + rng.uniform(-0.3, 0.3), oncoming))
            s += rng.uniform(14.0, 40.0)
    parking = scene.road_half - scene.lanes * scene.lane_width
    if parking > 1.9:  # room for parked cars along the curb
        for side in (-1, 1):
            s = rng.uniform(-5.0, 20.0)
            while s < 120.0:
                if rng.random() < 0.7:
                    x = side * (scene.road_half - 1.05)
                    sprites.append(_car(rng, s, x, 0.0, oncoming=side < 0))
                s += rng.uniform(5.5, 9.0)
    return sprites


def _car(rng: np.random.Generator, s: float, x: float, speed: float, oncoming: bool) -> dict:
    return {
        "kind": "car", "s0": s, "speed": speed, "x": x, "oncoming": oncoming,
        "half_width": rng.uniform(0.85, 1.0), "height": rng.uniform(1.4, 1.75),
        "colour": _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))],
    }


def _draw_pedestrians(rng: np.random.Generator, scene: Scene) -> list[dict]:
    sprites = []
    for _ in range(int(rng.integers(1, 4))):
        side = int(rng.choice([-1, 1]))
        width = scene.sidewalk[(side + 1) // 2]
        sprites.append({
            "kind": "person", "s0": rng.uniform(8.0, 45.0), "speed": rng.choice([-1, 1]) * rng.uniform(1.0, 1.6),
            "x": side * (scene.road_half + rng.uniform(0.8, width - 0.4)), "height": rng.uniform(1.6, 1.9),
            "half_width": 0.32, "shirt": _SHIRT_COLOURS[rng.integers(len(_SHIRT_COLOURS))],
            "trousers": np.array([0.12, 0.13, 0.18]) * rng.uniform(0.8, 2.0), "phase": rng.uniform(0, 2 * np.pi),
        })
    return sprites


def _draw_lamps(rng: np.random.Generator, scene: Scene) -> list[dict]:
    sprites = []
    spacing = rng.uniform(22.0, 35.0)
    for side in (-1, 1):
        s = rng.uniform(0.0, spacing)
        while s < 260.0:
            sprites.append({"kind": "lamp", "s0": s, "speed": 0.0, "x": side * (scene.road_half + 0.5),
                            "height": 7.0, "half_width": 1.4, "side": side})
            s += spacing
    return sprites


# ------------------------------------------------------------------------------------------ rendering
