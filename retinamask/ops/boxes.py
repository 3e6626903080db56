"""Box geometry between the model's input canvas and the original image (no torch)."""

import numpy as np


def rescale_boxes(boxes, from_hw, to_hw):
    """Map xyxy boxes [N, 4] from an image of size ``from_hw`` to one of size ``to_hw``.

    As the original's ``BoxList.resize``: x * (to_w / from_w), y * (to_h / from_h), with the
    ratios computed in double precision and the products in float32. Returns float32 [N, 4].
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    ratio_w = np.float32(float(to_hw[1]) / float(from_hw[1]))
    ratio_h = np.float32(float(to_hw[0]) / float(from_hw[0]))
    return boxes * np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)


def clip_boxes(boxes, height, width):
    """Clip xyxy boxes [N, 4] to [0, width - 1] x [0, height - 1] (float32)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
    return boxes
