"""Renders one frame of a `Scene`: RGB, train-id labels and 8-bit inverse depth, all vectorised numpy."""

from __future__ import annotations

import math

import numpy as np

from pipeline.synthetic.world import (
    CAMERA_HEIGHT,
    DEPTH_NEAR,
    FPS,
    IGNORE,
    TRAIN_IDS,
    Scene,
)


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

    rgb = np.zeros((H, W, 3))
    label = np.full((H, W), TRAIN_IDS["sky"], np.uint8)
    zbuf = np.full((H, W), np.inf)  # distance along the optical axis; inf = sky

    _facades(scene, a, b, f, s_ego, rgb, label, zbuf)
    _ground(scene, a, b, f, s_ego, t, rgb, label, zbuf)
    solid = np.isfinite(zbuf)
    haze = 1.0 - np.exp(-zbuf[solid] / scene.fog)
    rgb[solid] += (scene.sky_horizon - rgb[solid]) * haze[:, None]
    _sky(scene, a, b, rgb, zbuf)
    rgb *= scene.light
    sprites = sorted(
        ((sp["s0"] + sp["speed"] * t - s_ego, sp) for sp in scene.sprites), key=lambda item: -item[0]
    )
    for z, sprite in sprites:
        if 2.0 < z < (250.0 if sprite["kind"] == "car" else 120.0):  # people and lamps are sub-pixel beyond
            _draw_sprite(scene, sprite, z, t, f, cx, horizon, rgb, label, zbuf)
    _hood(rgb, label, zbuf)
    _vignette(rgb)

    depth = np.zeros((H, W), np.uint8)
    valid = np.isfinite(zbuf)
    depth[valid] = np.clip(np.round(255.0 * DEPTH_NEAR / zbuf[valid]), 1, 255).astype(np.uint8)
    image = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    return image, label, depth


def _road_centre(scene: Scene, z):
    """Lateral position (camera frame) of the road centre line at distance z."""
    return -scene.ego_x + 0.5 * scene.curvature * z * z


def _sky(scene: Scene, a: np.ndarray, b: np.ndarray, rgb: np.ndarray, zbuf: np.ndarray) -> None:
    """Gradient sky with clouds on every pixel that nothing else covers."""
    rows, cols = np.nonzero(~np.isfinite(zbuf))
    up = -b[rows]
    colour = scene.sky_horizon + (scene.sky_top - scene.sky_horizon) * np.sqrt(np.clip(up / 0.5, 0.0, 1.0))[:, None]
    if scene.clouds > 0:
        # Clouds sit at infinity: they follow the camera's yaw (column slope a) but not its forward motion.
        x = a[cols] * 6.0
        y = np.clip(up, 0.01, None) * 14.0
        n = 0.65 * _value_noise(x, y * 1.6, scene.salt + 1) + 0.35 * _value_noise(x * 3.1, y * 4.0, scene.salt + 2)
        cover = np.clip((n - 0.45) * 2.5, 0, 1) * scene.clouds * 2.2 * np.clip(up * 6, 0, 1)
        colour += (np.array([0.95, 0.95, 0.96]) - colour) * np.clip(cover, 0, 0.9)[:, None]
    rgb[rows, cols] = colour


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
    y = CAMERA_HEIGHT - b[:, None] * z[None, :]  # height above the ground of each pixel's wall point
    mask = finite[None, :] & (y >= 0) & (y < top[None, :])
    rows, cols = np.nonzero(mask)
    y = y[rows, cols]
    # Pixel footprint along the wall (m per column) fades details that would alias into flicker.
    footprint = (np.abs(np.gradient(z)) + z / f)[cols]
    is_tree = trees[cols]
    colour = np.empty((len(rows), 3))
    wall = ~is_tree
    c = cols[wall]
    colour[wall] = _building_texture(
        columns["colour"][c], columns["spacing"][c], columns["along"][c], y[wall], columns["height"][c],
        footprint[wall], z[c] / f,
    )
    c = cols[is_tree]
    colour[is_tree] = _foliage_texture(scene, s[c], y[is_tree], canopy[c])
    rgb[rows, cols] = colour * columns["shade"][cols, None]
    label[rows, cols] = np.where(is_tree, TRAIN_IDS["vegetation"], TRAIN_IDS["building"])
    zbuf[rows, cols] = z[cols]


