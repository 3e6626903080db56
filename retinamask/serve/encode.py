"""Detections -> the HTTP response body: COCO results (masks as compressed RLE, polygons or none) as
JSON through orjson, or the overlay PNG that ``predict`` draws."""

import numpy as np
import orjson

from retinamask.ops.coco_results import results_from_detections
from retinamask.ops.masks import encode_masks, paste_and_encode_masks


def select(detections, score_threshold=0.0, max_detections=None):
    """Indices of the detections to answer with: score >= threshold, best first, at most max_detections."""
    order = np.argsort(-detections.scores, kind="stable")
    order = order[detections.scores[order] >= score_threshold]
    return order if max_detections is None else order[:max_detections]


def coco_results(detections, keep, category_ids, masks="rle", mask_threshold=0.5, mask_paste="original"):
    """COCO result dicts for ``detections[keep]``, as ``evaluate`` writes them (bbox x, y, w, h in image
    pixels with the original's +1 width, category_id, score) plus category_name; ``segmentation``: compressed
    RLE, polygons or absent per ``masks``. Without pasted masks, the RLE comes from ``mask_probs`` through
    the fused paste + encode (the same strings, tests/test_evaluation_masks_fused.py), evaluate's route,
    with ``mask_paste`` ("original" or "subpixel", as the model's predictors paste)."""
    chosen = detections.take(keep)
    rles = None
    if masks == "rle":
        rles = rle_masks(chosen, mask_threshold, mask_paste)
    results = results_from_detections(0, chosen, category_ids, rles)
    for i, result in enumerate(results):
        del result["image_id"]
        result["category_name"] = chosen.class_names[i]
        if masks == "polygon":
            result["segmentation"] = mask_polygons(chosen.masks[i])
    return results


def rle_masks(detections, mask_threshold=0.5, mask_paste="original"):
    """COCO compressed RLE {"size", "counts"} of each detection's mask: the pasted masks when there are, else
    the fused paste + encode of ``mask_probs`` (the same strings). /v1/predict's and /v2 infer's masks."""
    if not len(detections):
        return []
    if detections.masks is not None:
        return encode_masks(detections.masks)
    height, width = detections.image_hw
    return paste_and_encode_masks(
        detections.mask_probs, detections.boxes, height, width, threshold=mask_threshold, paste=mask_paste
    )


def mask_polygons(mask):
    """uint8 [H, W] 0/1 mask -> COCO polygons [[x1, y1, x2, y2, ...], ...] (outer contours, >= 3 points)."""
    import cv2

    contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def json_bytes(payload):
    """orjson, numpy scalars and arrays included."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def overlay_png(rgb, detections, keep, score_threshold):
    """The overlay ``predict`` writes (same drawing, same PNG bytes) of ``detections[keep]``."""
    from retinamask.ops.draw import overlay_png as draw_png

    return draw_png(rgb, detections.take(keep), score_threshold)
