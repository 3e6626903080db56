"""retinamask evaluate: the canvas -> image geometry, outputs -> COCO results, and the chain
infer -> evaluate on a tiny COCO-format set under both layouts, namings and formats."""

import json

import numpy as np
import pytest

from retinamask.apps.evaluate import evaluate_outputs
from retinamask.cli import main
from retinamask.core.errors import InputError
from retinamask.core.geometry import boxes_to_image
from retinamask.core.resize import SeedResize
from retinamask.decode.coco_results import outputs_to_coco_results
from retinamask.decode.outputs import decode_outputs
from retinamask.runtime.infer import run_inference
from test_runtime_fakes import BOX_IMAGES, RED_ID, WHITE_ID, build_fake_model, make_box_dataset

S = 96


# ---------------------------------------------------------------------------
# geometry and one image


def test_boxes_to_image_divides_per_axis_and_clips():
    # 300 x 200 (h x w) image at S = 96: resized 96 x 64
    boxes = np.array([[32.0, 48.0, 63.0, 95.0], [-5.0, -1.0, 100.0, 120.0]], np.float32)
    out = boxes_to_image(boxes, image_hw=(300, 200), resized_hw=(96, 64))
    np.testing.assert_allclose(out[0], [32 * 200 / 64, 48 * 300 / 96, 63 * 200 / 64, 95 * 300 / 96], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0, 0, 199, 299])
    assert out.dtype == np.float32
    # per axis: 100 x 333 resized to 28 x 96 (floor) -> x ratio 96/333, y ratio 28/100, not the same
    out = boxes_to_image([[96.0, 28.0, 96.0, 28.0]], (100, 333), (28, 96))
    np.testing.assert_allclose(out[0], [332, 99, 332, 99])  # clipped to w-1, h-1
    out = boxes_to_image([[48.0, 14.0, 48.0, 14.0]], (100, 333), (28, 96))
    np.testing.assert_allclose(out[0], [48 * 333 / 96, 50, 48 * 333 / 96, 50], rtol=1e-6)


def _outputs(rows, boxes, labels, scores, mask_value=1.0):
    out_boxes = np.zeros((rows, 4), np.float32)
    out_labels = np.full(rows, -1, np.int32)
    out_scores = np.zeros(rows, np.float32)
    masks = np.zeros((rows, 1, 28, 28), np.float32)
    n = len(boxes)
    out_boxes[:n], out_labels[:n], out_scores[:n], masks[:n] = boxes, labels, scores, mask_value
    return [out_boxes, out_labels, out_scores, masks]


def test_end2end_padding_dropped_and_categories_mapped():
    outputs = _outputs(6, [[10, 10, 40, 30], [0, 0, 20, 20]], [2, 1], [0.9, 0.6])
    results = outputs_to_coco_results(outputs, "end2end", 42, (64, 64), (64, 64), category_ids=[3, 7])
    assert [r["category_id"] for r in results] == [7, 3] and [r["image_id"] for r in results] == [42, 42]
    assert results[0]["bbox"] == [10.0, 10.0, 31.0, 21.0]  # w = x2 - x1 + 1
    assert results[0]["score"] == pytest.approx(0.9)
    assert results[0]["segmentation"]["size"] == [64, 64] and isinstance(results[0]["segmentation"]["counts"], str)
    with pytest.raises(InputError, match="label 2 but there are only 1 categories"):
        outputs_to_coco_results(outputs, "end2end", 42, (64, 64), (64, 64), category_ids=[3])


def test_seed_layout_gets_classwise_nms():
    boxes = [[10, 10, 50, 50], [11, 11, 51, 51], [12, 12, 50, 50], [0, 0, 5, 5]]
    outputs = _outputs(1000, boxes, [1, 1, 2, 1], [0.9, 0.8, 0.7, 0.1])
    outputs[1][4:] = 1  # seed rows are all real candidates (labels 1..80, score 0)
    detections = decode_outputs(outputs, "seed", (100, 100), (100, 100), max_detections=100, paste=False)
    # box 1 is suppressed by box 0 (same class, IoU > 0.4); box 2 is another class
    assert detections.labels[:3].tolist() == [1, 2, 1] and detections.scores[:3].tolist() == pytest.approx(
        [0.9, 0.7, 0.1]
    )
    assert len(detections.scores) <= 100
    # the end2end reading of seed outputs would keep suppressed boxes: the layouts differ
    with pytest.raises(InputError, match="1-based"):
        decode_outputs(_outputs(1000, boxes, [1, 1, 2, 1], [0.9, 0.8, 0.7, 0.1]), "seed", (100, 100), (100, 100))


