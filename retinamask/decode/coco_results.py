"""One image's raw model outputs -> COCO results, in one of three conventions: ``original`` (the original
RetinaMask's mapping, through :func:`~retinamask.decode.outputs.decode_outputs`), ``seed`` (the Ascend
seed's postprocess, number for number: :mod:`retinamask.decode.seed_convention`) or ``subpixel`` (the
original's, with the masks pasted sub-pixel: ``paste_masks_subpixel``).
"""

from retinamask.core.contract import CONVENTIONS, LAYOUTS
from retinamask.decode.outputs import checked_outputs, decode_outputs
from retinamask.decode.seed_convention import seed_coco_results
from retinamask.ops.coco_results import results_from_detections
from retinamask.ops.masks import paste_and_encode_masks


def outputs_to_coco_results(*args, **kwargs):
    """:func:`image_coco_results` without the mask areas: the list of COCO result dicts only."""
    return image_coco_results(*args, **kwargs)[0]


def image_coco_results(
    outputs,
    layout,
    image_id,
    image_hw,
    resized_hw,
    category_ids,
    nms_threshold=0.4,
    max_detections=100,
    mask_threshold=0.5,
    mask_paste="original",
    with_masks=True,
    convention="original",
    canvas_side=None,
    clip=True,
):
    """One image's 4 model outputs -> (list of COCO result dicts, the results' mask areas int64 [N] or
    None): bbox [x,y,w,h] with the +1 width convention, score, category_id, and RLE ``segmentation`` when
    ``with_masks``.

    image_hw: the image's (h, w); resized_hw: its resized (h, w) on the canvas.
    category_ids: the annotation file's category ids sorted ascending; label L maps to
    ``category_ids[L - 1]``. Other arguments: :func:`decode_outputs`.
    convention "seed": the seed's postprocess instead (:mod:`.seed_convention`: its NMS on
    any layout, one ratio ``canvas_side / long side``, its paste, width x2 - x1); then
    ``category_ids`` are in the annotation file's order and ``canvas_side`` (the seed's square
    canvas side S) is needed. convention "subpixel": the original's with ``mask_paste="subpixel"``.

    The original convention's masks take the fused route (:func:`paste_and_encode_masks`: RLE and
    areas straight from each box's columns, no full-image mask), which gives the same RLE strings
    and areas as ``encode_masks`` of ``decode_outputs``' pasted masks (tests/test_evaluation_masks_fused.py).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention == "seed":
        if canvas_side is None:
            raise ValueError("the seed convention needs the model's input size S")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        return seed_coco_results(
            checked_outputs(outputs),
            image_id,
            image_hw,
            canvas_side,
            category_ids,
            iou_threshold=nms_threshold,
            keep=max_detections,
            with_masks=with_masks,
        )
    if convention == "subpixel":
        mask_paste = "subpixel"
    detections = decode_outputs(
        outputs,
        layout,
        image_hw,
        resized_hw,
        nms_threshold=nms_threshold,
        max_detections=max_detections,
        mask_threshold=mask_threshold,
        mask_paste=mask_paste,
        num_classes=len(category_ids),
        paste=False,
        clip=clip,
    )
    rles = areas = None
    if with_masks:
        height, width = detections.image_hw
        rles, areas = paste_and_encode_masks(
            detections.mask_probs,
            detections.boxes,
            height,
            width,
            threshold=mask_threshold,
            padding=1,
            paste=mask_paste,
            return_areas=True,
        )
    return results_from_detections(image_id, detections, category_ids, rles), areas
