"""Overlay drawing: masks, boxes, class names and scores on the image (OpenCV, torch-free)."""

import colorsys

import cv2
import numpy as np

from retinamask.ops.masks import mask_extent


def class_colour(label):
    """A stable, well-separated RGB colour for a label (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


MIN_OVERLAY_SIDE = 800  # small images are drawn scaled up to this long side, so that labels stay readable


def draw_prediction(
    image_rgb,
    prediction,
    score_threshold=0.3,
    alpha=0.45,
    min_side=MIN_OVERLAY_SIDE,
    show_scores=True,
    track_ids=None,
):
    """uint8 [H, W, 3] RGB + Detections -> uint8 [H', W', 3] RGB overlay (the input is not modified).

    An image whose long side is under ``min_side`` is drawn scaled up by an integer factor
    (H' = f * H), so boxes, labels and masks of small images stay legible. Labels are placed
    best detection first and never cover one another (above the box, inside its top, below
    it, then moved down until free). Labels read "class score", or "class" without
    ``show_scores`` (e.g. for ground truth). ``track_ids`` (int [N], -1 untracked): a tracked
    detection is coloured by its track (the same colour in every frame) and labelled "class score #id".
    """
    colours = [_colour(prediction, i, track_ids) for i in range(len(prediction))]
    factor = max(1, int(np.ceil(min_side / max(image_rgb.shape[:2])))) if min_side else 1
    canvas = image_rgb.copy()
    if factor > 1:
        canvas = cv2.resize(canvas, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    keep = [i for i in range(len(prediction)) if prediction.scores[i] >= score_threshold]
    keep.sort(key=lambda i: -float(prediction.scores[i]))
    for i in reversed(keep):  # best detections drawn last, on top
        _blend_mask(canvas, prediction.masks[i], colours[i], alpha, factor)
    thickness = max(1, round(max(canvas.shape[:2]) / 500))
    boxes = [tuple(round(v * factor) for v in prediction.boxes[i]) for i in keep]
    for i, (x1, y1, x2, y2) in zip(reversed(keep), reversed(boxes)):
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colours[i], thickness)
    scale = 0.45 * thickness
    texts = [_label_text(prediction, i, show_scores, track_ids) for i in keep]
    for i, text, (x1, y1, x2, y2) in zip(keep, texts, layout_labels(texts, boxes, canvas.shape[:2], scale)):
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colours[i], -1)
        baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[1]
        cv2.putText(
            canvas, text, (x1 + 2, y2 - 2 - baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA
        )
    return canvas


def _blend_mask(canvas, mask, colour, alpha, factor):
    """Blend ``colour`` into ``canvas`` (drawn ``factor`` times the mask's size) where ``mask`` is set, within
    the mask's extent only (a frame's many small masks cost their boxes, not the frame each)."""
    extent = mask_extent(mask)
    if extent is None:
        return
    y0, y1, x0, x1 = extent
    crop = mask[y0:y1, x0:x1].astype(np.uint8)
    if factor > 1:
        crop = cv2.resize(crop, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    region = canvas[y0 * factor : y1 * factor, x0 * factor : x1 * factor]
    inside = crop.astype(bool)
    region[inside] = (region[inside] * (1 - alpha) + np.asarray(colour, np.float32) * alpha).astype(np.uint8)


def _colour(prediction, i, track_ids):
    """Detection i's RGB colour: its track's when tracked (track_ids[i] >= 1), else its class's."""
    if track_ids is not None and track_ids[i] >= 1:
        return class_colour(int(track_ids[i]) + 7)  # offset: track 1 is not coloured as class 1
    return class_colour(int(prediction.labels[i]))


def _label_text(prediction, i, show_scores, track_ids):
    text = str(prediction.class_names[i])
    if show_scores:
        text += f" {prediction.scores[i]:.2f}"
    if track_ids is not None and track_ids[i] >= 1:
        text += f" #{int(track_ids[i])}"
    return text


def layout_labels(texts, boxes, canvas_hw, scale):
    """Label rectangles (x1, y1, x2, y2), one per text, for boxes in priority order: each
    overlaps no earlier label (unless the canvas has no free spot left near its box)."""
    placed = []
    for text, box in zip(texts, boxes):
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        width, height = tw + 4, th + baseline + 4
        x, y = _free_label_spot(box, width, height, placed, canvas_hw)
        placed.append((x, y, x + width, y + height))
    return placed


def _free_label_spot(box, width, height, placed, canvas_hw):
    """Top-left corner for a width x height label of ``box`` that overlaps no ``placed`` label:
    above the box, inside its top edge, below it, then further down in label-height steps."""
    x1, y1, _x2, y2 = box
    canvas_h, canvas_w = canvas_hw
    x = min(max(x1, 0), max(canvas_w - width, 0))
    candidates = (
        [y1 - height, y1, y2] + [y2 + k * height for k in range(1, 40)] + [y1 - k * height for k in range(2, 40)]
    )
    for y in candidates:
        if y < 0 or y + height > canvas_h:
            continue
        if not any(x < px2 and px1 < x + width and y < py2 and py1 < y + height for px1, py1, px2, py2 in placed):
            return x, y
    return x, min(max(y1 - height, 0), max(canvas_h - height, 0))  # nowhere free: above the box


def overlay_png(image_rgb, prediction, score_threshold=0.3):
    """:func:`draw_prediction` encoded as PNG bytes (what ``predict`` writes and ``serve`` answers)."""
    overlay = draw_prediction(image_rgb, prediction, score_threshold)
    ok, data = cv2.imencode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def write_overlay(path, image_rgb, prediction, score_threshold=0.3):
    """Draw and write a PNG atomically."""
    from retinamask.core.fileio import atomic_write_bytes

    atomic_write_bytes(path, overlay_png(image_rgb, prediction, score_threshold))
