"""Deterministic synthetic instance-segmentation dataset in COCO format.

Each image has a textured background (colour gradient, low-frequency noise,
stripes and soft blobs in background tones) with several solid, shaded, rotated
shapes on top. Shapes are drawn in order, later ones occluding earlier ones, and
each instance's annotation is its *visible* mask (COCO RLE) with ``area`` and
``bbox`` computed from that mask. Every shape is rasterised once as a binary mask
(no anti-aliasing) and its pixels are coloured through that mask, so the
annotations agree with the pixels exactly.

Object sizes are log-uniform from ``min_size`` (8 px) to ``max_size_fraction``
(0.5) of the image's short side, i.e. more than four octaves, so that every
level of a stride 8..128 feature pyramid gets objects to learn from.

The random stream of each image is derived from ``(seed, split name, index)``
only, so the output is byte-identical whatever the number of workers, and
different splits or seeds give independent images.

Layout written under ``out_dir``::

    <split>/000000.png ...
    annotations/instances_<split>.json
"""

import json
import logging
import os
import re
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from retinamask.core import jobs
from retinamask.core.errors import RetinaMaskError
from retinamask.core.fileio import atomic_write_bytes, atomic_write_text
from retinamask.data.shapes_render import CATEGORIES, render_shapes_image
from retinamask.formats.coco_layout import annotation_file

log = logging.getLogger(__name__)

# Bump whenever the rendering changes, so that datasets written by an older
# generator are regenerated instead of skipped.
GENERATOR_VERSION = 1
GENERATOR_NAME = "retinamask.data.shapes"

IMAGE_SIDE_RANGE = (192, 384)  # width and height are drawn independently
IMAGE_FORMATS = ("png", "jpg")
MIN_OBJECTS = 2
SPLIT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
IMAGE_FILE_PATTERN = re.compile(r"^\d{6,}\.(png|jpg)$")
# Temp files an interrupted atomic write of such an image may leave behind.
IMAGE_TEMP_PATTERN = re.compile(r"^\.\d{6,}\.(png|jpg)\..+\.tmp$")


def generate_shapes_dataset(
    out_dir,
    num_train,
    num_val,
    seed,
    *,
    val_split_name="val",
    workers=0,
    image_format="png",
    min_size=8,
    max_size_fraction=0.5,
    max_objects=10,
    force=False,
):
    """Write the synthetic shapes dataset under ``out_dir``; return its paths.

    ``num_train`` images go to the ``train`` split and ``num_val`` to the split
    named ``val_split_name``; a split with 0 images is not written. A split whose
    annotation file already records the same parameters (in ``info``) and whose
    images all exist is left as it is unless ``force``. ``workers`` > 0 renders in
    that many processes (the output does not depend on it).

    Returns a dict with ``root`` and, per written split, ``<split>_images`` (the
    image folder) and ``<split>_annotations`` (the COCO JSON), plus ``skipped``:
    the names of the splits that were already up to date.
    """
    out_dir = Path(out_dir)
    params = shapes_parameters(seed, image_format, min_size, max_size_fraction, max_objects)
    _check_counts(num_train, num_val, val_split_name, workers)
    if out_dir.exists() and not out_dir.is_dir():
        raise RetinaMaskError("exists and is not a directory", out_dir)

    paths = {"root": out_dir, "skipped": []}
    for split, count in (("train", num_train), (val_split_name, num_val)):
        if count == 0:
            continue
        images_dir, json_path, skipped = generate_split(out_dir, split, count, params, workers=workers, force=force)
        paths[f"{split}_images"] = images_dir
        paths[f"{split}_annotations"] = json_path
        if skipped:
            paths["skipped"].append(split)
    return paths


