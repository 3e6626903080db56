"""Rendering one synthetic shapes image (:mod:`retinamask.data.shapes` writes the dataset).

A textured background (colour gradient, low-frequency noise, stripes and soft blobs in background
tones) with several solid, shaded, rotated shapes on top, drawn in order, later ones occluding
earlier ones. Every shape is rasterised once as a binary mask (no anti-aliasing) and its pixels are
coloured through that mask, so each instance's visible mask agrees with the pixels exactly. The
random stream of an image is a function of ``(seed, split name, index)`` only (:func:`image_rng`).
"""

import colorsys
import hashlib
import math

import cv2
import numpy as np

# COCO-like non-contiguous ids. ``min_size`` is the smallest size at which the
# class is still recognisable (a star's points or a ring's hole vanish below it).
# Polygons with five or more sides are left out on purpose: at 8-16 px they are
# indistinguishable from circles.
CATEGORIES = (
    {"id": 1, "name": "circle", "supercategory": "shape", "min_size": 8},
    {"id": 3, "name": "rectangle", "supercategory": "shape", "min_size": 8},
    {"id": 7, "name": "triangle", "supercategory": "shape", "min_size": 10},
    {"id": 12, "name": "star", "supercategory": "shape", "min_size": 14},
    {"id": 18, "name": "cross", "supercategory": "shape", "min_size": 10},
    {"id": 25, "name": "ring", "supercategory": "shape", "min_size": 14},
)

MIN_VISIBLE_AREA = 20  # px; instances left with less are dropped
MIN_VISIBLE_FRACTION = 0.5  # a new shape may not hide more than half of an earlier one
MIN_COLOUR_CONTRAST = 70.0  # RGB distance to the background and to touching shapes
PLACEMENT_ATTEMPTS = 20
COLOUR_ATTEMPTS = 12


def image_rng(seed, split, index):
    """The random generator of one image: a function of (seed, split name, index) only."""
    split_key = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:4], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), split_key, int(index)]))


def render_shapes_image(params, split, index):
    """Render one image; return (RGB uint8 HxWxC, [(category id, visible bool mask HxW), ...]).

    Instances are listed in drawing order; their visible masks are pairwise
    disjoint and each has at least ``MIN_VISIBLE_AREA`` pixels.
    """
    rng = image_rng(params["seed"], split, index)
    low, high = params["image_side_range"]
    height, width = (int(v) for v in rng.integers(low, high + 1, size=2))
    background = make_background(rng, height, width)
    image = background.copy()
    labels = np.zeros((height, width), np.uint8)  # 0 = background, k = k-th drawn instance
    drawn = []  # per instance: category id, full area, visible area, base colour

    max_size = params["max_size_fraction"] * min(height, width)
    num_objects = int(rng.integers(params["min_objects"], params["max_objects"] + 1))
    for _ in range(num_objects):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        low_size = min(max(params["min_size"], category["min_size"]), max_size)
        size = math.exp(rng.uniform(math.log(low_size), math.log(max_size)))
        polygons = shape_polygons(rng, category["name"], size / 2)
        placed = _place_shape(rng, polygons, size / 2, labels, drawn)
        if placed is None:
            continue
        (y0, y1, x0, x1), local_mask, centre = placed
        colour = _pick_shape_colour(rng, background, labels, drawn, (y0, y1, x0, x1), local_mask)
        label = len(drawn) + 1
        region = image[y0:y1, x0:x1]
        region[local_mask] = _shaded_pixels(rng, colour, local_mask, (y0, x0), centre, size / 2)
        under = np.bincount(labels[y0:y1, x0:x1][local_mask], minlength=label)[1:]
        for i, hidden in enumerate(under):
            drawn[i]["visible"] -= int(hidden)
        labels[y0:y1, x0:x1][local_mask] = label
        area = int(local_mask.sum())
        drawn.append({"category_id": category["id"], "full": area, "visible": area, "colour": colour})

    instances = []
    for i, instance in enumerate(drawn):
        mask = labels == i + 1
        if instance["visible"] < MIN_VISIBLE_AREA:
            # Placement keeps this from happening; if it does, erase the remnant
            # so that no unannotated shape pixels remain.
            image[mask] = background[mask]
            continue
        instances.append((instance["category_id"], mask))

    noise_sigma = rng.uniform(2.0, 8.0)
    image += noise_sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances


def shape_polygons(rng, name, radius):
    """Outline of one shape centred at the origin, fitting a circle of ``radius``.

    Returns a list of (float Nx2 polygon, fill value): fill 1 adds to the mask,
    fill 0 cuts a hole (the ring's).
    """
    rotation = rng.uniform(0.0, 2.0 * math.pi)
    if name == "circle":
        return [(_regular_polygon(64, radius, 0.0), 1)]
    if name == "rectangle":
        aspect = rng.uniform(1.0, 1.8)
        half_w = radius * math.cos(math.atan2(1.0, aspect))
        half_h = radius * math.sin(math.atan2(1.0, aspect))
        corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
        return [(_rotate(corners, rotation), 1)]
    if name == "triangle":
        angles = rotation + np.radians(np.array([0.0, 120.0, 240.0]) + rng.uniform(-12.0, 12.0, size=3))
        return [(radius * np.stack([np.cos(angles), np.sin(angles)], axis=1), 1)]
    if name == "star":
        inner = radius * rng.uniform(0.38, 0.5)
        angles = rotation + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, inner)
        return [(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1), 1)]
    if name == "cross":
        t = radius * rng.uniform(0.22, 0.32)  # half the arm width
        arm = math.sqrt(radius * radius - t * t)  # arm corners touch the circle
        outline = np.array(
            [[arm, t], [t, t], [t, arm], [-t, arm], [-t, t], [-arm, t],
             [-arm, -t], [-t, -t], [-t, -arm], [t, -arm], [t, -t], [arm, -t]]
        )  # fmt: skip
        return [(_rotate(outline, rotation), 1)]
    if name == "ring":
        hole = radius * rng.uniform(0.45, 0.62)
        return [(_regular_polygon(64, radius, 0.0), 1), (_regular_polygon(64, hole, 0.0), 0)]
    raise ValueError(f"unknown shape {name!r}")


def _regular_polygon(num_vertices, radius, rotation):
    angles = rotation + np.arange(num_vertices) * (2.0 * math.pi / num_vertices)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _rotate(points, angle):
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def rasterize(polygons, centre, height, width):
    """Binary mask of polygons placed at ``centre`` (pixel centres at integer coordinates).

    Returns ((y0, y1, x0, x1), bool mask of that window): the window is the
    polygons' box clipped to the image.
    """
    absolute = [(pts + np.asarray(centre), value) for pts, value in polygons]
    all_points = np.concatenate([pts for pts, _ in absolute])
    x0 = max(math.floor(all_points[:, 0].min()), 0)
    y0 = max(math.floor(all_points[:, 1].min()), 0)
    x1 = min(math.ceil(all_points[:, 0].max()) + 1, width)
    y1 = min(math.ceil(all_points[:, 1].max()) + 1, height)
    local = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for pts, value in absolute:
        # 4 fractional bits: sub-pixel vertex positions, still a hard 0/1 fill.
        fixed = np.rint((pts - [x0, y0]) * 16).astype(np.int32)
        cv2.fillPoly(local, [fixed], int(value), lineType=cv2.LINE_8, shift=4)
    return (y0, y1, x0, x1), local.astype(bool)


def _place_shape(rng, polygons, radius, labels, drawn):
    """Find a position where the shape lies inside the image and hides at most
    half of any earlier instance (and leaves it MIN_VISIBLE_AREA); None if none found."""
    height, width = labels.shape
    for _ in range(PLACEMENT_ATTEMPTS):
        centre = (rng.uniform(radius + 1, width - radius - 1), rng.uniform(radius + 1, height - radius - 1))
        window, local_mask = rasterize(polygons, centre, height, width)
        if local_mask.sum() < MIN_VISIBLE_AREA:
            return None
        y0, y1, x0, x1 = window
        hidden = np.bincount(labels[y0:y1, x0:x1][local_mask], minlength=len(drawn) + 1)[1:]
        acceptable = all(
            instance["visible"] - h >= max(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * instance["full"])
            for instance, h in zip(drawn, hidden)
            if h
        )
        if acceptable:
            return window, local_mask, centre
    return None