def _building_texture(colour, spacing, along, y, height, footprint, pixel_height):
    """Facade pixels (1-D): base colour, a window per bay on every 3.2 m storey, shop windows, a cornice."""
    window_x = _periodic_cover(along, footprint, spacing, 0.25 * spacing, 0.75 * spacing)
    storey = _periodic_cover(y - 3.6, pixel_height, 3.2, 0.9, 2.4)
    upper = (y < height - 1.2) & (y > 3.6)
    shop = (y > 0.4) & (y < 2.8)
    windows = window_x * (np.where(upper, storey, 0.0) + 0.9 * shop)
    glass = np.array([0.16, 0.19, 0.24]) + 0.12 * np.clip(y / 20.0, 0, 1)[:, None]
    base = colour * (0.92 + 0.08 * np.clip(y / 10.0, 0, 1))[:, None]
    base = np.where((y > height - 0.6)[:, None], base * 0.78, base)  # cornice
    joint = _interval_cover(along, footprint, 0.0, 0.35)  # dark joint between neighbouring buildings
    base = base * (1.0 - 0.35 * joint)[:, None]
    return base + (glass - base) * windows[:, None]


def _foliage_texture(scene, s, y, canopy):
    """Tree-row pixels (1-D): two octaves of leaf noise, darker towards the ground."""
    n = 0.6 * _value_noise(s * 1.3, y * 1.3, scene.salt + 3) + 0.4 * _value_noise(s * 4.0, y * 4.0, scene.salt + 4)
    brightness = (0.55 + 0.7 * n) * (0.75 + 0.25 * np.clip(y / canopy, 0, 1))
    return np.array([0.20, 0.33, 0.12]) * brightness[:, None]


def _ground(scene, a, b, f, s_ego, t, rgb, label, zbuf) -> None:
    """Road and sidewalks on the plane 1.5 m below the camera, for the pixels no wall hides."""
    below = b > 1e-4
    row_z = np.where(below, CAMERA_HEIGHT / np.where(below, b, 1.0), np.inf)
    rows, cols = np.nonzero(row_z[:, None] < zbuf)
    if not len(rows):
        return
    z = row_z[rows]
    x = a[cols] * z - _road_centre(scene, z)  # road coordinate: lateral distance from the centre line
    s = s_ego + z
    px = z / f  # lateral footprint of one pixel, m
    ps = z * z / (f * CAMERA_HEIGHT)  # longitudinal footprint of one pixel, m
    road = np.abs(x) < scene.road_half  # beyond the curb is sidewalk up to the walls, which hide the rest

    # Asphalt: large patches and fine grain anchored to the road, tyre tracks, then the painted markings.
    grain_fade = np.clip(0.08 / np.maximum(px, ps), 0, 1)
    asphalt = 0.33 + 0.035 * (_value_noise(s * 0.35, x * 0.5, scene.salt + 5) - 0.5) * 2
    asphalt += 0.05 * grain_fade * (_value_noise(s * 12.0, x * 12.0, scene.salt + 6) - 0.5)
    # Worn tyre tracks 0.8 m either side of each lane centre (wide and faint: no antialiasing needed).
    from_centre = np.abs(np.mod(np.abs(x), scene.lane_width) - 0.5 * scene.lane_width)
    tracks = np.clip(1.0 - np.abs(from_centre - 0.8) / 0.3, 0, 1) * (np.abs(x) < scene.lanes * scene.lane_width)
    asphalt -= 0.03 * tracks
    road_rgb = asphalt[:, None] * np.array([1.0, 1.0, 1.04])
    paint = _interval_cover(x, px, -0.07, 0.07) * _periodic_cover(s, ps, 9.0, 0.0, 3.0)  # centre line, dashed
    for j in range(1, scene.lanes):
        for boundary in (j * scene.lane_width, -j * scene.lane_width):
            paint += _interval_cover(x, px, boundary - 0.06, boundary + 0.06) * _periodic_cover(s, ps, 12.0, 0.0, 4.0)
    for edge in (scene.lanes * scene.lane_width, -scene.lanes * scene.lane_width):
        paint += _interval_cover(x, px, edge - 0.07, edge + 0.07)  # solid lane edge
    paint = np.clip(paint, 0, 1) * 0.85
    road_rgb += (np.array([0.86, 0.86, 0.83]) - road_rgb) * paint[:, None]

    # Sidewalk: paving slabs and a lighter curb stone.
    d = np.abs(x) - scene.road_half
    slabs = 1.0 - 0.12 * np.maximum(_periodic_cover(s, ps, 0.8, 0.0, 0.05), _periodic_cover(d, px, 0.8, 0.0, 0.05))
    walk = (0.55 + 0.04 * _value_noise(s * 0.6, d * 0.6, scene.salt + 7)) * slabs
    walk_rgb = walk[:, None] * np.array([1.03, 1.0, 0.95])
    curb = _interval_cover(d, px, 0.0, 0.25)
    walk_rgb += (np.array([0.70, 0.70, 0.68]) - walk_rgb) * curb[:, None]

    colour = np.where(road[:, None], road_rgb, walk_rgb)
    rgb[rows, cols] = colour * _ground_shadows(scene, x, z, s_ego, t)[:, None]
    label[rows, cols] = np.where(road, TRAIN_IDS["road"], TRAIN_IDS["sidewalk"])
    zbuf[rows, cols] = z


