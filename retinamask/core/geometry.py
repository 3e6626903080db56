"""The geometry of one image in the model input, and its inverse (no torch).

An :class:`ImageGeometry` holds an image's original size, its resized size (the valid top-left
region of the canvas) and the canvas; :func:`boxes_to_image` maps boxes on the canvas back to the
image -- the one mapping every path uses. The resize policies that make the geometry live in
:mod:`retinamask.core.resize`.
"""

from dataclasses import dataclass

import numpy as np

from retinamask.core.contract import SEED_CANVAS_SIDE


def ceil_to(value, multiple):
    """Smallest multiple of ``multiple`` >= ``value`` (``value`` itself when multiple <= 0)."""
    if multiple <= 0:
        return int(value)
    return -(-int(value) // int(multiple)) * int(multiple)


def upstream_test_size(h, w, min_size=800, max_size=1333):
    """Resized (new_h, new_w) for an h x w image, exactly as maskrcnn-benchmark's
    ``Resize.get_size``: the short side becomes ``min_size`` unless the long side
    would then exceed ``max_size``, in which case the short side becomes
    ``int(round(max_size * short / long))``; the other side is ``int()``-truncated.
    E.g. 256x320 -> 800x1000, 224x352 -> 800x1257, 480x1000 -> 640x1333.
    """
    size = min_size
    if max_size is not None:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = round(max_size * min_original_size / max_original_size)
    if (w <= h and w == size) or (h <= w and h == size):
        return (h, w)
    if w < h:
        return (int(size * h / w), size)
    return (size, int(size * w / h))


def seed_resize_geometry(h, w, canvas_side=SEED_CANVAS_SIDE):
    """The seed transform's resize for an h x w image: ((new_h, new_w), scale).

    ``scale = canvas_side / max(h, w)`` (a Python float), the ratio the seed's
    postprocessing divides boxes by. Rounding: the long side is exactly
    ``canvas_side`` and the short side is ``floor(short * canvas_side / long)``
    computed in exact integer arithmetic, at least 1. The seed computed
    ``min(int(side * scale), canvas_side)`` in floating point, which agrees except
    where rounding error pushes an exact integer just below it: there the seed
    made e.g. a 570-pixel long side 1343 instead of 1344 (115 long sides below
    5000 are affected), and a short side one pixel smaller (e.g. 45 of 60).
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    long_side = max(h, w)
    scale = canvas_side / long_side
    new_h = max(1, (h * canvas_side) // long_side)
    new_w = max(1, (w * canvas_side) // long_side)
    return (new_h, new_w), scale


def boxes_to_image(boxes, image_hw, resized_hw, clip=True):
    """Boxes [N, 4] x1, y1, x2, y2 on the canvas (the image in its top-left ``resized_hw``) ->
    float32 [N, 4] on the original image (``image_hw`` = (h, w)): the inverse of the resize.

    As the original's ``BoxList.resize``, each axis by its own ratio (the short side was rounded
    down): float32 boxes times float32(w / resized_w), float32(h / resized_h). ``clip``: then
    clipped to [0, w - 1] x [0, h - 1], as the seed's route (its graph clipped to the canvas); the
    original's graph clipped to the resized image and it does not clip again (a box may end up to
    one scale step past w - 1): ``ResizePolicy.clip_to_image`` says which.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    (h, w), (resized_h, resized_w) = image_hw, resized_hw
    ratio_w, ratio_h = np.float32(float(w) / float(resized_w)), np.float32(float(h) / float(resized_h))
    boxes = boxes * np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)
    if clip:
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, int(w) - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, int(h) - 1)
    return boxes


@dataclass(frozen=True)
class ImageGeometry:
    """Where one image sits in the model input.

    ``image_hw``: the original (h, w); ``resized_hw``: the valid top-left region of the
    canvas, what the model's ``image_sizes`` holds; ``canvas_hw``: the input tensor's (H, W).
    """

    image_hw: tuple
    resized_hw: tuple
    canvas_hw: tuple

    @property
    def seed_scale(self):
        """The seed's single ratio, long side of the canvas image / long side of the image."""
        return max(self.resized_hw) / max(self.image_hw)

    def boxes_to_image(self, boxes, clip=True):
        """Boxes [N, 4] on the canvas -> float32 [N, 4] on the image: :func:`boxes_to_image`."""
        return boxes_to_image(boxes, self.image_hw, self.resized_hw, clip=clip)

    def to_record(self):
        """The sidecar fields of this geometry (width/height are the image's)."""
        return {
            "width": int(self.image_hw[1]),
            "height": int(self.image_hw[0]),
            "resized_width": int(self.resized_hw[1]),
            "resized_height": int(self.resized_hw[0]),
            "canvas_width": int(self.canvas_hw[1]),
            "canvas_height": int(self.canvas_hw[0]),
            "scale": float(self.seed_scale),
        }