def _pick_shape_colour(rng, background, labels, drawn, window, local_mask):
    """A saturated colour that stands out from the background under the shape and
    from every instance it touches (so that touching shapes keep a visible edge)."""
    y0, y1, x0, x1 = window
    background_mean = background[y0:y1, x0:x1][local_mask].mean(axis=0)
    # Instances within 2 px of the new shape, taken from a slightly larger window.
    gy0, gy1 = max(y0 - 2, 0), min(y1 + 2, labels.shape[0])
    gx0, gx1 = max(x0 - 2, 0), min(x1 + 2, labels.shape[1])
    grown = np.zeros((gy1 - gy0, gx1 - gx0), np.uint8)
    grown[y0 - gy0 : y0 - gy0 + local_mask.shape[0], x0 - gx0 : x0 - gx0 + local_mask.shape[1]] = local_mask
    grown = cv2.dilate(grown, np.ones((5, 5), np.uint8)).astype(bool)
    touching = np.unique(labels[gy0:gy1, gx0:gx1][grown])
    references = [background_mean] + [drawn[k - 1]["colour"] for k in touching if k > 0]
    return contrasting_colour(rng, references)


def contrasting_colour(rng, references):
    """A saturated RGB colour (float32 [3], 0-255) at least ``MIN_COLOUR_CONTRAST`` from every colour of
    ``references``, else the most distant of ``COLOUR_ATTEMPTS`` draws (the images' and the clips' shapes)."""
    best, best_contrast = None, -1.0
    for _ in range(COLOUR_ATTEMPTS):
        rgb = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
        colour = np.array(rgb, np.float32) * 255.0
        contrast = min(float(np.linalg.norm(colour - ref)) for ref in references)
        if contrast > best_contrast:
            best, best_contrast = colour, contrast
        if contrast >= MIN_COLOUR_CONTRAST:
            break
    return best


def _shaded_pixels(rng, colour, local_mask, origin, centre, radius):
    """Colours of the mask's pixels (in boolean-index order): the base colour with a
    gentle linear shading across the shape, so shapes are not perfectly flat."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    amplitude = rng.uniform(0.0, 20.0)
    ys, xs = np.nonzero(local_mask)
    along = (xs + origin[1] - centre[0]) * math.cos(angle) + (ys + origin[0] - centre[1]) * math.sin(angle)
    shade = (amplitude / max(radius, 1.0)) * along.astype(np.float32)
    return colour[None, :] + shade[:, None]


def make_background(rng, height, width):
    """Float32 RGB background: gradient + low-frequency noise + optional stripes and soft blobs,
    all in muted tones so that the saturated shapes stand out without being trivial."""
    first, second = _muted_colour(rng), _muted_colour(rng)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    projection = xs * math.cos(angle) + ys * math.sin(angle)
    t = (projection - projection.min()) / max(float(np.ptp(projection)), 1.0)
    image = first + (second - first) * t[..., None]

    grid = rng.standard_normal((int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.float32)
    image += rng.uniform(8.0, 25.0) * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)

    if rng.uniform() < 0.5:
        period = rng.uniform(6.0, 40.0)
        duty = rng.uniform(0.2, 0.5)
        stripe_angle = rng.uniform(0.0, math.pi)
        phase = (xs * math.cos(stripe_angle) + ys * math.sin(stripe_angle)) % period
        stripes = (phase < duty * period).astype(np.float32)[..., None]
        shift = rng.uniform(-40.0, 40.0, size=3).astype(np.float32)
        image += rng.uniform(0.4, 1.0) * stripes * shift

    num_blobs = int(rng.integers(0, 8))
    if num_blobs:
        coloured = image.copy()
        alpha = np.zeros((height, width), np.float32)
        for _ in range(num_blobs):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(8, width // 3)), int(rng.integers(8, height // 3)))
            blob_angle = float(rng.uniform(0.0, 180.0))
            colour = image[centre[1], centre[0]] + rng.uniform(-40.0, 40.0, size=3)
            cv2.ellipse(coloured, centre, axes, blob_angle, 0, 360, [float(c) for c in colour], -1)
            cv2.ellipse(alpha, centre, axes, blob_angle, 0, 360, 1.0, -1)
        # Blurred edges keep the blobs from looking like (annotated) shapes.
        alpha = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(3.0, 8.0))[..., None] * rng.uniform(0.4, 0.9)
        image = image * (1.0 - alpha) + coloured * alpha
    return np.clip(image, 0.0, 255.0)


def _muted_colour(rng):
    rgb = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.85))
    return np.array(rgb, np.float32) * 255.0
