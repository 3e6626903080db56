"""Paste 28x28 mask probabilities into the image and encode them as COCO RLE (no torch).

``paste_masks`` reproduces the original RetinaMask ``Masker`` (maskrcnn_benchmark
roi_heads/mask_head/inference.py) bit for bit: same padding, same float32 box
expansion, same int32 truncation and the same PIL bilinear resize of the float
mask. ``paste_masks_seed`` is the Ascend seed's host-side variant: identical
geometry, ``cv2.resize`` bilinear instead of PIL. ``paste="subpixel"`` is not the original's:
each pixel samples the M x M grid at its centre's position in the box (no integer rounding of
the box), which small objects need (benchmarks/mask_ceiling.py).
"""

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

# PIL bilinear as the original; cv2 bilinear as the seed's host code; sub-pixel sampling (not the original's)
MASK_PASTES = ("original", "seed", "subpixel")


def _resize_pil(mask, width, height):
    """float32 [h0,w0] -> float32 [height,width] with PIL bilinear (antialiased when shrinking)."""
    resized = Image.fromarray(mask).resize((width, height), resample=Image.BILINEAR)
    return np.asarray(resized)


def _resize_cv2(mask, width, height):
    """float32 [h0,w0] -> float32 [height,width] with OpenCV bilinear (no antialiasing)."""
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)


