"""``evaluate --convention seed`` against an independent reference of the Ascend seed's postprocess.

The reference below follows the structure of the seed's ``RetinaMask_postprocess.py`` and
``tools/utils.py`` (ACL_PyTorch/contrib/cv/detection/RetinaMask in Ascend ModelZoo): a greedy
NMS loop over label-shifted boxes, padding to 100 rows with float64 zeros, one resize ratio,
clipping to [0, w] x [0, h], a per-mask paste with Python's round() and cv2.resize, COCO box
width x2 - x1, categories by position, and pycocotools' loadRes on one result list from a
JSON file. Two synthetic shapes splits get seed-layout outputs made to separate the
conventions: small objects, boxes past the image border, tied scores, images whose NMS keeps
fewer than 100 boxes and images where it keeps more. Image ids are looked up in the
annotation file (the seed parses int(file stem), the id on COCO val2017 only).
"""

import contextlib
import io
import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinamask.apps.evaluate import evaluate_outputs
from retinamask.data.shapes import generate_shapes_dataset
from retinamask.decode.seed_convention import seed_nms, seed_paste_masks
from retinamask.evaluation.coco_eval import STAT_NAMES
from seed_outputs import S, write_seed_outputs

# ---------------------------------------------------------------------------------------------
# the reference: the seed's semantics, written plainly


def ref_nms(boxes, scores, thresh):
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return np.array(keep)


def ref_batched_nms(boxes, scores, labels, masks, iou_threshold=0.4, keep_num=100):
    offsets = np.float32(labels) * (boxes.max() + 1)
    keep = ref_nms(boxes + offsets[:, None], scores, iou_threshold)
    if len(keep) >= keep_num:
        return boxes[keep][:keep_num], labels[keep][:keep_num], scores[keep][:keep_num], masks[keep][:keep_num]
    pad = keep_num - len(keep)
    return (
        np.concatenate([boxes[keep], np.zeros((pad, 4))]),
        np.concatenate([labels[keep], -np.ones(pad, dtype=np.int64)]),
        np.concatenate([scores[keep], np.zeros(pad)]),
        np.concatenate([masks[keep], np.zeros((pad,) + masks.shape[1:])]),
    )


def ref_paste(mask, box, im_h, im_w, thresh=0.5, padding=1):
    m = mask.shape[-1]
    scale = float(m + 2 * padding) / m
    padded = np.zeros((m + 2 * padding, m + 2 * padding), dtype=np.float32)
    padded[padding:-padding, padding:-padding] = mask
    box = box[None].copy()
    w_half = (box[:, 2] - box[:, 0]) * 0.5
    h_half = (box[:, 3] - box[:, 1]) * 0.5
    x_c = (box[:, 2] + box[:, 0]) * 0.5
    y_c = (box[:, 3] + box[:, 1]) * 0.5
    w_half *= scale
    h_half *= scale
    expanded = np.zeros_like(box)
    expanded[:, 0], expanded[:, 2] = x_c - w_half, x_c + w_half
    expanded[:, 1], expanded[:, 3] = y_c - h_half, y_c + h_half
    box = expanded[0]
    w = round(max(box[2] - box[0] + 1, 1))
    h = round(max(box[3] - box[1] + 1, 1))
    resized = np.array(cv2.resize(padded, (w, h)) > thresh, dtype=np.uint8)
    box = [round(x) for x in box]
    im_mask = np.zeros((im_h, im_w), dtype=np.uint8)
    x_0, x_1, y_0, y_1 = max(box[0], 0), min(box[2], im_w), max(box[1], 0), min(box[3], im_h)
    im_mask[y_0:y_1, x_0:x_1] = resized[(y_0 - box[1]) : (y_1 - box[1]), (x_0 - box[0]) : (x_1 - box[0])]
    return im_mask


