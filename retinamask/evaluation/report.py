"""``evaluate --report DIR``: an evaluation people can read (no torch).

Writes ``DIR/index.html``, one self-contained page (styles, script and pictures inline; the
pictures are also written beside it as PNG files), and ``DIR/report.json`` with its numbers:

* the 24 stats; AP and AR by object size with the number of ground-truth objects of each size;
* AP per class (bbox and segm: AP, AP50, AP75, by size), from COCOeval's precision array;
* precision-recall curves (all classes at IoU 0.50, 0.75 and averaged over 0.50:0.95; each
  class at 0.50), drawn with Pillow (:mod:`.plots`);
* the best and worst images (JPEG): each image scored by its F1 at mask IoU 0.5 over the detections
  with score >= ``score_threshold`` (greedy by score, as COCO matches), drawn as ground truth |
  detections with :mod:`retinamask.ops.draw`.

The page's script counts the pictures that decoded and writes the count into
``<body data-images-loaded=... data-images-total=...>`` (and shows a warning if any failed).
"""

import logging
from pathlib import Path

import numpy as np

from retinamask.formats.coco_layout import image_dir_of

logger = logging.getLogger(__name__)

AREA_LABELS = ("all", "small", "medium", "large")
AREA_RANGES = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e10)}


def _mean_valid(values):
    values = np.asarray(values)
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def per_class_ap(evaluation):
    """{category id: {"AP", "AP50", "AP75", "APs", "APm", "APl"}} (None where undefined) from the precision array."""
    precision = evaluation.precision  # [T, R, K, A, M]
    t50 = int(np.argmin(np.abs(evaluation.iou_thresholds - 0.5)))
    t75 = int(np.argmin(np.abs(evaluation.iou_thresholds - 0.75)))
    out = {}
    for k, cat_id in enumerate(evaluation.cat_ids):
        out[cat_id] = {
            "AP": _mean_valid(precision[:, :, k, 0, -1]),
            "AP50": _mean_valid(precision[t50, :, k, 0, -1]),
            "AP75": _mean_valid(precision[t75, :, k, 0, -1]),
        }
        for a, name in ((1, "APs"), (2, "APm"), (3, "APl")):
            out[cat_id][name] = _mean_valid(precision[:, :, k, a, -1])
    return out


def pr_curves(evaluation):
    """(recall points [R], {"IoU 0.50": precision [R], "IoU 0.75": ..., "IoU 0.50:0.95": ...},
    {cat id: precision@0.50 [R]});
    precision averaged over classes (and IoUs) where defined, -1 where nowhere defined."""
    precision = evaluation.precision[:, :, :, 0, -1]  # [T, R, K]
    t50 = int(np.argmin(np.abs(evaluation.iou_thresholds - 0.5)))
    t75 = int(np.argmin(np.abs(evaluation.iou_thresholds - 0.75)))

    def average(block):  # [..., R, K] -> [R]
        block = np.moveaxis(block, -2, 0).reshape(block.shape[-2], -1)
        valid = block > -1
        sums = np.where(valid, block, 0).sum(axis=1)
        counts = valid.sum(axis=1)
        return np.where(counts > 0, sums / np.maximum(counts, 1), -1.0)

    overall = {
        "IoU 0.50": average(precision[t50]),
        "IoU 0.75": average(precision[t75]),
        "IoU 0.50:0.95": average(precision),
    }
    per_class = {cat_id: precision[t50, :, k] for k, cat_id in enumerate(evaluation.cat_ids)}
    return evaluation.recall_thresholds, overall, per_class


