"""COCO bbox/segm evaluation of detection results (no torch).

Results are COCO result dicts: ``image_id``, ``category_id``, ``score`` and
``bbox`` ([x, y, w, h]) and/or ``segmentation`` (compressed RLE). By default, as in the
original (maskrcnn_benchmark's coco_eval), bbox and segm are evaluated on separate result
lists, so a segm result's area is its mask area; ``segm_area="box"`` evaluates one list
holding both, as the seed does, so that ``loadRes`` gives segm results their box's area.

Backends: ``direct`` (faster-coco-eval's C++ evaluator fed our own IoUs,
:mod:`retinamask.evaluation.coco_fast`; the default where faster-coco-eval is installed),
``faster-coco-eval`` (its COCO API) and ``pycocotools``. All give the same 24 stats.
"""

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np

from retinamask.core.errors import InputError
from retinamask.core.fileio import atomic_write_json, atomic_write_text, json_default

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")
BACKENDS = ("auto", "direct", "pycocotools", "faster-coco-eval")
SEGM_AREAS = ("mask", "box")
_REQUIRED_GT_KEYS = ("images", "annotations", "categories")

# (title, IoU label, area, maxDets) for each of the 12 stats, as pycocotools' summarize() prints them
_SUMMARY_LINES = (
    ("Average Precision  (AP)", "0.50:0.95", "all", 100),
    ("Average Precision  (AP)", "0.50", "all", 100),
    ("Average Precision  (AP)", "0.75", "all", 100),
    ("Average Precision  (AP)", "0.50:0.95", "small", 100),
    ("Average Precision  (AP)", "0.50:0.95", "medium", 100),
    ("Average Precision  (AP)", "0.50:0.95", "large", 100),
    ("Average Recall     (AR)", "0.50:0.95", "all", 1),
    ("Average Recall     (AR)", "0.50:0.95", "all", 10),
    ("Average Recall     (AR)", "0.50:0.95", "all", 100),
    ("Average Recall     (AR)", "0.50:0.95", "small", 100),
    ("Average Recall     (AR)", "0.50:0.95", "medium", 100),
    ("Average Recall     (AR)", "0.50:0.95", "large", 100),
)


def _read_json(path, what):
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {what}: {e}", path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"{what} is not valid JSON: {e}", path) from None


def load_ground_truth(ann_file_or_coco):
    """The COCO ground-truth dataset dict, checked to have images, annotations and categories.

    Accepts a path to an annotation JSON, a dataset dict, or a COCO object
    (pycocotools or faster-coco-eval: anything with a ``.dataset`` dict).
    Returns (dataset dict, path or None). Raises InputError naming the file.
    """
    path = None
    if isinstance(ann_file_or_coco, (str, Path)):
        path = Path(ann_file_or_coco)
        dataset = _read_json(path, "annotation file")
    elif isinstance(ann_file_or_coco, dict):
        dataset = ann_file_or_coco
    elif isinstance(getattr(ann_file_or_coco, "dataset", None), dict):
        dataset = ann_file_or_coco.dataset
        path = getattr(ann_file_or_coco, "annotation_file", None)
        path = path if isinstance(path, (str, Path)) else None
    else:
        raise TypeError(
            f"expected an annotation file path, a dataset dict or a COCO object, got {type(ann_file_or_coco)}"
        )

    if not isinstance(dataset, dict):
        raise InputError(f"not a COCO annotation file: top level is a {type(dataset).__name__}, not an object", path)
    for key in _REQUIRED_GT_KEYS:
        if key not in dataset:
            raise InputError(f"not a COCO annotation file: missing key '{key}'", path)
        if not isinstance(dataset[key], list):
            raise InputError(f"not a COCO annotation file: '{key}' is not a list", path)
    return dataset, path


def _load_results(results):
    """Results list and its path (or None) from a list or a results JSON path."""
    path = None
    if isinstance(results, (str, Path)):
        path = Path(results)
        results = _read_json(path, "results file")
    if not isinstance(results, list):
        raise InputError(f"results must be a list of COCO result objects, got {type(results).__name__}", path)
    return results, path