def _ground_shadows(scene, x, z, s_ego, t) -> np.ndarray:
    """Soft contact shadows under cars and people (the sun is high: the shadow is the footprint)."""
    shade = np.ones_like(x)
    for sprite in scene.sprites:
        if sprite["kind"] == "lamp":
            continue
        zs = sprite["s0"] + sprite["speed"] * t - s_ego
        if not 2.0 < zs < 150.0:
            continue
        near, far = zs, zs + (4.3 if sprite["kind"] == "car" else 0.5)  # we see the near face; the body lies beyond
        lateral = np.clip(1.0 - (np.abs(x - sprite["x"]) - sprite["half_width"] * 0.9) / 0.3, 0, 1)
        along = np.clip(1.0 - np.maximum(near - z, z - far) / 0.5, 0, 1)
        shade *= 1.0 - 0.55 * lateral * along
    return shade


# ------------------------------------------------------------------------------------------ sprites


def _draw_sprite(scene, sprite, z, t, f, cx, horizon, rgb, label, zbuf) -> None:
    """Project an upright object standing at distance z and composite it with coverage antialiasing."""
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
    ss = 3 if v1 - v0 < 24 else 2  # subpixel samples per axis: enough for smooth edges, cheap for big sprites
    uu = u0 + (np.arange((u1 - u0) * ss) + 0.5) / ss
    vv = v0 + (np.arange((v1 - v0) * ss) + 0.5) / ss
    xm = (uu[None, :] - u_centre) / scale  # metres right of the object's centre
    ym = (v_ground - vv[:, None]) / scale  # metres above the ground
    xm, ym = np.broadcast_arrays(xm, ym)
    shape = {"car": _car_shape, "person": _person_shape, "lamp": _lamp_shape}[sprite["kind"]]
    mask, colour = shape(sprite, xm, ym, t)
    h, w = v1 - v0, u1 - u0
    coverage = mask.reshape(h, ss, w, ss).mean(axis=(1, 3))
    summed = (colour * mask[..., None]).reshape(h, ss, w, ss, 3).sum(axis=(1, 3))
    colour = summed / np.maximum(coverage * ss * ss, 1e-9)[..., None]
    haze = 1.0 - math.exp(-z / scene.fog)
    colour = (colour + (scene.sky_horizon - colour) * haze) * scene.light
    in_front = z < zbuf[v0:v1, u0:u1]
    alpha = (coverage * in_front)[..., None]
    rgb[v0:v1, u0:u1] = rgb[v0:v1, u0:u1] * (1 - alpha) + colour * alpha
    solid = (coverage >= 0.5) & in_front
    label[v0:v1, u0:u1][solid] = TRAIN_IDS.get(sprite["kind"], IGNORE)
    zbuf[v0:v1, u0:u1][solid] = z


def _car_shape(car, xm, ym, t):
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


def _person_shape(person, xm, ym, t):
    h = person["height"]
    stride = math.sin(person["phase"] + 2 * math.pi * 0.9 * t) if person["speed"] else 0.0
    hip = 0.48 * h
    swing = 0.16 * stride * np.clip((hip - ym) / hip, 0, 1)
    legs = (ym < hip) & ((np.abs(xm - 0.07 - swing) < 0.07) | (np.abs(xm + 0.07 + swing) < 0.07))
    torso = (ym >= hip) & (ym < 0.82 * h) & (np.abs(xm) < 0.19 - 0.03 * ((ym - hip) / h < 0.05))
    arm_swing = -0.08 * stride * np.clip((0.8 * h - ym) / (0.3 * h), 0, 1)
    arms = (ym > 0.5 * h) & (ym < 0.8 * h) & (np.abs(np.abs(xm + arm_swing) - 0.23) < 0.045)
    head = (xm / 0.1) ** 2 + ((ym - 0.9 * h) / 0.115) ** 2 < 1.0
    mask = legs | torso | arms | head
    colour = np.empty(xm.shape + (3,))
    colour[...] = person["trousers"]
    colour[torso | arms] = person["shirt"]
    colour[head] = np.array([0.80, 0.62, 0.50])
    colour[head & (ym > 0.93 * h)] = np.array([0.18, 0.13, 0.10])  # hair
    return mask, colour