def _pair_ious_fallback(dataset, results, iou_type):
    """{(image, category): (IoU [D,G], result rows by score, annotation positions)} with pycocotools,
    for evaluations that did not keep their IoUs (the pycocotools and faster-coco-eval backends)."""
    import pycocotools.mask as mask_util

    sizes = {image["id"]: (image["height"], image["width"]) for image in dataset["images"]}
    gt_pairs, dt_pairs = {}, {}
    for position, annotation in enumerate(dataset["annotations"]):
        gt_pairs.setdefault((annotation["image_id"], annotation["category_id"]), []).append(position)
    for row, result in enumerate(results):
        dt_pairs.setdefault((result["image_id"], result["category_id"]), []).append(row)
    out = {}
    for pair, rows in dt_pairs.items():
        if pair not in gt_pairs:
            continue
        rows = sorted(rows, key=lambda r: -results[r]["score"])[:100]
        annotations = [dataset["annotations"][p] for p in gt_pairs[pair]]
        crowd = [int(a.get("iscrowd", 0)) for a in annotations]
        if iou_type == "bbox":
            ious = mask_util.iou([results[r]["bbox"] for r in rows], [a["bbox"] for a in annotations], crowd)
        else:
            height, width = sizes[pair[0]]
            gt = []
            for a in annotations:
                segm = a["segmentation"]
                rle = (
                    mask_util.merge(mask_util.frPyObjects(segm, height, width))
                    if isinstance(segm, list)
                    else mask_util.frPyObjects(segm, height, width)
                    if isinstance(segm["counts"], list)
                    else segm
                )
                gt.append(rle)
            ious = mask_util.iou([results[r]["segmentation"] for r in rows], gt, crowd)
        out[pair] = (np.asarray(ious, dtype=np.float64).reshape(len(rows), -1), rows, gt_pairs[pair])
    return out


def image_scores(dataset, results, pair_ious, score_threshold=0.5, iou_threshold=0.5):
    """{image id: {"tp", "fp", "fn", "f1"}}: detections with score >= score_threshold matched
    greedily by score to unmatched ground truth at IoU >= iou_threshold (crowd regions absorb
    detections without counting); F1 = 2 TP / (2 TP + FP + FN), 1 for an empty image left empty."""
    annotations = dataset["annotations"]
    scores = {image["id"]: {"tp": 0, "fp": 0, "fn": 0} for image in dataset["images"]}
    for annotation in annotations:
        if not annotation.get("iscrowd", 0):
            scores[annotation["image_id"]]["fn"] += 1
    for result in results:
        if result["score"] >= score_threshold:
            scores[result["image_id"]]["fp"] += 1
    for (image_id, _), (ious, rows, positions) in pair_ious.items():
        crowd = np.array([bool(annotations[p].get("iscrowd", 0)) for p in positions])
        taken = crowd.copy()
        for d, row in enumerate(rows):
            if results[row]["score"] < score_threshold:
                break
            candidates = np.where(taken, -1.0, ious[d])
            best = int(np.argmax(candidates)) if candidates.size else -1
            if best >= 0 and candidates[best] >= iou_threshold:
                taken[best] = True
                scores[image_id]["tp"] += 1
                scores[image_id]["fp"] -= 1
                scores[image_id]["fn"] -= 1
            elif crowd.any() and ious[d][crowd].max() >= iou_threshold:
                scores[image_id]["fp"] -= 1
    for entry in scores.values():
        denominator = 2 * entry["tp"] + entry["fp"] + entry["fn"]
        entry["f1"] = 1.0 if denominator == 0 else 2 * entry["tp"] / denominator
    return scores


