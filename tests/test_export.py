"""retinamask.export and `retinamask export`: both layouts on a tiny model at S = 256.

The ONNX files are exported once per module (each export takes ~10 s on 2 cores) and shared.
The tiny model's classification layer is rescaled so that random weights give real,
well-spread detections (scores ~0.05..0.99) instead of none.
"""

import json

import numpy as np
import onnx
import pytest
import torch

from retinamask.cli import main
from retinamask.config import load_config
from retinamask.export import End2EndGraph, SeedGraph, compare_detections, export_model, sample_input
from retinamask.export.options import ExportOptions, default_input_size
from retinamask.export.verify import (
    TOLERANCES,
    eager_detections,
    eager_limits,
    output_detections,
    run_onnxruntime,
)
from retinamask.modeling import build_model
from retinamask.modeling.box_coder import BoxCoder
from retinamask.modeling.checkpoint import save_checkpoint
from tiny_model import TINY_OPTS, tiny_model_with_detections

S = 256
K = 100
CONFIG = "retinanet_mask_R-50-FPN_2x_adjust_std011_ms"
METADATA_KEYS = (
    "layout",
    "input_size",
    "pixel_mean",
    "pixel_std",
    "class_names",
    "score_threshold",
    "nms_threshold",
    "max_detections",
    "mask_resolution",
    "batch",
    "version",
)


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, TINY_OPTS)


@pytest.fixture(scope="module")
def model(cfg):
    """Tiny RetinaMask with detections: classification logits rescaled to std 1.5 around -3."""
    return tiny_model_with_detections(cfg, S, structured_masks=True)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def end2end_dynamic(model, cfg, exports):
    report = export_model(model, cfg, exports / "end2end_dynamic.onnx", dynamic_batch=True, canvas_side=S)
    return report


@pytest.fixture(scope="module")
def seed_export(model, cfg, exports):
    return export_model(model, cfg, exports / "seed.onnx", layout="seed", canvas_side=S)


@pytest.fixture(scope="module")
def fp16_export(model, cfg, exports):
    return export_model(model, cfg, exports / "end2end_fp16_b2.onnx", batch_size=2, fp16=True, canvas_side=S)


def _images(cfg, batch):
    return sample_input(cfg, S, batch).numpy()


def _assert_same(reference, test, score_tol=1e-4, mask_tol=1e-3, min_iou=0.99):
    stats = compare_detections(reference, test, min_iou)
    assert stats["reference"] == stats["exported"] == stats["matched"], stats
    assert stats["max_score_diff"] <= score_tol, stats
    assert stats["max_mask_diff"] <= mask_tol, stats
    return stats


