"""COCO-like data without a model: ground truth of ellipses on COCO-sized images, and end2end
model outputs that find most of it (for post-processing and evaluation benchmarks)."""

import numpy as np

from benchmarks.r50 import INPUT_SIZE, MAX_DETECTIONS

EVAL_SIZES = ((480, 640), (640, 480), (427, 640), (640, 427), (375, 500), (500, 375), (612, 612))
EVAL_CATEGORIES = tuple(range(1, 91, 9))  # 10 non-contiguous COCO-like ids


def _ellipse_polygon(box, vertices=24):
    x0, y0, x1, y1 = box
    angle = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return np.stack([cx + rx * np.cos(angle), cy + ry * np.sin(angle)], 1).reshape(-1)


def synthetic_ground_truth(num_images, seed=0):
    """COCO dict: ``num_images`` images of COCO sizes, 1-12 ellipses each (polygon masks)."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = EVAL_SIZES[rng.integers(len(EVAL_SIZES))]
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "height": int(height), "width": int(width)})
        for _ in range(rng.integers(1, 13)):
            w = float(np.exp(rng.uniform(np.log(8), np.log(width * 0.8))))
            h = float(np.clip(w * np.exp(rng.normal(0, 0.4)), 6, height * 0.9))
            x0 = float(rng.uniform(0, width - w))
            y0 = float(rng.uniform(0, height - h))
            polygon = _ellipse_polygon((x0, y0, x0 + w, y0 + h))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(EVAL_CATEGORIES[rng.integers(len(EVAL_CATEGORIES))]),
                    "segmentation": [polygon.round(2).tolist()],
                    "area": float(np.pi * w * h / 4),
                    "bbox": [x0, y0, w, h],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "shape"} for c in EVAL_CATEGORIES]
    return {"images": images, "annotations": annotations, "categories": categories}


def _soft_ellipse_mask(resolution, sharpness, rng):
    """28x28 probabilities of an ellipse filling the box, with soft edges and noise."""
    yy, xx = (np.mgrid[0:resolution, 0:resolution] + 0.5) / resolution * 2 - 1
    radius = np.sqrt(xx**2 + yy**2)
    logits = sharpness * (1 - radius) + rng.normal(0, 0.5, size=radius.shape)
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def synthetic_outputs(image, annotations, category_ids, rng, rows=MAX_DETECTIONS, canvas_side=INPUT_SIZE):
    """end2end-layout model outputs for one image: each ground-truth object found once or twice
    (jittered box, score 0.3-1), the remaining rows false positives (score 0.05-0.4), sorted.
    ``canvas_side``: the seed's S the boxes are scaled to. Returns ((boxes [rows, 4] float32,
    labels [rows] int32, scores [rows] float32, masks [rows, 1, 28, 28] float32), image_hw, resized_hw)."""
    from retinamask.data.transforms import seed_resize_geometry

    height, width = image["height"], image["width"]
    (resized_h, resized_w), scale = seed_resize_geometry(height, width, canvas_side)
    contiguous = {c: i + 1 for i, c in enumerate(sorted(category_ids))}
    boxes, labels, scores = [], [], []
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        for _ in range(rng.integers(1, 3)):
            jitter = rng.normal(0, 0.05, 4) * [w, h, w, h]
            boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
            labels.append(
                contiguous[ann["category_id"]] if rng.random() < 0.9 else rng.integers(1, len(category_ids) + 1)
            )
            scores.append(rng.uniform(0.3, 1.0))
    while len(boxes) < rows:
        w, h = rng.uniform(8, width * 0.6), rng.uniform(8, height * 0.6)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        boxes.append([x, y, x + w, y + h])
        labels.append(rng.integers(1, len(category_ids) + 1))
        scores.append(rng.uniform(0.05, 0.4))
    order = np.argsort(-np.asarray(scores), kind="stable")[:rows]
    boxes = np.asarray(boxes, np.float32)[order] * np.float32(scale)
    boxes = np.clip(boxes, 0, canvas_side - 1)
    masks = np.stack([_soft_ellipse_mask(28, rng.uniform(4, 12), rng) for _ in order])[:, None]
    outputs = (boxes, np.asarray(labels, np.int32)[order], np.asarray(scores, np.float32)[order], masks)
    return outputs, (height, width), (resized_h, resized_w)


def synthetic_jobs(num_images, chunk=50):
    """(ground truth dict, jobs): :func:`synthetic_ground_truth` split into chunks of ``chunk`` images,
    each job (images, their annotations by image id, sorted category ids, first index)."""
    dataset = synthetic_ground_truth(num_images)
    category_ids = sorted(c["id"] for c in dataset["categories"])
    by_image = {}
    for ann in dataset["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    jobs = [
        (
            dataset["images"][i : i + chunk],
            {im["id"]: by_image.get(im["id"], []) for im in dataset["images"][i : i + chunk]},
            category_ids,
            i,
        )
        for i in range(0, num_images, chunk)
    ]
    return dataset, jobs