def _overlay_jpeg(image_rgb, dataset_image, annotations, results, names, label_of, score_threshold, convention):
    """JPEG bytes: ground truth | detections, each panel at most 420 px wide."""
    import cv2
    import pycocotools.mask as mask_util

    from retinamask.core.detections import Prediction
    from retinamask.ops.draw import draw_prediction

    height, width = image_rgb.shape[:2]

    def prediction(items, boxes_of, masks_of, scores_of):
        boxes = np.array([boxes_of(i) for i in items], dtype=np.float32).reshape(-1, 4)
        masks = np.stack([masks_of(i) for i in items]) if items else np.zeros((0, height, width), np.uint8)
        labels = np.array([label_of[i["category_id"]] for i in items], dtype=np.int64)
        return Prediction(
            boxes,
            np.array([scores_of(i) for i in items], np.float32),
            labels,
            [names[i["category_id"]] for i in items],
            masks,
            None,
            (height, width),
        )

    def gt_mask(annotation):
        segm = annotation["segmentation"]
        rle = (
            mask_util.merge(mask_util.frPyObjects(segm, height, width))
            if isinstance(segm, list)
            else mask_util.frPyObjects(segm, height, width)
            if isinstance(segm["counts"], list)
            else segm
        )
        return mask_util.decode(rle)

    extra = 0.0 if convention == "seed" else 1.0  # the seed's width is x2 - x1, the original's x2 - x1 + 1
    kept = sorted((r for r in results if r["score"] >= score_threshold), key=lambda r: -r["score"])
    truth = prediction(
        annotations,
        lambda a: [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2] - 1, a["bbox"][1] + a["bbox"][3] - 1],
        gt_mask,
        lambda a: 1.0,
    )
    found = prediction(
        kept,
        lambda r: [
            r["bbox"][0],
            r["bbox"][1],
            r["bbox"][0] + r["bbox"][2] - extra,
            r["bbox"][1] + r["bbox"][3] - extra,
        ],
        lambda r: mask_util.decode(r["segmentation"]),
        lambda r: r["score"],
    )
    panels = [
        draw_prediction(image_rgb, truth, score_threshold=0.0, show_scores=False, min_side=0),
        draw_prediction(image_rgb, found, score_threshold=score_threshold, min_side=0),
    ]
    factor = min(1.0, 420.0 / width)
    if factor < 1.0:
        panels = [
            cv2.resize(p, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA) for p in panels
        ]
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    ok, data = cv2.imencode(
        ".jpg",
        cv2.cvtColor(np.concatenate([panels[0], gap, panels[1]], axis=1), cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, 88],
    )
    return data.tobytes() if ok else None


def _default_image_dir(ann_file):
    """coco/annotations/instances_val2017.json -> coco/val2017 (the COCO and shapes layouts)."""
    return None if ann_file is None else image_dir_of(ann_file)


def write_report(
    report_dir, dataset, results, evaluations, summary, ann_file=None, image_dir=None, score_threshold=0.5, num_images=4
):
    """Write the report (see the module docstring) into ``report_dir``; return the path of index.html.

    evaluations: {iou type: CocoEvaluation} (``evaluate_coco(return_evaluations=True)``; their
    kept IoUs are used, else recomputed); summary: ``evaluate_outputs``' summary (for the header).
    """
    from retinamask.core.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
    from retinamask.evaluation.report_html import render_page

    report_dir = Path(report_dir)
    (report_dir / "images").mkdir(parents=True, exist_ok=True)
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset["categories"]}
    pictures = []  # (file name relative to report_dir, PNG or JPEG bytes, caption)

    def picture(name, data, caption):
        atomic_write_bytes(report_dir / name, data)
        pictures.append((name, data, caption))
        return len(pictures) - 1

    numbers = {
        "stats": {t: summary["stats"][t] for t in evaluations},
        "per_class": {},
        "gt_counts": _ground_truth_counts(dataset, names),
        "score_threshold": score_threshold,
    }
    curves = {}
    for iou_type, evaluation in evaluations.items():
        numbers["per_class"][iou_type] = per_class_ap(evaluation)
        curves[iou_type] = _draw_pr_curves(evaluation, iou_type, names, picture)

    ranking_type = "segm" if "segm" in evaluations else next(iter(evaluations))
    pair_ious = evaluations[ranking_type].ious or _pair_ious_fallback(dataset, results, ranking_type)
    scores = image_scores(dataset, results, pair_ious, score_threshold)
    order = sorted(scores, key=lambda i: (-scores[i]["f1"], -(scores[i]["tp"] + scores[i]["fn"]), i))
    best = order[:num_images]
    worst = sorted(scores, key=lambda i: (scores[i]["f1"], -(scores[i]["fp"] + scores[i]["fn"]), i))[:num_images]
    worst = [i for i in worst if i not in best] or worst
    image_dir = Path(image_dir) if image_dir is not None else _default_image_dir(ann_file)
    shown, missing = _draw_ranked_images(
        dataset,
        results,
        scores,
        {"best": best, "worst": worst},
        image_dir,
        names,
        score_threshold,
        summary.get("convention", "original"),
        picture,
    )
    if missing:
        logger.warning("report: %d image(s) not drawn, e.g. %s", len(missing), missing[0])
    numbers["images"] = {
        "ranked_by": f"{ranking_type} F1 at IoU 0.5, score >= {score_threshold}",
        **shown,
        "not_drawn": missing,
    }

    index = report_dir / "index.html"
    atomic_write_text(index, render_page(summary, numbers, names, curves, shown, pictures, missing))
    atomic_write_json(report_dir / "report.json", numbers)
    return index


