"""The Ascend seed's host-side postprocess, number for number (no torch).

The seed (Ascend ModelZoo ``ACL_PyTorch/contrib/cv/detection/RetinaMask``:
``RetinaMask_postprocess.py`` with ``tools/utils.py``) turns each image's model outputs
into COCO results with conventions of its own. ``evaluate --convention seed`` uses this
module, so that the same output files give the seed's figures; ``original`` (the default,
:mod:`retinamask.decode.outputs`) gives the original RetinaMask's. The seed's
conventions, each reproduced here:

* NMS: one greedy pass over ALL rows (no score threshold), classes kept apart by shifting
  each box by ``label * (max coordinate + 1)`` in float32; +1 areas; a box is kept while its
  float32 IoU with every kept box is ``<= float32(0.4)``; candidates visited in the order of
  ``np.argsort(scores)[::-1]`` (NumPy's default sort: ties in that order); keep 100.
* Precision: with 100 or more survivors the first 100 stay float32; with fewer, the seed pads
  to 100 rows with float64 zeros, so every later step of that image runs in float64.
* Geometry: boxes divided by ONE ratio ``S / long side`` (not per axis), clipped to
  ``[0, w] x [0, h]`` (not ``w - 1``, ``h - 1``).
* Masks: box expanded by ``(M + 2) / M`` in the boxes' precision; the expanded box's
  corners rounded half-to-even; the padded mask resized with ``cv2.resize`` (bilinear) to
  ``round(w + 1) x round(h + 1)`` and thresholded at 0.5; pasted into
  ``[round(x0), round(x1)) x [round(y0), round(y1))`` (end exclusive).
* COCO box width ``x2 - x1`` (the original's ``convert("xywh")`` adds 1); category id by
  position in the annotation file's category list (``categories[label - 1]``); rows with a
  negative label dropped after the NMS.
* COCO evaluation: one result list holding boxes and masks, so that ``loadRes`` gives every
  result the area ``w * h`` of its box, for the segm evaluation too (its small / medium /
  large split of detections); see ``evaluate_coco(segm_area="box")``.

Where the seed cannot run, this module differs on purpose: outputs whose boxes are all zero
(the seed's NMS returns one value where four are unpacked: a crash) give no detections; label
0 or above the number of categories (the seed takes ``categories[-1]`` or crashes) is an
error; image ids come from the annotation file by file name (the seed parses ``int(stem)``,
which is the id on COCO val2017).
"""

import numpy as np

from retinamask.core.errors import InputError
from retinamask.ops.coco_results import xywh_results
from retinamask.ops.masks import encode_masks

SEED_IOU_THRESHOLD = 0.4
SEED_KEEP = 100
SEED_MASK_THRESHOLD = 0.5