def shapes_parameters(seed, image_format="png", min_size=8, max_size_fraction=0.5, max_objects=10):
    """Validate and collect everything that determines the generated pixels.

    The dict is recorded in each annotation file's ``info`` and compared on
    reruns to decide whether a split can be reused.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RetinaMaskError(f"seed must be a non-negative integer, got {seed!r}")
    if image_format not in IMAGE_FORMATS:
        raise RetinaMaskError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if not 4 <= min_size <= 64:
        raise RetinaMaskError(f"min size must be in [4, 64] px, got {min_size}")
    if not 0.05 <= max_size_fraction <= 0.5:
        raise RetinaMaskError(f"max size fraction must be in [0.05, 0.5], got {max_size_fraction}")
    if min_size > max_size_fraction * IMAGE_SIDE_RANGE[0]:
        raise RetinaMaskError(
            f"min size {min_size} px exceeds the largest object size on the smallest image "
            f"({max_size_fraction} x {IMAGE_SIDE_RANGE[0]} px)"
        )
    if not MIN_OBJECTS <= max_objects <= 50:
        raise RetinaMaskError(f"max objects must be in [{MIN_OBJECTS}, 50], got {max_objects}")
    return {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "image_format": image_format,
        "image_side_range": list(IMAGE_SIDE_RANGE),
        "min_size": float(min_size),
        "max_size_fraction": float(max_size_fraction),
        "min_objects": MIN_OBJECTS,
        "max_objects": int(max_objects),
    }


def _check_counts(num_train, num_val, val_split_name, workers):
    for name, value in (("train image count", num_train), ("image count", num_val), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RetinaMaskError(f"{name} must be a non-negative integer, got {value!r}")
    if num_train == 0 and num_val == 0:
        raise RetinaMaskError("nothing to generate: both image counts are 0")
    if not isinstance(val_split_name, str) or not SPLIT_NAME_PATTERN.match(val_split_name):
        raise RetinaMaskError(f"split name must be letters, digits, '_' or '-', got {val_split_name!r}")
    if num_train > 0 and val_split_name == "train":
        raise RetinaMaskError("split name 'train' clashes with the train split; choose another name")


def generate_split(out_dir, split, num_images, params, *, workers=0, force=False):
    """Write one split's images and annotation file; return (images dir, json path, skipped).

    The annotation file is written last and is removed first when regenerating,
    so its presence means the split is complete.
    """
    out_dir = Path(out_dir)
    images_dir = out_dir / split
    json_path = annotation_file(out_dir, split)
    info_params = dict(params, split=split, num_images=int(num_images))
    if not force and _split_is_current(images_dir, json_path, info_params):
        log.info("%s: up to date (%d images), skipped", json_path, num_images)
        return images_dir, json_path, True

    if json_path.exists():
        json_path.unlink()
    images_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    render_jobs = [(str(images_dir), split, index, params) for index in range(num_images)]
    if workers > 0:
        with jobs.worker_pool(workers, initializer=_init_worker) as pool:
            results = list(
                pool.map(_render_and_write, render_jobs, chunksize=max(1, min(16, num_images // (4 * workers))))
            )
    else:
        results = [_render_and_write(job) for job in render_jobs]
    _remove_stale_images(images_dir, {image["file_name"] for image, _ in results})

    coco = _coco_document(results, info_params)
    # Compact JSON: an indented file of RLE annotations is several times larger.
    atomic_write_text(json_path, json.dumps(coco, separators=(",", ":")) + "\n")
    seconds = time.perf_counter() - start
    log.info(
        "%s: %d images, %d instances in %.1f s (%.0f images/s)",
        json_path,
        num_images,
        len(coco["annotations"]),
        seconds,
        num_images / max(seconds, 1e-9),
    )
    return images_dir, json_path, False


def _split_is_current(images_dir, json_path, info_params):
    if not json_path.is_file():
        return False
    try:
        with open(json_path) as f:
            coco = json.load(f)
        recorded = coco["info"]["generator_parameters"]
        file_names = [image["file_name"] for image in coco["images"]]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == info_params and all((images_dir / name).is_file() for name in file_names)


def _remove_stale_images(images_dir, current_names):
    """Delete generated-looking images left by an earlier, larger or other-format run,
    and temp files of interrupted writes."""
    for path in images_dir.iterdir():
        stale = IMAGE_FILE_PATTERN.match(path.name) and path.name not in current_names
        if stale or IMAGE_TEMP_PATTERN.match(path.name):
            path.unlink()


def _coco_document(results, info_params):
    images, annotations = [], []
    for image, instances in results:
        images.append(image)
        for annotation in instances:
            annotations.append(dict(id=len(annotations) + 1, image_id=image["id"], **annotation))
    categories = [{key: c[key] for key in ("id", "name", "supercategory")} for c in CATEGORIES]
    return {
        "info": {
            "description": "RetinaMask synthetic shapes (instance segmentation, visible-part masks as RLE)",
            "version": str(GENERATOR_VERSION),
            "contributor": GENERATOR_NAME,
            "generator_parameters": info_params,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _init_worker():
    cv2.setNumThreads(1)


def _render_and_write(job):
    """Render one image, write it atomically, return its COCO image record and annotations."""
    images_dir, split, index, params = job
    image, instances = render_shapes_image(params, split, index)
    file_name = f"{index:06d}.{params['image_format']}"
    atomic_write_bytes(os.path.join(images_dir, file_name), encode_image(image, params["image_format"]))
    height, width = image.shape[:2]
    record = {"id": index + 1, "file_name": file_name, "width": width, "height": height}
    return record, [instance_annotation(category_id, mask) for category_id, mask in instances]


def encode_image(image_rgb, image_format):
    """RGB uint8 array -> PNG (lossless, the default) or JPEG (quality 95) bytes."""
    if image_format == "png":
        # Huffman-only: the noisy images barely compress further, and it is the fastest.
        flags = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
        ok, data = cv2.imencode(".png", image_rgb[:, :, ::-1], flags)
    else:
        ok, data = cv2.imencode(".jpg", image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RetinaMaskError(f"could not encode a {image_format} image")
    return data.tobytes()


def instance_annotation(category_id, visible_mask):
    """COCO annotation fields (without ids) for one instance's visible mask."""
    rle = mask_utils.encode(np.asfortranarray(visible_mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return {
        "category_id": int(category_id),
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": float(mask_utils.area(rle)),
        "bbox": bbox,
        "iscrowd": 0,
    }