def ref_image_results(folder, name, image, categories, fix_shape=S):
    ori_h, ori_w = image["height"], image["width"]
    ratio = fix_shape / (ori_w if ori_w > ori_h else ori_h)
    bboxes = np.fromfile(folder / f"{name}_1.bin", dtype=np.float32).reshape(-1, 4)
    labels = np.fromfile(folder / f"{name}_2.bin", dtype=np.int32)
    scores = np.fromfile(folder / f"{name}_3.bin", dtype=np.float32)
    masks = np.fromfile(folder / f"{name}_4.bin", dtype=np.float32).reshape(-1, 1, 28, 28)
    bboxes, labels, scores, masks = ref_batched_nms(bboxes, scores, labels, masks)
    kept = int((labels >= 0).sum())
    bboxes /= ratio
    bboxes[:, 0::2] = np.clip(bboxes[:, 0::2], 0, ori_w)
    bboxes[:, 1::2] = np.clip(bboxes[:, 1::2], 0, ori_h)
    pasted = [ref_paste(mask[0], box, ori_h, ori_w) for mask, box in zip(masks, bboxes)]
    rles = [mask_util.encode(np.array(m[:, :, None], order="F"))[0] for m in pasted]
    bboxes[:, 2] = bboxes[:, 2] - bboxes[:, 0]
    bboxes[:, 3] = bboxes[:, 3] - bboxes[:, 1]
    results = []
    for i in range(len(labels)):
        if labels[i] < 0:
            continue
        results.append(
            {
                "image_id": image["id"],
                "category_id": categories[labels[i] - 1]["id"],
                "bbox": bboxes[i].tolist(),
                "score": float(scores[i]),
                "segmentation": {"size": rles[i]["size"], "counts": rles[i]["counts"].decode("utf-8")},
            }
        )
    return results, kept


def ref_stats(ann_file, results, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        path = tmp_path / "reference_results.json"
        path.write_text(json.dumps(results))
        dt = gt.loadRes(str(path))
        stats = []
        for iou_type in ("bbox", "segm"):
            evaluator = COCOeval(gt, dt, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats.append(evaluator.stats[:12].tolist())
    return stats


@pytest.fixture(scope="module", params=[3, 8], ids=["split_seed3", "split_seed8"])
def split(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"shapes{request.param}")
    paths = generate_shapes_dataset(root / "data", 0, 10, seed=request.param, min_size=8)
    dataset = json.loads(paths["val_annotations"].read_text())
    outputs = root / "outputs"
    outputs.mkdir()
    write_seed_outputs(outputs, dataset, request.param)
    return paths["val_annotations"], dataset, outputs


# ---------------------------------------------------------------------------------------------


def test_seed_convention_equals_the_seeds_postprocess(split, tmp_path):
    ann_file, dataset, outputs = split
    reference, kept = [], []
    for image in dataset["images"]:
        image_results, count = ref_image_results(
            outputs, image["file_name"].rsplit(".", 1)[0], image, dataset["categories"]
        )
        reference += image_results
        kept.append(count)
    assert min(kept) < 100 <= max(kept)  # both precisions of the seed's code path are exercised
    expected = ref_stats(ann_file, reference, tmp_path)

    # with the seed's evaluator (pycocotools): 24 of 24 stats bit for bit
    summary = evaluate_outputs(
        outputs,
        ann_file,
        canvas_side=S,
        convention="seed",
        workers=1,
        progress=False,
        output_path=tmp_path / "seed.txt",
        coco_backend="pycocotools",
    )
    assert [[summary["stats"][t][k] for k in STAT_NAMES] for t in ("bbox", "segm")] == expected
    ours = json.loads((tmp_path / "seed_coco_results.json").read_text())
    assert ours == json.loads(json.dumps(reference))  # the same boxes, scores, categories and RLE strings

    # with the default (direct) evaluator: the same to the last printed digit (C++ sums may differ by an ulp)
    direct = evaluate_outputs(
        outputs,
        ann_file,
        canvas_side=S,
        convention="seed",
        workers=2,
        progress=False,
        output_path=tmp_path / "direct.txt",
    )
    assert direct["stats"]["backend"] == "direct"
    got = [[direct["stats"][t][k] for k in STAT_NAMES] for t in ("bbox", "segm")]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert (tmp_path / "direct.txt").read_text() == (tmp_path / "seed.txt").read_text()

    # the same outputs under the original's convention: measurably different numbers
    original = evaluate_outputs(
        outputs, ann_file, canvas_side=S, workers=1, progress=False, output_path=tmp_path / "original.txt"
    )
    bbox_gap = abs(original["stats"]["bbox"]["AP"] - summary["stats"]["bbox"]["AP"])
    segm_gap = abs(original["stats"]["segm"]["AP"] - summary["stats"]["segm"]["AP"])
    assert bbox_gap > 0.005 and segm_gap > 0.001, (bbox_gap, segm_gap)


def test_seed_nms_equals_the_reference_loop():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 400))
        xy = rng.uniform(0, 300, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0, 60, (n, 2))], 1).astype(np.float32)
        scores = np.round(rng.uniform(0, 1, n), 1 + trial % 3).astype(np.float32)  # many ties
        labels = rng.integers(-1, 5, n).astype(np.int32)
        offsets = np.float32(labels) * (boxes.max() + 1)
        np.testing.assert_array_equal(seed_nms(boxes, scores, labels), ref_nms(boxes + offsets[:, None], scores, 0.4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seed_paste_equals_the_reference_paste(dtype):
    rng = np.random.default_rng(1)
    height, width = 37, 53
    xy = rng.uniform(-3, 50, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 12, (300, 2))], 1)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)  # the seed clips before pasting
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    boxes[::7] = np.round(boxes[::7] * 2) / 2  # half-pixel corners: round() ties
    boxes = boxes.astype(dtype)
    probs = rng.uniform(0, 1, (300, 28, 28)).astype(np.float32)
    pasted, areas = seed_paste_masks(probs, boxes, height, width, return_areas=True)
    for i in range(300):
        expected = ref_paste(probs[i], boxes[i], height, width)
        np.testing.assert_array_equal(pasted[i], expected, err_msg=f"box {boxes[i]}")
        assert areas[i] == expected.sum()


