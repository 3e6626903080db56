"""paste_and_encode_masks: the same RLE strings as encode_masks(paste_masks(...)), without full-image
masks (the evaluation's speed path); and paste_masks' column-major layout encodes without a copy."""

import numpy as np
import pytest

from retinamask.ops.masks import encode_masks, paste_and_encode_masks, paste_masks, paste_masks_seed


def _random_case(rng):
    height, width = int(rng.integers(10, 400)), int(rng.integers(10, 400))
    n = int(rng.integers(1, 30))
    x0, y0 = rng.uniform(-60, width, n), rng.uniform(-60, height, n)
    sizes = np.exp(rng.uniform(np.log(0.3), np.log(700), (2, n)))
    boxes = np.stack([x0, y0, x0 + sizes[0], y0 + sizes[1]], 1).astype(np.float32)
    boxes[0] = 0  # degenerate box at the corner
    yy, xx = (np.mgrid[0:28, 0:28] + 0.5) / 14 - 1
    smooth = 1 / (1 + np.exp(-6 * (1 - np.sqrt(xx**2 + yy**2))))
    probs = np.where(rng.random((n, 1, 1)) < 0.5, smooth, rng.uniform(0, 1, (n, 28, 28))).astype(np.float32)
    probs[min(1, n - 1)] = 1.0  # a mask that fills its box, touching the box's edges
    return probs, boxes, height, width


@pytest.mark.parametrize("paste, paste_fn", [("original", paste_masks), ("seed", paste_masks_seed)])
def test_fused_rle_equals_paste_then_encode(paste, paste_fn):
    rng = np.random.default_rng(7)
    for _ in range(40):
        probs, boxes, height, width = _random_case(rng)
        expected = encode_masks(paste_fn(probs, boxes, height, width))
        assert paste_and_encode_masks(probs, boxes, height, width, paste=paste) == expected
        assert paste_and_encode_masks(probs[:, None], boxes, height, width, paste=paste) == expected  # [N,1,M,M]


def test_fused_rle_gives_the_original_rle_strings(reference_npz):
    for probs_key, boxes_key, size_key, rle_key in (
        (
            "direct_probe_mask_probs_28x28",
            "direct_probe_boxes_xyxy",
            "direct_input_image_size_hw",
            "direct_probe_mask_rle_counts",
        ),
        (
            "e2e_probe_mask_probs_28x28",
            "e2e_probe_boxes_xyxy_orig",
            "e2e_mask_rle_size_hw",
            "e2e_probe_mask_rle_counts",
        ),
    ):
        height, width = (int(v) for v in reference_npz[size_key])
        rles = paste_and_encode_masks(reference_npz[probs_key], reference_npz[boxes_key], height, width)
        assert [r["counts"] for r in rles] == reference_npz[rle_key].tolist()


def test_fused_edge_cases():
    assert paste_and_encode_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4)), 5, 7) == []
    outside = paste_and_encode_masks(np.ones((1, 28, 28), np.float32), np.array([[50, 50, 60, 60]]), 10, 10)
    assert outside == encode_masks(np.zeros((1, 10, 10), np.uint8))
    with pytest.raises(ValueError, match="2 masks but 1 boxes"):
        paste_and_encode_masks(np.zeros((2, 28, 28), np.float32), np.zeros((1, 4)), 5, 5)
    with pytest.raises(ValueError, match="paste must be"):
        paste_and_encode_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4)), 5, 5, paste="pil")


def test_pasted_masks_are_laid_out_for_rle_without_a_copy():
    probs = np.ones((3, 28, 28), np.float32)
    masks = paste_masks(probs, np.array([[1, 1, 8, 8], [0, 0, 3, 9], [5, 2, 9, 6]], np.float32), 12, 10)
    assert masks.shape == (3, 12, 10) and masks.dtype == np.uint8
    assert masks.transpose(1, 2, 0).flags["F_CONTIGUOUS"]
    assert np.shares_memory(np.asfortranarray(masks.transpose(1, 2, 0)), masks)
