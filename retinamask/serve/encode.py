"""Detections -> the HTTP response body: COCO results (masks as compressed RLE, polygons or none) as
JSON through orjson, or the overlay PNG that ``predict`` draws."""

import io

import numpy as np
import orjson

from retinamask.ops.coco_results import detections_to_coco_results
from retinamask.ops.masks import encode_masks

MASK_FORMATS = ("rle", "polygon", "none")


def select(detections, score_threshold=0.0, max_detections=None):
    """Indices of the detections to answer with: score >= threshold, best first, at most max_detections."""
    order = np.argsort(-detections.scores, kind="stable")
    order = order[detections.scores[order] >= score_threshold]
    return order if max_detections is None else order[:max_detections]


def coco_results(detections, keep, category_ids, class_names, masks="rle"):
    """COCO result dicts for ``detections[keep]`` (bbox x, y, w, h in image pixels as ``evaluate`` writes
    them, category_id, category_name, score, segmentation per ``masks``)."""
    labels = detections.labels[keep]
    categories = [int(category_ids[label - 1]) for label in labels]
    segmentations = (encode_masks(detections.masks[keep]) if len(keep) else []) if masks == "rle" else None
    results = detections_to_coco_results(0, detections.boxes[keep], detections.scores[keep], categories, segmentations)
    for result, label in zip(results, labels):
        del result["image_id"]
        result["category_name"] = class_names[label - 1] if label <= len(class_names) else f"class_{label}"
    if masks == "polygon":
        for result, mask in zip(results, detections.masks[keep]):
            result["segmentation"] = mask_polygons(mask)
    return results


def mask_polygons(mask):
    """uint8 [H, W] 0/1 mask -> COCO polygons [[x1, y1, x2, y2, ...], ...] (outer contours, >= 3 points)."""
    import cv2

    contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def json_bytes(payload):
    """orjson, numpy scalars and arrays included."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def overlay_png(rgb, detections, keep, class_names, score_threshold):
    """The overlay ``predict`` writes, as PNG bytes."""
    from retinamask.ops.draw import draw_prediction

    image = draw_prediction(rgb, detections.subset(keep), score_threshold)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
