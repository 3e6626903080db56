"""Mask pasting and RLE against the original RetinaMask's outputs (reference NPZ)."""

import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest

from retinamask.ops.masks import encode_masks, expand_boxes_int, paste_masks, paste_masks_seed

# (probs key, boxes key, image size key or fixed (h, w), pasted key, rle key)
REFERENCE_CASES = {
    "direct": (
        "direct_mask_probs_28x28",
        "direct_det_boxes_xyxy",
        "direct_input_image_size_hw",
        "direct_masks_pasted_uint8",
        "direct_mask_rle_counts",
    ),
    "direct_probe": (
        "direct_probe_mask_probs_28x28",
        "direct_probe_boxes_xyxy",
        "direct_input_image_size_hw",
        "direct_probe_masks_pasted_uint8",
        "direct_probe_mask_rle_counts",
    ),
    "e2e": (
        "e2e_mask_probs_28x28",
        "e2e_det_boxes_xyxy_orig",
        "e2e_mask_rle_size_hw",
        "e2e_masks_pasted_uint8",
        "e2e_mask_rle_counts",
    ),
    "e2e_probe": (
        "e2e_probe_mask_probs_28x28",
        "e2e_probe_boxes_xyxy_orig",
        "e2e_mask_rle_size_hw",
        "e2e_probe_masks_pasted_uint8",
        "e2e_probe_mask_rle_counts",
    ),
}


def _case(reference_npz, name):
    probs_key, boxes_key, size_key, pasted_key, rle_key = REFERENCE_CASES[name]
    height, width = (int(v) for v in reference_npz[size_key])
    return (
        reference_npz[probs_key],
        reference_npz[boxes_key],
        height,
        width,
        reference_npz[pasted_key],
        reference_npz[rle_key],
    )


@pytest.mark.parametrize("name", sorted(REFERENCE_CASES))
def test_paste_masks_is_bit_exact_against_the_original_masker(reference_npz, name):
    probs, boxes, height, width, expected, _ = _case(reference_npz, name)
    assert (height, width) == (256, 320)
    pasted = paste_masks(probs, boxes, height, width)
    assert pasted.dtype == np.uint8 and pasted.shape == expected.shape
    assert expected.any(axis=(1, 2)).sum() >= 6  # the comparison covers real, non-empty masks
    mismatched_pixels = (pasted != expected).sum(axis=(1, 2))
    assert mismatched_pixels.tolist() == [0] * len(expected)


@pytest.mark.parametrize("name", sorted(REFERENCE_CASES))
def test_encode_masks_gives_the_original_rle_strings(reference_npz, name):
    probs, boxes, height, width, _, expected_counts = _case(reference_npz, name)
    rles = encode_masks(paste_masks(probs, boxes, height, width))
    assert [rle["counts"] for rle in rles] == expected_counts.tolist()
    assert all(rle["size"] == [height, width] for rle in rles)
    assert all(isinstance(rle["counts"], str) for rle in rles)


def test_probe_boxes_cover_the_edge_cases(reference_npz):
    """Guard that the probe comparison above exercises clipping and the degenerate box."""
    boxes = reference_npz["direct_probe_boxes_xyxy"]
    assert (boxes[:, :2] < 0).any() and (boxes[:, 2] > 319).any()
    assert (boxes == 0).all(axis=1).any()


def test_seed_variant_matches_on_boxes_larger_than_the_padded_mask(reference_npz):
    """cv2 and PIL bilinear agree when upsampling (PIL antialiases only when shrinking)."""
    probs, boxes, height, width, expected, _ = _case(reference_npz, "e2e_probe")
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    large = (widths > 40) & (heights > 40)
    assert large.sum() >= 3
    pasted = paste_masks_seed(probs[large], boxes[large], height, width)
    reference = expected[large].astype(bool)
    intersection = (pasted.astype(bool) & reference).sum(axis=(1, 2))
    union = (pasted.astype(bool) | reference).sum(axis=(1, 2))
    assert (union > 0).all()
    assert (intersection / union).min() >= 0.99


def test_seed_variant_uses_opencv_bilinear_on_the_same_box():
    import cv2

    probs = np.random.default_rng(3).uniform(0, 1, (1, 28, 28)).astype(np.float32)
    box = np.array([[20.0, 30.0, 120.0, 90.0]], dtype=np.float32)
    x0, y0, x1, y1 = expand_boxes_int(box, 30 / 28)[0]
    padded = np.pad(probs[0], 1)
    expected = np.zeros((150, 200), dtype=np.uint8)
    resized = cv2.resize(padded, (int(x1 - x0 + 1), int(y1 - y0 + 1)), interpolation=cv2.INTER_LINEAR)
    expected[y0 : y1 + 1, x0 : x1 + 1] = resized > 0.5
    np.testing.assert_array_equal(paste_masks_seed(probs, box, 150, 200)[0], expected)


def test_expanded_box_uses_float32_half_sizes_without_plus_one_and_truncates_toward_zero():
    boxes = np.array([[10.3, 12.7, 60.9, 70.2], [-20.0, -10.0, 3.0, 5.0], [0, 0, 0, 0]], dtype=np.float32)
    torch = pytest.importorskip("torch")
    # the original expand_boxes + .to(torch.int32), written out with torch as the oracle
    t = torch.from_numpy(boxes)
    w_half, h_half = (t[:, 2] - t[:, 0]) * 0.5, (t[:, 3] - t[:, 1]) * 0.5
    x_c, y_c = (t[:, 2] + t[:, 0]) * 0.5, (t[:, 3] + t[:, 1]) * 0.5
    w_half *= 30 / 28
    h_half *= 30 / 28
    expected = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1).to(torch.int32)
    np.testing.assert_array_equal(expand_boxes_int(boxes, 30 / 28), expected.numpy())
    assert expand_boxes_int(boxes, 30 / 28)[1, 0] == -20  # -8.5 - 12.32 = -20.82 truncates toward zero


def test_boxes_outside_the_image_paste_nothing_and_accept_n1mm_layout():
    probs = np.ones((3, 1, 28, 28), dtype=np.float32)
    boxes = np.array([[-50, -50, -10, -10], [400, 10, 500, 50], [5, 5, 20, 20]], dtype=np.float32)
    pasted = paste_masks(probs, boxes, 64, 64)
    assert pasted[0].sum() == 0 and pasted[1].sum() == 0
    assert pasted[2].sum() > 0 and pasted[2, :4].sum() == 0  # clipped to the expanded box


def test_empty_inputs():
    assert paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), 10, 12).shape == (0, 10, 12)
    assert encode_masks(np.zeros((0, 10, 12), np.uint8)) == []


def test_encode_masks_round_trips_through_pycocotools():
    masks = (np.random.default_rng(0).uniform(size=(4, 17, 23)) > 0.6).astype(np.uint8)
    decoded = mask_util.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in encode_masks(masks)])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), masks)


def test_evaluation_package_does_not_import_torch():
    code = (
        "import sys; import retinamask.ops.masks, retinamask.ops.nms, retinamask.evaluation.coco_eval; "
        "import retinamask.evaluation; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
