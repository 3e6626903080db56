"""Detections -> COCO result dicts and predict's JSON record (torch-free).

The one home of the conversion: evaluate (through :mod:`retinamask.decode.coco_results`), the
trainer's evaluation and ``predict`` all write their results with these functions.
"""

import numpy as np

from retinamask.ops.masks import encode_masks


def detections_to_coco_results(image_id, boxes_xyxy, scores, category_ids, rles=None):
    """COCO result dicts for one image.

    boxes_xyxy: float [N,4] in original-image pixels; converted to [x, y, w, h]
    with the original's +1 (BoxList.convert("xywh"): w = x2 - x1 + 1).
    scores: float [N]; category_ids: int [N] COCO category ids (not model labels).
    rles: optional list of N RLE dicts (``encode_masks``) added as "segmentation".
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2] + 1.0], axis=1)
    return xywh_results(image_id, xywh, scores, category_ids, rles)


def xywh_results(image_id, xywh, scores, category_ids, rles=None):
    """COCO result dicts for one image from boxes already [x, y, w, h] (float [N,4], written as
    their values: float32 ones as float32, as the seed writes them); other arguments as
    :func:`detections_to_coco_results`."""
    xywh = np.asarray(xywh).reshape(-1, 4)
    scores = np.asarray(scores).reshape(-1).tolist()
    category_ids = np.asarray(category_ids).reshape(-1).tolist()
    if not (len(xywh) == len(scores) == len(category_ids)) or (rles is not None and len(rles) != len(xywh)):
        raise ValueError("boxes, scores, category_ids (and rles) must have the same length")
    results = []
    for i, box in enumerate(xywh.tolist()):
        result = {
            "image_id": int(image_id),
            "category_id": int(category_ids[i]),
            "bbox": box,
            "score": float(scores[i]),
        }
        if rles is not None:
            result["segmentation"] = rles[i]
        results.append(result)
    return results


def results_from_detections(image_id, detections, category_ids, rles=None):
    """COCO result dicts of one image's :class:`~retinamask.core.detections.Detections`.

    category_ids: the annotation file's category ids sorted ascending; label L maps to
    ``category_ids[L - 1]``. rles: N RLE dicts (``encode_masks``) for "segmentation", or None.
    """
    labels = np.asarray(detections.labels)
    categories = np.asarray(category_ids)[labels - 1] if labels.size else []
    return detections_to_coco_results(image_id, detections.boxes, detections.scores, categories, rles)


def detections_to_json(detections, score_threshold=0.0):
    """predict's JSON record of one image: {"height", "width", "detections": [{"label", "class_name",
    "score" (6 decimals), "box_xyxy" (3 decimals), "mask_rle"}]} for the detections scoring at
    least ``score_threshold``; needs ``class_names``, ``masks`` and ``image_hw``."""
    keep = np.flatnonzero(detections.scores >= score_threshold)
    # all kept: the pasted masks as they are (column-major: encoded without a copy)
    masks = detections.masks if len(keep) == len(detections) else detections.masks[keep]
    rles = encode_masks(masks) if len(keep) else []
    return {
        "height": int(detections.image_hw[0]),
        "width": int(detections.image_hw[1]),
        "detections": [
            {
                "label": int(detections.labels[i]),
                "class_name": detections.class_names[i],
                "score": round(float(detections.scores[i]), 6),
                "box_xyxy": [round(float(v), 3) for v in detections.boxes[i]],
                "mask_rle": rle,
            }
            for i, rle in zip(keep, rles)
        ],
    }
