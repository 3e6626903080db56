"""The fast path is the original: R-50 with the reference weights exported with ``--resize original``
(dynamic H/W + image_sizes), run by ``retinamask predict --model`` on ONNX Runtime and OpenVINO fp32
from the reference PNG, reproduces the original pipeline's end-to-end detections (the ``e2e_*``
arrays of ../shared/reference: 256x320 -> 800x1000 resize, padded to 800x1024).

Criteria (issue 10): every reference detection matched (same label, box IoU >= 0.99 with the
original's +1 areas, |d score| <= 1e-4) and >= 95 % of the pasted masks with an identical RLE.
The IoU, the matching and the RLE comparison are written here, independent of the package's own.
"""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

CONFIG = "retinanet_mask_R-50-FPN_2x_adjust_std011_ms"
IMAGE = "image_A_256x320.png"


@pytest.fixture(scope="module")
def original_model(tmp_path_factory, reference_model):
    from retinamask.config import load_config
    from retinamask.export import export_model

    path = tmp_path_factory.mktemp("resize_original") / "r50_original.onnx"
    # K = 50: the original returns its NUM_MASKS_TEST = 50 best detections
    report = export_model(
        reference_model, load_config(CONFIG), path, resize="original", max_detections=50, verify=False
    )
    assert report["resize"]["policy"] == "original" and report["input_size"] is None
    return path


def _iou_plus_one(a, b):
    """[N, 4] x [M, 4] xyxy -> [N, M], inclusive-pixel areas as the original's boxlist_iou."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0, None)
    area = lambda x: (x[..., 2] - x[..., 0] + 1) * (x[..., 3] - x[..., 1] + 1)  # noqa: E731
    inter = iw * ih
    return inter / (area(a) + area(b) - inter)


def _predict(model_path, backend, reference_dir, out_dir):
    from retinamask.cli import main

    code = main(
        [
            "predict",
            "--model",
            str(model_path),
            "--backend",
            backend,
            "--input",
            str(reference_dir / IMAGE),
            "--output",
            str(out_dir),
        ]
    )
    assert code == 0
    return json.loads((out_dir / (IMAGE.rsplit(".", 1)[0] + ".json")).read_text())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_resize_original_export_reproduces_the_original_pipeline(
    original_model, backend, reference_dir, reference_npz, tmp_path
):
    if backend == "openvino":
        pytest.importorskip("openvino")
    from retinamask.formats.model_info import read_model_info

    info = read_model_info(original_model)
    assert info.dynamic_hw and info.resize.name == "original"
    assert info.resize.geometry(256, 320).canvas_hw == (800, 1024)

    result = _predict(original_model, backend, reference_dir, tmp_path / backend)
    assert (result["height"], result["width"]) == (256, 320)
    dets = result["detections"]
    boxes = np.array([d["box_xyxy"] for d in dets], np.float64).reshape(-1, 4)
    labels = np.array([d["label"] for d in dets])
    scores = np.array([d["score"] for d in dets])

    ref_boxes = reference_npz["e2e_det_boxes_xyxy_orig"]
    ref_labels = reference_npz["e2e_det_labels"]
    ref_scores = reference_npz["e2e_det_scores"]
    ref_rles = reference_npz["e2e_mask_rle_counts"]
    assert len(ref_scores) == 50 and len(dets) == 50

    iou = np.where(ref_labels[:, None] == labels[None], _iou_plus_one(ref_boxes, boxes), -1.0)
    used = np.zeros(len(dets), bool)
    same_rle, worst_iou, worst_score = 0, 1.0, 0.0
    for r in np.argsort(-ref_scores, kind="stable"):
        candidates = np.where(used, -1.0, iou[r])
        t = int(candidates.argmax())
        assert candidates[t] >= 0.99, (
            f"{backend}: reference detection {r} (label {ref_labels[r]}, score "
            f"{ref_scores[r]:.6f}, box {ref_boxes[r]}) unmatched; best IoU {candidates[t]:.4f}"
        )
        used[t] = True
        worst_iou = min(worst_iou, candidates[t])
        worst_score = max(worst_score, abs(scores[t] - ref_scores[r]))
        same_rle += dets[t]["mask_rle"]["counts"] == ref_rles[r]
    assert worst_score <= 1e-4, f"{backend}: max |d score| {worst_score:.2e}"
    assert same_rle >= 0.95 * len(ref_scores), f"{backend}: {same_rle}/{len(ref_scores)} masks with identical RLE"
