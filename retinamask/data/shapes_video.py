"""Deterministic synthetic shapes clips with per-frame ground truth in the YouTube-VIS format.

The image dataset's shapes (:mod:`retinamask.data.shapes_render`) moving, entering, leaving and
occluding each other (:mod:`retinamask.data.shapes_video_render`), so that the model trained on the images
detects them and a tracker can be scored on them. Each clip is written as H.264 MP4 (libx264, crf 18,
yuv420p, one encoder thread so the bytes do not depend on the machine) at an exact frame rate
(``Fraction``: 12.5 is 25/2, NTSC is 30000/1001; the stream's time base is 1/rate and frame i has pts i),
or with ``lossless`` as FFV1 (rgb, ``bgr0``) in Matroska, whose pixels decode to exactly the rendered
frames (Matroska's millisecond clock rounds the timestamps of rates such as 30000/1001).

Ground truth: each object's *visible* mask per frame (None when fully hidden or outside the frame). The
same arguments give byte-identical files; a split whose annotation file records the same parameters and
whose clips exist is skipped unless ``force``. A split's clips come from ``(seed, split name)``: tune on
one split (``val``) and report on another (``test``, or another seed), whose clips were never seen.

Layout written under ``out_dir`` (the COCO layout of :mod:`retinamask.formats.coco_layout`)::

    <split>/000000.mp4 ...                     (.mkv with lossless)
    <split>/000000/000000.png ...              (with frames_png: every frame as a PNG image)
    annotations/instances_<split>.json         (YouTube-VIS: videos, annotations, categories)
"""

import json
import logging
import re
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from retinamask.core.errors import RetinaMaskError
from retinamask.core.fileio import atomic_write_bytes, atomic_write_text
from retinamask.data.shapes import SPLIT_NAME_PATTERN, encode_image
from retinamask.data.shapes_render import CATEGORIES
from retinamask.data.shapes_video_render import MIN_OBJECTS, plan_clip, render_frame
from retinamask.formats.coco_layout import annotation_file
from retinamask.formats.video_write import VideoWriter

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: written by formats.video_write.VideoWriter (no B-frames, superfast)
GENERATOR_NAME = "retinamask.data.shapes_video"
DEFAULT_SIZE = (320, 240)
DEFAULT_FRAMES = 50
DEFAULT_FPS = Fraction(25)
MAX_FPS = 240
MP4_CRF = 18
MP4_PRESET = "medium"  # data, not a live encode: x264's default quality per bit
CLIP_FILE_PATTERN = re.compile(r"^\d{6,}\.(mp4|mkv)$")