def _lamp_shape(lamp, xm, ym, t):
    towards_road = -lamp["side"]
    pole = (np.abs(xm) < 0.08) & (ym < lamp["height"])
    arm = (ym > lamp["height"] - 0.25) & (ym < lamp["height"] - 0.1) & (xm * towards_road > 0) & (np.abs(xm) < 1.3)
    head = (np.abs(xm - towards_road * 1.2) < 0.22) & (ym > lamp["height"] - 0.35) & (ym < lamp["height"] - 0.12)
    mask = pole | arm | head
    colour = np.empty(xm.shape + (3,))
    colour[...] = np.array([0.38, 0.39, 0.40])
    colour[head] = np.array([0.25, 0.25, 0.27])
    return mask, colour


# ------------------------------------------------------------------------------------------ camera


def _hood(rgb, label, zbuf) -> None:
    """The ego vehicle's bonnet along the bottom edge (Cityscapes shows it): dark paint reflecting the scene."""
    H, W = label.shape
    xn = (np.arange(W) + 0.5) / W * 2 - 1
    edge = H * (0.9 + 0.07 * xn**2)  # hood outline, highest in the middle
    first = int(max(edge.min() - 1, 0))
    if first >= H:
        return
    rows = np.arange(first, H)[:, None] + 0.5
    cover = np.clip(rows - edge[None, :] + 0.5, 0, 1)
    mirror = np.clip(np.round(2 * edge[None, :] - rows).astype(int), 0, H - 1)  # reflect the scene across the edge
    reflection = rgb[mirror, np.arange(W)[None, :]]
    paint = np.array([0.10, 0.11, 0.13]) + 0.25 * reflection
    rgb[first:] += (paint - rgb[first:]) * cover[..., None]
    hood = cover >= 0.5
    label[first:][hood] = IGNORE
    zbuf[first:][hood] = np.inf


def _vignette(rgb) -> None:
    H, W = rgb.shape[:2]
    yy = (np.arange(H) + 0.5) / H * 2 - 1
    xx = (np.arange(W) + 0.5) / W * 2 - 1
    rgb *= (1.0 - 0.18 * (xx[None, :] ** 2 + yy[:, None] ** 2) / 2)[..., None]


# ------------------------------------------------------------------------------------------ patterns


def _interval_cover(x, footprint, lo, hi):
    """Fraction of a pixel of width `footprint` centred at x that lies in [lo, hi] (exact box filter)."""
    return np.clip(np.minimum(x + footprint / 2, hi) - np.maximum(x - footprint / 2, lo), 0, None) / footprint


def _periodic_cover(x, footprint, period, lo, hi):
    """`_interval_cover` for [lo, hi] repeated every `period`; tends to the duty cycle when pixels are large."""
    xm = np.mod(x, period)
    cover = sum(_interval_cover(xm, footprint, lo + k * period, hi + k * period) for k in (-1, 0, 1))
    duty = (hi - lo) / period
    blend = np.clip(footprint / period - 0.5, 0, 1)  # pixels wider than half a period average out
    return np.clip(cover, 0, 1) * (1 - blend) + duty * blend


def _hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Integer lattice hash -> uniform [0, 1); uint64 arithmetic wraps, which is what a hash wants."""
    h = ix.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h ^= iy.view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(salt)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return (h >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def _value_noise(x, y, salt: int) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1] on a unit lattice."""
    x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = x0.astype(np.int64), y0.astype(np.int64)
    top = _hash(ix, iy, salt) * (1 - fx) + _hash(ix + 1, iy, salt) * fx
    bottom = _hash(ix, iy + 1, salt) * (1 - fx) + _hash(ix + 1, iy + 1, salt) * fx
    return top * (1 - fy) + bottom * fy