def test_non_finite_outputs_are_errors():
    outputs = _outputs(4, [[1, 1, 5, 5]], [1], [0.5])
    outputs[0][0, 2] = np.nan
    with pytest.raises(InputError, match="NaN/inf value"):
        decode_outputs(outputs, "end2end", (10, 10), (10, 10))


def test_masks_pasted_at_original_size():
    outputs = _outputs(3, [[8, 4, 39, 27]], [1], [0.9])
    detections = decode_outputs(outputs, "end2end", (60, 120), (24, 48))  # canvas = 0.4 x the image
    assert detections.masks.shape == (1, 60, 120) and detections.masks.dtype == np.uint8
    ys, xs = np.nonzero(detections.masks[0])
    box = detections.boxes[0]
    assert abs(xs.min() - box[0]) <= 2 and abs(xs.max() - box[2]) <= 2
    assert abs(ys.min() - box[1]) <= 2 and abs(ys.max() - box[3]) <= 2


# ---------------------------------------------------------------------------
# infer -> evaluate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_box_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        layout: build_fake_model(folder / f"{layout}.onnx", layout=layout, canvas_side=S)
        for layout in ("end2end", "seed")
    }


@pytest.fixture(scope="module")
def inferred(tmp_path_factory, dataset, models):
    """Outputs of both models in both formats and both namings (one infer run each)."""
    image_dir, _, _ = dataset
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for layout in ("end2end", "seed"):
        for outfmt in ("BIN", "NPY"):
            for legacy in (False, True):
                name = f"{layout}_{outfmt}_{'legacy' if legacy else 'ais'}"
                run_inference(
                    models[layout],
                    image_dir,
                    root,
                    name,
                    batch_size=2,
                    outfmt=outfmt,
                    legacy_names=legacy,
                    workers=0,
                    progress=False,
                )
                runs[(layout, outfmt, legacy)] = root / name
    return runs


def _check_perfect(stats):
    for iou_type in ("bbox", "segm"):
        assert stats[iou_type]["AP50"] == pytest.approx(1.0), iou_type
        assert stats[iou_type]["AP"] > 0.5, iou_type


@pytest.mark.parametrize("layout", ["end2end", "seed"])
@pytest.mark.parametrize("outfmt", ["BIN", "NPY"])
@pytest.mark.parametrize("legacy", [False, True])
def test_chain_reads_every_layout_naming_and_format(tmp_path, dataset, inferred, layout, outfmt, legacy):
    _, ann_file, listing = dataset
    results_dir = inferred[(layout, outfmt, legacy)]
    summary = evaluate_outputs(results_dir, ann_file, output_path=tmp_path / "eval.txt", workers=1, progress=False)
    assert summary["failed"] == [] and summary["images_evaluated"] == len(BOX_IMAGES)
    assert summary["layout"] == layout
    _check_perfect(summary["stats"])
    results = json.loads((tmp_path / "eval_coco_results.json").read_text())
    by_image = {r["image_id"]: r for r in results if r["score"] > 0.5}
    for (_name, image_id), spec in zip(listing, BOX_IMAGES):
        _h, _w, x1, y1, x2, y2, white = spec
        detection = by_image[image_id]
        assert detection["category_id"] == (WHITE_ID if white else RED_ID)
        np.testing.assert_allclose(detection["bbox"], [x1, y1, x2 - x1 + 1, y2 - y1 + 1], atol=3)
    text = (tmp_path / "eval.txt").read_text()
    assert "IoU metric: bbox" in text and "IoU metric: segm" in text and text.count("Average Precision") == 12
    assert json.loads((tmp_path / "eval.json").read_text())["stats"]["segm"]["AP50"] == pytest.approx(1.0)


def test_layout_auto_without_sidecar_uses_the_rows(tmp_path, dataset, inferred):
    _, ann_file, _ = dataset
    for layout in ("end2end", "seed"):
        copy = tmp_path / layout
        copy.mkdir()
        for path in inferred[(layout, "BIN", False)].glob("*.bin"):
            (copy / path.name).write_bytes(path.read_bytes())
        summary = evaluate_outputs(
            copy, ann_file, output_path=tmp_path / f"{layout}.txt", workers=1, canvas_side=S, progress=False
        )
        assert summary["layout"] == layout and summary["failed"] == []
        _check_perfect(summary["stats"])