def _all_op_types(proto):
    return {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# --- graphs in PyTorch (no export) -------------------------------------------------------------


def test_end2end_graph_in_pytorch_equals_the_eager_model(model, cfg):
    images = sample_input(cfg, S, 2)
    with torch.no_grad():
        outputs = [t.numpy() for t in End2EndGraph(model, S, K)(images)]
    for reference, test in zip(eager_detections(model, images, K), output_detections(outputs, "end2end")):
        assert len(test["scores"]) == K  # the test model has more than K detections per image
        _assert_same(reference, test, score_tol=1e-6, mask_tol=1e-5)


def test_end2end_with_50_rows_is_the_originals_mask_cut(model, cfg):
    images = sample_input(cfg, S, 1)
    with torch.no_grad():
        original = model(images, [(S, S)])[0]  # NUM_MASKS_TEST = 50
        outputs = [t.numpy() for t in End2EndGraph(model, S, 50)(images)]
    reference = {
        "boxes": original["boxes"].numpy(),
        "labels": original["labels"].numpy(),
        "scores": original["scores"].numpy(),
        "masks": original["mask_probs"].numpy(),
    }
    assert len(reference["scores"]) == 50
    _assert_same(reference, output_detections(outputs, "end2end")[0], score_tol=1e-6, mask_tol=1e-5)


def test_eager_limits_are_restored(model):
    before = model.num_masks_test, model.rpn.postprocessor.detections_per_image
    with eager_limits(model, 7):
        assert model.num_masks_test == 7
    assert (model.num_masks_test, model.rpn.postprocessor.detections_per_image) == before


# --- end2end export ------------------------------------------------------------------------------


def test_end2end_export_structure_and_metadata(end2end_dynamic):
    proto = onnx.load(end2end_dynamic["path"])
    onnx.checker.check_model(proto)
    ops = _all_op_types(proto)
    assert not ops & {"If", "Loop", "Scan"}
    assert {"NonMaxSuppression", "RoiAlign", "TopK"} <= ops
    assert [i.name for i in proto.graph.input] == ["input"]
    assert _dims(proto.graph.input[0])[1:] == [3, S, S]
    batch = _dims(proto.graph.input[0])[0]
    assert isinstance(batch, str)  # symbolic
    outputs = {o.name: (o.type.tensor_type.elem_type, _dims(o)) for o in proto.graph.output}
    assert list(outputs) == ["boxes", "labels", "scores", "masks"]
    assert outputs["boxes"] == (onnx.TensorProto.FLOAT, [batch, K, 4])
    assert outputs["labels"] == (onnx.TensorProto.INT32, [batch, K])
    assert outputs["scores"] == (onnx.TensorProto.FLOAT, [batch, K])
    assert outputs["masks"] == (onnx.TensorProto.FLOAT, [batch, K, 1, 28, 28])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert {f"retinamask.{k}" for k in METADATA_KEYS} <= set(meta)
    assert meta["retinamask.layout"] == "end2end"
    assert meta["retinamask.batch"] == "dynamic"
    assert meta["retinamask.input_size"] == str(S)
    assert meta["retinamask.max_detections"] == str(K)
    assert json.loads(meta["retinamask.class_names"]) == ["class_1", "class_2", "class_3"]
    assert json.loads(meta["retinamask.pixel_mean"]) == [102.9801, 115.9465, 122.7717]
    assert float(meta["retinamask.score_threshold"]) == 0.05 and float(meta["retinamask.nms_threshold"]) == 0.4
    # weights embedded, no side file
    assert not proto.graph.initializer or all(not t.external_data for t in proto.graph.initializer)
    assert end2end_dynamic["external_data"] is None


def test_end2end_onnxruntime_matches_the_eager_model(end2end_dynamic, model, cfg):
    verification = end2end_dynamic["verification"]
    assert verification["passed"] and verification["matched"] == verification["reference"] == 2 * K
    images = _images(cfg, 1)
    outputs = run_onnxruntime(end2end_dynamic["path"], images)
    reference = eager_detections(model, torch.from_numpy(images), K)[0]
    stats = _assert_same(reference, output_detections(outputs, "end2end")[0])
    assert stats["min_box_iou"] >= 0.99 and stats["min_mask_iou"] >= 0.99
    labels, scores = outputs[1][0], outputs[2][0]
    assert (np.diff(scores) <= 0).all() and labels.min() >= 1


def test_end2end_dynamic_batch_1_2_5(end2end_dynamic, cfg):
    images = _images(cfg, 5)
    single = [
        output_detections(run_onnxruntime(end2end_dynamic["path"], images[i : i + 1]), "end2end")[0] for i in range(5)
    ]
    for batch in (2, 5):
        outputs = run_onnxruntime(end2end_dynamic["path"], images[:batch])
        assert outputs[0].shape == (batch, K, 4) and outputs[3].shape == (batch, K, 1, 28, 28)
        for i, detections in enumerate(output_detections(outputs, "end2end")):
            _assert_same(single[i], detections, score_tol=1e-5, mask_tol=1e-4)


def test_end2end_openvino_f32_matches_onnxruntime(end2end_dynamic, cfg):
    ov = pytest.importorskip("openvino")
    images = _images(cfg, 2)
    compiled = ov.Core().compile_model(end2end_dynamic["path"], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(images)
    ov_outputs = [result[compiled.output(i)] for i in range(4)]
    ort_outputs = run_onnxruntime(end2end_dynamic["path"], images)
    assert [o.dtype for o in ov_outputs] == [np.float32, np.int32, np.float32, np.float32]
    for reference, test in zip(output_detections(ort_outputs, "end2end"), output_detections(ov_outputs, "end2end")):
        assert len(reference["scores"]) == K
        _assert_same(reference, test, score_tol=1e-4, mask_tol=1e-3)


# --- seed layout ---------------------------------------------------------------------------------


def _seed_by_hand(model, images, num_candidates=1000):
    """The seed's semantics written out directly with the model's modules, one image at a time."""
    num_classes = model.rpn.head.num_classes
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    results = []
    with torch.no_grad():
        features = model.backbone(images)
        anchors, logits, regression = model.rpn(features)
        for i in range(images.shape[0]):
            scores, deltas = [], []
            for level_logits, level_regression in zip(logits, regression):
                _, _, h, w = level_logits.shape
                scores.append(
                    level_logits[i].reshape(-1, num_classes, h, w).permute(2, 3, 0, 1).reshape(-1, num_classes)
                )
                deltas.append(level_regression[i].reshape(-1, 4, h, w).permute(2, 3, 0, 1).reshape(-1, 4))
            scores = torch.cat(scores).sigmoid().reshape(-1)
            top_scores, order = torch.sort(scores, descending=True, stable=True)
            top_scores, order = top_scores[:num_candidates], order[:num_candidates]
            anchor_index, labels = order // num_classes, order % num_classes + 1
            boxes = coder.decode(torch.cat(deltas)[anchor_index], torch.cat(anchors)[anchor_index]).clamp(0, S)
            rois = torch.cat((torch.full((num_candidates, 1), float(i)), boxes), dim=1)
            masks = model.mask(features, rois, labels).sigmoid()
            results.append(
                {"boxes": boxes.numpy(), "labels": labels.numpy(), "scores": top_scores.numpy(), "masks": masks.numpy()}
            )
    return results


def test_seed_export_structure(seed_export):
    proto = onnx.load(seed_export["path"])
    onnx.checker.check_model(proto)
    assert not _all_op_types(proto) & {"If", "Loop", "Scan", "NonMaxSuppression"}
    outputs = {o.name: (o.type.tensor_type.elem_type, _dims(o)) for o in proto.graph.output}
    assert outputs == {
        "bboxs": (onnx.TensorProto.FLOAT, [1, 1000, 4]),
        "labels": (onnx.TensorProto.INT32, [1, 1000]),
        "scores": (onnx.TensorProto.FLOAT, [1, 1000]),
        "masks": (onnx.TensorProto.FLOAT, [1, 1000, 1, 28, 28]),
    }
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["retinamask.layout"] == "seed" and meta["retinamask.batch"] == "1"
    # the pooler's 1000-RoI zero buffer is not stored as a weight (it was 25 MB here, 200 MB for R-50)
    assert seed_export["file_bytes"] < 3_000_000
    assert seed_export["verification"]["passed"]


def test_seed_onnxruntime_matches_the_seed_semantics(seed_export, model, cfg):
    images = _images(cfg, 1)
    outputs = run_onnxruntime(seed_export["path"], images)
    test = output_detections(outputs, "seed")[0]
    reference = _seed_by_hand(model, torch.from_numpy(images))[0]
    np.testing.assert_allclose(test["scores"], reference["scores"], atol=1e-5)  # both sorted descending
    assert test["labels"].dtype == np.int32 and set(np.unique(test["labels"])) <= {1, 2, 3}
    assert test["boxes"].min() >= 0 and test["boxes"].max() <= S
    stats = compare_detections(reference, test, 0.99, cut=1000)
    assert stats["matched"] + stats["unmatched_at_cut"] >= 999 and stats["unmatched"] == stats["unmatched_at_cut"], (
        stats
    )
    assert stats["max_score_diff"] <= 1e-4 and stats["max_mask_diff"] <= 1e-3, stats


def test_seed_graph_in_pytorch_equals_the_seed_semantics(model, cfg):
    images = sample_input(cfg, S, 2)  # batch 2: RoIs of the second image pool from its own features
    with torch.no_grad():
        outputs = [t.numpy() for t in SeedGraph(model, S, num_candidates=200)(images)]
    for reference, test in zip(_seed_by_hand(model, images, 200), output_detections(outputs, "seed")):
        np.testing.assert_array_equal(test["scores"], reference["scores"])
        stats = compare_detections(reference, test, 0.999, cut=200)
        assert stats["unmatched"] == stats["unmatched_at_cut"] and stats["max_mask_diff"] <= 1e-5, stats


# --- fp16 ----------------------------------------------------------------------------------------


def test_fp16_export_is_close_to_float32(fp16_export, model, cfg):
    proto = onnx.load(fp16_export["path"])
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.INT32,
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT,
    ]
    assert _dims(proto.graph.input[0]) == [2, 3, S, S]
    assert fp16_export["batch"] == 2 and fp16_export["outputs"]["masks"] == [2, K, 1, 28, 28]
    verification = fp16_export["verification"]
    # Measured here: 200/200 matched, max |d score| 8e-4, box IoU >= 0.9999, max |d mask prob| 0.02.
    assert verification["passed"], verification
    assert verification["matched"] >= 0.9 * verification["reference"]
    assert verification["max_score_diff"] <= TOLERANCES["fp16"]["max_score_diff"]
    assert verification["min_box_iou"] >= 0.99


# --- empty results, CLI, errors ------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(cfg, exports):
    """A tiny model with the default initialisation: every score is ~0.01 (< 0.05), no detections."""
    torch.manual_seed(1)
    path = exports / "tiny_default.pth"
    save_checkpoint(path, build_model(cfg), iteration=0)
    return path


@pytest.fixture(scope="module")
def cli_export(checkpoint, exports):
    save_path = exports / "cli.onnx"
    argv = [
        "export",
        "--cfg_path",
        f"configs/retina/{CONFIG}.yaml",
        "--weight_path",
        str(checkpoint),
        "--save_path",
        str(save_path),
        "--simplify=True",
        "--input-size",
        str(S),
        "--opts",
        *TINY_OPTS,
    ]
    return save_path, main(argv)


def test_cli_exports_a_checkpoint(cli_export, capsys):
    save_path, code = cli_export
    assert code == 0
    proto = onnx.load(save_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["retinamask.layout"] == "end2end" and meta["retinamask.batch"] == "1"
    assert _dims(proto.graph.output[0]) == [1, K, 4]
    assert not list(save_path.parent.glob("*.onnx.data")) and not list(save_path.parent.glob(".*.tmp"))


def test_empty_result_is_all_padding(cli_export, cfg):
    save_path, _ = cli_export
    images = _images(cfg, 1)
    runs = {"onnxruntime": run_onnxruntime(save_path, images)}
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(save_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(images)
    runs["openvino"] = [result[compiled.output(i)] for i in range(4)]
    for name, (boxes, labels, scores, masks) in runs.items():
        assert boxes.shape == (1, K, 4) and masks.shape == (1, K, 1, 28, 28), name
        assert (labels == -1).all() and (scores == 0).all() and (boxes == 0).all() and (masks == 0).all(), name


def test_cli_prints_the_report(checkpoint, exports, capsys):
    save_path = exports / "cli_seed.onnx"
    code = main(
        [
            "export",
            "--cfg-path",
            CONFIG,
            "--weight-path",
            str(checkpoint),
            "--save-path",
            str(save_path),
            "--layout",
            "seed",
            "--simplify",
            "False",
            "--input-size",
            str(S),
            "--no-verify",
            "--opts",
            *TINY_OPTS,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "layout seed" in out and "not simplified" in out and "not verified" in out
    assert {p.key: p.value for p in onnx.load(save_path).metadata_props}["retinamask.layout"] == "seed"


def test_cli_checkpoint_mismatch_is_one_line(checkpoint, exports, capsys):
    save_path = exports / "never.onnx"
    opts = TINY_OPTS[:-1] + ["5"]  # 4 foreground classes: the checkpoint has 3
    code = main(
        [
            "export",
            "--cfg_path",
            CONFIG,
            "--weight_path",
            str(checkpoint),
            "--save_path",
            str(save_path),
            "--input-size",
            str(S),
            "--opts",
            *opts,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and not save_path.exists()
    assert err.startswith("error: ") and "\n" not in err and str(checkpoint) in err and "shape conflicts" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cfg_path", "no_such_config"], "no such config file"),
        (["--cfg_path", CONFIG, "--input-size", "250"], "multiple of 32"),
        (["--cfg_path", CONFIG, "--opset", "17"], "opset 17"),
    ],
)
def test_cli_bad_arguments_are_one_line(argv, message, checkpoint, exports, capsys):
    code = main(
        [
            "export",
            *argv,
            "--weight_path",
            str(checkpoint),
            "--save_path",
            str(exports / "never.onnx"),
            "--opts",
            *TINY_OPTS,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and message in err


def test_cli_simplify_flag_accepts_true_false_strings():
    from argparse import ArgumentParser

    from retinamask.cli import export as export_cli

    parser = ArgumentParser()
    export_cli.add_arguments(parser)
    base = ["--cfg_path", "c", "--weight_path", "w"]
    assert parser.parse_args(base).simplify is True
    assert parser.parse_args(base + ["--simplify=True"]).simplify is True
    assert parser.parse_args(base + ["--simplify=False"]).simplify is False
    assert parser.parse_args(base + ["--simplify", "false"]).simplify is False
    assert parser.parse_args(base + ["--simplify"]).simplify is True
    assert parser.parse_args(base + ["--no-simplify"]).simplify is False
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--simplify=maybe"])
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--batch-size", "2", "--dynamic-batch"])


# --- the comparison itself -----------------------------------------------------------------------


def test_compare_detections_matches_sets_not_order():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, size=(20, 2)).astype(np.float32)
    boxes = np.concatenate((xy, xy + rng.uniform(5, 50, size=(20, 2))), axis=1).astype(np.float32)
    reference = {
        "boxes": boxes,
        "labels": rng.integers(1, 4, 20).astype(np.int32),
        "scores": np.sort(rng.uniform(0.05, 1, 20))[::-1].astype(np.float32),
        "masks": rng.uniform(0, 1, (20, 28, 28)).astype(np.float32),
    }
    order = rng.permutation(20)
    test = {k: v[order].copy() for k, v in reference.items()}
    test["scores"] += 1e-5
    stats = compare_detections(reference, test)
    assert stats["matched"] == 20 and stats["unmatched"] == 0 and abs(stats["max_score_diff"] - 1e-5) < 1e-6
    test["labels"][0] = 4 if test["labels"][0] != 4 else 1  # a wrong label is a miss on both sides
    stats = compare_detections(reference, test, cut=100)
    assert stats["matched"] == 19 and stats["unmatched"] == 2 and stats["unmatched_at_cut"] == 0
    empty = {k: v[:0] for k, v in reference.items()}
    assert compare_detections(empty, empty)["matched"] == 0


def test_default_input_size_is_the_test_max_size_rounded_up_to_32():
    # 1333 -> 1344: the seed's canvas for the upstream configs; the shapes model's 448 stays 448
    assert default_input_size(load_config(CONFIG)) == 1344
    assert default_input_size(load_config("retinamask_shapes_small")) == 448
    assert default_input_size(load_config(CONFIG, ["INPUT.MAX_SIZE_TEST", "1000"])) == 1024


def test_export_options_resolve_one_policy_the_rows_and_the_batch():
    from retinamask.core.errors import RetinaMaskError
    from retinamask.core.resize import SeedResize

    cfg = load_config("retinamask_shapes_small")
    square = ExportOptions(canvas_side=S, dynamic_batch=True).resolve(cfg)
    assert square.resize == SeedResize(S) and square.canvas_side == S
    assert (square.max_detections, square.rows) == (100, 100)
    assert (square.batch, square.fixed_batch, square.example_batch) == ("dynamic", None, 2)
    assert square.resolve(cfg) == square  # resolving is idempotent (export_onnx resolves, then export_model)
    seed = ExportOptions(layout="seed", batch_size=3).resolve(cfg)
    assert (seed.canvas_side, seed.rows, seed.batch, seed.precision) == (448, 1000, 3, "fp32")
    original = ExportOptions(resize="original", fp16=True).resolve(cfg)
    assert original.dynamic_hw and original.canvas_side is None and original.precision == "fp16"
    assert original.max_detections == original.rows == cfg.RETINANET.NUM_MASKS_TEST
    with pytest.raises(RetinaMaskError, match="seed layout"):
        ExportOptions(layout="seed", resize="original").resolve(cfg)
    with pytest.raises(RetinaMaskError, match="multiple of 32"):
        ExportOptions(canvas_side=100).resolve(cfg)
    with pytest.raises(TypeError):
        ExportOptions(no_such_option=1)
