"""The renderer's per-pixel work as compiled loops (numba): textures, value noise, sprite coverage, compositing.

`render.py` computes what depends on a row or a column only (distances, wall segments, dashes) with numpy and
hands each pass here, where one loop visits the pixels once. The numpy renderer this replaced evaluated every
formula over whole arrays (~250 full-frame temporaries per frame); the loops compute the same IEEE operations in
the same order (strict float64, no fast-math, no fused multiply-add), so the pixels are the ones it drew, at a
fraction of the time. Compiled once per machine and cached beside this file (`cache=True`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from pipeline.synthetic.world import CAMERA_HEIGHT, DEPTH_NEAR, IGNORE, TRAIN_IDS

_jit = numba.njit(cache=True, nogil=True)

ROAD, SIDEWALK, BUILDING = TRAIN_IDS["road"], TRAIN_IDS["sidewalk"], TRAIN_IDS["building"]
VEGETATION = TRAIN_IDS["vegetation"]
LATTICE = 1 << 12  # lattice values per noise; patterns repeat after 4096 cells (e.g. 340 m of 12-per-metre grain)

# ------------------------------------------------------------------------------------------ patterns (scalars)


@_jit
def clip01(x):
    return min(max(x, 0.0), 1.0)


@_jit
def interval_cover(x, footprint, lo, hi):
    """Fraction of a pixel of width `footprint` centred at x that lies in [lo, hi] (exact box filter)."""
    half = footprint / 2
    return max(min(x + half, hi) - max(x - half, lo), 0.0) / footprint


@_jit
def mod(x, period):
    """x mod period for positive periods (floor-based, as np.mod without its fix-ups)."""
    return x - period * math.floor(x / period)


@_jit
def periodic_cover(x, footprint, period, lo, hi):
    """`interval_cover` for [lo, hi] repeated every `period`; tends to the duty cycle when pixels are large."""
    xm = mod(x, period)
    half = footprint / 2
    xl, xh = xm - half, xm + half
    cover = 0.0
    for k in (-1, 0, 1):
        cover += max(min(xh, hi + k * period) - max(xl, lo + k * period), 0.0)
    duty = (hi - lo) / period
    blend = min(max(footprint / period - 0.5, 0.0), 1.0)  # pixels wider than half a period average out
    return min(cover / footprint, 1.0) * (1 - blend) + duty * blend


@_jit
def value_noise(x, y, perm, values):
    """Smooth 2-D value noise in [0, 1] on a unit lattice read from lookup tables (value of cell (i, j) =
    values[(perm[i] + j) mod 4096]), smoothstep-interpolated."""
    m = LATTICE - 1
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = int(x0), int(y0)
    p0, p1 = perm[ix & m], perm[(ix + 1) & m]
    top = values[(p0 + iy) & m]
    top = top + (values[(p1 + iy) & m] - top) * fx
    bottom = values[(p0 + iy + 1) & m]
    bottom = bottom + (values[(p1 + iy + 1) & m] - bottom) * fx
    return top + (bottom - top) * fy


# The per-row and per-column terms of render.py call the same scalar formulas through these loops (numpy
# broadcasting, 1-D). Not numba.vectorize of the same Python functions: a ufunc and the jitted scalar would share
# one on-disk cache entry (same name and line), and loading one as the other crashes.
def periodic_cover_array(x, footprint, period, lo, hi) -> np.ndarray:
    """`periodic_cover` over 1-D arrays (scalars broadcast)."""
    return _periodic_cover_1d(*_broadcast_1d(x, footprint, period, lo, hi))


def interval_cover_array(x, footprint, lo, hi) -> np.ndarray:
    """`interval_cover` over 1-D arrays (scalars broadcast)."""
    return _interval_cover_1d(*_broadcast_1d(x, footprint, lo, hi))


def _broadcast_1d(*values) -> list[np.ndarray]:
    arrays = [np.atleast_1d(np.asarray(v, float)) for v in values]
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    if len(shape) != 1:
        raise ValueError(f"expected 1-D arrays or scalars, got shapes {[a.shape for a in arrays]}")
    return [np.broadcast_to(a, shape) for a in arrays]


@_jit
def _periodic_cover_1d(x, footprint, period, lo, hi):
    out = np.empty(len(x))
    for i in range(len(x)):
        out[i] = periodic_cover(x[i], footprint[i], period[i], lo[i], hi[i])
    return out


@_jit
def _interval_cover_1d(x, footprint, lo, hi):
    out = np.empty(len(x))
    for i in range(len(x)):
        out[i] = interval_cover(x[i], footprint[i], lo[i], hi[i])
    return out


# ------------------------------------------------------------------------------------------ facades


@_jit
def facades(b, z, finite, top, trees, colour, height, pixel_height, window_x, joint, shade, s, canopy, leaves,
            rgb, label, zbuf):
    """Walls on both sides: every pixel of a column below its wall's top gets the building or foliage texture.
    Per column: distance z, wall top, segment colour [3, W], storey height, ... ; leaves = (perm, values) x 2."""
    H, W = label.shape
    glass0 = (0.16, 0.19, 0.24)
    foliage = (0.20, 0.33, 0.12)
    for r in range(H):
        for c in range(W):
            if not finite[c]:
                continue
            y = CAMERA_HEIGHT - b[r] * z[c]  # height above the ground of the pixel's wall point
            if not (y >= 0 and y < top[c]):
                continue
            if trees[c]:
                n = 0.6 * value_noise(s[c] * 1.3, y * 1.3, leaves[0], leaves[1]) + 0.4 * value_noise(
                    s[c] * 4.0, y * 4.0, leaves[2], leaves[3])
                brightness = (0.55 + 0.7 * n) * (0.75 + 0.25 * clip01(y / canopy[c]))
                for ch in range(3):
                    rgb[ch, r, c] = foliage[ch] * brightness * shade[c]
                label[r, c] = VEGETATION
            else:
                # A window per bay on every 3.2 m storey, shop windows, a cornice, dark joints between buildings.
                storey = periodic_cover(y - 3.6, pixel_height[c], 3.2, 0.9, 2.4)
                upper = (y < height[c] - 1.2) and (y > 3.6)
                shop = 0.9 if (y > 0.4) and (y < 2.8) else 0.0
                windows = window_x[c] * ((storey if upper else 0.0) + shop)
                cornice = 0.22 if y > height[c] - 0.6 else 0.0
                tint = 0.92 + 0.08 * clip01(y / 10.0) - cornice
                glass = 0.12 * clip01(y / 20.0)
                for ch in range(3):
                    base = colour[ch, c] * tint
                    base = base * (1.0 - 0.35 * joint[c])
                    g = glass0[ch] + glass
                    rgb[ch, r, c] = (base + (g - base) * windows) * shade[c]
                label[r, c] = BUILDING
            zbuf[r, c] = z[c]


# ------------------------------------------------------------------------------------------ ground


@_jit
def ground(g0, a, z_row, s_row, px_row, fade_row, grain_row, centre_dash, lane_dash, slab_row, shadows,
           ego_x, curvature, road_half, lane_width, lanes, noise, rgb, label, zbuf):
    """Road and sidewalks for the ground pixels (rows g0.. ) no wall hides. Per row: distance z_row, position
    along the road s_row, lateral footprint px_row, grain fade (from row grain_row on), dash and slab covers.
    shadows [n, 6]: x, half width, near, far, first row, end row of each car's and person's contact shadow.
    noise: (perm, values) x 4 for asphalt patches, asphalt grain and paving."""
    H, W = label.shape
    for r in range(g0, H):
        i = r - g0
        z = z_row[i]
        s, px = s_row[i], px_row[i]
        for c in range(W):
            if not z < zbuf[r, c]:
                continue
            x = a[c] * z - (-ego_x + 0.5 * curvature * z * z)  # lateral distance from the road's centre line
            ax = abs(x)
            if ax < road_half:
                asphalt = 0.33 + 0.07 * (value_noise(s * 0.35, x * 0.5, noise[0], noise[1]) - 0.5)
                if i >= grain_row:
                    grain = value_noise(s * 12.0, x * 12.0, noise[2], noise[3]) - 0.5
                    asphalt += 0.05 * fade_row[i] * grain
                # Worn tyre tracks 0.8 m either side of each lane centre (wide and faint: no antialiasing).
                from_centre = abs(mod(ax, lane_width) - 0.5 * lane_width)
                if ax < lanes * lane_width:
                    asphalt -= 0.03 * clip01(1.0 - abs(from_centre - 0.8) / 0.3)
                # Markings: the exact box-filter cover of each stripe, summed, divided by the footprint once.
                lo, hi = x - px / 2, x + px / 2
                paint = _stripe(lo, hi, 0.0, 0.07) * centre_dash[i]
                for j in range(1, lanes):
                    paint += (_stripe(lo, hi, j * lane_width, 0.06) + _stripe(lo, hi, -j * lane_width, 0.06)) * lane_dash[i]
                paint += _stripe(lo, hi, lanes * lane_width, 0.07) + _stripe(lo, hi, -lanes * lane_width, 0.07)
                paint = min(paint / px, 1.0) * 0.85
                tint, marking = (1.0, 1.0, 1.04), (0.86, 0.86, 0.83)
                for ch in range(3):
                    road = asphalt * tint[ch]
                    rgb[ch, r, c] = road + (marking[ch] - road) * paint
                label[r, c] = ROAD
            else:  # paving slabs beyond the curb and a lighter curb stone
                d = ax - road_half
                slabs = 1.0 - 0.12 * max(slab_row[i], periodic_cover(d, px, 0.8, 0.0, 0.05))
                walk = (0.55 + 0.04 * value_noise(s * 0.6, d * 0.6, noise[4], noise[5])) * slabs
                curb = max(min(d + px / 2, 0.25) - max(d - px / 2, 0.0), 0.0) / px
                tint, stone = (1.03, 1.0, 0.95), (0.70, 0.70, 0.68)
                for ch in range(3):
                    w = walk * tint[ch]
                    rgb[ch, r, c] = w + (stone[ch] - w) * curb
                label[r, c] = SIDEWALK
            # Soft contact shadows under cars and people (the sun is high: the shadow is the footprint).
            shade = 1.0
            for k in range(shadows.shape[0]):
                if shadows[k, 4] <= i < shadows[k, 5]:
                    near, far = shadows[k, 2], shadows[k, 3]
                    lateral = clip01(1.0 - (abs(x - shadows[k, 0]) - shadows[k, 1] * 0.9) / 0.3)
                    along = clip01(1.0 - max(near - z, z - far) / 0.5)
                    shade *= 1.0 - 0.55 * lateral * along
            for ch in range(3):
                rgb[ch, r, c] *= shade
            zbuf[r, c] = z


@_jit
def _stripe(lo, hi, centre, half):
    return max(min(hi, centre + half) - max(lo, centre - half), 0.0)


# ------------------------------------------------------------------------------------------ sky, haze, light


@_jit
def haze(rgb, zbuf, sky_horizon, fog):
    """Distance haze on every pixel (sky pixels, at infinite distance, turn sky_horizon)."""
    H, W = zbuf.shape
    for r in range(H):
        for c in range(W):
            h = 1.0 - math.exp(-zbuf[r, c] / fog)
            for ch in range(3):
                rgb[ch, r, c] += (sky_horizon[ch] - rgb[ch, r, c]) * h


@_jit
def sky(colour, x, y, weight, has_clouds, clouds, rgb, zbuf):
    """Sky colour per row [3, rows] on every pixel of those rows that nothing else covers, with clouds when the
    scene has them (has_clouds): two noise octaves at x per column and y per row (clouds = (perm, values) x 2), their
    cover scaled per row by `weight`. Clouds sit at infinity: they follow the camera's yaw but not its motion."""
    rows, W = colour.shape[1], zbuf.shape[1]
    white = (0.95, 0.95, 0.96)
    for r in range(rows):
        for c in range(W):
            if not math.isinf(zbuf[r, c]):
                continue
            if not has_clouds:
                for ch in range(3):
                    rgb[ch, r, c] = colour[ch, r]
                continue
            n = 0.65 * value_noise(x[c], y[r] * 1.6, clouds[0], clouds[1]) + 0.35 * value_noise(
                x[c] * 3.1, y[r] * 4.0, clouds[2], clouds[3])
            cover = min(max(clip01((n - 0.45) * 2.5) * weight[r], 0.0), 0.9)
            for ch in range(3):
                rgb[ch, r, c] = colour[ch, r] + (white[ch] - colour[ch, r]) * cover