def _check_results(results, results_path, dataset, ann_path, iou_types):
    required = {"image_id", "category_id", "score"} | {"bbox" if t == "bbox" else "segmentation" for t in iou_types}
    for index, result in enumerate(results):
        if not isinstance(result, dict):
            raise InputError(f"result {index} is a {type(result).__name__}, not an object", results_path)
        missing = required.difference(result)
        if missing:
            raise InputError(f"result {index} lacks {sorted(missing)} needed for {list(iou_types)}", results_path)

    image_ids = {image["id"] for image in dataset["images"]}
    unknown_images = sorted({r["image_id"] for r in results} - image_ids)
    if unknown_images:
        raise InputError(
            f"{len(unknown_images)} image ids in the results are absent from the annotation file, "
            f"e.g. {unknown_images[:10]}",
            ann_path,
        )
    category_ids = {category["id"] for category in dataset["categories"]}
    unknown_categories = sorted({r["category_id"] for r in results} - category_ids)
    if unknown_categories:
        # COCOeval would silently ignore them; it is almost always a label -> category id mapping bug
        raise InputError(
            f"category ids {unknown_categories[:10]} in the results are absent from the annotation file "
            f"(its ids: {sorted(category_ids)[:10]}...)",
            ann_path,
        )


def _results_for(results, iou_type, segm_area="mask"):
    """Fresh dicts with only the fields for one iou type (COCO tools add fields in place); with
    ``segm_area="box"`` each keeps its box and mask, so that loadRes gives it its box's area."""
    if segm_area == "box":
        return [
            {
                "image_id": r["image_id"],
                "category_id": r["category_id"],
                "score": r["score"],
                "bbox": r["bbox"],
                "segmentation": r["segmentation"],
            }
            for r in results
        ]
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    return [
        {"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"], geometry: r[geometry]}
        for r in results
    ]


def _resolve_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            return "pycocotools"
        from retinamask.evaluation.coco_fast import direct_available

        return "direct" if direct_available() else "faster-coco-eval"
    return backend


def _ground_truth_copy(dataset):
    # Shallow-copy each annotation: COCOeval writes 'ignore' into them and
    # pycocotools replaces polygons by RLE, which must not leak into the caller's data.
    return {
        **dataset,
        "images": list(dataset["images"]),
        "categories": list(dataset["categories"]),
        "annotations": [dict(a) for a in dataset["annotations"]],
    }


def _empty_detections(dataset):
    return {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}


