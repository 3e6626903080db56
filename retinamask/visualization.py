"""Overlay drawing: masks, boxes, class names and scores on the image (OpenCV, torch-free)."""

import colorsys

import cv2
import numpy as np


def class_colour(label):
    """A stable, well-separated RGB colour for a label (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_prediction(image_rgb, prediction, score_threshold=0.3, alpha=0.45):
    """uint8 [H, W, 3] RGB + Prediction -> uint8 [H, W, 3] RGB overlay (the input is not modified)."""
    canvas = image_rgb.copy()
    keep = [i for i in range(len(prediction)) if prediction.scores[i] >= score_threshold]
    for i in reversed(keep):  # best detections drawn last, on top
        colour = np.array(class_colour(int(prediction.labels[i])), dtype=np.float32)
        mask = prediction.masks[i].astype(bool)
        canvas[mask] = (canvas[mask] * (1 - alpha) + colour * alpha).astype(np.uint8)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for i in reversed(keep):
        colour = class_colour(int(prediction.labels[i]))
        x1, y1, x2, y2 = (int(round(v)) for v in prediction.boxes[i])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = f"{prediction.class_names[i]} {prediction.scores[i]:.2f}"
        scale = 0.4 * thickness
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1 - th - baseline, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw, top + th + baseline), colour, -1)
        cv2.putText(canvas, text, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def write_overlay(path, image_rgb, prediction, score_threshold=0.3):
    """Draw and write a PNG atomically."""
    from .fileio import atomic_write_bytes

    overlay = draw_prediction(image_rgb, prediction, score_threshold)
    ok, data = cv2.imencode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, data.tobytes())