# ------------------------------------------------------------------------------------------ sprites


@_jit
def composite(rgb, label, zbuf, v0, u0, coverage, colour, z, gain, offset, label_id):
    """Composite a sprite's coverage [h, w] and colour [3, h, w] at (v0, u0) and distance z wherever nothing
    nearer is drawn: colour -> colour gain + offset (haze and light); label and depth where it covers half."""
    h, w = coverage.shape
    for i in range(h):
        for j in range(w):
            r, c = v0 + i, u0 + j
            if not z < zbuf[r, c]:
                continue
            alpha = coverage[i, j]
            for ch in range(3):
                box = rgb[ch, r, c]
                rgb[ch, r, c] = box + (colour[ch, i, j] * gain + offset[ch] - box) * alpha
            if alpha >= 0.5:
                label[r, c] = label_id
                zbuf[r, c] = z


@_jit
def sprite_grid(u0, v0, w, h, u_centre, v_ground, scale):
    """Pixel centres of a sprite's box: metres right of its centre (columns) and above the ground (rows)."""
    xp = np.empty(w)
    yp = np.empty(h)
    for j in range(w):
        xp[j] = ((u0 + j) + 0.5 - u_centre) / scale
    for i in range(h):
        yp[i] = ((v_ground - v0) - i - 0.5) / scale
    return xp, yp