def expand_boxes_int(boxes, scale):
    """Upstream ``expand_boxes`` followed by ``.to(torch.int32)``.

    boxes: float [N,4] xyxy; returns int32 [N,4]. The half sizes have no +1 and
    everything is float32, as torch computes it (the Python float ``scale`` is
    cast to float32 first, as torch does for a scalar operand); the cast to int32
    truncates toward zero.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    half = np.float32(0.5)
    scale = np.float32(scale)
    w_half = (boxes[:, 2] - boxes[:, 0]) * half * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * half * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * half
    y_c = (boxes[:, 3] + boxes[:, 1]) * half
    expanded = np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)
    with np.errstate(invalid="ignore"):
        return expanded.astype(np.int32)


def _visible_crops(probs, boxes, height, width, threshold, padding, resize):
    """The Masker geometry shared by every paste: yields (i, x0, x1, y0, y1, bool crop [y1-y0, x1-x0])
    for each mask with a visible part; ``resize(mask_f32, w, h)`` is the only thing that varies."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 4:  # [N,1,M,M] as the seed layout stores them
        probs = probs[:, 0]
    n = probs.shape[0]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if boxes.shape[0] != n:
        raise ValueError(f"{n} masks but {boxes.shape[0]} boxes")
    if n == 0:
        return
    m = probs.shape[-1]
    padded = np.zeros((n, m + 2 * padding, m + 2 * padding), dtype=np.float32)
    padded[:, padding : padding + m, padding : padding + m] = probs
    int_boxes = expand_boxes_int(boxes, float(m + 2 * padding) / m)

    for i, (bx0, by0, bx1, by1) in enumerate(int_boxes.tolist()):
        # Visible part of the box in the image; a box wholly outside pastes nothing.
        x0, x1 = max(bx0, 0), min(bx1 + 1, width)
        y0, y1 = max(by0, 0), min(by1 + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        box_w = max(bx1 - bx0 + 1, 1)
        box_h = max(by1 - by0 + 1, 1)
        resized = resize(padded[i], box_w, box_h)
        yield i, x0, x1, y0, y1, resized[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0] > threshold


def _subpixel_crops(probs, boxes, height, width, threshold):
    """The sub-pixel paste, yielding what ``_visible_crops`` yields: cell (i, j) of an M x M mask covers
    1/M of the box's span [x1, x2 + 1] x [y1, y2 + 1] (the +1 convention, as the training targets are
    made), each pixel takes the bilinear value at its centre (zero beyond the grid's outer cell
    centres, fading to the box edge) and is set where that exceeds ``threshold``."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 4:
        probs = probs[:, 0]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if boxes.shape[0] != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} masks but {boxes.shape[0]} boxes")
    m = probs.shape[-1] if probs.shape[0] else 0
    for i, (bx1, by1, bx2, by2) in enumerate(boxes.tolist()):
        span_w, span_h = max(bx2 + 1 - bx1, 1e-6), max(by2 + 1 - by1, 1e-6)
        # pixels whose centre lies inside the box span (beyond it the value is below 0.5 of the edge cell)
        x0, x1 = max(int(np.ceil(bx1 - 0.5)), 0), min(int(np.floor(bx2 + 0.5)) + 1, width)
        y0, y1 = max(int(np.ceil(by1 - 0.5)), 0), min(int(np.floor(by2 + 0.5)) + 1, height)
        if x1 <= x0 or y1 <= y0 or not np.isfinite([span_w, span_h]).all():
            continue
        # crop pixel (c, r) -> grid position u = (x0 + c + 0.5 - bx1) * M / span_w - 0.5 (cell centres at integers)
        sx, sy = m / span_w, m / span_h
        inverse = np.array([[sx, 0.0, (x0 + 0.5 - bx1) * sx - 0.5], [0.0, sy, (y0 + 0.5 - by1) * sy - 0.5]])
        crop = cv2.warpAffine(
            probs[i],
            inverse,
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )
        yield i, x0, x1, y0, y1, crop > threshold


def _crops(probs, boxes, height, width, threshold, padding, paste):
    """The crops of ``paste`` (one of MASK_PASTES)."""
    if paste == "subpixel":
        return _subpixel_crops(probs, boxes, height, width, threshold)
    resize = _resize_pil if paste == "original" else _resize_cv2
    return _visible_crops(probs, boxes, height, width, threshold, padding, resize)


def _mask_count(probs, boxes):
    probs = np.asarray(probs)
    n = probs.shape[0] if probs.ndim else 0
    if np.asarray(boxes).reshape(-1, 4).shape[0] != n:
        raise ValueError(f"{n} masks but {np.asarray(boxes).reshape(-1, 4).shape[0]} boxes")
    return n


def _paste(probs, boxes, height, width, threshold, padding, paste, return_areas):
    n = _mask_count(probs, boxes)
    # Stored mask by mask, each column-major: the [N, H, W] view returned is then already the
    # Fortran-ordered [H, W, N] that COCO RLE encoding reads, so encode_masks copies nothing
    # (the transposing copy cost twice as much as the encoding itself).
    columns_first = np.zeros((n, width, height), dtype=np.uint8)
    areas = np.zeros(n, dtype=np.int64)
    for i, x0, x1, y0, y1, crop in _crops(probs, boxes, height, width, threshold, padding, paste):
        columns_first[i, x0:x1, y0:y1] = crop.T
        areas[i] = np.count_nonzero(crop)
    masks = columns_first.transpose(0, 2, 1)
    return (masks, areas) if return_areas else masks


def paste_masks(probs, boxes, height, width, threshold=0.5, padding=1, return_areas=False):
    """Paste mask probabilities into a (height, width) image, exactly like the original Masker.

    probs: float32 [N,M,M] (or [N,1,M,M]) sigmoid probabilities for each box's class.
    boxes: float32 [N,4] xyxy in the coordinates of the target image.
    Returns uint8 [N,height,width] with values 0/1 (1 where the resized prob > threshold); each
    mask is stored column-major (a transposed view), the layout ``encode_masks`` needs.
    ``return_areas``: (masks, int64 [N] pixel counts).
    """
    return _paste(probs, boxes, height, width, threshold, padding, "original", return_areas)


def paste_masks_seed(probs, boxes, height, width, threshold=0.5, padding=1, return_areas=False):
    """``paste_masks`` with ``cv2.resize`` instead of PIL: the original's geometry, OpenCV's bilinear.

    Not the seed's paste, despite the name (kept for compatibility): the seed also rounds the
    box and drops its last row and column (:func:`retinamask.decode.seed_convention.seed_paste_masks`).
    Same shapes and dtypes as ``paste_masks``. OpenCV's bilinear does not antialias when
    shrinking, so masks of boxes smaller than the padded mask (30 px) can differ from the
    original's by a few border pixels.
    """
    return _paste(probs, boxes, height, width, threshold, padding, "seed", return_areas)


def paste_masks_subpixel(probs, boxes, height, width, threshold=0.5, padding=1, return_areas=False):
    """``paste_masks`` without the original's integer box: each pixel samples the mask at its centre
    (``_subpixel_crops``; ``padding`` is unused, there for the same signature); same shapes and dtypes.
    Not the original's numbers: on the shapes demo split perfect 28 x 28 masks give segm mAP 0.999 this
    way, 0.781 through the original's paste (benchmarks/mask_ceiling.py)."""
    return _paste(probs, boxes, height, width, threshold, padding, "subpixel", return_areas)


def paste_function(paste):
    """The full-image paste named ``paste`` (one of MASK_PASTES): ``paste_masks``, ``paste_masks_seed``
    or ``paste_masks_subpixel``, all ``f(probs, boxes, height, width, threshold, padding, return_areas)``."""
    pastes = {"original": paste_masks, "seed": paste_masks_seed, "subpixel": paste_masks_subpixel}
    if paste not in pastes:
        raise ValueError(f"mask_paste must be one of {MASK_PASTES}, got {paste!r}")
    return pastes[paste]


def mask_extent(mask):
    """(y0, y1, x0, x1): the rows and columns of a [H, W] mask's nonzero pixels (a half-open box), or None
    for an empty mask. Two reductions over the mask, so that work on it can stay within the box."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    rows = np.flatnonzero(mask[:, x0:x1].any(axis=1))
    return int(rows[0]), int(rows[-1]) + 1, x0, x1


def encode_masks(masks):
    """COCO RLE of each mask: uint8 [N,H,W] -> list of N {"size": [H,W], "counts": str}.

    Masks from ``paste_masks`` are encoded in place; any other layout is copied once.
    """
    masks = np.asarray(masks, dtype=np.uint8)
    if masks.shape[0] == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles


def paste_and_encode_masks(probs, boxes, height, width, threshold=0.5, padding=1, paste="original", return_areas=False):
    """``encode_masks(paste_masks(...))`` without the full-image masks: the same RLE strings.

    COCO RLE runs down the columns, so a mask is zeros up to its box's first column, the box's
    columns, then zeros: only the box's columns are scanned (a 100-px box in a 640x480 image is
    a sixth of the pixels), and no [N, H, W] array is allocated. ``paste``: "original" (PIL,
    as ``paste_masks``), "seed" (cv2, as ``paste_masks_seed``) or "subpixel" (as
    ``paste_masks_subpixel``; ``padding`` unused). Returns a list of N
    {"size": [H, W], "counts": str}; with ``return_areas`` also the masks' int64 [N] pixel
    counts, as ``paste_masks(..., return_areas=True)`` gives them. evaluate's path
    (``decode.coco_results.image_coco_results``), where no full-image mask is needed.
    """
    if paste not in MASK_PASTES:
        raise ValueError(f"paste must be one of {MASK_PASTES}, got {paste!r}")
    n = _mask_count(probs, boxes)
    counts = [[height * width] for _ in range(n)]  # all zeros unless a visible crop says otherwise
    areas = np.zeros(n, dtype=np.int64)
    for i, x0, x1, y0, y1, crop in _crops(probs, boxes, height, width, threshold, padding, paste):
        counts[i] = _band_runs(crop, x0, x1, y0, y1, height, width)
        areas[i] = np.count_nonzero(crop)
    rles = []
    if n:
        rles = mask_util.frPyObjects([{"size": [height, width], "counts": c} for c in counts], height, width)
        for rle in rles:
            rle["counts"] = rle["counts"].decode("utf-8")
    return (rles, areas) if return_areas else rles


def _band_runs(crop, x0, x1, y0, y1, height, width):
    """Uncompressed COCO RLE runs (zeros first) of a [height, width] mask that is zero outside the
    columns [x0, x1) and holds ``crop`` (bool [y1 - y0, x1 - x0]) in rows [y0, y1) of them."""
    band = np.zeros((x1 - x0, height), dtype=np.uint8)  # the box's columns, column-major
    band[:, y0:y1] = crop.T
    flat = band.reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    if flat[0]:  # RLE starts with a (possibly empty) run of zeros
        runs.insert(0, 0)
    runs[0] += x0 * height
    after = (width - x1) * height
    if len(runs) % 2:  # ends with zeros
        runs[-1] += after
    elif after:
        runs.append(after)
    return runs
