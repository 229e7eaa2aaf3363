"""Renders one frame of a `Scene`: RGB, train-id labels and 8-bit inverse depth, all vectorised numpy.

Speed (make-sample-data renders thousands of frames): images are channel-first [3, H, W] so numpy's inner loops
run along rows rather than over 3 channels; whatever depends on the row only (ground distance, dashes, slab joints,
grain fade) or the column only (wall distance, window bays) is computed once per row or column; road and sidewalk
textures are computed on their own pixels only; value noise reads lattice tables instead of hashing; lamps are
exact products of interval covers and cars box sums of one summed-area template; np.mod is replaced by a floor.
"""

from __future__ import annotations

import functools
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

    rgb = np.zeros((3, H, W))  # channel-first: numpy's inner loops then run along rows, not over 3 channels
    label = np.full((H, W), TRAIN_IDS["sky"], np.uint8)
    zbuf = np.full((H, W), np.inf)  # distance along the optical axis; inf = sky

    _facades(scene, a, b, f, s_ego, rgb, label, zbuf)
    ground_row = _ground(scene, a, b, f, s_ego, t, rgb, label, zbuf)
    # Distance haze on every pixel at once (sky pixels turn sky_horizon here and are repainted by _sky).
    haze = 1.0 - np.exp(-zbuf / scene.fog)
    rgb += (_c3(scene.sky_horizon) - rgb) * haze
    _sky(scene, a, b, ground_row, rgb, zbuf)
    rgb *= scene.light
    sprites = sorted(
        ((sp["s0"] + sp["speed"] * t - s_ego, sp) for sp in scene.sprites), key=lambda item: -item[0]
    )
    for z, sprite in sprites:
        if 2.0 < z < (250.0 if sprite["kind"] == "car" else 120.0):  # people and lamps are sub-pixel beyond
            _draw_sprite(scene, sprite, z, t, f, cx, horizon, rgb, label, zbuf)
    _hood(rgb, label, zbuf)
    rgb *= _vignette(H, W)

    with np.errstate(divide="ignore"):
        depth = np.clip(np.rint((255.0 * DEPTH_NEAR) / zbuf), 1, 255)
    depth = np.where(np.isinf(zbuf), 0, depth).astype(np.uint8)
    image = np.ascontiguousarray(np.rint(np.clip(rgb * 255.0, 0.0, 255.0)).astype(np.uint8).transpose(1, 2, 0))
    return image, label, depth


def _c3(colour) -> np.ndarray:
    """An RGB triple as [3, 1, 1], to broadcast against channel-first images."""
    return np.asarray(colour, float).reshape(3, 1, 1)


def _road_centre(scene: Scene, z):
    """Lateral position (camera frame) of the road centre line at distance z."""
    return -scene.ego_x + 0.5 * scene.curvature * z * z


def _sky(scene: Scene, a: np.ndarray, b: np.ndarray, rows: int, rgb: np.ndarray, zbuf: np.ndarray) -> None:
    """Gradient sky with clouds on every pixel of the top `rows` rows that nothing else covers."""
    if rows <= 0:
        return
    up = -b[:rows]
    gradient = np.sqrt(np.clip(up / 0.5, 0.0, 1.0))[:, None]
    colour = _c3(scene.sky_horizon) + _c3(scene.sky_top - scene.sky_horizon) * gradient  # [3, rows, 1]
    if scene.clouds > 0:
        # Clouds sit at infinity: they follow the camera's yaw (column slope a) but not its forward motion. Both
        # noise coordinates are separable (x per column, y per row), so the lattice is evaluated on a small grid.
        x = a * 6.0
        y = np.clip(up, 0.01, None) * 14.0
        n = 0.65 * _value_noise_grid(x, y * 1.6, scene.salt + 1) + 0.35 * _value_noise_grid(x * 3.1, y * 4.0, scene.salt + 2)
        cover = np.clip((n - 0.45) * 2.5, 0, 1) * (scene.clouds * 2.2 * np.clip(up * 6, 0, 1))[:, None]
        colour = colour + (_c3([0.95, 0.95, 0.96]) - colour) * np.clip(cover, 0, 0.9)
    np.copyto(rgb[:, :rows], colour, where=np.isinf(zbuf[:rows]))


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
    footprint = np.abs(np.gradient(z)) + z / f
    # What depends on the column only (window bays, joints between buildings) is computed once per column.
    spacing = columns["spacing"]
    window_x = _periodic_cover(columns["along"], footprint, spacing, 0.25 * spacing, 0.75 * spacing)
    joint = _interval_cover(columns["along"], footprint, 0.0, 0.35)
    is_tree = trees[cols]
    colour = np.empty((3, len(rows)))
    wall = ~is_tree
    c = cols[wall]
    colour[:, wall] = _building_texture(np.ascontiguousarray(columns["colour"].T)[:, c], window_x[c], joint[c], y[wall], columns["height"][c], z[c] / f)
    c = cols[is_tree]
    colour[:, is_tree] = _foliage_texture(scene, s[c], y[is_tree], canopy[c])
    rgb[:, rows, cols] = colour * columns["shade"][cols]
    label[rows, cols] = np.where(is_tree, TRAIN_IDS["vegetation"], TRAIN_IDS["building"])
    zbuf[rows, cols] = z[cols]


