"""Rendering one synthetic shapes clip (:mod:`retinamask.data.shapes_video` writes the clips and annotations).

The image dataset's look (:mod:`retinamask.data.shapes_render`: its classes, shape outlines, binary
rasterisation and textured background) set in motion. Each object follows a smooth path (a heading that
turns at a constant rate, a speed that swells and ebbs around its own mean, 15-160 px/s across objects)
and spins slowly; objects enter through an edge, leave through one, or stay. Objects are drawn in a fixed
order (their depth), later ones occluding earlier ones, so each object's visible mask per frame is its
own label in the frame's label map: exactly the pixels coloured as that object, possibly none (hidden or
outside the frame). The background is either static or a slow pan over a larger textured canvas; every
frame gets its own sensor noise.

A clip's plan is a function of ``(seed, split name, clip index)`` only and each frame's noise of
``(seed, split name, clip index, frame index)``, so a clip is the same whatever renders it and in
whatever order.
"""

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from retinamask.data.shapes_render import (
    CATEGORIES,
    contrasting_colour,
    image_rng,
    make_background,
    rasterize,
    shape_polygons,
)

MIN_OBJECTS = 3
SPEED_RANGE = (15.0, 160.0)  # px/s, log-uniform across objects
TURN_RATE = 0.5  # rad/s at most
SPIN_RATE = 0.8  # rad/s at most
MAX_EDGE_SPEED = 300.0  # px/s: the cap when a short clip needs an entering or leaving object to hurry
PAN_SPEED = 8.0  # px/s at most (half of the clips have a static background)
MIN_OBJECT_SIZE = 16.0  # px; the shape's own min_size when larger
MAX_OBJECT_SIZE_FRACTION = 0.3  # of the frame's short side
SUBSTEPS = 4  # path integration steps per frame


@dataclass
class MovingShape:
    category_id: int
    polygons: list  # [(float Nx2 outline centred at the origin, fill value)], as shape_polygons gives them
    radius: float
    centres: np.ndarray  # float [frames, 2] x, y
    angles: np.ndarray  # float [frames] rotation since frame 0
    colour: np.ndarray  # float32 [3]
    shade_direction: tuple  # (cos, sin) of the shading gradient
    shade_amplitude: float
    mode: str  # "enter", "leave", "stay" or "cross" (aimed at the previous object)


@dataclass
class ClipPlan:
    width: int
    height: int
    times: np.ndarray  # float [frames] seconds of each frame
    background: np.ndarray  # float32 [H + 2 pad, W + 2 pad, 3]
    offsets: np.ndarray  # int [frames, 2] x, y of each frame's window into the background
    noise_sigma: float
    shapes: list  # MovingShape, in drawing order (depth)
    noise_key: tuple  # (seed, split key, clip index): seeds the per-frame noise


def split_key(split):
    return int.from_bytes(hashlib.sha256(f"{split}/video".encode()).digest()[:4], "little")


def plan_clip(params, split, index):
    """Everything but the per-frame noise of clip ``index`` of ``split``, from the generator parameters."""
    rng = image_rng(params["seed"], f"{split}/video", index)
    width, height = params["width"], params["height"]
    frames = params["frames"]
    fps = params["fps_numerator"] / params["fps_denominator"]
    times = np.arange(frames, dtype=np.float64) / fps
    duration = max(frames / fps, 1e-6)

    pan = np.zeros(2) if rng.uniform() < 0.5 else _direction(rng.uniform(0, 2 * math.pi)) * rng.uniform(2, PAN_SPEED)
    pad = math.ceil(float(np.abs(pan).max()) * duration) + 1
    background = make_background(rng, height + 2 * pad, width + 2 * pad)
    offsets = pad + np.rint(times[:, None] * pan[None, :]).astype(np.int64)
    background_mean = background.reshape(-1, 3).mean(axis=0)

    shapes = []
    num_objects = int(rng.integers(MIN_OBJECTS, params["max_objects"] + 1))
    for k in range(num_objects):
        mode = ("enter", "leave", "stay", "cross")[k] if k < 4 else str(rng.choice(["enter", "leave", "stay"]))
        shapes.append(_plan_shape(rng, mode, shapes, width, height, times, duration, background_mean))
    return ClipPlan(
        width=width,
        height=height,
        times=times,
        background=background,
        offsets=offsets,
        noise_sigma=float(rng.uniform(2.0, 6.0)),
        shapes=shapes,
        noise_key=(int(params["seed"]), split_key(split), int(index)),
    )


