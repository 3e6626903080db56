"""One image's raw model outputs -> :class:`~retinamask.core.detections.Detections` in image pixels (no torch).

Layouts (docs/onnx_contract.md): ``end2end`` outputs are final detections padded with label -1 / score 0
rows; ``seed`` outputs are 1000 candidates that get the seed's host-side class-wise NMS (IoU 0.4, +1 areas,
keep 100) here.
"""

import numpy as np

from retinamask.core.contract import LAYOUTS
from retinamask.core.detections import Detections
from retinamask.core.errors import InputError
from retinamask.core.geometry import boxes_to_image
from retinamask.ops.masks import MASK_PASTES, paste_function
from retinamask.ops.nms import classwise_nms


def decode_outputs(
    outputs,
    layout,
    image_hw,
    resized_hw,
    nms_threshold=0.4,
    max_detections=100,
    mask_threshold=0.5,
    mask_paste="original",
    num_classes=None,
    paste=True,
    clip=True,
):
    """One image's 4 model outputs -> :class:`~retinamask.core.detections.Detections` in the pixels
    of the image (``image_hw`` = (h, w)), whose resized copy filled the canvas's top-left ``resized_hw``.

    outputs: (boxes [K,4] f32 canvas pixels, labels [K] int, scores [K] f32,
    masks [K,1,M,M] or [K,M,M] f32 probabilities), batch axis removed.
    layout "end2end": rows with label < 1 or score <= 0 are padding and dropped.
    layout "seed": class-wise NMS (``nms_threshold``, keep ``max_detections``) on the
    canvas boxes, as the seed's postprocess does, before mapping back.
    mask_paste: "original" (``paste_masks``, PIL, exact to the original RetinaMask),
    "seed" (``paste_masks_seed``, cv2, the seed's host code) or "subpixel"
    (``paste_masks_subpixel``: no integer box, sharper on small objects; not the original's).
    num_classes: when given, labels above it are an error. clip: boxes clipped to the image
    after mapping back (:func:`~retinamask.core.geometry.boxes_to_image`; the policy's ``clip_to_image``).
    Raises InputError (without a path) for malformed or non-finite outputs.
    """
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

    height, width = (int(v) for v in image_hw)
    kept_boxes = boxes_to_image(boxes[keep], image_hw, resized_hw, clip=clip)
    kept_probs = masks[keep].astype(np.float32, copy=False)
    pasted = areas = None
    if paste:
        pasted, areas = paste_function(mask_paste)(
            kept_probs, kept_boxes, height, width, threshold=mask_threshold, padding=1, return_areas=True
        )
    return Detections(
        boxes=kept_boxes,
        scores=scores[keep],
        labels=labels[keep],
        masks=pasted,
        mask_probs=kept_probs,
        image_hw=(height, width),
        mask_areas=areas,
    )


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