@_jit
def lamp_cover(xc, yc, pixel, top, toward):
    """Exact coverage [h, w] and colour [3, h, w] of a street lamp (pole, arm, head: three rectangles): a
    rectangle's box-filtered cover is the product of its column and row covers, and the union subtracts the two
    overlaps (arm-pole, arm-head)."""
    arm_lo, arm_hi = (0.0, 1.3) if toward > 0 else (-1.3, 0.0)
    head_lo, head_hi = toward * 1.2 - 0.22, toward * 1.2 + 0.22
    # pole, arm, head, arm-pole overlap, arm-head overlap (an empty interval covers nothing)
    xs = ((-0.08, 0.08), (arm_lo, arm_hi), (head_lo, head_hi), (max(arm_lo, -0.08), min(arm_hi, 0.08)),
          (max(arm_lo, head_lo), min(arm_hi, head_hi)))
    ys = ((0.0, top), (top - 0.25, top - 0.1), (top - 0.35, top - 0.12), (top - 0.25, top - 0.1),
          (top - 0.25, top - 0.12))
    sign = (1.0, 1.0, 1.0, -1.0, -1.0)
    h, w = len(yc), len(xc)
    columns = np.empty((5, w))
    rows = np.empty((5, h))
    for k in range(5):
        for j in range(w):
            columns[k, j] = interval_cover(xc[j], pixel, xs[k][0], xs[k][1])
        for i in range(h):
            rows[k, i] = interval_cover(yc[i], pixel, ys[k][0], ys[k][1])
    coverage = np.empty((h, w))
    colour = np.empty((3, h, w))
    pole, head = (0.38, 0.39, 0.40), (0.13, 0.14, 0.13)
    for i in range(h):
        for j in range(w):
            total = 0.0
            for k in range(5):
                total += rows[k, i] * sign[k] * columns[k, j]
            cover = clip01(total)
            coverage[i, j] = cover
            dark = rows[2, i] * columns[2, j] / max(cover, 1e-9)  # share of the covered area that is the head
            for ch in range(3):
                colour[ch, i, j] = pole[ch] - head[ch] * dark
    return coverage, colour