def _run_pycocotools(dataset, results_by_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def coco_from(data):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
        return coco

    stats = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_from(_ground_truth_copy(dataset))
        for iou_type, results in results_by_type.items():
            dt = gt.loadRes(results) if results else coco_from(_empty_detections(dataset))
            evaluator = COCOeval(gt, dt, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats[iou_type] = _evaluation(iou_type, evaluator)
    return stats


def _evaluation(iou_type, evaluator):
    from retinamask.evaluation.coco_fast import CocoEvaluation

    params = evaluator.params
    return CocoEvaluation(
        iou_type=iou_type,
        stats=np.asarray(evaluator.stats[:12], dtype=np.float64),
        precision=np.asarray(evaluator.eval["precision"]),
        recall=np.asarray(evaluator.eval["recall"]),
        cat_ids=list(params.catIds),
        iou_thresholds=np.asarray(params.iouThrs),
        recall_thresholds=np.asarray(params.recThrs),
        area_labels=list(params.areaRngLbl),
    )


def _run_faster_coco_eval(dataset, results_by_type):
    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*args, **kwargs):
        pass

    stats = {}
    gt = COCO(_ground_truth_copy(dataset), print_function=quiet)
    for iou_type, results in results_by_type.items():
        dt = gt.loadRes(results) if results else COCO(_empty_detections(dataset), print_function=quiet)
        evaluator = COCOeval_faster(gt, dt, iou_type, print_function=quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats[iou_type] = _evaluation(iou_type, evaluator)  # it appends AR50 and AR75 after the standard 12
    return stats


def evaluate_coco(
    ann_file_or_coco,
    results,
    iou_types=IOU_TYPES,
    backend="auto",
    segm_area="mask",
    segm_areas=None,
    return_evaluations=False,
    keep_ious=False,
    threads=None,
):
    """COCO evaluation of ``results`` against a ground truth.

    ann_file_or_coco: annotation JSON path, dataset dict or COCO object.
    results: list of COCO result dicts (or a path to a results JSON); each needs
    image_id, category_id, score, and bbox [x,y,w,h] for "bbox", segmentation
    (compressed RLE, counts str or bytes) for "segm".
    backend: "auto" (``direct`` when faster-coco-eval is importable, else pycocotools),
    "direct", "pycocotools" or "faster-coco-eval".
    segm_area: "mask" (bbox and segm evaluated on separate lists: a segm result's area is
    its mask's, the original's evaluation) or "box" (one list holding both, the seed's: its
    box's w * h). segm_areas: the results' mask areas [N] where known (``direct`` then decodes
    no mask for them).
    Returns {"backend": name, "num_results": n, <iou_type>: {stat name: float}}
    with the 12 standard stats (STAT_NAMES) per iou type; a stat is -1 where the
    ground truth has no object in that area range, as COCO reports it. With
    ``return_evaluations``: (that report, {iou_type: CocoEvaluation}) (``keep_ious``: the
    direct backend keeps each (image, category) pair's IoUs in them). threads: the direct
    backend's threads (default: the CPUs this process may use, at most 8).

    No results at all is not an error: it warns and reports what COCO gives for
    no detections (AP 0). Image or category ids absent from the ground truth and a
    ground truth that is not COCO raise InputError naming the file.
    """
    iou_types = tuple(iou_types)
    unsupported = [t for t in iou_types if t not in IOU_TYPES]
    if unsupported or not iou_types:
        raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {list(iou_types)}")
    if segm_area not in SEGM_AREAS:
        raise ValueError(f"segm_area must be one of {SEGM_AREAS}, got {segm_area!r}")
    name = _resolve_backend(backend)
    dataset, ann_path = load_ground_truth(ann_file_or_coco)
    results, results_path = _load_results(results)
    needed = tuple(IOU_TYPES) if segm_area == "box" and "segm" in iou_types else iou_types
    _check_results(results, results_path, dataset, ann_path, needed)
    if not results:
        warnings.warn(
            "no detections to evaluate: AP and AR are 0 (-1 for area ranges without ground truth)",
            RuntimeWarning,
            stacklevel=2,
        )

    if name == "direct" and results:
        from retinamask.evaluation.coco_fast import evaluate_direct

        evaluations = evaluate_direct(
            dataset,
            results,
            iou_types,
            segm_areas=segm_areas,
            segm_area=segm_area,
            keep_ious=keep_ious,
            threads=threads,
        )
    else:
        results_by_type = {iou_type: _results_for(results, iou_type, segm_area) for iou_type in iou_types}
        run = _run_pycocotools if name == "pycocotools" else _run_faster_coco_eval
        evaluations = run(dataset, results_by_type)

    report = {"backend": name, "num_results": len(results)}
    for iou_type in iou_types:
        report[iou_type] = {stat: float(value) for stat, value in zip(STAT_NAMES, evaluations[iou_type].stats)}
    return (report, evaluations) if return_evaluations else report


def format_stats_text(stats):
    """The 12 stats per iou type as pycocotools' summarize() prints them, under an "IoU metric" header."""
    lines = []
    for iou_type in IOU_TYPES:
        if iou_type not in stats:
            continue
        lines.append(f"IoU metric: {iou_type}")
        for (title, iou, area, max_dets), name in zip(_SUMMARY_LINES, STAT_NAMES):
            lines.append(
                f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {stats[iou_type][name]:0.3f}"
            )
    return "\n".join(lines) + "\n"


def write_results_json(path, results):
    """Write COCO results (list of dicts; numpy scalars and bytes RLE counts allowed) atomically."""
    atomic_write_text(path, json.dumps(results, default=json_default))


def write_stats_json(path, stats):
    """Write the ``evaluate_coco`` report as JSON atomically."""
    atomic_write_json(path, stats)


def write_stats_text(path, stats):
    """Write ``format_stats_text(stats)`` atomically (the seed's evaluation_results.txt)."""
    atomic_write_text(path, format_stats_text(stats))
