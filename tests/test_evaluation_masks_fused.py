"""paste_and_encode_masks: the same RLE strings and areas as encode_masks(paste_masks(...)), without
full-image masks (the route evaluate takes in image_coco_results); and paste_masks' column-major layout
encodes without a copy."""

import json

import numpy as np
import pytest

from retinamask.core.fileio import json_default
from retinamask.decode.coco_results import image_coco_results
from retinamask.decode.outputs import decode_outputs
from retinamask.ops.coco_results import results_from_detections
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
        threshold = float(rng.choice([0.5, 0.2, 0.9]))
        masks, areas = paste_fn(probs, boxes, height, width, threshold=threshold, return_areas=True)
        expected = encode_masks(masks)
        fused, fused_areas = paste_and_encode_masks(
            probs, boxes, height, width, threshold=threshold, paste=paste, return_areas=True
        )
        assert json.dumps(fused) == json.dumps(expected)  # same strings, same key order
        assert fused_areas.dtype == areas.dtype and np.array_equal(fused_areas, areas)
        assert paste_and_encode_masks(probs[:, None], boxes, height, width, threshold=threshold, paste=paste) == (
            expected
        )  # [N,1,M,M]


def _random_outputs(rng, layout, rows, canvas):
    """One image's 4 raw outputs on a canvas ``canvas`` x ``canvas``: boxes partly off the canvas, some
    tiny, some empty; end2end padded with label -1 / score 0 rows."""
    x0, y0 = rng.uniform(-20, canvas, rows), rng.uniform(-20, canvas, rows)
    sizes = np.exp(rng.uniform(np.log(0.2), np.log(canvas), (2, rows)))
    boxes = np.stack([x0, y0, x0 + sizes[0], y0 + sizes[1]], 1).astype(np.float32)
    labels = rng.integers(1, 4, rows).astype(np.int32)
    scores = np.sort(rng.uniform(0.01, 1, rows).astype(np.float32))[::-1].copy()
    masks = rng.uniform(0, 1, (rows, 1, 28, 28)).astype(np.float32)
    masks[::3] = (masks[::3] > 0.3).astype(np.float32)  # hard edges: thresholds meet exact values
    if layout == "end2end":
        padding = rows // 3
        labels[-padding:], scores[-padding:], boxes[-padding:] = -1, 0, 0
    return boxes, labels, scores, masks


@pytest.mark.parametrize("layout", ["end2end", "seed"])
def test_evaluate_fused_route_gives_the_same_results_bytes_as_paste_then_encode(layout):
    """image_coco_results (fused) vs decode_outputs' pasted masks, encode_masks, results_from_detections
    (the route it replaced): the results JSON and mask areas are byte-identical."""
    rng = np.random.default_rng(11)
    category_ids = [2, 5, 11]
    for case in range(24):
        image_hw = (int(rng.integers(20, 300)), int(rng.integers(20, 300)))
        canvas = 128
        scale = canvas / max(image_hw)
        resized_hw = (max(1, int(image_hw[0] * scale)), max(1, int(image_hw[1] * scale)))
        outputs = _random_outputs(rng, layout, int(rng.integers(3, 60)), canvas)
        options = {
            "mask_paste": ("original", "seed")[case % 2],
            "clip": bool(case % 3),
            "mask_threshold": (0.5, 0.3)[case % 4 // 3],
        }
        detections = decode_outputs(outputs, layout, image_hw, resized_hw, num_classes=3, **options)
        expected = results_from_detections(7, detections, category_ids, encode_masks(detections.masks))
        results, areas = image_coco_results(outputs, layout, 7, image_hw, resized_hw, category_ids, **options)
        assert json.dumps(results, default=json_default) == json.dumps(expected, default=json_default)
        assert areas.dtype == detections.mask_areas.dtype and np.array_equal(areas, detections.mask_areas)
        assert len(results) > 0
    no_masks, no_areas = image_coco_results(outputs, layout, 7, image_hw, resized_hw, category_ids, with_masks=False)
    assert no_areas is None and all("segmentation" not in r for r in no_masks)


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
    rles, areas = paste_and_encode_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4)), 5, 7, return_areas=True)
    assert rles == [] and areas.dtype == np.int64 and areas.shape == (0,)
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
