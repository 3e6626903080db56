"""INT8 static quantization (retinamask.export.quantize, `retinamask export --int8 --calib DIR`) on a
tiny model at S = 128: only the dense convolutions are quantized, the contract and metadata hold,
both runtimes run the result, and the detections stay close to float32."""

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")

from retinamask.cli import main  # noqa: E402
from retinamask.config import load_config  # noqa: E402
from retinamask.core.errors import InputError, RetinaMaskError  # noqa: E402
from retinamask.export import export_model, sample_input  # noqa: E402
from retinamask.export.quantize import QUANTIZATION_METADATA_KEY, calibration_images, dense_nodes, quantize_onnx  # noqa: E402
from retinamask.formats.model_info import read_model_info  # noqa: E402
from retinamask.modeling.checkpoint import save_checkpoint  # noqa: E402
from retinamask.runtime.backends import create_session  # noqa: E402
from tiny_model import TINY_OPTS, tiny_model_with_detections  # noqa: E402

S = 128
CONFIG = "retinanet_mask_R-50-FPN_2x_adjust_std011_ms"
FLOAT_ONLY_OPS = ("NonMaxSuppression", "RoiAlign", "TopK", "Sigmoid", "Exp", "GatherElements")


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, TINY_OPTS)


@pytest.fixture(scope="module")
def model(cfg):
    return tiny_model_with_detections(cfg, S)


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    from PIL import Image

    from retinamask.export.verify import synthetic_image

    folder = tmp_path_factory.mktemp("calib")
    for i in range(4):
        Image.fromarray(synthetic_image(96, 128, variant=10 + i)).save(folder / f"{i}.jpg", quality=90)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def float_model(model, cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("float") / "end2end.onnx"
    export_model(model, cfg, path, canvas_side=S, verify=False)
    return path


@pytest.fixture(scope="module")
def int8_model(float_model, calibration_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "end2end_int8.onnx"
    return path, quantize_onnx(float_model, path, calibration_dir, calibration_count=3)


def _images(cfg, count):
    return np.stack([sample_input(cfg, S, count).numpy()[i] for i in range(count)])


def test_only_the_dense_part_is_quantized(int8_model):
    path, report = int8_model
    proto = onnx.load(str(path))
    assert report["calibration_images_used"] == 3 and report["qdq_nodes"]["DequantizeLinear"] > 0
    producer = {output: node for node in proto.graph.node for output in node.output}
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    # what gets quantized: outputs of the dense part, the pooled RoI features (ScatterND of the
    # per-level RoIAlign results) and the image
    quantized_sources = {
        producer[n.input[0]].op_type if n.input[0] in producer else n.input[0]
        for n in proto.graph.node
        if n.op_type == "QuantizeLinear"
    }
    assert quantized_sources <= {"Conv", "ConvTranspose", "Add", "MaxPool", "Resize", "Relu", "ScatterND", "input"}
    # post-processing reads float tensors: the decoding/NMS ops never see a dequantized tensor
    # directly, and RoIAlign's boxes are float
    for node in proto.graph.node:
        if node.op_type in FLOAT_ONLY_OPS:
            inputs = node.input[1:] if node.op_type == "RoiAlign" else node.input
            assert not set(inputs) & dequantized, node.name
    # every convolution runs quantized
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(n.input[0] in dequantized and n.input[1] in dequantized for n in convs)


def test_int8_model_keeps_the_contract_and_metadata(int8_model, float_model):
    path, _ = int8_model
    info, float_info = read_model_info(path), read_model_info(float_model)
    assert (info.layout, info.canvas_side, info.batch_size) == (float_info.layout, float_info.canvas_side, 1)
    assert info.class_names == float_info.class_names
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    quantization = json.loads(meta[QUANTIZATION_METADATA_KEY])
    assert quantization["format"] == "QDQ" and quantization["calibration_images"] == 3
    assert not list(path.parent.glob("*.data")) and not list(path.parent.glob("retinamask-quant-*"))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_model_runs_on_both_runtimes(int8_model, cfg, backend):
    """Random weights: what an INT8 kernel makes of them says nothing (and differs between CPU
    classes); accuracy is judged on the trained shipped model below. Here: it runs, and its
    outputs keep the contract."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    path, _ = int8_model
    boxes, labels, scores, masks = create_session(path, backend).run(_images(cfg, 2))
    assert [o.shape for o in (boxes, labels, scores, masks)] == [(2, 100, 4), (2, 100), (2, 100), (2, 100, 1, 28, 28)]
    assert all(np.isfinite(o).all() for o in (boxes, scores, masks))
    valid = labels >= 0
    assert valid.any() and (labels[valid] < cfg.RETINANET.NUM_CLASSES).all()
    assert (scores[valid] > 0).all() and (scores <= 1).all() and (boxes[valid][:, 2:] >= boxes[valid][:, :2]).all()


def test_int8_weights_fit_in_7_bits(int8_model):
    """The invariant that makes INT8 results the same on every CPU class: with weights in
    [-64, 64], AVX2's saturating u8 x s8 pair sums (vpmaddubsw) cannot saturate
    (255 * 64 * 2 = 32640 < 32767), so AVX2 and VNNI compute the same int32 dot products."""
    from onnx import numpy_helper

    proto = onnx.load(str(int8_model[0]))
    initializers = {t.name: t for t in proto.graph.initializer}
    weights = [
        numpy_helper.to_array(initializers[n.input[0]])
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in initializers
    ]
    int8_weights = [w for w in weights if w.dtype == np.int8]
    assert int8_weights and all(np.abs(w.astype(np.int32)).max() <= 64 for w in int8_weights)


def test_dense_nodes_stop_at_the_first_float_op():
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    shift = numpy_helper.from_array(np.ones((1,), np.float32), "shift")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("Conv", ["c1", "w"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c1", "c2"], ["residual"], name="residual_add"),
        helper.make_node("Relu", ["residual"], ["r"], name="relu"),
        helper.make_node("Sigmoid", ["r"], ["s"], name="sigmoid"),
        helper.make_node("Add", ["s", "shift"], ["decoded"], name="decode_add"),
        helper.make_node("Add", ["decoded", "c2"], ["y"], name="mixed_add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight, shift],
    )
    assert dense_nodes(helper.make_model(graph)) == ["conv1", "conv2", "residual_add", "relu"]


def test_calibration_set_errors(tmp_path):
    with pytest.raises(InputError, match="no calibration images"):
        calibration_images(tmp_path)
    with pytest.raises(InputError, match="not found"):
        calibration_images(tmp_path / "missing")


def test_calibration_images_are_spread_over_the_folder(calibration_dir):
    names = [p.name for p in calibration_images(calibration_dir, 2)]
    assert names == ["0.jpg", "3.jpg"]


def test_export_int8_argument_errors(model, cfg, tmp_path, calibration_dir):
    with pytest.raises(RetinaMaskError, match="--calib"):
        export_model(model, cfg, tmp_path / "m.onnx", canvas_side=S, int8=True)
    with pytest.raises(RetinaMaskError, match="exclude each other"):
        export_model(
            model, cfg, tmp_path / "m.onnx", canvas_side=S, int8=True, fp16=True, calibration_dir=calibration_dir
        )
    with pytest.raises(RetinaMaskError, match="only used with --int8"):
        export_model(model, cfg, tmp_path / "m.onnx", canvas_side=S, calibration_dir=calibration_dir)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_int8_needs_a_calibration_folder(model, tmp_path, capsys):
    checkpoint = tmp_path / "tiny.pth"
    save_checkpoint(checkpoint, model, iteration=0)
    code = main(
        [
            "export",
            "--cfg_path",
            CONFIG,
            "--weight_path",
            str(checkpoint),
            "--save_path",
            str(tmp_path / "never.onnx"),
            "--input-size",
            str(S),
            "--int8",
            "--opts",
            *TINY_OPTS,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--calib" in err and "\n" not in err


def test_unreadable_calibration_images_are_one_error(float_model, tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(InputError, match="none of the calibration images could be read"):
        quantize_onnx(float_model, tmp_path / "never.onnx", tmp_path)
    assert not (tmp_path / "never.onnx").exists()


def test_calibration_cache_is_written_then_reused(float_model, calibration_dir, tmp_path):
    cache = tmp_path / "ranges.json"
    first = quantize_onnx(
        float_model, tmp_path / "a.onnx", calibration_dir, calibration_count=2, calibration_cache=cache
    )
    assert cache.is_file() and first["quantization"]["calibration_images"] == 2
    second = quantize_onnx(
        float_model, tmp_path / "b.onnx", calibration_dir, calibration_count=2, calibration_cache=cache
    )
    assert second["calibration_images_used"] == 0 and "ranges from ranges.json" in second["quantization"]["calibration"]
    a, b = onnx.load(str(tmp_path / "a.onnx")), onnx.load(str(tmp_path / "b.onnx"))
    assert [t.raw_data for t in a.graph.initializer] == [t.raw_data for t in b.graph.initializer]
