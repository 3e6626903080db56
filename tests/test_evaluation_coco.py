"""COCO evaluation on a small hand-built ground truth with known answers, on every backend."""

import contextlib
import copy
import io
import itertools
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest

from retinamask.core.detections import Detections, Prediction
from retinamask.core.errors import InputError
from retinamask.evaluation.coco_eval import (
    STAT_NAMES,
    evaluate_coco,
    format_stats_text,
    write_results_json,
    write_stats_json,
    write_stats_text,
)
from retinamask.ops.coco_results import detections_to_coco_results, detections_to_json, results_from_detections

BACKENDS = ("pycocotools", "faster-coco-eval", "direct")
CATEGORY_IDS = (3, 17, 90)  # non-contiguous, like COCO's


def _rect(x0, y0, x1, y1):
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def _triangle(x0, y0, size):
    return [float(x0), float(y0), float(x0 + size), float(y0), float(x0), float(y0 + size)]


# image id -> (height, width, [(category id, polygon)])
_OBJECTS = {
    1: (
        200,
        240,
        [
            (3, _rect(10, 10, 30, 28)),
            (3, _rect(100, 40, 200, 160)),
            (17, _triangle(40, 120, 60)),
            (90, _rect(150, 5, 170, 25)),
        ],
    ),
    2: (
        160,
        160,
        [
            (17, _rect(5, 5, 150, 150)),
            (90, _triangle(20, 30, 40)),
            (3, _rect(60, 60, 70, 72)),
            (17, _rect(120, 2, 140, 12)),
        ],
    ),
    7: (
        120,
        300,
        [
            (90, _rect(0, 0, 299, 119)),
            (3, _triangle(200, 10, 30)),
            (17, _rect(20, 20, 36, 44)),
            (90, _rect(250, 80, 270, 100)),
        ],
    ),
}


def _polygon_mask(polygon, height, width):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects([polygon], height, width)))


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def _ground_truth():
    images, annotations = [], []
    for image_id, (height, width, objects) in _OBJECTS.items():
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.jpg"})
        for category_id, polygon in objects:
            xs, ys = polygon[0::2], polygon[1::2]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": [polygon],
                    "iscrowd": 0,
                    "area": float(_polygon_mask(polygon, height, width).sum()),
                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                }
            )
    # a crowd region on image 2: detections inside it are neither TP nor FP
    crowd = np.zeros((160, 160), np.uint8)
    crowd[100:150, 10:60] = 1
    counts = mask_util.encode(np.asfortranarray(crowd))
    uncompressed = [len(list(g)) for _, g in itertools.groupby(crowd.flatten(order="F"))]
    if crowd.flatten(order="F")[0] == 1:
        uncompressed = [0] + uncompressed
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 2,
            "category_id": 17,
            "iscrowd": 1,
            "segmentation": {"counts": uncompressed, "size": [160, 160]},
            "area": float(mask_util.area(counts)),
            "bbox": [10.0, 100.0, 50.0, 50.0],
        }
    )
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def _gt_mask(dataset, ann):
    image = next(i for i in dataset["images"] if i["id"] == ann["image_id"])
    return _polygon_mask(ann["segmentation"][0], image["height"], image["width"])


def _perfect_results(dataset, annotations=None):
    annotations = [a for a in dataset["annotations"] if not a["iscrowd"]] if annotations is None else annotations
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": list(a["bbox"]),
            "segmentation": _rle(_gt_mask(dataset, a)),
            "score": 0.9,
        }
        for a in annotations
    ]