def _ground_truth_counts(dataset, names):
    """{category id: {"all", "small", "medium", "large": non-crowd ground-truth objects}} (every category in
    ``names`` listed, zeros included)."""
    gt_counts = {cat: dict.fromkeys(AREA_LABELS, 0) for cat in names}
    for annotation in dataset["annotations"]:
        if annotation.get("iscrowd", 0):
            continue
        counts = gt_counts.setdefault(annotation["category_id"], dict.fromkeys(AREA_LABELS, 0))
        counts["all"] += 1
        for size, (low, high) in AREA_RANGES.items():
            counts[size] += int(low <= annotation["area"] < high)
    return gt_counts


def _draw_pr_curves(evaluation, iou_type, names, picture):
    """(all-classes picture index, per-class picture index): the two precision-recall charts of one IoU
    type, written with ``picture(name, png bytes, caption) -> index``."""
    from retinamask.evaluation.plots import line_chart_png

    recall, overall, per_class = pr_curves(evaluation)
    return (
        picture(
            f"images/pr_{iou_type}.png",
            line_chart_png(
                [(label, recall, values) for label, values in overall.items()],
                f"{iou_type}: precision-recall, all classes",
            ),
            f"{iou_type}: all classes",
        ),
        picture(
            f"images/pr_{iou_type}_per_class.png",
            line_chart_png(
                [(names.get(cat, str(cat)), recall, values) for cat, values in per_class.items()],
                f"{iou_type}: precision-recall per class at IoU 0.50",
            ),
            f"{iou_type}: per class, IoU 0.50",
        ),
    )


def _draw_ranked_images(dataset, results, scores, ranked, image_dir, names, score_threshold, convention, picture):
    """({"best": [entry], "worst": [entry]}, [why each undrawn image was not drawn]).

    ranked: {"best": [image id], "worst": [image id]}; each entry is the image's id, file name and
    scores, plus the index of its JPEG (ground truth | detections, written with ``picture``) when drawn.
    """
    from retinamask.core.errors import InputError
    from retinamask.formats.images import load_image_rgb

    label_of = {c["id"]: i + 1 for i, c in enumerate(dataset["categories"])}
    images = {image["id"]: image for image in dataset["images"]}
    annotations_of, results_of = {}, {}
    for annotation in dataset["annotations"]:
        annotations_of.setdefault(annotation["image_id"], []).append(annotation)
    for result in results:
        results_of.setdefault(result["image_id"], []).append(result)
    shown, missing = {"best": [], "worst": []}, []
    for group, ids in ranked.items():
        for rank, image_id in enumerate(ids, start=1):
            entry = {"image_id": image_id, "file_name": images[image_id]["file_name"], **scores[image_id]}
            path = image_dir / images[image_id]["file_name"] if image_dir is not None else None
            try:
                if path is None:
                    raise InputError("no image folder (pass --image-dir)")
                rgb = load_image_rgb(path)
                data = _overlay_jpeg(
                    rgb,
                    images[image_id],
                    annotations_of.get(image_id, []),
                    results_of.get(image_id, []),
                    names,
                    label_of,
                    score_threshold,
                    convention,
                )
                entry["picture"] = picture(f"images/{group}_{rank}.jpg", data, entry["file_name"])
            except (InputError, OSError, ValueError) as e:
                missing.append(f"{images[image_id]['file_name']}: {getattr(e, 'cause', e)}")
            shown[group].append(entry)
    return shown, missing