def _plan_shape(rng, mode, planned, width, height, times, duration, background_mean):
    category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    max_size = MAX_OBJECT_SIZE_FRACTION * min(width, height)
    low_size = min(max(MIN_OBJECT_SIZE, category["min_size"]), max_size)
    size = math.exp(rng.uniform(math.log(low_size), math.log(max_size)))
    radius = size / 2
    polygons = shape_polygons(rng, category["name"], radius)

    speed = math.exp(rng.uniform(*np.log(SPEED_RANGE)))
    turn = rng.uniform(-TURN_RATE, TURN_RATE)
    swell, period, phase = rng.uniform(0.0, 0.4), rng.uniform(1.5, 4.0), rng.uniform(0, 2 * math.pi)
    # The anchor: where the object is at time t_anchor, and its heading then.
    if mode in ("enter", "leave"):
        edge = int(rng.integers(4))
        along = rng.uniform(0.2, 0.8)
        inward = np.array([(1, 0), (-1, 0), (0, 1), (0, -1)][edge], float)
        start = [(-radius, along * height), (width + radius, along * height)]
        start += [(along * width, -radius), (along * width, height + radius)]
        anchor = np.array(start[edge])
        heading = math.atan2(inward[1], inward[0]) + rng.uniform(-0.8, 0.8)
        if mode == "leave":
            heading += math.pi
        t_anchor = rng.uniform(0.1, 0.5) * duration if mode == "enter" else rng.uniform(0.5, 0.9) * duration
        # Fast enough to get well inside after entering, or to come from well inside before leaving.
        inside_time = duration - t_anchor if mode == "enter" else t_anchor
        speed = min(max(speed, 2.5 * radius / max(inside_time, 1e-3)), MAX_EDGE_SPEED)
    elif mode == "cross" and planned:
        target = planned[-1]
        t_anchor = 0.5 * duration
        anchor = _interpolate(target.centres, times, t_anchor)
        heading = rng.uniform(0, 2 * math.pi)
    else:
        t_anchor = 0.0
        anchor = np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)])
        heading = rng.uniform(0, 2 * math.pi)

    # Integrate the path on a fine grid over [0, duration], shifted so that it passes the anchor at t_anchor.
    fine = np.linspace(0.0, duration, SUBSTEPS * len(times) + 1)
    speeds = speed * (1.0 + swell * np.sin(2 * math.pi * fine / period + phase))
    headings = heading + turn * (fine - t_anchor)
    velocity = speeds[:, None] * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    path = np.concatenate(
        [np.zeros((1, 2)), np.cumsum(0.5 * (velocity[1:] + velocity[:-1]) * np.diff(fine)[:, None], 0)]
    )
    path += anchor - _interpolate(path, fine, t_anchor)
    centres = np.stack([np.interp(times, fine, path[:, 0]), np.interp(times, fine, path[:, 1])], axis=1)

    angle = rng.uniform(0, 2 * math.pi)
    return MovingShape(
        category_id=int(category["id"]),
        polygons=polygons,
        radius=radius,
        centres=centres,
        angles=rng.uniform(-SPIN_RATE, SPIN_RATE) * times,
        colour=contrasting_colour(rng, [background_mean] + [other.colour for other in planned]),
        shade_direction=(math.cos(angle), math.sin(angle)),
        shade_amplitude=float(rng.uniform(0.0, 20.0)),
        mode=mode,
    )


def _direction(angle):
    return np.array([math.cos(angle), math.sin(angle)])


def _interpolate(points, times, t):
    return np.array([np.interp(t, times, points[:, 0]), np.interp(t, times, points[:, 1])])


def render_frame(plan, frame):
    """Frame ``frame`` of the clip: (RGB uint8 [H, W, 3], label map uint8 [H, W]).

    The label map holds k + 1 where the k-th shape of ``plan.shapes`` is visible and 0 on background.
    """
    height, width = plan.height, plan.width
    ox, oy = (int(v) for v in plan.offsets[frame])
    image = plan.background[oy : oy + height, ox : ox + width].copy()
    labels = np.zeros((height, width), np.uint8)
    for k, shape in enumerate(plan.shapes):
        cx, cy = shape.centres[frame]
        r = shape.radius
        polygons = [(_rotate(points, shape.angles[frame]), value) for points, value in shape.polygons]
        outline = np.concatenate([points for points, _ in polygons]) + [cx, cy]
        low, high = outline.min(axis=0), outline.max(axis=0)
        if high[0] < 0 or high[1] < 0 or low[0] > width - 1 or low[1] > height - 1:
            continue  # wholly outside the frame
        (y0, y1, x0, x1), local = rasterize(polygons, (cx, cy), height, width)
        if local.size == 0 or not local.any():
            continue
        ys, xs = np.nonzero(local)
        along = (xs + x0 - cx) * shape.shade_direction[0] + (ys + y0 - cy) * shape.shade_direction[1]
        shade = (shape.shade_amplitude / max(r, 1.0)) * along.astype(np.float32)
        image[y0:y1, x0:x1][local] = shape.colour[None, :] + shade[:, None]
        labels[y0:y1, x0:x1][local] = k + 1
    rng = np.random.default_rng(np.random.SeedSequence([*plan.noise_key, int(frame)]))
    image += plan.noise_sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels


def _rotate(points, angle):
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])