def _building_texture(colour, window_x, joint, y, height, pixel_height):
    """Facade pixels (1-D): base colour, a window per bay on every 3.2 m storey, shop windows, a cornice."""
    storey = _periodic_cover(y - 3.6, pixel_height, 3.2, 0.9, 2.4)
    upper = (y < height - 1.2) & (y > 3.6)
    shop = (y > 0.4) & (y < 2.8)
    windows = window_x * (np.where(upper, storey, 0.0) + 0.9 * shop)
    glass = np.array([[0.16], [0.19], [0.24]]) + 0.12 * np.clip(y / 20.0, 0, 1)
    base = colour * (0.92 + 0.08 * np.clip(y / 10.0, 0, 1) - np.where(y > height - 0.6, 0.22, 0.0))  # cornice
    base = base * (1.0 - 0.35 * joint)  # dark joint between neighbouring buildings
    return base + (glass - base) * windows


def _foliage_texture(scene, s, y, canopy):
    """Tree-row pixels (1-D): two octaves of leaf noise, darker towards the ground."""
    n = 0.6 * _value_noise(s * 1.3, y * 1.3, scene.salt + 3) + 0.4 * _value_noise(s * 4.0, y * 4.0, scene.salt + 4)
    brightness = (0.55 + 0.7 * n) * (0.75 + 0.25 * np.clip(y / canopy, 0, 1))
    return np.array([[0.20], [0.33], [0.12]]) * brightness


def _ground(scene, a, b, f, s_ego, t, rgb, label, zbuf) -> int:
    """Road and sidewalks on the plane 1.5 m below the camera, for the pixels no wall hides; returns the first
    ground row. Every ground row has one distance, so what depends on the distance only (dashes, slab joints,
    grain fade, where shadows fall) is computed once per row; the road's texture is computed on road pixels only
    and the sidewalk's on sidewalk pixels only (pixel lists in row-major order, so a range of rows is a slice)."""
    H, W = len(b), len(a)
    g0 = int(np.searchsorted(b, 1e-4, side="right"))  # first row looking down at the ground
    if g0 >= H:
        return H
    z_row = CAMERA_HEIGHT / b[g0:]  # [R], decreasing down the rows
    pixels = np.flatnonzero(z_row[:, None] < zbuf[g0:])  # visible ground pixels of the block below the horizon
    if not len(pixels):
        return g0
    row = pixels // W
    z = z_row[row]
    x = a[pixels - row * W] * z - _road_centre(scene, z)  # road coordinate: lateral distance from the centre line
    ax = np.abs(x)
    road = ax < scene.road_half  # beyond the curb is sidewalk up to the walls, which hide the rest
    s_row = s_ego + z_row
    px_row = z_row / f  # lateral footprint of one pixel, m
    ps_row = z_row * z_row / (f * CAMERA_HEIGHT)  # longitudinal footprint of one pixel, m
    colour = np.empty((3, len(pixels)))
    on_road, on_walk = np.flatnonzero(road), np.flatnonzero(~road)
    colour[:, on_road] = _asphalt(scene, x[on_road], ax[on_road], row[on_road], s_row, px_row, ps_row)
    colour[:, on_walk] = _sidewalk(scene, ax[on_walk] - scene.road_half, row[on_walk], s_row, px_row, ps_row)
    colour *= _ground_shadows(scene, x, z, row, z_row, s_ego, t)
    rgb[:, g0:].reshape(3, -1)[:, pixels] = colour
    label[g0:].reshape(-1)[pixels] = np.where(road, TRAIN_IDS["road"], TRAIN_IDS["sidewalk"])
    zbuf[g0:].reshape(-1)[pixels] = z
    return g0


