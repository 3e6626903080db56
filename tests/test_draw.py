"""Overlay masks: blended exactly where a mask is set, within its extent only, at 1x and scaled up; and the
extent of a mask as its nonzero pixels give it."""

import cv2
import numpy as np
import pytest

from retinamask.core.detections import Detections
from retinamask.ops.draw import class_colour, draw_prediction
from retinamask.ops.masks import mask_extent


def test_mask_extent_is_the_box_of_the_nonzero_pixels():
    rng = np.random.default_rng(0)
    assert mask_extent(np.zeros((40, 50), np.uint8)) is None
    for _ in range(20):
        mask = np.zeros((40, 50), np.uint8)
        y0, x0 = rng.integers(0, 30), rng.integers(0, 40)
        mask[y0 : y0 + rng.integers(1, 10), x0 : x0 + rng.integers(1, 10)] = rng.integers(0, 2, (1, 1)) + 1
        mask[rng.integers(0, 40), rng.integers(0, 50)] = 1  # a stray pixel anywhere
        rows, cols = np.nonzero(mask)
        expected = (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
        assert mask_extent(mask) == expected
        assert mask_extent(np.asfortranarray(mask)) == expected  # pasted masks are stored column-major


def _detections(h, w, masks, boxes):
    n = len(masks)
    return Detections(
        boxes=np.asarray(boxes, np.float32),
        scores=np.full(n, 0.9, np.float32),
        labels=np.arange(1, n + 1),
        class_names=[f"c{i}" for i in range(n)],
        masks=np.asarray(masks, np.uint8),
        image_hw=(h, w),
    )


@pytest.mark.parametrize("factor_side", [0, 800])  # drawn at 1x, and scaled up 2x (a 400-px image)
def test_masks_are_blended_exactly_where_they_are_set(factor_side):
    h, w, alpha = 300, 400, 0.45
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # two ragged masks deep inside big boxes (their outlines and labels far from the masks)
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 120:160, 100:150] = rng.integers(0, 2, (40, 50))
    masks[1, 200:240, 250:330] = rng.integers(0, 2, (40, 80))
    boxes = [(20, 60, 220, 280), (200, 60, 390, 290)]
    overlay = draw_prediction(image, _detections(h, w, masks, boxes), alpha=alpha, min_side=factor_side)
    factor = overlay.shape[0] // h
    assert factor == (2 if factor_side else 1)
    # a small image is drawn on its bilinear enlargement, each mask pixel a factor x factor block
    base = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR) if factor > 1 else image
    blocks = np.ones((factor, factor), np.uint8)
    for i, mask in enumerate(masks):
        colour = np.asarray(class_colour(i + 1), np.float32)
        inside = np.kron(mask, blocks).astype(bool)
        expected = (base[inside] * (1 - alpha) + colour * alpha).astype(np.uint8)
        assert np.array_equal(overlay[inside], expected)
    # around the masks, inside the boxes and away from their outlines and labels: the image as it was
    untouched = np.zeros((h, w), bool)
    untouched[100:180, 60:190] = untouched[190:250, 230:350] = True
    untouched = np.kron(untouched & ~masks.any(axis=0), blocks).astype(bool)
    assert np.array_equal(overlay[untouched], base[untouched])