def generate_shapes_videos(
    out_dir,
    num_videos,
    seed,
    *,
    split="val",
    size=DEFAULT_SIZE,
    frames=DEFAULT_FRAMES,
    fps=DEFAULT_FPS,
    max_objects=6,
    lossless=False,
    frames_png=False,
    force=False,
):
    """Write ``num_videos`` clips and ``annotations/instances_<split>.json`` under ``out_dir``.

    size: (width, height) in pixels; frames: frames per clip; fps: the exact frame rate (a Fraction, an
    int, or a string such as "12.5" or "30000/1001"). Returns a dict with ``root``, ``videos`` (the clip
    folder), ``annotations`` (the JSON), ``clips`` (their paths) and ``skipped`` (True when up to date).
    """
    out_dir = Path(out_dir)
    params = video_parameters(seed, size, frames, fps, max_objects, lossless, frames_png)
    if isinstance(num_videos, bool) or not isinstance(num_videos, int) or num_videos < 1:
        raise RetinaMaskError(f"number of videos must be a positive integer, got {num_videos!r}")
    if not isinstance(split, str) or not SPLIT_NAME_PATTERN.match(split):
        raise RetinaMaskError(f"split name must be letters, digits, '_' or '-', got {split!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise RetinaMaskError("exists and is not a directory", out_dir)

    videos_dir = out_dir / split
    json_path = annotation_file(out_dir, split)
    info_params = dict(params, split=split, num_videos=num_videos)
    extension = "mkv" if lossless else "mp4"
    clips = [videos_dir / f"{index:06d}.{extension}" for index in range(num_videos)]
    result = {"root": out_dir, "videos": videos_dir, "annotations": json_path, "clips": clips, "skipped": False}
    if not force and _split_is_current(json_path, clips, info_params):
        log.info("%s: up to date (%d clips), skipped", json_path, num_videos)
        return dict(result, skipped=True)

    if json_path.exists():
        json_path.unlink()  # written last: its presence means the split is complete
    videos_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    videos, annotations = [], []
    for index, path in enumerate(clips):
        video, objects = write_clip(path, params, split, index)
        videos.append(video)
        for annotation in objects:
            annotations.append(dict(id=len(annotations) + 1, **annotation))
    for path in videos_dir.iterdir():
        if CLIP_FILE_PATTERN.match(path.name) and path not in clips:
            path.unlink()  # left by an earlier, larger or other-format run
    document = {
        "info": {
            "description": "RetinaMask synthetic shapes clips (video instance segmentation, visible masks as RLE)",
            "version": str(GENERATOR_VERSION),
            "contributor": GENERATOR_NAME,
            "generator_parameters": info_params,
        },
        "licenses": [],
        "videos": videos,
        "annotations": annotations,
        "categories": [{key: c[key] for key in ("id", "name", "supercategory")} for c in CATEGORIES],
    }
    atomic_write_text(json_path, json.dumps(document, separators=(",", ":")) + "\n")
    seconds = time.perf_counter() - start
    log.info("%s: %d clips, %d tracks in %.1f s", json_path, num_videos, len(annotations), seconds)
    return result


def parse_frame_rate(value):
    """An exact frame rate from 25, "12.5", "30000/1001" or a Fraction; > 0 and at most MAX_FPS."""
    try:
        rate = Fraction(str(value).strip()) if not isinstance(value, Fraction) else value
    except (ValueError, ZeroDivisionError):
        raise RetinaMaskError(f"frame rate must be a number or a fraction such as 30000/1001, got {value!r}") from None
    if not 0 < rate <= MAX_FPS or rate.denominator > 1_000_000:
        raise RetinaMaskError(f"frame rate must be in (0, {MAX_FPS}] with a denominator <= 1000000, got {value!r}")
    return rate


def parse_size(text):
    """(width, height) from "WxH"."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match:
        raise RetinaMaskError(f"size must be WIDTHxHEIGHT, e.g. 320x240, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def frame_rate_json(rate):
    """The YouTube-VIS ``frame_rate`` field: a number when whole, else the exact fraction as "25/2"."""
    return rate.numerator if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def video_parameters(seed, size, frames, fps, max_objects=6, lossless=False, frames_png=False):
    """Validate and collect everything that determines the written files (recorded in ``info``)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RetinaMaskError(f"seed must be a non-negative integer, got {seed!r}")
    width, height = (int(v) for v in size)
    if not (64 <= width <= 4096 and 64 <= height <= 4096):
        raise RetinaMaskError(f"size must be 64..4096 px per side, got {width}x{height}")
    if not lossless and (width % 2 or height % 2):
        raise RetinaMaskError(f"H.264 (yuv420p) needs an even width and height, got {width}x{height}")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 100_000:
        raise RetinaMaskError(f"frames per clip must be in [1, 100000], got {frames!r}")
    rate = parse_frame_rate(fps)
    if not MIN_OBJECTS <= max_objects <= 20:
        raise RetinaMaskError(f"max objects must be in [{MIN_OBJECTS}, 20], got {max_objects}")
    return {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "width": width,
        "height": height,
        "frames": int(frames),
        "fps_numerator": rate.numerator,
        "fps_denominator": rate.denominator,
        "max_objects": int(max_objects),
        "codec": "ffv1" if lossless else "h264",
        "crf": None if lossless else MP4_CRF,
        "frames_png": bool(frames_png),
    }


def _split_is_current(json_path, clips, info_params):
    if not json_path.is_file():
        return False
    try:
        with open(json_path) as f:
            recorded = json.load(f)["info"]["generator_parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == info_params and all(path.is_file() for path in clips)


def write_clip(path, params, split, index):
    """Render clip ``index`` into ``path`` (atomically); return its YouTube-VIS video record and the
    annotations of its objects (without ids; objects never visible are left out)."""
    path = Path(path)
    plan = plan_clip(params, split, index)
    rate = Fraction(params["fps_numerator"], params["fps_denominator"])
    clip = path.stem
    frames_dir = path.parent / clip
    num_frames = params["frames"]
    segmentations = [[None] * num_frames for _ in plan.shapes]
    # The muxer may change the stream's time base when it writes the header (MP4: 1/12800 for 25/2), so
    # frames keep their own: 1/rate, frame i at pts i. One encoder thread: the bytes depend on the frames only.
    writer = VideoWriter(
        path,
        plan.width,
        plan.height,
        1 / rate,
        rate,
        crf=params["crf"] or MP4_CRF,
        preset=MP4_PRESET,
        lossless=params["codec"] == "ffv1",
        threads=1,
    )
    with writer:
        for frame in range(num_frames):
            rgb, labels = render_frame(plan, frame)
            writer.write(rgb, frame)
            if params["frames_png"]:
                atomic_write_bytes(frames_dir / f"{frame:06d}.png", encode_image(rgb, "png"))
            for label in np.unique(labels):
                if label:
                    rle = mask_utils.encode(np.asfortranarray((labels == label).astype(np.uint8)))
                    segmentations[label - 1][frame] = rle
    video_id = index + 1
    video = {
        "id": video_id,
        "width": plan.width,
        "height": plan.height,
        "length": num_frames,
        "file_names": [f"{split}/{clip}/{frame:06d}.png" for frame in range(num_frames)],
        "file_name": f"{split}/{path.name}",
        "frame_rate": frame_rate_json(rate),
    }
    objects = []
    for shape, rles in zip(plan.shapes, segmentations):
        if all(rle is None for rle in rles):
            continue
        objects.append(
            {
                "video_id": video_id,
                "category_id": shape.category_id,
                "segmentations": [None if rle is None else _rle_json(rle) for rle in rles],
                "bboxes": [None if rle is None else [float(v) for v in mask_utils.toBbox(rle)] for rle in rles],
                "areas": [None if rle is None else int(mask_utils.area(rle)) for rle in rles],
                "iscrowd": 0,
                "height": plan.height,
                "width": plan.width,
            }
        )
    return video, objects


def _rle_json(rle):
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
