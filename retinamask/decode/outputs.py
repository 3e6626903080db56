"""One image's raw model outputs -> :class:`Detections` in original-image pixels (no torch).

Layouts (docs/onnx_contract.md): ``end2end`` outputs are final detections padded with label -1 / score 0
rows; ``seed`` outputs are 1000 candidates that get the seed's host-side class-wise NMS (IoU 0.4, +1 areas,
keep 100) here.
"""

import logging
from dataclasses import dataclass

import numpy as np

from retinamask.core.contract import LAYOUTS
from retinamask.core.errors import InputError

logger = logging.getLogger(__name__)

MASK_PASTES = ("original", "seed")


def boxes_to_original(boxes, original_hw, resized_hw, clip=True):
    """Boxes on the model's canvas -> boxes on the original image.

    boxes: float [N,4] x1,y1,x2,y2 in canvas pixels, where the image occupies the
    top-left ``resized_hw`` = (resized_h, resized_w) region. original_hw = (h, w).
    Each axis is divided by its own resize ratio (resized / original; the short side
    was rounded down, so the two differ slightly), computed as the original's
    ``BoxList.resize`` does it: float32 boxes times the float32 of original / resized.
    Then, with ``clip``, clipped to [0, w-1] x [0, h-1] (``clip_to_image``, +1 convention): the
    seed's route clips there (its graph clipped to the canvas); the original does not (its
    graph clipped to the resized image), see ``ResizePolicy.clip_to_image``.
    Returns float32 [N,4].
    """
    from retinamask.ops.boxes import clip_boxes, rescale_boxes

    height, width = (int(v) for v in original_hw)
    boxes = rescale_boxes(boxes, resized_hw, original_hw)
    return clip_boxes(boxes, height, width) if clip else boxes


@dataclass
class Detections:
    """Final detections of one image, in original-image pixels.

    boxes float32 [N,4] (x1,y1,x2,y2, inclusive pixels); scores float32 [N], descending
    for seed (NMS order) and as the model sorted them for end2end; labels int32 [N]
    (1-based contiguous); masks uint8 [N,H,W] (0/1) or None when not pasted;
    mask_probs float32 [N,M,M] (the model's probabilities for each row's class);
    mask_areas int64 [N] pixel counts of ``masks`` (None when not pasted).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    mask_probs: np.ndarray
    mask_areas: np.ndarray | None = None


def decode_outputs(
    outputs,
    layout,
    original_hw,
    resized_hw,
    nms_threshold=0.4,
    max_detections=100,
    mask_threshold=0.5,
    mask_paste="original",
    num_classes=None,
    paste=True,
    clip=True,
):
    """One image's 4 model outputs -> :class:`Detections` in original-image pixels.

    outputs: (boxes [K,4] f32 canvas pixels, labels [K] int, scores [K] f32,
    masks [K,1,M,M] or [K,M,M] f32 probabilities), batch axis removed.
    layout "end2end": rows with label < 1 or score <= 0 are padding and dropped.
    layout "seed": class-wise NMS (``nms_threshold``, keep ``max_detections``) on the
    canvas boxes, as the seed's postprocess does, before mapping back.
    mask_paste: "original" (``paste_masks``, PIL, exact to the original RetinaMask)
    or "seed" (``paste_masks_seed``, cv2, the seed's host code).
    num_classes: when given, labels above it are an error. clip: boxes clipped to the image
    after mapping back (:func:`boxes_to_original`; the policy's ``clip_to_image``).
    Raises InputError (without a path) for malformed or non-finite outputs.
    """
    from retinamask.ops.masks import paste_masks, paste_masks_seed
    from retinamask.ops.nms import classwise_nms

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if mask_paste not in MASK_PASTES:
        raise ValueError(f"mask_paste must be one of {MASK_PASTES}, got {mask_paste!r}")
    boxes, labels, scores, masks = checked_outputs(outputs)

    if layout == "seed":
        if (labels < 1).any():
            raise InputError(f"seed-layout labels must be 1-based, found {int(labels.min())} (end2end outputs?)")
        keep = classwise_nms(boxes, scores, labels, iou_threshold=nms_threshold, max_detections=max_detections)
    else:
        keep = np.flatnonzero((labels >= 1) & (scores > 0))
    if num_classes is not None and keep.size and labels[keep].max() > num_classes:
        raise InputError(f"label {int(labels[keep].max())} but there are only {num_classes} categories")

    height, width = (int(v) for v in original_hw)
    kept_boxes = boxes_to_original(boxes[keep], original_hw, resized_hw, clip=clip)
    kept_probs = masks[keep].astype(np.float32, copy=False)
    pasted = areas = None
    if paste:
        paste_fn = paste_masks if mask_paste == "original" else paste_masks_seed
        pasted, areas = paste_fn(
            kept_probs, kept_boxes, height, width, threshold=mask_threshold, padding=1, return_areas=True
        )
    return Detections(kept_boxes, scores[keep], labels[keep].astype(np.int32), pasted, kept_probs, areas)


def checked_outputs(outputs):
    """One image's 4 outputs, checked: (boxes f32 [K,4], labels int64 [K], scores f32 [K], masks [K,M,M]).

    Raises InputError (without a path) for wrong shapes or NaN/inf values.
    """
    boxes, labels, scores, masks = (np.asarray(o) for o in outputs)
    rows = boxes.shape[0] if boxes.ndim == 2 else -1
    if boxes.shape != (rows, 4) or labels.shape != (rows,) or scores.shape != (rows,) or masks.shape[0] != rows:
        raise InputError(
            f"outputs are not [K,4] / [K] / [K] / [K,1,M,M]: got {list(boxes.shape)}, {list(labels.shape)}, "
            f"{list(scores.shape)}, {list(masks.shape)}"
        )
    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise InputError(f"masks must be [K,1,M,M], got {list(np.asarray(outputs[3]).shape)}")
    for name, array in (("boxes", boxes), ("scores", scores), ("masks", masks)):
        if not np.isfinite(array).all():
            raise InputError(f"{int((~np.isfinite(array)).sum())} NaN/inf value(s) in {name}")
    return boxes.astype(np.float32, copy=False), labels.astype(np.int64), scores.astype(np.float32, copy=False), masks
