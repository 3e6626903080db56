"""The PyTorch model against outputs of the original RetinaMask (shared/reference)."""

import json

import numpy as np
import pytest
import torch

from benchmarks.reference import match_detections
from retinamask.modeling.poolers import map_levels

LEVELS = (3, 4, 5, 6, 7)


@pytest.fixture(scope="module")
def direct_run(reference_model, reference_npz):
    x = torch.from_numpy(reference_npz["direct_input_bgr_minus_mean"])
    size = tuple(int(v) for v in reference_npz["direct_input_image_size_hw"])
    with torch.no_grad():
        features = reference_model.backbone(x)
        anchors, logits, regression = reference_model.rpn(features)
        candidates = reference_model.rpn.postprocessor.candidates(anchors, logits, regression, [size])[0]
        det100 = reference_model.rpn.postprocessor(anchors, logits, regression, [size])[0]
        detections = reference_model(x, [size])[0]
    return dict(
        features=features,
        anchors=anchors,
        logits=logits,
        regression=regression,
        candidates=candidates,
        det100=det100,
        detections=detections,
    )


def _close(ours, ref, tol=1e-4):
    """max |a - b| <= tol * max(1, |b|), elementwise (absolute for small values, relative for large)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    excess = np.abs(ours - ref) - tol * np.maximum(1.0, np.abs(ref))
    assert excess.max() <= 0, f"max |delta| {np.abs(ours - ref).max():.3g}"


def test_state_dict_matches_the_original_key_list(reference_model, reference_dir):
    spec = json.loads((reference_dir / "retinamask_R-50-FPN_state_dict_spec.json").read_text())
    state = reference_model.state_dict()
    assert [name for name, _, _ in spec] == list(state)
    assert all(list(state[name].shape) == shape for name, shape, _ in spec)
    assert sum(v.numel() for v in state.values()) == 36_536_761


@pytest.mark.parametrize("level", LEVELS)
def test_fpn_logits_regression_and_anchors_per_level(direct_run, reference_npz, level):
    i = LEVELS.index(level)
    _close(direct_run["features"][i], reference_npz[f"direct_fpn_P{level}"])
    _close(direct_run["logits"][i], reference_npz[f"direct_cls_logits_P{level}"])
    _close(direct_run["regression"][i], reference_npz[f"direct_bbox_reg_P{level}"])
    np.testing.assert_array_equal(direct_run["anchors"][i].numpy(), reference_npz[f"direct_anchors_P{level}"])


def test_pre_nms_candidates_are_the_originals(direct_run, reference_npz):
    cand = direct_run["candidates"]
    order = torch.argsort(cand["levels"] * 10**9 + cand["anchor_index"] * 100 + cand["labels"])
    # stored levels are 0-based in ours (P3 = 0); the reference stores 3..7
    np.testing.assert_array_equal(cand["levels"][order].numpy() + 3, reference_npz["direct_cand_level"])
    np.testing.assert_array_equal(cand["anchor_index"][order].numpy(), reference_npz["direct_cand_anchor_index"])
    np.testing.assert_array_equal(cand["labels"][order].numpy(), reference_npz["direct_cand_label"])
    _close(cand["scores"][order], reference_npz["direct_cand_score"])
    # Boxes are decoded from regression that may differ by 1e-4 between CPUs (other SIMD paths);
    # exp() and anchors of up to ~800 px turn that into a few thousandths of a pixel.
    np.testing.assert_allclose(cand["boxes"][order].numpy(), reference_npz["direct_cand_box_xyxy"], rtol=0, atol=0.01)


def _match(ours, ref_boxes, ref_labels, ref_scores):
    """Every reference detection matched by one of ours (same label, IoU >= 0.99, |dscore| <= 1e-4),
    one to one, and none of ours left over (benchmarks.reference's rules). Returns our index for each
    reference row."""
    assert len(ours["boxes"]) == len(ref_boxes), "number of detections differs"
    match = match_detections(ours, ref_boxes, ref_labels, ref_scores)
    for r, j in enumerate(match.ours_index):
        assert j >= 0, f"reference detection {r} ({ref_labels[r]}, {ref_boxes[r].tolist()}) has no match"
    assert match.complete
    return match.ours_index


def test_post_nms_top100_detections(direct_run, reference_npz):
    _match(
        direct_run["det100"],
        reference_npz["direct_det100_boxes_xyxy"],
        reference_npz["direct_det100_labels"],
        reference_npz["direct_det100_scores"],
    )


def test_final_detections_and_mask_probabilities(direct_run, reference_npz):
    det = direct_run["detections"]
    matched = _match(
        det,
        reference_npz["direct_det_boxes_xyxy"],
        reference_npz["direct_det_labels"],
        reference_npz["direct_det_scores"],
    )
    assert np.abs(det["mask_probs"][matched].numpy() - reference_npz["direct_mask_probs_28x28"]).max() <= 1e-3
    np.testing.assert_array_equal(det["mask_levels"][matched].numpy(), reference_npz["direct_mask_pooler_levels"])


def test_mask_head_on_probe_boxes_covers_levels_and_plus_one_boundaries(reference_model, direct_run, reference_npz):
    boxes = torch.from_numpy(reference_npz["direct_probe_boxes_xyxy"])
    labels = torch.from_numpy(reference_npz["direct_probe_labels"])
    rois = torch.cat((torch.zeros(len(boxes), 1), boxes), dim=1)
    with torch.no_grad():
        logits = reference_model.mask(direct_run["features"], rois, labels)
    np.testing.assert_array_equal(map_levels(boxes).numpy(), reference_npz["direct_probe_mask_pooler_levels"])
    assert np.abs(logits.sigmoid().numpy() - reference_npz["direct_probe_mask_probs_28x28"]).max() <= 1e-3
    _close(logits, reference_npz["direct_probe_mask_logits_28x28"], tol=1e-3)


def test_level_mapping_uses_plus_one_areas():
    # w = h = 224 maps to P4 only because of the +1 (225 px); 223.5 falls to P3.
    boxes = torch.tensor(
        [
            [0.0, 0.0, 223.0, 223.0],
            [0.0, 0.0, 222.5, 222.5],
            [0.0, 0.0, 447.0, 447.0],
            [0.0, 0.0, 2000.0, 2000.0],
            [5.0, 5.0, 5.0, 5.0],
        ]
    )
    assert map_levels(boxes).tolist() == [4, 3, 5, 5, 3]


def test_predictor_end_to_end_from_the_png(reference_model, reference_dir, reference_npz):
    """The original pipeline from the PNG: resize to 800, model, boxes and masks at the original size."""
    from pycocotools import mask as mask_util

    from retinamask.config import load_config
    from retinamask.engine.predictor import Predictor

    predictor = Predictor(reference_model, load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms"))
    result = predictor(reference_dir / "image_A_256x320.png")
    assert result.image_hw == (256, 320)
    ref_boxes = reference_npz["e2e_det_boxes_xyxy_orig"]
    ours = {
        "boxes": torch.from_numpy(result.boxes),
        "labels": torch.from_numpy(result.labels),
        "scores": torch.from_numpy(result.scores),
    }
    matched = _match(ours, ref_boxes, reference_npz["e2e_det_labels"], reference_npz["e2e_det_scores"])
    assert np.abs(result.mask_probs[matched] - reference_npz["e2e_mask_probs_28x28"]).max() <= 1e-3
    for ours_mask, ref_mask in zip(result.masks[matched], reference_npz["e2e_masks_pasted_uint8"]):
        inter = np.logical_and(ours_mask, ref_mask).sum()
        union = np.logical_or(ours_mask, ref_mask).sum()
        assert union == 0 or inter / union >= 0.99
    rle = mask_util.encode(np.asfortranarray(result.masks[matched][0]))
    assert rle["counts"].decode() == reference_npz["e2e_mask_rle_counts"][0]
    assert result.class_names[0] in predictor.class_names
