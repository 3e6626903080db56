"""Reduced precision on OpenVINO keeps the post-processing in float32: the top-K / NMS index
arithmetic, the gathers and the mask head's RoI part are marked (what an f16 compile honours),
and a bf16 compile runs them in f32 (where this CPU has bf16)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ov = pytest.importorskip("openvino")
export = pytest.importorskip("retinamask.export")

from retinamask.config import load_config  # noqa: E402
from retinamask.runtime.backends import BackendUnavailable, create_session, openvino_capabilities  # noqa: E402
from retinamask.runtime.openvino_session import keep_postprocessing_f32, postprocessing_node_names  # noqa: E402
from tiny_model import TINY_OPTS, tiny_model_with_detections  # noqa: E402

S = 128
KEPT_TYPES = {"TopK", "NonMaxSuppression", "GatherElements", "GatherND", "ROIAlign", "Floor"}
MARK = "DisablePrecisionConversion_0"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    cfg = load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms", TINY_OPTS)
    model = tiny_model_with_detections(cfg, S, structured_masks=True)
    path = tmp_path_factory.mktemp("precision") / "end2end.onnx"
    export.export_model(model, cfg, path, canvas_side=S, verify=False, simplify=False)
    return path


def _input(seed=0):
    return np.random.default_rng(seed).normal(0, 50, (1, 3, S, S)).astype(np.float32)


def test_postprocessing_is_marked_for_f16_and_bf16(model_path):
    core = ov.Core()
    model = core.read_model(str(model_path))
    names = postprocessing_node_names(model)
    by_type = {}
    for op in model.get_ordered_ops():
        by_type.setdefault(op.get_type_name(), set()).add(op.get_friendly_name())
    for op_type in KEPT_TYPES & by_type.keys():  # every index-producing / post-processing op
        assert by_type[op_type] <= names, op_type
    assert not names & by_type["Convolution"]  # the dense part stays in the reduced precision
    marked, kept = keep_postprocessing_f32(core, model)
    on_nodes = {op.get_friendly_name() for op in marked.get_ordered_ops() if MARK in set(op.get_rt_info().keys())}
    assert kept == names and on_nodes == names


def test_bf16_runs_the_postprocessing_in_f32(model_path):
    if "BF16" not in openvino_capabilities():
        with pytest.raises(BackendUnavailable, match="bf16 is unavailable on this CPU"):
            create_session(model_path, "openvino", precision="bf16")
        return
    session = create_session(model_path, "openvino", precision="bf16")
    assert session.kept_f32 and session.applied_precision == "bf16"
    precisions = {}
    for op in session.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        precisions.setdefault(info["layerType"].astype(str), set()).add(info["runtimePrecision"].astype(str))
    assert "bf16" in precisions["Convolution"]
    for layer in ("TopK", "NonMaxSuppression", "GatherElements", "ROIAlign"):
        assert precisions.get(layer, {"f32"}) <= {"f32", "i32"}, (layer, precisions.get(layer))
    _assert_keeps_the_f32_detections(session, model_path)


def _assert_keeps_the_f32_detections(session, model_path):
    """A reduced-precision session finds what f32 finds, where the f32 scores are not near-tied."""
    boxes, labels, scores, _ = session.run(_input())
    reference = create_session(model_path, "openvino", precision="fp32").run(_input())
    found = scores[0] > 0
    assert found.any() and set(labels[0][found]) <= set(range(1, 5))
    strong = reference[2][0] > reference[2][0][found.sum() - 1] + 0.05 if found.sum() else []
    for box, label in zip(reference[0][0][strong], reference[1][0][strong]):
        same = labels[0] == label
        assert same.any()
        assert np.abs(boxes[0][same] - box).sum(axis=1).min() < 2.0


def test_fp16_runs_close_to_f32_where_the_cpu_has_it_else_one_line(model_path):
    if "FP16" in openvino_capabilities():  # classes C and D (avx512_fp16): slower than fp32 there, but accurate
        session = create_session(model_path, "openvino", precision="fp16")
        assert session.applied_precision == "f16" and session.kept_f32
        assert session.run(_input())[0].shape == (1, 100, 4)
        _assert_keeps_the_f32_detections(session, model_path)
        return
    with pytest.raises(BackendUnavailable) as error:
        create_session(model_path, "openvino", precision="fp16")
    assert "fp16 is unavailable on this CPU" in error.value.cause and "\n" not in error.value.cause


def test_fp32_is_read_as_it_is(model_path):
    session = create_session(model_path, "openvino", precision="fp32")
    assert session.kept_f32 == frozenset()