def test_seed_convention_where_the_seed_cannot_run():
    from retinamask.core.errors import InputError
    from retinamask.decode.coco_results import image_coco_results

    rng = np.random.default_rng(2)
    boxes = np.sort(rng.uniform(0, 60, (20, 4)).astype(np.float32).reshape(20, 2, 2), axis=1).reshape(20, 4)
    masks = rng.uniform(0, 1, (20, 1, 28, 28)).astype(np.float32)
    scores = rng.uniform(0, 1, 20).astype(np.float32)

    def run(boxes, labels):
        return image_coco_results(
            (boxes, labels, scores, masks), "seed", 1, (50, 60), None, [3, 9], convention="seed", canvas_side=64
        )

    with pytest.raises(InputError, match="label 0 but labels run from 1 to 2"):  # the seed: categories[-1]
        run(boxes, np.zeros(20, np.int32))
    with pytest.raises(InputError, match="label 3 but labels run from 1 to 2"):  # the seed: IndexError
        run(boxes, np.full(20, 3, np.int32))
    results, areas = run(np.zeros_like(boxes), np.ones(20, np.int32))  # all-zero boxes: the seed crashes
    assert results == [] and len(areas) == 0
    results, areas = run(boxes, np.where(np.arange(20) % 4 == 0, -1, 1 + np.arange(20) % 2).astype(np.int32))
    assert results and len(areas) == len(results)  # negative labels take part in the NMS, then are dropped
    assert {r["category_id"] for r in results} <= {3, 9}


def test_mask_paste_is_a_deprecated_alias_of_convention(split, tmp_path, capsys):
    from retinamask.cli import main

    ann_file, _, outputs = split
    common = [
        "evaluate",
        "--infer_results_path",
        str(outputs),
        "--ann_file",
        str(ann_file),
        "--input-size",
        str(S),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert main(common + ["--convention", "seed", "--output_path", str(tmp_path / "a.txt")]) == 0
    assert main(common + ["--mask-paste", "seed", "--output_path", str(tmp_path / "b.txt")]) == 0
    assert "--mask-paste is deprecated" in capsys.readouterr().err
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()
    assert (
        main(common + ["--convention", "original", "--mask-paste", "seed", "--output_path", str(tmp_path / "c.txt")])
        == 2
    )  # contradictory