@_jit
def car_cover(xp, yp, pixel, half_width, height, paint, table):
    """Coverage [h, w] and colour [3, h, w] of a car: box sums of its template's summed-area tables
    [5, rows + 1, cols + 1] (coverage, paint weight, fixed colours) over each pixel's footprint."""
    rows, cols = table.shape[1] - 1, table.shape[2] - 1
    h, w = len(yp), len(xp)
    half = pixel / 2
    c = np.empty(w + 1, np.intp)
    r = np.empty(h + 1, np.intp)
    for j in range(w + 1):
        edge = xp[j] - half if j < w else xp[w - 1] + half
        c[j] = int(np.rint((edge / half_width + 1) * (cols / 2)))
    for i in range(h + 1):
        edge = yp[i] + half if i < h else yp[h - 1] - half
        r[i] = int(np.rint((1 - edge / height) * rows))
    coverage = np.empty((h, w))
    colour = np.empty((3, h, w))
    for i in range(h):
        r0 = min(max(r[i], 0), rows - 1)
        r1 = min(max(r[i + 1], r0 + 1), rows)  # at least one cell (pixels finer than it)
        rows_overlap = r[i + 1] > 0 and r[i] < rows
        for j in range(w):
            c0 = min(max(c[j], 0), cols - 1)
            c1 = min(max(c[j + 1], c0 + 1), cols)
            box = np.empty(5)
            for k in range(5):
                box[k] = table[k, r1, c1] - table[k, r0, c1] - table[k, r1, c0] + table[k, r0, c0]
            # A pixel's area in template cells (one cell when it is finer); parts past the template are empty.
            area = max(r[i + 1] - r[i], 1) * max(c[j + 1] - c[j], 1)
            overlaps = rows_overlap and c[j + 1] > 0 and c[j] < cols
            coverage[i, j] = box[0] / area * (1.0 if overlaps else 0.0)
            for ch in range(3):
                colour[ch, i, j] = (paint[ch] * box[1] + box[2 + ch]) / max(box[0], 1e-9)
    return coverage, colour


