"""A tiny RetinaMask exported with ``--resize buckets`` (dynamic H/W + image_sizes) through export,
preprocess, infer, evaluate and both runtimes; and the refusals around it.

The tiny model (tests/tiny_model.py) with test sizes 96 / 160, so that canvases are small and
images of different aspect ratios get different canvases. Results through the files must equal
the model run on each image directly (policy transform, one image per call).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
export = pytest.importorskip("retinamask.export")

from retinamask.apps.evaluate import evaluate_outputs  # noqa: E402
from retinamask.config import load_config  # noqa: E402
from retinamask.core.errors import InputError, RetinaMaskError  # noqa: E402
from retinamask.data.transforms import policy_preprocess  # noqa: E402
from retinamask.decode.coco_results import outputs_to_coco_results  # noqa: E402
from retinamask.formats.images import load_image_rgb  # noqa: E402
from retinamask.formats.model_info import read_model_info  # noqa: E402
from retinamask.runtime.backends import create_session  # noqa: E402
from retinamask.runtime.infer import run_inference  # noqa: E402
from test_runtime_fakes import build_fake_model, make_synthetic_dataset  # noqa: E402
from tiny_model import TINY_OPTS, tiny_model_with_detections  # noqa: E402

OPTS = TINY_OPTS + ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"]
SIZES = ((96, 128), (160, 120), (100, 100), (60, 150), (120, 90))  # 4:3, 3:4, square, 5:2, 3:4
CATEGORY_IDS = (3, 1, 2, 4)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cfg = load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms", OPTS)
    model = tiny_model_with_detections(cfg, 128)
    folder = tmp_path_factory.mktemp("resize_models")
    report = export.export_model(
        model, cfg, folder / "buckets.onnx", resize="buckets", dynamic_batch=True, verify=True, simplify=False
    )
    square = build_fake_model(folder / "square.onnx", canvas_side=160)  # a square (seed-policy) model's interface
    return {"buckets": folder / "buckets.onnx", "square": square, "report": report}


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("resize_images"),
        SIZES,
        CATEGORY_IDS,
        first_id=100,
        box_origin=lambda j: (3.0 + 7 * j, 4.0 + 5 * j),
    )


def test_export_has_dynamic_canvas_image_sizes_and_the_policy(models):
    import onnx

    report = models["report"]
    assert report["input_size"] is None and report["resize"]["policy"] == "buckets"
    assert report["verification"]["passed"] and report["verification"]["reference"] > 0
    proto = onnx.load(str(models["buckets"]), load_external_data=False)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert list(inputs) == ["input", "image_sizes"]
    assert inputs["input"][1] == 3 and all(isinstance(d, str) for d in inputs["input"][2:])
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert "retinamask.input_size" not in metadata
    assert json.loads(metadata["retinamask.resize"])["canvases"]  # the buckets, for runtimes that compile per shape
    info = read_model_info(models["buckets"])
    assert info.dynamic_hw and info.canvas_side is None and info.resize.name == "buckets"
    assert read_model_info(models["buckets"], resize="original").resize.name == "original"
    # K defaults to the original's own output under its resize: its top NUM_MASKS_TEST (50), all masked
    assert report["max_detections"] == info.max_detections == 50 and info.num_rows == 50


def test_the_graph_clips_to_each_images_valid_region(models):
    session = create_session(models["buckets"])
    batch = np.random.default_rng(0).normal(0, 60, (2, 3, 128, 160)).astype(np.float32)
    sizes = np.array([[128, 160], [70, 90]], np.int64)
    boxes, labels, _, _ = session.run(batch, sizes)
    assert (labels[1] >= 1).any()
    kept = boxes[1][labels[1] >= 1]
    assert kept[:, 0::2].max() <= 89 and kept[:, 1::2].max() <= 69  # [0, w-1] x [0, h-1] of image 2
    assert boxes[0][labels[0] >= 1][:, 0::2].max() > 89  # not just small boxes


def _direct_results(model_path, policy_name, image_dir, images):
    info = read_model_info(model_path, resize=policy_name)
    session = create_session(model_path, model_info=info)
    results = []
    for image in images:
        rgb = load_image_rgb(image_dir / image["file_name"])
        tensor, geometry = policy_preprocess(rgb, info.resize, info.pixel_mean, info.pixel_std)
        outputs = [o[0] for o in session.run(tensor[None], np.array([geometry.resized_hw]))]
        results += outputs_to_coco_results(
            outputs, "end2end", image["id"], rgb.shape[:2], geometry.resized_hw, sorted(CATEGORY_IDS), clip=False
        )
    return results


@pytest.mark.parametrize("policy, open_canvases", [("buckets", 4), ("original", 4), ("original", 1)])
def test_infer_batches_by_canvas_and_evaluate_equals_the_direct_run(
    tmp_path, models, image_set, policy, open_canvases, monkeypatch
):
    import retinamask.runtime.infer_batches as infer_batches

    monkeypatch.setattr(infer_batches, "MAX_OPEN_CANVASES", open_canvases)  # 1: every new canvas flushes the last
    image_dir, ann_file, images = image_set
    summary = run_inference(
        models["buckets"], image_dir, tmp_path, "result", batch_size=2, workers=1, progress=False, resize=policy
    )
    assert summary["count"] == len(SIZES) and summary["failed"] == [] and summary["resize"]["policy"] == policy
    records = json.loads((tmp_path / "result" / "images.json").read_text())["images"]
    canvases = {(r["canvas_height"], r["canvas_width"]) for r in records}
    assert len(canvases) >= 3  # several aspect classes, each its own canvas and batch
    evaluation = evaluate_outputs(
        tmp_path / "result", ann_file, output_path=tmp_path / "eval.txt", workers=1, progress=False
    )
    assert evaluation["failed"] == [] and evaluation["images_evaluated"] == len(SIZES)
    if open_canvases == 1:  # the seed's postprocess needs a square canvas: refused up front, not per image
        with pytest.raises(InputError, match="--convention seed maps boxes back"):
            evaluate_outputs(
                tmp_path / "result",
                ann_file,
                output_path=tmp_path / "seed.txt",
                workers=1,
                progress=False,
                convention="seed",
            )
    ours = json.loads((tmp_path / "eval_coco_results.json").read_text())
    direct = _direct_results(models["buckets"], policy, image_dir, images)
    assert len(ours) == len(direct) > len(SIZES)
    key = lambda r: (r["image_id"], round(-r["score"], 4), r["category_id"], r["bbox"])  # noqa: E731
    for a, b in zip(sorted(ours, key=key), sorted(direct, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-2)


def test_preprocess_bins_of_any_canvas_infer_like_the_images(tmp_path, models, image_set):
    from retinamask.cli import main
    from retinamask.formats.bins import read_info

    image_dir, _, images = image_set
    info_path = tmp_path / "list.info"
    assert (
        main(
            [
                "preprocess",
                "--image_src_path",
                str(image_dir),
                "--bin_file_path",
                str(tmp_path / "bins"),
                "--bin_info_name",
                str(info_path),
                "--model",
                str(models["buckets"]),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    lines = info_path.read_text().splitlines()
    assert len(lines) == len(SIZES)
    for line, image in zip(lines, images):  # the seed's line format: index path width height (original size)
        _index, path, width, height = line.split()
        assert (int(width), int(height)) == (image["width"], image["height"]) and path.endswith(".bin")
    records = read_info(info_path)
    for record in records:
        h, w = record.canvas_hw
        assert record.bin_path.stat().st_size == 3 * h * w * 4 and h % 32 == 0 and w % 32 == 0
    assert len({r.canvas_hw for r in records}) >= 3
    run_inference(models["buckets"], info_path, tmp_path, "from_bins", workers=1, progress=False)
    run_inference(models["buckets"], image_dir, tmp_path, "from_images", workers=1, progress=False)
    for record in records:
        for i in range(4):
            a = (tmp_path / "from_bins" / f"{record.name}_{i}.bin").read_bytes()
            assert a == (tmp_path / "from_images" / f"{record.name}_{i}.bin").read_bytes()


def test_openvino_runs_the_dynamic_model_like_onnx_runtime(models):
    pytest.importorskip("openvino")
    batch = np.random.default_rng(1).normal(0, 60, (1, 3, 96, 128)).astype(np.float32)
    sizes = np.array([[96, 120]], np.int64)
    reference = create_session(models["buckets"]).run(batch, sizes)
    for static in (False, True):
        outputs = create_session(models["buckets"], backend="openvino", static_shapes=static).run(batch, sizes)
        valid = reference[1][0] >= 1
        assert np.array_equal(outputs[1][0][valid], reference[1][0][valid])
        np.testing.assert_allclose(outputs[2], reference[2], atol=1e-4)
        np.testing.assert_allclose(outputs[0], reference[0], atol=1e-2)


def test_square_models_refuse_other_policies_and_dynamic_models_need_sidecars(tmp_path, models, image_set):
    _image_dir, _, _ = image_set
    with pytest.raises(InputError, match="fixed square canvas"):
        read_model_info(models["square"], resize="original")
    assert read_model_info(models["square"], resize="seed").resize.size == 160
    bins = tmp_path / "bins"
    bins.mkdir()
    np.zeros((1, 3, 96, 128), np.float32).tofile(bins / "a.bin")
    with pytest.raises(InputError, match=r"needs each \.bin's canvas"):
        run_inference(models["buckets"], bins, tmp_path, "out", workers=1, progress=False)
    with pytest.raises(RetinaMaskError, match="seed layout"):
        export.onnx_export.resolve_export_policy(load_config("retinamask_shapes_small"), "original", None, "seed")


def _preprocess_seed_bins(tmp_path, image_dir, side):
    from retinamask.cli import main

    info_path = tmp_path / "seed.info"
    argv = ["preprocess", "--image_src_path", str(image_dir), "--bin_file_path", str(tmp_path / "seed_bins")]
    argv += ["--bin_info_name", str(info_path), "--input_size", str(side), "--workers", "1"]
    assert main(argv) == 0
    return info_path


def test_seed_bins_on_a_dynamic_model_are_refused_up_front_or_run_as_the_seed(tmp_path, models, image_set, capsys):
    from retinamask.cli import main

    image_dir, ann_file, _ = image_set
    info_path = _preprocess_seed_bins(tmp_path, image_dir, 160)  # the seed's canvas for max size 160
    # an original-resize run over seed bins: refused before the first image, one line, nothing written
    argv = ["infer", "--model", str(models["buckets"]), "--input", str(info_path), "--output", str(tmp_path)]
    code = main(argv + ["--output_dirname", "refused", "--resize", "original", "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {info_path}: the inputs were made with the resize policy seed (long side 160")
    for named in ("model runs original (short side 96", "export the model with --resize seed --input-size 160"):
        assert named in err[0]
    for way in ("preprocess the images with --resize original", "infer --input <image folder>", "--resize seed"):
        assert way in err[0]
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob("refused*"))
    # the valid pair: --resize seed runs this model on the seed canvases, each valid region as image_sizes
    run_inference(models["buckets"], info_path, tmp_path, "bins", workers=1, progress=False, resize="seed")
    run_inference(models["buckets"], image_dir, tmp_path, "images", workers=1, progress=False, resize="seed")
    names = sorted(p.name for p in (tmp_path / "images").glob("*_?.bin"))
    assert len(names) == 4 * len(SIZES)
    for name in names:
        assert (tmp_path / "bins" / name).read_bytes() == (tmp_path / "images" / name).read_bytes()
    evaluation = evaluate_outputs(
        tmp_path / "bins", ann_file, info_path=info_path, output_path=tmp_path / "e.txt", workers=1, progress=False
    )
    assert evaluation["failed"] == [] and evaluation["images_evaluated"] == len(SIZES)
    evaluate_outputs(tmp_path / "images", ann_file, output_path=tmp_path / "i.txt", workers=1, progress=False)
    ours = json.loads((tmp_path / "e_coco_results.json").read_text())
    assert ours == json.loads((tmp_path / "i_coco_results.json").read_text()) and ours


def test_evaluate_refuses_seed_bins_against_an_original_run_before_decoding(tmp_path, models, image_set):
    image_dir, ann_file, _ = image_set
    info_path = _preprocess_seed_bins(tmp_path, image_dir, 160)
    run_inference(models["buckets"], image_dir, tmp_path, "original", workers=1, progress=False, resize="original")
    for model_path in (None, models["buckets"]):  # the run sidecar says original; so does the model file
        with pytest.raises(InputError) as refused:
            evaluate_outputs(
                tmp_path / "original",
                ann_file,
                info_path=info_path,
                model_path=model_path,
                resize="original" if model_path else None,
                output_path=tmp_path / "e.txt",
                workers=1,
                progress=False,
            )
        assert refused.value.cause.startswith("the inputs were made with the resize policy seed (long side 160")
        assert "but the model runs original (short side 96" in refused.value.cause
        assert "stream from the images (infer --input <image folder>)" in refused.value.cause
        assert not (tmp_path / "e.txt").exists() and not (tmp_path / "e_coco_results.json").exists()