def _asphalt(scene, x, ax, row, s_row, px_row, ps_row) -> np.ndarray:
    """Road pixels [3, N]: large patches and fine grain anchored to the road, tyre tracks, painted markings."""
    s, px = s_row[row], px_row[row]
    asphalt = 0.33 + 0.07 * (_value_noise(s * 0.35, x * 0.5, scene.salt + 5) - 0.5)
    fade_row = np.clip(0.08 / np.maximum(px_row, ps_row), 0, 1)  # grows towards the bottom rows
    first = int(np.searchsorted(row, np.searchsorted(fade_row, 0.004, side="right")))  # above: < 1e-4, invisible
    if first < len(row):
        grain = _value_noise(s[first:] * 12.0, x[first:] * 12.0, scene.salt + 6) - 0.5
        asphalt[first:] += 0.05 * fade_row[row[first:]] * grain
    # Worn tyre tracks 0.8 m either side of each lane centre (wide and faint: no antialiasing needed).
    lw, lanes = scene.lane_width, scene.lanes
    from_centre = np.abs(_mod(ax, lw) - 0.5 * lw)
    asphalt -= 0.03 * np.clip(1.0 - np.abs(from_centre - 0.8) / 0.3, 0, 1) * (ax < lanes * lw)
    # Markings: the exact box-filter cover of each stripe, summed, divided by the footprint once.
    lo, hi = x - px / 2, x + px / 2

    def stripe(centre, half):
        return np.maximum(np.minimum(hi, centre + half) - np.maximum(lo, centre - half), 0)

    paint = stripe(0.0, 0.07) * _periodic_cover(s_row, ps_row, 9.0, 0.0, 3.0)[row]  # centre line, dashed
    if lanes > 1:
        dashes = _periodic_cover(s_row, ps_row, 12.0, 0.0, 4.0)[row]
        for j in range(1, lanes):
            paint += (stripe(j * lw, 0.06) + stripe(-j * lw, 0.06)) * dashes
    paint += stripe(lanes * lw, 0.07) + stripe(-lanes * lw, 0.07)  # solid lane edges
    paint = np.minimum(paint / px, 1) * 0.85
    road = asphalt * np.array([[1.0], [1.0], [1.04]])
    return road + (np.array([[0.86], [0.86], [0.83]]) - road) * paint


def _sidewalk(scene, d, row, s_row, px_row, ps_row) -> np.ndarray:
    """Sidewalk pixels [3, N] at distance d beyond the curb: paving slabs and a lighter curb stone."""
    s, px = s_row[row], px_row[row]
    slabs = 1.0 - 0.12 * np.maximum(_periodic_cover(s_row, ps_row, 0.8, 0.0, 0.05)[row],
                                    _periodic_cover(d, px, 0.8, 0.0, 0.05))
    walk = (0.55 + 0.04 * _value_noise(s * 0.6, d * 0.6, scene.salt + 7)) * slabs
    walk = walk * np.array([[1.03], [1.0], [0.95]])
    curb = np.maximum(np.minimum(d + px / 2, 0.25) - np.maximum(d - px / 2, 0.0), 0) / px
    return walk + (np.array([[0.70], [0.70], [0.68]]) - walk) * curb