@_jit
def person_cover(xp, yp, pixel, height, stride, trousers, shirt):
    """Coverage [h, w] from ss x ss sub-pixel samples of a walking person and colour [3, h, w] at the pixel
    centres xp (columns) and yp (rows), in metres."""
    h, w = len(yp), len(xp)
    ss = 3 if h < 24 else 2  # subpixel samples per axis: enough for smooth edges, cheap for big sprites
    offsets = np.empty(ss)
    for k in range(ss):
        offsets[k] = ((k + 0.5) / ss - 0.5) * pixel
    coverage = np.empty((h, w))
    colour = np.empty((3, h, w))
    skin, hair = (0.80, 0.62, 0.50), (0.18, 0.13, 0.10)
    for i in range(h):
        for j in range(w):
            inside = 0
            for ky in range(ss):
                for kx in range(ss):
                    inside += _person_part(xp[j] + offsets[kx], yp[i] - offsets[ky], height, stride) > 0
            coverage[i, j] = inside / (ss * ss)
            part = _person_part(xp[j], yp[i], height, stride)
            for ch in range(3):
                if part == 3:
                    colour[ch, i, j] = hair[ch] if yp[i] > 0.93 * height else skin[ch]
                elif part == 2:
                    colour[ch, i, j] = shirt[ch]
                else:
                    colour[ch, i, j] = trousers[ch]
    return coverage, colour


@_jit
def _person_part(xm, ym, h, stride):
    """Which part of a person (height h, gait phase stride) covers the point (xm, ym) metres from its feet'
    centre: 0 none, 1 legs, 2 torso or arms, 3 head."""
    hip = 0.48 * h
    hx, hy = xm / 0.1, (ym - 0.9 * h) / 0.115
    if hx * hx + hy * hy < 1.0:
        return 3
    arm_swing = -0.08 * stride * clip01((0.8 * h - ym) / (0.3 * h))
    torso = ym >= hip and ym < 0.82 * h and abs(xm) < 0.19 - 0.03 * (1.0 if (ym - hip) / h < 0.05 else 0.0)
    arms = ym > 0.5 * h and ym < 0.8 * h and abs(abs(xm + arm_swing) - 0.23) < 0.045
    if torso or arms:
        return 2
    swing = 0.16 * stride * clip01((hip - ym) / hip)
    if ym < hip and (abs(xm - 0.07 - swing) < 0.07 or abs(xm + 0.07 + swing) < 0.07):
        return 1
    return 0


# ------------------------------------------------------------------------------------------ camera


@_jit
def hood(rgb, label, zbuf):
    """The ego vehicle's bonnet along the bottom edge (Cityscapes shows it): dark paint reflecting the scene
    across its outline. Reflections are read before any hood pixel is painted."""
    _, H, W = rgb.shape
    edge = np.empty(W)
    for c in range(W):
        xn = (c + 0.5) / W * 2 - 1
        edge[c] = H * (0.9 + 0.07 * (xn * xn))  # hood outline, highest in the middle
    first = int(max(edge.min() - 1, 0))
    if first >= H:
        return
    paint = np.empty((3, H - first, W))
    cover = np.empty((H - first, W))
    for r in range(first, H):
        for c in range(W):
            row = r + 0.5
            cover[r - first, c] = clip01(row - edge[c] + 0.5)
            mirror = min(max(int(np.rint(2 * edge[c] - row)), 0), H - 1)  # reflect the scene across the edge
            for ch in range(3):
                paint[ch, r - first, c] = (0.10, 0.11, 0.13)[ch] + 0.25 * rgb[ch, mirror, c]
    for r in range(first, H):
        for c in range(W):
            k = cover[r - first, c]
            for ch in range(3):
                rgb[ch, r, c] += (paint[ch, r - first, c] - rgb[ch, r, c]) * k
            if k >= 0.5:
                label[r, c] = IGNORE
                zbuf[r, c] = np.inf


@_jit
def finish(rgb, vignette, zbuf):
    """Lens fall-off, then RGB uint8 [H, W, 3] and 8-bit inverse depth uint8 [H, W] (0 where infinite)."""
    _, H, W = rgb.shape
    image = np.empty((H, W, 3), np.uint8)
    depth = np.empty((H, W), np.uint8)
    for r in range(H):
        for c in range(W):
            for ch in range(3):
                v = rgb[ch, r, c] * vignette[r, c] * 255.0
                image[r, c, ch] = np.uint8(np.rint(min(max(v, 0.0), 255.0)))
            z = zbuf[r, c]
            depth[r, c] = 0 if math.isinf(z) else np.uint8(min(max(np.rint((255.0 * DEPTH_NEAR) / z), 1.0), 255.0))
    return image, depth