def _perturbed_results(dataset, seed=0):
    """Jittered boxes/masks with varied scores, misses, class confusions and false positives."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in dataset["annotations"]:
        if ann["iscrowd"] or rng.uniform() < 0.15:
            continue
        mask = _gt_mask(dataset, ann)
        dx, dy = (int(v) for v in rng.integers(-4, 5, 2))
        shifted = np.roll(mask, (dy, dx), axis=(0, 1))
        x, y, w, h = ann["bbox"]
        category = ann["category_id"] if rng.uniform() > 0.1 else int(rng.choice(CATEGORY_IDS))
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": category,
                "bbox": [x + dx + rng.uniform(-1, 1), y + dy, w * rng.uniform(0.85, 1.15), h],
                "segmentation": _rle(shifted),
                "score": float(rng.uniform(0.3, 1.0)),
            }
        )
    for image in dataset["images"]:
        for _ in range(3):
            x0, y0 = rng.integers(0, image["width"] - 20), rng.integers(0, image["height"] - 20)
            mask = np.zeros((image["height"], image["width"]), np.uint8)
            mask[y0 : y0 + 15, x0 : x0 + 18] = 1
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [float(x0), float(y0), 18.0, 15.0],
                    "segmentation": _rle(mask),
                    "score": float(rng.uniform(0.0, 0.6)),
                }
            )
    return results


@pytest.fixture
def ground_truth():
    return _ground_truth()


@pytest.fixture
def ann_file(tmp_path, ground_truth):
    path = tmp_path / "instances_test.json"
    path.write_text(json.dumps(ground_truth))
    return path


def test_ground_truth_covers_every_area_range(ground_truth):
    areas = [a["area"] for a in ground_truth["annotations"] if not a["iscrowd"]]
    assert min(areas) < 32**2 and any(32**2 < a < 96**2 for a in areas) and max(areas) > 96**2


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_give_ap_one(ann_file, ground_truth, backend):
    results = _perfect_results(ground_truth)
    # a detection inside the crowd region is ignored, not a false positive
    results.append(
        {
            "image_id": 2,
            "category_id": 17,
            "bbox": [12.0, 102.0, 40.0, 40.0],
            "score": 0.95,
            "segmentation": _rle(np.pad(np.ones((40, 40), np.uint8), ((102, 18), (12, 108)))),
        }
    )
    report = evaluate_coco(ann_file, results, backend=backend)
    assert report["backend"] == backend and report["num_results"] == len(results)
    for iou_type in ("bbox", "segm"):
        stats = report[iou_type]
        assert list(stats) == list(STAT_NAMES)
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm", "ARl"):
            # pycocotools divides by tp + fp + eps, so 1.0 comes out as 1 - 1.1e-16
            assert stats[name] == pytest.approx(1.0, abs=1e-12), (iou_type, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_the_objects_found_gives_the_101_point_ap(ground_truth, backend):
    by_category = {}
    for ann in ground_truth["annotations"]:
        if not ann["iscrowd"]:
            by_category.setdefault(ann["category_id"], []).append(ann)
    assert all(len(anns) % 2 == 0 for anns in by_category.values())
    found = [ann for anns in by_category.values() for ann in anns[: len(anns) // 2]]
    report = evaluate_coco(ground_truth, _perfect_results(ground_truth, found), backend=backend)
    for iou_type in ("bbox", "segm"):
        # precision 1 up to recall 0.5, nothing after: 51 of COCO's 101 recall points
        assert report[iou_type]["AP"] == pytest.approx(51 / 101, abs=1e-12)
        assert report[iou_type]["AR100"] == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_boxes_at_iou_062_count_for_the_three_lowest_thresholds(ground_truth, backend):
    results = []
    for ann in ground_truth["annotations"]:
        if ann["iscrowd"]:
            continue
        x, y, w, h = ann["bbox"]
        # same height, width scaled by s with the left edge fixed: IoU = 1/s = 0.62
        results.append(
            {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": [x, y, w / 0.62, h], "score": 0.8}
        )
    stats = evaluate_coco(ground_truth, results, iou_types=["bbox"], backend=backend)["bbox"]
    assert "segm" not in evaluate_coco(ground_truth, results, iou_types=["bbox"], backend=backend)
    assert stats["AP50"] == 1.0 and stats["AP75"] == 0.0
    assert stats["AP"] == pytest.approx(3 / 10, abs=1e-12)  # IoU thresholds 0.50, 0.55, 0.60 of ten


@pytest.mark.parametrize("seed", range(4))
def test_all_backends_give_identical_stats(ann_file, ground_truth, seed):
    results = _perturbed_results(ground_truth, seed)
    reports = {b: evaluate_coco(ann_file, copy.deepcopy(results), backend=b) for b in BACKENDS}
    for iou_type in ("bbox", "segm"):
        a = reports["pycocotools"][iou_type]
        for other in BACKENDS[1:]:
            b = reports[other][iou_type]
            assert max(abs(a[k] - b[k]) for k in STAT_NAMES) <= 1e-12, (iou_type, other, a, b)
        assert 0.1 < a["AP"] < 0.9 and 0.3 < a["AP50"] < 0.95  # a result set where the numbers mean something


def test_auto_backend_prefers_the_direct_evaluator(ground_truth):
    pytest.importorskip("faster_coco_eval")
    assert evaluate_coco(ground_truth, _perfect_results(ground_truth), backend="auto")["backend"] == "direct"


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_results_warn_and_report_zero(ann_file, backend):
    with pytest.warns(RuntimeWarning, match="no detections"):
        report = evaluate_coco(ann_file, [], backend=backend)
    for iou_type in ("bbox", "segm"):
        assert report[iou_type] == dict.fromkeys(STAT_NAMES, 0.0)


def test_results_with_unknown_image_ids_name_the_annotation_file(ann_file, ground_truth):
    results = _perfect_results(ground_truth)
    results[0]["image_id"] = 12345
    with pytest.raises(InputError) as error:
        evaluate_coco(ann_file, results)
    assert error.value.path == str(ann_file) and "12345" in str(error.value)


def test_results_with_model_labels_instead_of_category_ids_are_rejected(ann_file, ground_truth):
    results = _perfect_results(ground_truth)
    results[0]["category_id"] = 1
    with pytest.raises(InputError, match=r"category ids \[1\]"):
        evaluate_coco(ann_file, results)


@pytest.mark.parametrize("missing", ["images", "annotations", "categories"])
def test_annotation_file_that_is_not_coco(tmp_path, ground_truth, missing):
    path = tmp_path / "not_coco.json"
    path.write_text(json.dumps({k: v for k, v in ground_truth.items() if k != missing}))
    with pytest.raises(InputError) as error:
        evaluate_coco(path, [])
    assert error.value.path == str(path) and f"'{missing}'" in error.value.cause


def test_unreadable_inputs(tmp_path, ann_file):
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    for path in (garbage, tmp_path / "absent.json"):
        with pytest.raises(InputError) as error:
            evaluate_coco(path, [])
        assert error.value.path == str(path)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(InputError, match="top level"):
        evaluate_coco(tmp_path / "list.json", [])
    with pytest.raises(InputError, match="lacks"):
        evaluate_coco(ann_file, [{"image_id": 1, "category_id": 3, "score": 1.0, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError):
        evaluate_coco(ann_file, [], backend="detectron")


def test_inputs_are_not_modified_and_coco_objects_and_result_files_are_accepted(tmp_path, ann_file, ground_truth):
    from pycocotools.coco import COCO

    results = _perturbed_results(ground_truth, seed=1)
    gt_before, results_before = copy.deepcopy(ground_truth), copy.deepcopy(results)
    from_dict = evaluate_coco(ground_truth, results, backend="pycocotools")
    assert ground_truth == gt_before and results == results_before
    results_file = tmp_path / "results.json"
    write_results_json(results_file, results)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
    from_files = evaluate_coco(coco, results_file, backend="pycocotools")
    assert from_files == from_dict


def test_format_stats_text_reproduces_pycocotools_summarize(ground_truth, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = _perturbed_results(ground_truth, seed=2)
    report = evaluate_coco(ground_truth, results, iou_types=["bbox"], backend="pycocotools")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        evaluator = COCOeval(
            gt, gt.loadRes([{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in results]), "bbox"
        )
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    text = format_stats_text(report)
    assert text.splitlines() == ["IoU metric: bbox"] + summary.getvalue().splitlines()

    write_stats_text(tmp_path / "evaluation_results.txt", report)
    write_stats_json(tmp_path / "stats.json", report)
    assert (tmp_path / "evaluation_results.txt").read_text() == text
    assert json.loads((tmp_path / "stats.json").read_text()) == report


def test_detections_to_coco_results_uses_the_plus_one_width():
    rle = {"size": [4, 4], "counts": "04"}
    results = detections_to_coco_results(
        7, np.array([[10, 20, 29, 39.5]], np.float32), np.float32([0.5]), np.array([90]), [rle]
    )
    assert results == [
        {"image_id": 7, "category_id": 90, "bbox": [10.0, 20.0, 20.0, 20.5], "score": 0.5, "segmentation": rle}
    ]
    assert json.loads(json.dumps(results)) == results


def test_results_from_detections_map_labels_to_category_ids():
    detections = Detections(
        boxes=np.array([[0, 0, 9, 4], [2, 2, 3, 3]], np.float32),
        scores=np.float32([0.9, 0.4]),
        labels=np.array([3, 1]),
        image_hw=(6, 12),
    )
    results = results_from_detections(5, detections, [4, 8, 30])
    assert [r["category_id"] for r in results] == [30, 4]
    assert results[0]["bbox"] == [0.0, 0.0, 10.0, 5.0] and "segmentation" not in results[0]
    none = Detections(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32), labels=np.zeros(0, int))
    assert results_from_detections(5, none, [4]) == []


def test_detections_to_json_keeps_the_scores_at_the_threshold():
    masks = np.zeros((2, 3, 4), np.uint8)
    masks[0, 1, 2] = 1
    detections = Prediction(  # the public name of the same type
        boxes=np.array([[0.12345, 1, 2, 3], [1, 1, 2, 2]], np.float32),
        scores=np.float32([0.7, 0.2]),
        labels=np.array([2, 1], np.int64),
        class_names=["b", "a"],
        masks=masks,
        image_hw=(3, 4),
    )
    record = detections_to_json(detections, score_threshold=0.5)
    rle = mask_util.encode(np.asfortranarray(masks[0]))
    assert record == {
        "height": 3,
        "width": 4,
        "detections": [
            {
                "label": 2,
                "class_name": "b",
                "score": 0.7,
                "box_xyxy": [0.123, 1.0, 2.0, 3.0],
                "mask_rle": {"size": [3, 4], "counts": rle["counts"].decode()},
            }
        ],
    }
    assert len(detections_to_json(detections)["detections"]) == 2