def _ground_shadows(scene, x, z, row, z_row, s_ego, t) -> np.ndarray:
    """Soft contact shadows under cars and people (the sun is high: the shadow is the footprint), computed only
    on the rows each shadow can reach (pixels are in row order; z_row decreases down the rows)."""
    shade = np.ones_like(x)
    neg_z = -z_row  # increasing
    for sprite in scene.sprites:
        if sprite["kind"] == "lamp":
            continue
        zs = sprite["s0"] + sprite["speed"] * t - s_ego
        if not 2.0 < zs < 150.0:
            continue
        near, far = zs, zs + (4.3 if sprite["kind"] == "car" else 0.5)  # we see the near face; the body lies beyond
        r0 = np.searchsorted(neg_z, -(far + 0.5), side="right")
        r1 = np.searchsorted(neg_z, -(near - 0.5), side="left")
        k0, k1 = np.searchsorted(row, (r0, r1))
        if k0 >= k1:
            continue
        zz = z[k0:k1]
        lateral = np.clip(1.0 - (np.abs(x[k0:k1] - sprite["x"]) - sprite["half_width"] * 0.9) / 0.3, 0, 1)
        along = np.clip(1.0 - np.maximum(near - zz, zz - far) / 0.5, 0, 1)
        shade[k0:k1] *= 1.0 - 0.55 * lateral * along
    return shade


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
    xp = (u0 + np.arange(w) + 0.5 - u_centre) / scale  # pixel centres, metres right of the object's centre
    yp = (v_ground - v0 - np.arange(h) - 0.5) / scale  # and metres above the ground
    if sprite["kind"] == "lamp":
        coverage, colour = _lamp_cover(sprite, xp, yp, 1.0 / scale)
    elif sprite["kind"] == "car":
        coverage, colour = _car_cover(sprite, xp, yp, 1.0 / scale)
    else:
        coverage, colour = _shape_cover(sprite, xp, yp, 1.0 / scale, t)
    haze = 1.0 - math.exp(-z / scene.fog)  # colour -> (colour (1 - haze) + sky haze) light, as one affine map
    colour = colour * ((1.0 - haze) * scene.light) + _c3(scene.sky_horizon * (haze * scene.light))
    in_front = z < zbuf[v0:v1, u0:u1]
    alpha = coverage * in_front
    box = rgb[:, v0:v1, u0:u1]
    box += (colour - box) * alpha
    solid = (coverage >= 0.5) & in_front
    label[v0:v1, u0:u1][solid] = TRAIN_IDS.get(sprite["kind"], IGNORE)
    zbuf[v0:v1, u0:u1][solid] = z


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
    mask, fixed = _car_shape({**unit, "colour": np.zeros(3)}, *np.broadcast_arrays(xn, yn), 0.0)
    _, white = _car_shape({**unit, "colour": np.ones(3)}, *np.broadcast_arrays(xn, yn), 0.0)
    layers = np.concatenate([mask[None], (white - fixed)[None, ..., 0], fixed.transpose(2, 0, 1)]) * mask
    table = np.zeros((5, rows + 1, cols + 1))
    table[:, 1:, 1:] = layers.cumsum(axis=1).cumsum(axis=2)
    table.flags.writeable = False
    return table


def _car_cover(car, xp, yp, pixel):
    """Coverage [h, w] and colour [3, h, w] of a car: box sums of its template over each pixel's footprint."""
    rows, cols = _CAR_TEMPLATE
    table = _car_template(bool(car["oncoming"]))
    half = pixel / 2
    c = np.rint((np.append(xp - half, xp[-1] + half) / car["half_width"] + 1) * (cols / 2)).astype(np.intp)
    r = np.rint((1 - np.append(yp + half, yp[-1] - half) / car["height"]) * rows).astype(np.intp)
    c0, r0 = np.clip(c[:-1], 0, cols - 1), np.clip(r[:-1], 0, rows - 1)
    c1, r1 = np.clip(c[1:], c0 + 1, cols), np.clip(r[1:], r0 + 1, rows)  # at least one cell (pixels finer than it)
    r0, r1 = r0[:, None], r1[:, None]
    box = table[:, r1, c1] - table[:, r0, c1] - table[:, r1, c0] + table[:, r0, c0]  # [5, h, w]
    # A pixel's area in template cells (one cell when it is finer); the parts past the template's edge are empty.
    area = np.maximum(r[1:] - r[:-1], 1)[:, None] * np.maximum(c[1:] - c[:-1], 1)[None, :]
    overlaps = ((r[1:] > 0) & (r[:-1] < rows))[:, None] & ((c[1:] > 0) & (c[:-1] < cols))[None, :]
    coverage = box[0] / area * overlaps
    colour = (car["colour"][:, None, None] * box[1] + box[2:]) / np.maximum(box[0], 1e-9)
    return coverage, colour


