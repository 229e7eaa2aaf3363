"""Renders one frame of a `Scene`: RGB, train-id labels and 8-bit inverse depth.

The frame is composed here in passes (facades, ground, haze, sky, sprites far to near, hood, lens): what depends
on a row only (ground distance, dashes, slab joints, grain fade) or a column only (wall distance, segment, window
bays) is computed once per row or column with numpy, and every pass's per-pixel work runs in a compiled loop
(`kernels.py`). Images are channel-first [3, H, W] until the end.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from pipeline.synthetic import kernels
from pipeline.synthetic.world import CAMERA_HEIGHT, FPS, IGNORE, TRAIN_IDS, Scene


def render_frame(scene: Scene, frame: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8 [H, W, 3], train-id label uint8 [H, W] and 8-bit inverse depth uint8 [H, W] of one frame."""
    H, W = height, width
    t = frame / FPS
    f = scene.focal * W
    yaw = scene.yaw_amp * math.sin(2 * math.pi * scene.yaw_freq * t + scene.yaw_phase)
    cx = W / 2 + f * math.tan(yaw)  # a small yaw shifts the whole world sideways
    horizon = H * scene.horizon + 0.25 * math.sin(2 * math.pi * 1.3 * t)  # suspension bob, a fraction of a pixel
    s_ego = scene.speed * t
    a = (np.arange(W) + 0.5 - cx) / f  # lateral ray slope of each column
    b = (np.arange(H) + 0.5 - horizon) / f  # downward ray slope of each row

    rgb = np.zeros((3, H, W))  # channel-first until kernels.finish
    label = np.full((H, W), TRAIN_IDS["sky"], np.uint8)
    zbuf = np.full((H, W), np.inf)  # distance along the optical axis; inf = sky

    _facades(scene, a, b, f, s_ego, rgb, label, zbuf)
    ground_row = _ground(scene, a, b, f, s_ego, t, rgb, label, zbuf)
    # Distance haze on every pixel (sky pixels turn sky_horizon here and are repainted by _sky).
    kernels.haze(rgb, zbuf, scene.sky_horizon, scene.fog)
    _sky(scene, a, b, ground_row, rgb, zbuf)
    rgb *= scene.light
    sprites = sorted(
        ((sp["s0"] + sp["speed"] * t - s_ego, sp) for sp in scene.sprites), key=lambda item: -item[0]
    )
    for z, sprite in sprites:
        if 2.0 < z < (250.0 if sprite["kind"] == "car" else 120.0):  # people and lamps are sub-pixel beyond
            _draw_sprite(scene, sprite, z, t, f, cx, horizon, rgb, label, zbuf)
    kernels.hood(rgb, label, zbuf)
    image, depth = kernels.finish(rgb, _vignette(H, W), zbuf)
    return image, label, depth


def _road_centre(scene: Scene, z):
    """Lateral position (camera frame) of the road centre line at distance z."""
    return -scene.ego_x + 0.5 * scene.curvature * z * z


def _sky(scene: Scene, a: np.ndarray, b: np.ndarray, rows: int, rgb: np.ndarray, zbuf: np.ndarray) -> None:
    """Gradient sky with clouds on every pixel of the top `rows` rows that nothing else covers."""
    if rows <= 0:
        return
    up = -b[:rows]
    gradient = np.sqrt(np.clip(up / 0.5, 0.0, 1.0))
    colour = scene.sky_horizon[:, None] + (scene.sky_top - scene.sky_horizon)[:, None] * gradient  # [3, rows]
    # Cloud noise coordinates are separable: x per column (the camera's yaw), y per row.
    x = a * 6.0
    y = np.clip(up, 0.01, None) * 14.0
    weight = scene.clouds * 2.2 * np.clip(up * 6, 0, 1)
    kernels.sky(colour, x, y, weight, scene.clouds > 0, _lattice(scene.salt + 1) + _lattice(scene.salt + 2), rgb, zbuf)