def test_seed_flags_with_an_info_list_and_parallel_workers(tmp_path, dataset, models, capsys):
    """The seed's flow: preprocess -> infer on the .info -> evaluate with the seed's flags."""
    from retinamask.data.preprocess import preprocess_images

    image_dir, ann_file, _ = dataset
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_val2017.json").write_bytes(ann_file.read_bytes())
    info = tmp_path / "retinamask_coco2017.info"
    preprocess_images(image_dir, tmp_path / "bins", info, resize=SeedResize(S), workers=1, progress=False)
    assert (
        main(
            [
                "infer",
                "--model",
                str(models["seed"]),
                "--input",
                str(info),
                "--output",
                str(tmp_path / "result"),
                "--output_dirname",
                "dumpOutput_device0",
                "--legacy-names",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = main(
        [
            "evaluate",
            f"--input_text_path={info}",
            f"--infer_results_path={tmp_path / 'result'}",
            f"--coco_path={coco}",
            f"--output_path={tmp_path / 'evaluation_results.txt'}",
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "IoU metric: segm" in out and "seed layout" in out
    stats = json.loads((tmp_path / "evaluation_results.json").read_text())["stats"]
    _check_perfect(stats)


def test_broken_outputs_are_reported_by_name(tmp_path, dataset, inferred, capsys):
    _, ann_file, _ = dataset
    source = inferred[("end2end", "BIN", False)]
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in source.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    truncated = broken / "img_001_3.bin"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    (broken / "img_002_2.bin").unlink()
    scores = np.fromfile(broken / "img_003_2.bin", dtype="<f4")
    scores[0] = np.inf
    scores.tofile(broken / "img_003_2.bin")

    code = main(
        [
            "evaluate",
            "--infer-results-path",
            str(broken),
            "--ann-file",
            str(ann_file),
            "--output-path",
            str(tmp_path / "e.txt"),
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "img_001_3.bin" in err and "1000 bytes" in err
    assert "img_002_2.bin" in err and "missing" in err
    assert "img_003_2.bin" in err and "NaN/inf" in err
    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["images_evaluated"] == 2 and len(summary["failed"]) == 3


def test_wrong_layout_for_the_outputs(tmp_path, dataset, inferred, capsys):
    _, ann_file, _ = dataset
    # seed-layout outputs read as end2end outputs of the end2end model: every image fails by name
    code = main(
        [
            "evaluate",
            "--infer_results_path",
            str(inferred[("seed", "BIN", False)]),
            "--ann_file",
            str(ann_file),
            "--layout",
            "end2end",
            "--output_path",
            str(tmp_path / "w.txt"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "outputs came from a seed-layout model" in capsys.readouterr().err
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in inferred[("seed", "BIN", False)].glob("*.bin"):
        (copy / path.name).write_bytes(path.read_bytes())
    end2end_model = build_fake_model(tmp_path / "e2e.onnx", layout="end2end", canvas_side=S)
    code = main(
        [
            "evaluate",
            "--infer_results_path",
            str(copy),
            "--ann_file",
            str(ann_file),
            "--model",
            str(end2end_model),
            "--output_path",
            str(tmp_path / "w.txt"),
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "img_000_0.bin" in err and "1000 rows, not 10" in err


def test_unknown_image_is_reported(tmp_path, dataset, inferred):
    _, ann_file, _ = dataset
    source = inferred[("end2end", "NPY", True)]
    extra = tmp_path / "extra"
    extra.mkdir()
    for path in source.glob("*.npy"):
        (extra / path.name).write_bytes(path.read_bytes())
        if path.name.startswith("img_000_"):
            (extra / path.name.replace("img_000", "stranger")).write_bytes(path.read_bytes())
    summary = evaluate_outputs(
        extra, ann_file, output_path=tmp_path / "u.txt", workers=1, canvas_side=S, progress=False
    )
    assert [f["file"] for f in summary["failed"]] == ["stranger"]
    assert "no image stranger.* in the annotation file" in summary["failed"][0]["cause"]
    _check_perfect(summary["stats"])


def test_npy_outputs_with_ais_bench_batch_axis(tmp_path, dataset, inferred):
    """ais_bench's NPY outputs keep the batch axis ([1, K, 4] ...): read them too."""
    _, ann_file, _ = dataset
    batched = tmp_path / "batched"
    batched.mkdir()
    for path in inferred[("seed", "NPY", False)].glob("*.npy"):
        np.save(batched / path.name, np.load(path)[None])
    summary = evaluate_outputs(
        batched, ann_file, output_path=tmp_path / "b.txt", workers=1, canvas_side=S, progress=False
    )
    assert summary["failed"] == [] and summary["layout"] == "seed"
    _check_perfect(summary["stats"])