def _shape_cover(sprite, xp, yp, pixel, t):
    """Coverage [h, w] from ss x ss sub-pixel samples of the shape and colour [3, h, w] at the pixel centres xp
    (columns) and yp (rows), in metres."""
    h, w = len(yp), len(xp)
    ss = 3 if h < 24 else 2  # subpixel samples per axis: enough for smooth edges, cheap for big sprites
    shape = {"car": _car_shape, "person": _person_shape}[sprite["kind"]]
    offsets = ((np.arange(ss) + 0.5) / ss - 0.5) * pixel
    xm = (xp[:, None] + offsets).reshape(1, w * ss)
    ym = (yp[:, None] - offsets).reshape(h * ss, 1)
    mask = np.broadcast_to(shape(sprite, xm, ym, t, colour=False)[0], (h * ss, w * ss))
    coverage = mask.reshape(h, ss, w, ss).mean(axis=(1, 3))
    return coverage, shape(sprite, *np.broadcast_arrays(xp[None, :], yp[:, None]), t)[1].transpose(2, 0, 1)


def _car_shape(car, xm, ym, t, colour=True):
    xn = np.abs(xm) / car["half_width"]
    yn = ym / car["height"]
    body = (yn >= 0.12) & (yn < 0.56) & (xn <= 1.0 - 0.08 * np.clip((yn - 0.48) / 0.08, 0, 1))
    cabin_half = 0.88 - 0.2 * np.clip((yn - 0.56) / 0.44, 0, 1)
    cabin = (yn >= 0.56) & (yn <= 1.0) & (xn <= cabin_half - 0.15 * np.clip((yn - 0.94) / 0.06, 0, 1))  # round roof
    wheels = (yn < 0.25) & (xn > 0.58) & (xn < 0.95)
    mask = body | cabin | wheels
    if not colour:
        return mask, None
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


def _person_shape(person, xm, ym, t, colour=True):
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
    if not colour:
        return mask, None
    colour = np.empty(xm.shape + (3,))
    colour[...] = person["trousers"]
    colour[torso | arms] = person["shirt"]
    colour[head] = np.array([0.80, 0.62, 0.50])
    colour[head & (ym > 0.93 * h)] = np.array([0.18, 0.13, 0.10])  # hair
    return mask, colour


def _lamp_cover(lamp, xc, yc, pixel):
    """Exact coverage [h, w] and colour [3, h, w] of a street lamp (pole, arm, head: three rectangles) for pixels
    of size `pixel` metres centred at columns xc and rows yc: a rectangle's box-filtered cover is the product of
    its column and row covers, and the union subtracts the two overlaps (arm-pole, arm-head)."""
    top, toward = lamp["height"], -lamp["side"]
    arm_x = (0.0, 1.3) if toward > 0 else (-1.3, 0.0)
    head_x = (toward * 1.2 - 0.22, toward * 1.2 + 0.22)
    # pole, arm, head, arm-pole overlap, arm-head overlap (an empty interval covers nothing)
    xs = np.array([(-0.08, 0.08), arm_x, head_x, (max(arm_x[0], -0.08), min(arm_x[1], 0.08)),
                   (max(arm_x[0], head_x[0]), min(arm_x[1], head_x[1]))])
    ys = np.array([(0.0, top), (top - 0.25, top - 0.1), (top - 0.35, top - 0.12), (top - 0.25, top - 0.1),
                   (top - 0.25, top - 0.12)])
    columns = _interval_cover(xc[None, :], pixel, xs[:, :1], xs[:, 1:])  # [5, w]
    rows = _interval_cover(yc[None, :], pixel, ys[:, :1], ys[:, 1:])  # [5, h]
    coverage = np.clip((rows.T * np.array([1.0, 1.0, 1.0, -1.0, -1.0])) @ columns, 0.0, 1.0)
    dark = np.outer(rows[2], columns[2]) / np.maximum(coverage, 1e-9)  # share of the covered area that is the head
    return coverage, _c3([0.38, 0.39, 0.40]) - _c3([0.13, 0.14, 0.13]) * dark


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
    reflection = rgb[:, mirror, np.arange(W)[None, :]]
    paint = _c3([0.10, 0.11, 0.13]) + 0.25 * reflection
    rgb[:, first:] += (paint - rgb[:, first:]) * cover
    hood = cover >= 0.5
    label[first:][hood] = IGNORE
    zbuf[first:][hood] = np.inf