def _facade_distance(scene: Scene, a: np.ndarray, offset: float) -> np.ndarray:
    """Distance along the optical axis at which each column's ray meets the wall at road coordinate `offset`.

    Solves 0.5 k Z^2 - a Z + c = 0 (wall: x = road_centre(Z) + offset) with the numerically stable root.
    """
    k, c = scene.curvature, offset - scene.ego_x
    disc = a * a - 2.0 * k * c
    root = np.sqrt(np.maximum(disc, 0.0))
    q = 0.5 * (a + np.where(a >= 0, 1.0, -1.0) * root)
    with np.errstate(divide="ignore", invalid="ignore"):
        near = np.where(q != 0, c / q, np.inf)
        far = q / (0.5 * k) if k != 0 else np.full_like(a, np.inf)
    near = np.where(near > 0.5, near, np.inf)
    far = np.where(far > 0.5, far, np.inf)
    return np.where(disc >= 0, np.minimum(near, far), np.inf)


def _facades(scene, a, b, f, s_ego, rgb, label, zbuf) -> None:
    """Walls on both sides: per column the nearer wall, its segment (building or trees), then per-pixel texture."""
    walls = [_facade_distance(scene, a, side * (scene.road_half + scene.sidewalk[(side + 1) // 2])) for side in (-1, 1)]
    right = walls[1] < walls[0]
    z = np.where(right, walls[1], walls[0])  # [W]
    finite = np.isfinite(z)
    z = np.where(finite, z, 1e6)
    s = s_ego + z  # position along the road of each column's wall point
    columns = {}
    for side, side_mask in ((-1, ~right), (1, right)):
        starts, kinds, heights, colours, spacing, phases = scene.segments[(side + 1) // 2]
        idx = np.clip(np.searchsorted(starts, s, side="right") - 1, 0, len(starts) - 1)
        shade = 1.0 if side == scene.sun_side else 0.72
        for name, value in (("kind", kinds[idx]), ("height", heights[idx]), ("colour", colours[idx]),
                            ("shade", np.full(len(s), shade)),
                            ("spacing", spacing[idx]), ("phase", phases[idx]), ("along", s - starts[idx])):
            mask = side_mask if value.ndim == 1 else side_mask[:, None]
            columns[name] = np.where(mask, value, columns[name]) if name in columns else value
    trees = columns["kind"] == 1
    canopy = columns["height"] * (0.55 + 0.45 * np.sqrt(np.abs(np.sin(s / 3.1 + columns["phase"]))))
    top = np.where(trees, canopy, columns["height"])
    # Pixel footprint along the wall (m per column) fades details that would alias into flicker.
    footprint = np.abs(np.gradient(z)) + z / f
    spacing = columns["spacing"]
    window_x = kernels.periodic_cover_array(columns["along"], footprint, spacing, 0.25 * spacing, 0.75 * spacing)
    joint = kernels.interval_cover_array(columns["along"], footprint, 0.0, 0.35)
    kernels.facades(b, z, finite, top, trees, np.ascontiguousarray(columns["colour"].T), columns["height"], z / f,
                    window_x, joint, columns["shade"], s, canopy, _lattice(scene.salt + 3) + _lattice(scene.salt + 4),
                    rgb, label, zbuf)


def _ground(scene, a, b, f, s_ego, t, rgb, label, zbuf) -> int:
    """Road and sidewalks on the plane 1.5 m below the camera, for the pixels no wall hides; returns the first
    ground row. Every ground row has one distance, so what depends on the distance only (dashes, slab joints,
    grain fade, which rows a shadow reaches) is computed once per row."""
    H = len(b)
    g0 = int(np.searchsorted(b, 1e-4, side="right"))  # first row looking down at the ground
    if g0 >= H:
        return H
    z_row = CAMERA_HEIGHT / b[g0:]  # [R], decreasing down the rows
    s_row = s_ego + z_row
    px_row = z_row / f  # lateral footprint of one pixel, m
    ps_row = z_row * z_row / (f * CAMERA_HEIGHT)  # longitudinal footprint of one pixel, m
    fade_row = np.clip(0.08 / np.maximum(px_row, ps_row), 0, 1)  # asphalt grain, grows towards the bottom rows
    grain_row = int(np.searchsorted(fade_row, 0.004, side="right"))  # above: < 1e-4, invisible
    centre_dash = kernels.periodic_cover_array(s_row, ps_row, 9.0, 0.0, 3.0)
    lane_dash = kernels.periodic_cover_array(s_row, ps_row, 12.0, 0.0, 4.0)
    slab_row = kernels.periodic_cover_array(s_row, ps_row, 0.8, 0.0, 0.05)
    noise = _lattice(scene.salt + 5) + _lattice(scene.salt + 6) + _lattice(scene.salt + 7)
    kernels.ground(g0, a, z_row, s_row, px_row, fade_row, grain_row, centre_dash, lane_dash, slab_row,
                   _shadows(scene, z_row, s_ego, t), scene.ego_x, scene.curvature, scene.road_half,
                   scene.lane_width, scene.lanes, noise, rgb, label, zbuf)
    return g0


def _shadows(scene, z_row, s_ego, t) -> np.ndarray:
    """Contact shadows of the cars and people in view [n, 6]: lateral position, half width, near and far
    distance, and the range of ground rows (relative to the first) the shadow can reach."""
    neg_z = -z_row  # increasing
    shadows = []
    for sprite in scene.sprites:
        if sprite["kind"] == "lamp":
            continue
        zs = sprite["s0"] + sprite["speed"] * t - s_ego
        if not 2.0 < zs < 150.0:
            continue
        near, far = zs, zs + (4.3 if sprite["kind"] == "car" else 0.5)  # we see the near face; the body lies beyond
        r0 = np.searchsorted(neg_z, -(far + 0.5), side="right")
        r1 = np.searchsorted(neg_z, -(near - 0.5), side="left")
        if r0 < r1:
            shadows.append((sprite["x"], sprite["half_width"], near, far, r0, r1))
    return np.array(shadows, float).reshape(-1, 6)


# ------------------------------------------------------------------------------------------ sprites


def _draw_sprite(scene, sprite, z, t, f, cx, horizon, rgb, label, zbuf) -> None:
    """Project an upright object standing at distance z and composite it with coverage antialiasing (exact box
    filter for lamps and cars, sub-pixel samples for people)."""
    H, W = label.shape
    x = _road_centre(scene, z) + sprite["x"]
    u_centre = cx + f * x / z
    v_ground = horizon + f * CAMERA_HEIGHT / z
    scale = f / z  # pixels per metre at this distance
    u0 = max(int(math.floor(u_centre - sprite["half_width"] * scale)), 0)
    u1 = min(int(math.ceil(u_centre + sprite["half_width"] * scale)), W)
    v0 = max(int(math.floor(v_ground - sprite["height"] * scale)), 0)
    v1 = min(int(math.ceil(v_ground)), H)
    if u0 >= u1 or v0 >= v1:
        return
    h, w = v1 - v0, u1 - u0
    xp, yp = kernels.sprite_grid(u0, v0, w, h, u_centre, v_ground, scale)  # metres right of centre, above ground
    if sprite["kind"] == "lamp":
        coverage, colour = kernels.lamp_cover(xp, yp, 1.0 / scale, sprite["height"], -sprite["side"])
    elif sprite["kind"] == "car":
        coverage, colour = kernels.car_cover(xp, yp, 1.0 / scale, sprite["half_width"], sprite["height"],
                                             sprite["colour"], _car_template(bool(sprite["oncoming"])))
    else:
        stride = math.sin(sprite["phase"] + 2 * math.pi * 0.9 * t) if sprite["speed"] else 0.0  # gait phase
        coverage, colour = kernels.person_cover(xp, yp, 1.0 / scale, sprite["height"], stride, sprite["trousers"],
                                                sprite["shirt"])
    haze = 1.0 - math.exp(-z / scene.fog)  # colour -> (colour (1 - haze) + sky haze) light, as one affine map
    kernels.composite(rgb, label, zbuf, v0, u0, coverage, colour, z, (1.0 - haze) * scene.light,
                      scene.sky_horizon * (haze * scene.light), TRAIN_IDS.get(sprite["kind"], IGNORE))


_CAR_TEMPLATE = (224, 256)  # rows (height) x columns (width): finer than a car's pixels up to 512 px wide frames


@functools.lru_cache(maxsize=2)
def _car_template(oncoming: bool) -> np.ndarray:
    """Summed-area tables [5, rows + 1, cols + 1] of one car in normalised coordinates (x / half width in [-1, 1],
    y / height in [0, 1]): coverage, paint weight (times the car's colour) and the fixed colours (glass, lights,
    wheels...) premultiplied by coverage. Every car is this template stretched and painted: _car_shape depends on
    a car's size only through those normalised coordinates."""
    rows, cols = _CAR_TEMPLATE
    xn = ((np.arange(cols) + 0.5) / cols * 2 - 1)[None, :]
    yn = (1 - (np.arange(rows) + 0.5) / rows)[:, None]
    unit = {"half_width": 1.0, "height": 1.0, "oncoming": oncoming}
    mask, fixed = _car_shape({**unit, "colour": np.zeros(3)}, *np.broadcast_arrays(xn, yn))
    _, white = _car_shape({**unit, "colour": np.ones(3)}, *np.broadcast_arrays(xn, yn))
    layers = np.concatenate([mask[None], (white - fixed)[None, ..., 0], fixed.transpose(2, 0, 1)]) * mask
    table = np.zeros((5, rows + 1, cols + 1))
    table[:, 1:, 1:] = layers.cumsum(axis=1).cumsum(axis=2)
    table.flags.writeable = False
    return table


def _car_shape(car, xm, ym):
    """Mask and colour [..., 3] of a car (body, cabin with a rounded roof, wheels, glass, lights, plate) at points
    xm (metres right of its centre) and ym (metres above the ground)."""
    xn = np.abs(xm) / car["half_width"]
    yn = ym / car["height"]
    body = (yn >= 0.12) & (yn < 0.56) & (xn <= 1.0 - 0.08 * np.clip((yn - 0.48) / 0.08, 0, 1))
    cabin_half = 0.88 - 0.2 * np.clip((yn - 0.56) / 0.44, 0, 1)
    cabin = (yn >= 0.56) & (yn <= 1.0) & (xn <= cabin_half - 0.15 * np.clip((yn - 0.94) / 0.06, 0, 1))  # round roof
    wheels = (yn < 0.25) & (xn > 0.58) & (xn < 0.95)
    mask = body | cabin | wheels
    paint = car["colour"]
    colour = np.broadcast_to(paint * (0.72 + 0.35 * np.clip(yn, 0, 1))[..., None], xm.shape + (3,)).copy()
    glass_zone = cabin & (yn > 0.61) & (yn < 0.93) & (xn < cabin_half - 0.09)
    glass = np.array([0.33, 0.38, 0.44]) if car["oncoming"] else np.array([0.10, 0.12, 0.15])
    colour[glass_zone] = glass + 0.12 * (yn[glass_zone][:, None] - 0.6)
    colour[(yn >= 0.12) & (yn < 0.22) & body] = np.array([0.13, 0.13, 0.14])  # bumper
    colour[wheels & ~body] = np.array([0.05, 0.05, 0.05])
    lights = body & (yn > 0.36) & (yn < 0.47) & (xn > 0.68) & (xn < 0.95)
    colour[lights] = np.array([0.95, 0.93, 0.82]) if car["oncoming"] else np.array([0.78, 0.08, 0.06])
    plate = body & (yn > 0.22) & (yn < 0.31) & (xn < 0.2)
    colour[plate] = np.array([0.88, 0.88, 0.84])
    if car["oncoming"]:
        colour[body & (yn > 0.3) & (yn < 0.44) & (xn < 0.45)] = np.array([0.12, 0.12, 0.13])  # grille
    return mask, colour


# ------------------------------------------------------------------------------------------ camera


@functools.lru_cache(maxsize=8)
def _vignette(H: int, W: int) -> np.ndarray:
    """Lens fall-off, [H, W] (the same for every frame of a size)."""
    yy = (np.arange(H) + 0.5) / H * 2 - 1
    xx = (np.arange(W) + 0.5) / W * 2 - 1
    out = 1.0 - 0.18 * (xx[None, :] ** 2 + yy[:, None] ** 2) / 2
    out.flags.writeable = False
    return out


# ------------------------------------------------------------------------------------------ noise


@functools.lru_cache(maxsize=64)
def _lattice(salt: int) -> tuple[np.ndarray, np.ndarray]:
    """A permutation and random values in [0, 1) from `salt`: a value noise's lattice as lookup tables (value of
    cell (i, j) = values[(perm[i] + j) mod 4096], see kernels.value_noise)."""
    rng = np.random.default_rng([salt, 0x5EED])
    return rng.permutation(kernels.LATTICE), rng.random(kernels.LATTICE)