def seed_nms(boxes, scores, labels, iou_threshold=SEED_IOU_THRESHOLD):
    """The seed's class-aware greedy NMS over all rows (``np_batched_nms`` before its cut).

    boxes float32 [N,4] xyxy (model canvas pixels), scores float32 [N], labels int [N].
    Returns int64 [K] indices of the kept rows, in the order they were kept (descending
    score, ties as ``np.argsort(scores)[::-1]`` orders them). N == 0 gives K == 0.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    one = np.float32(1)
    shifted = boxes + (labels.astype(np.float32) * (boxes.max() + one))[:, None]
    x1, y1, x2, y2 = (np.ascontiguousarray(shifted[:, k]) for k in range(4))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    threshold = np.float32(iou_threshold)
    zero = np.float32(0)
    pending = np.argsort(scores)[::-1]
    kept = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while pending.size:
            best, others = pending[0], pending[1:]
            kept.append(best)
            inter_w = np.maximum(zero, np.minimum(x2[best], x2[others]) - np.maximum(x1[best], x1[others]) + one)
            inter_h = np.maximum(zero, np.minimum(y2[best], y2[others]) - np.maximum(y1[best], y1[others]) + one)
            inter = inter_w * inter_h
            iou = inter / (areas[best] + areas[others] - inter)
            pending = others[iou <= threshold]  # NaN IoUs drop the row, as in the seed
    return np.asarray(kept, dtype=np.int64)


def seed_detections(outputs, image_hw, canvas_side, iou_threshold=SEED_IOU_THRESHOLD, keep=SEED_KEEP):
    """One image's 4 outputs -> (boxes, scores, labels, mask_probs) after the seed's NMS and mapping.

    outputs: (boxes [K,4] f32 canvas pixels, labels [K] int, scores [K] f32, masks [K,1,M,M]
    or [K,M,M]). Returns boxes [D,4] in original-image pixels, float32 when the NMS kept at
    least ``keep`` rows and float64 otherwise (the seed's padding promotes them), clipped to
    [0, w] x [0, h]; scores float32 [D]; labels int64 [D] (negative labels dropped); mask
    probabilities float32 [D,M,M]. D <= keep, in NMS order.
    """
    boxes, labels, scores, masks = (np.asarray(o) for o in outputs)
    boxes = boxes.astype(np.float32, copy=False).reshape(-1, 4)
    scores = scores.astype(np.float32, copy=False).reshape(-1)
    labels = labels.astype(np.int64).reshape(-1)
    masks = masks.reshape(masks.shape[0], masks.shape[-2], masks.shape[-1]) if masks.ndim == 4 else masks
    if boxes.shape[0] == 0 or not boxes.any():
        empty = np.zeros((0, 4), np.float64)
        return empty, np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros((0,) + masks.shape[1:], np.float32)
    order = seed_nms(boxes, scores, labels, iou_threshold)
    if order.size >= keep:
        order = order[:keep]
        kept_boxes = boxes[order]  # float32 from here on
        ratio = np.float32(canvas_side / max(image_hw))
    else:
        kept_boxes = boxes[order].astype(np.float64)
        ratio = canvas_side / max(image_hw)
    height, width = (int(v) for v in image_hw)
    kept_boxes = kept_boxes / ratio
    kept_boxes[:, 0::2] = np.clip(kept_boxes[:, 0::2], 0, width)
    kept_boxes[:, 1::2] = np.clip(kept_boxes[:, 1::2], 0, height)
    real = labels[order] >= 0
    return (
        kept_boxes[real],
        scores[order][real],
        labels[order][real],
        masks[order][real].astype(np.float32, copy=False),
    )


def seed_paste_masks(probs, boxes, height, width, threshold=SEED_MASK_THRESHOLD, padding=1, return_areas=False):
    """The seed's ``Masker``: uint8 [N, height, width] 0/1 masks (column-major storage, as
    ``encode_masks`` reads it); with ``return_areas`` also their int64 [N] pixel counts.

    probs float [N,M,M] (or [N,1,M,M]); boxes [N,4] xyxy in image pixels, float32 or float64
    (the expansion runs in their precision, as in the seed).
    """
    import cv2

    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 4:
        probs = probs[:, 0]
    boxes = np.asarray(boxes)
    if boxes.dtype not in (np.float32, np.float64):
        boxes = boxes.astype(np.float64)
    boxes = boxes.reshape(-1, 4)
    n = probs.shape[0]
    if boxes.shape[0] != n:
        raise ValueError(f"{n} masks but {boxes.shape[0]} boxes")
    columns_first = np.zeros((n, width, height), dtype=np.uint8)
    areas = np.zeros(n, dtype=np.int64)
    if n == 0:
        return (columns_first.transpose(0, 2, 1), areas) if return_areas else columns_first.transpose(0, 2, 1)
    m = probs.shape[-1]
    padded = np.zeros((n, m + 2 * padding, m + 2 * padding), dtype=np.float32)
    padded[:, padding : padding + m, padding : padding + m] = probs
    real = boxes.dtype.type
    half, scale = real(0.5), real(float(m + 2 * padding) / m)
    centre_x, centre_y = (boxes[:, 2] + boxes[:, 0]) * half, (boxes[:, 3] + boxes[:, 1]) * half
    half_w, half_h = (boxes[:, 2] - boxes[:, 0]) * half * scale, (boxes[:, 3] - boxes[:, 1]) * half * scale
    expanded = np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=1)
    # resized size: round(max(x1 - x0 + 1, 1)) in the boxes' precision, half to even like round()
    sizes = np.rint(np.maximum(expanded[:, 2:] - expanded[:, :2] + real(1), real(1))).astype(np.int64)
    corners = np.rint(expanded).astype(np.int64)
    for i in range(n):
        bx0, by0, bx1, by1 = corners[i].tolist()
        x0, x1, y0, y1 = max(bx0, 0), min(bx1, width), max(by0, 0), min(by1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        resized = cv2.resize(padded[i], (int(sizes[i, 0]), int(sizes[i, 1])))
        crop = resized[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0] > threshold
        columns_first[i, x0 : x0 + crop.shape[1], y0 : y0 + crop.shape[0]] = crop.T
        areas[i] = np.count_nonzero(crop)
    masks = columns_first.transpose(0, 2, 1)
    return (masks, areas) if return_areas else masks


def seed_coco_results(
    outputs,
    image_id,
    image_hw,
    canvas_side,
    category_ids_in_file_order,
    iou_threshold=SEED_IOU_THRESHOLD,
    keep=SEED_KEEP,
    with_masks=True,
):
    """One image's 4 outputs -> (COCO result dicts, mask areas) as the seed makes them.

    Each result: bbox [x1, y1, x2 - x1, y2 - y1] (the boxes' precision), score, category_id =
    ``category_ids_in_file_order[label - 1]``, and the mask's compressed RLE as
    ``segmentation`` when ``with_masks``. Mask areas: int64 [D] pixel counts (None without masks).
    Raises InputError for labels 0 or above the number of categories.
    """
    boxes, scores, labels, probs = seed_detections(outputs, image_hw, canvas_side, iou_threshold, keep)
    if labels.size and (labels.min() < 1 or labels.max() > len(category_ids_in_file_order)):
        bad = int(labels.min()) if labels.min() < 1 else int(labels.max())
        raise InputError(f"label {bad} but labels run from 1 to {len(category_ids_in_file_order)} (the categories)")
    categories = np.asarray(category_ids_in_file_order)[labels - 1] if labels.size else []
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    rles = areas = None
    if with_masks:
        masks, areas = seed_paste_masks(probs, boxes, *(int(v) for v in image_hw), return_areas=True)
        rles = encode_masks(masks)
    return xywh_results(image_id, xywh, scores, categories, rles), areas