@functools.lru_cache(maxsize=8)
def _vignette(H: int, W: int) -> np.ndarray:
    """Lens fall-off, [H, W] (the same for every frame of a size)."""
    yy = (np.arange(H) + 0.5) / H * 2 - 1
    xx = (np.arange(W) + 0.5) / W * 2 - 1
    out = 1.0 - 0.18 * (xx[None, :] ** 2 + yy[:, None] ** 2) / 2
    out.flags.writeable = False
    return out


# ------------------------------------------------------------------------------------------ patterns


def _interval_cover(x, footprint, lo, hi):
    """Fraction of a pixel of width `footprint` centred at x that lies in [lo, hi] (exact box filter)."""
    half = footprint / 2
    return np.maximum(np.minimum(x + half, hi) - np.maximum(x - half, lo), 0) / footprint


def _mod(x, period):
    """x mod period for positive periods: floor-based, several times faster than np.mod (no fmod fix-ups)."""
    return x - period * np.floor(x / period)


def _periodic_cover(x, footprint, period, lo, hi):
    """`_interval_cover` for [lo, hi] repeated every `period`; tends to the duty cycle when pixels are large."""
    xm = _mod(x, period)
    half = footprint / 2
    xl, xh = xm - half, xm + half
    cover = sum(np.maximum(np.minimum(xh, hi + k * period) - np.maximum(xl, lo + k * period), 0) for k in (-1, 0, 1))
    duty = (hi - lo) / period
    blend = np.minimum(np.maximum(footprint / period - 0.5, 0), 1)  # pixels wider than half a period average out
    return np.minimum(cover / footprint, 1) * (1 - blend) + duty * blend


_LATTICE = 1 << 12  # lattice values per noise; patterns repeat after 4096 cells (e.g. 340 m of 12-per-metre grain)


@functools.lru_cache(maxsize=64)
def _lattice(salt: int) -> tuple[np.ndarray, np.ndarray]:
    """A permutation and random values in [0, 1) from `salt`: the noise's lattice as lookup tables (value of cell
    (i, j) = values[(perm[i] + j) mod 4096])."""
    rng = np.random.default_rng([salt, 0x5EED])
    return rng.permutation(_LATTICE), rng.random(_LATTICE)


def _value_noise(x, y, salt: int) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1] on a unit lattice. x and y broadcast: a coordinate given per row (or per
    column) keeps its floor, weights and first table look-up per row, which is most of the cost."""
    perm, values = _lattice(salt)
    m = _LATTICE - 1
    x, y = np.asarray(x, float), np.asarray(y, float)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = x0.astype(np.intp), y0.astype(np.intp)
    p0, p1 = perm[ix & m], perm[(ix + 1) & m]
    iy1 = iy + 1
    top = values[(p0 + iy) & m]
    top = top + (values[(p1 + iy) & m] - top) * fx
    bottom = values[(p0 + iy1) & m]
    bottom = bottom + (values[(p1 + iy1) & m] - bottom) * fx
    return top + (bottom - top) * fy


def _value_noise_grid(x: np.ndarray, y: np.ndarray, salt: int) -> np.ndarray:
    """`_value_noise` on the grid of x per column [W] and y per row [R] -> [R, W]."""
    return _value_noise(x[None, :], y[:, None], salt)
