"""classwise_nms against torchvision.ops.batched_nms given x2+1, y2+1 (the +1 geometry)."""

import numpy as np
import pytest

from retinamask.ops.nms import classwise_nms


def _torchvision_keep(boxes, scores, labels, iou_threshold):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    corners = torch.from_numpy(np.array(boxes, dtype=np.float32))
    corners[:, 2:] += 1
    keep = torchvision.ops.batched_nms(
        corners,
        torch.from_numpy(np.asarray(scores, np.float32)),
        torch.from_numpy(np.asarray(labels, np.int64)),
        iou_threshold,
    )
    return keep.numpy()


def _by_score_then_index(keep, scores):
    return keep[np.lexsort((keep, -scores[keep]))]


def _random_case(rng, n, num_classes, integer_coords, tied_scores):
    xy = rng.uniform(-20, 1344, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 300, (n, 2))], axis=1).astype(np.float32)
    if integer_coords:
        boxes = np.round(boxes)
    scores = rng.uniform(0, 1, n)
    if tied_scores:
        scores = np.round(scores * 20) / 20
    labels = rng.integers(1, num_classes + 1, n)
    return boxes, scores.astype(np.float32), labels


@pytest.mark.parametrize("seed", range(12))
def test_matches_torchvision_batched_nms_on_random_boxes(seed):
    rng = np.random.default_rng(seed)
    for n, num_classes in [(1000, 80), (1000, 3), (300, 1), (2500, 80)]:
        case = _random_case(rng, n, num_classes, integer_coords=seed % 2 == 0, tied_scores=seed % 3 == 0)
        _boxes, scores, _labels = case
        keep = classwise_nms(*case, iou_threshold=0.4, max_detections=n)
        expected = _torchvision_keep(*case, 0.4)
        assert len(expected) < n  # suppression happened
        # Same boxes kept; torchvision's order among equal scores is unspecified, ours is by index.
        np.testing.assert_array_equal(keep, _by_score_then_index(expected, scores))


def test_float32_iou_exactly_at_the_threshold_is_suppressed_like_torchvision():
    # With +1 the first box is 10x10 = 100 px; the second lies inside it with 40 px: IoU = 0.4 exactly.
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 3], [0, 0, 9, 2]], dtype=np.float32)
    labels = np.array([1, 1, 2])
    for second in (1, 2):
        subset = [0, second]
        keep = classwise_nms(boxes[subset], np.array([0.9, 0.5], np.float32), np.array([1, 1]), 0.4)
        expected = _torchvision_keep(boxes[subset], [0.9, 0.5], [1, 1], 0.4)
        np.testing.assert_array_equal(keep, expected)
        # IoU 0.4 (float32 0.4 > 0.4) is suppressed; IoU 0.3 is kept
        assert keep.tolist() == ([0] if second == 1 else [0, 1])
    # different labels never suppress each other
    assert sorted(classwise_nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), labels, 0.1).tolist()) == [0, 2]


def test_equal_scores_keep_the_lower_index():
    boxes = np.array([[0, 0, 50, 50], [5, 10, 300, 300], [0, 0, 50, 50], [1, 1, 51, 51]], dtype=np.float32)
    scores = np.full(4, 0.5, dtype=np.float32)
    labels = np.array([7, 3, 7, 7])
    keep = classwise_nms(boxes, scores, labels)
    assert keep.tolist() == [0, 1]
    assert sorted(_torchvision_keep(boxes, scores, labels, 0.4).tolist()) == [0, 1]


def test_max_detections_keeps_the_highest_scores_in_order():
    rng = np.random.default_rng(5)
    boxes, scores, labels = _random_case(rng, 1000, 80, integer_coords=False, tied_scores=False)
    keep = classwise_nms(boxes, scores, labels, 0.4, max_detections=100)
    everything = classwise_nms(boxes, scores, labels, 0.4, max_detections=1000)
    assert len(everything) > 100
    np.testing.assert_array_equal(keep, everything[:100])
    assert (np.diff(scores[keep]) <= 0).all()


def test_degenerate_inputs():
    assert classwise_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)).tolist() == []
    # zero-size boxes are 1x1 pixel under the +1 convention: identical ones suppress each other
    keep = classwise_nms(np.zeros((3, 4)), np.array([0.1, 0.3, 0.2]), np.ones(3, int))
    assert keep.tolist() == [1]
    with pytest.raises(ValueError):
        classwise_nms(np.zeros((3, 4)), np.zeros(2), np.zeros(3, int))
