"""COCO bbox/segm evaluation fed decoded data: faster-coco-eval's C++ matching and
accumulation, with our own preparation in front of it (no torch).

``COCO.loadRes`` + ``COCOeval`` spend most of their time on work our results do not need:
copying every result dict, decoding every mask's RLE string to get its area and its box
(both known: we pasted the masks), decoding it once more to build the evaluator's masks.
Here the results are read into columns once, areas and boxes come from the caller, each
mask string is decoded exactly once, inside the IoU of its own (image, category) pair, and
only for detections of categories the image has ground truth of; the IoU matrices go
straight into faster-coco-eval's ``COCOevalEvaluateAccumulate`` (the C++ core that its own
``COCOeval_faster`` calls) and its ``summarize``. The 12 stats per IoU type equal
pycocotools' (tests/test_evaluation_coco_fast.py; benchmarks/coco_eval_speed.py).
"""

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CocoEvaluation:
    """One IoU type's evaluation: the 12 stats and what the report draws from.

    stats float [12] (pycocotools' order); precision float [T,R,K,A,M] and recall [T,K,A,M]
    (pycocotools' ``eval`` arrays: IoU thresholds x recall points x categories x area ranges
    x max detections, -1 where undefined); cat_ids [K]; ious {(image id, category id):
    float [D,G] IoUs of the pair's top-100 detections by score (``dt_index`` rows into the
    results) against its ground truth (``gt_index`` rows into the annotations)}.
    """

    iou_type: str
    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    cat_ids: list
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    area_labels: list
    ious: dict = field(default_factory=dict)


def direct_available():
    """Whether the installed faster-coco-eval has the entry points this module uses (1.8 has them)."""
    try:
        from faster_coco_eval import COCOeval_faster  # noqa: F401
        from faster_coco_eval import faster_eval_api_cpp as cpp
        from faster_coco_eval.core import mask  # noqa: F401
    except ImportError:
        return False
    return hasattr(cpp, "COCOevalEvaluateAccumulate") and hasattr(cpp.Dataset(), "append_ref")


_MAX_DETS = 100  # COCOeval's maxDets[-1]: the detections of an (image, category) pair that are matched


def _gt_rle(annotation, height, width, mask_api):
    """The ground truth's RLE, as ``COCO.annToRLE`` makes it (polygons, uncompressed or compressed RLE)."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        return mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_api.frPyObjects(segmentation, height, width)
    return segmentation


class _GroundTruth:
    """The annotations grouped by (image id, category id), with what the C++ evaluator reads."""

    def __init__(self, dataset):
        self.image_ids = sorted(int(image["id"]) for image in dataset["images"])
        self.cat_ids = sorted(int(category["id"]) for category in dataset["categories"])
        self.sizes = {int(image["id"]): (int(image["height"]), int(image["width"])) for image in dataset["images"]}
        self.annotations = dataset["annotations"]
        self.by_pair = defaultdict(list)  # (image, category) -> annotation positions
        for position, annotation in enumerate(self.annotations):
            self.by_pair[int(annotation["image_id"]), int(annotation["category_id"])].append(position)
        self._rles = {}

    def records(self, positions):
        """Fresh {id, area, iscrowd, ignore} dicts (``ignore`` = ``iscrowd``, as COCOeval sets it)."""
        out = []
        for position in positions:
            annotation = self.annotations[position]
            crowd = int(annotation.get("iscrowd", 0))
            out.append({"id": annotation["id"], "area": annotation["area"], "iscrowd": crowd, "ignore": crowd})
        return out

    def rles(self, pair, mask_api):
        if pair not in self._rles:
            height, width = self.sizes[pair[0]]
            self._rles[pair] = [_gt_rle(self.annotations[p], height, width, mask_api) for p in self.by_pair[pair]]
        return self._rles[pair]

    def crowd(self, pair):
        return [int(self.annotations[p].get("iscrowd", 0)) for p in self.by_pair[pair]]


def _detection_columns(results):
    """Results -> (image ids int64 [N], category ids int64 [N], scores float64 [N], pairs {(img, cat): rows})."""
    n = len(results)
    image_ids = np.fromiter((r["image_id"] for r in results), dtype=np.int64, count=n)
    category_ids = np.fromiter((r["category_id"] for r in results), dtype=np.int64, count=n)
    scores = np.fromiter((r["score"] for r in results), dtype=np.float64, count=n)
    pairs = defaultdict(list)
    for row, pair in enumerate(zip(image_ids.tolist(), category_ids.tolist())):
        pairs[pair].append(row)
    return image_ids, category_ids, scores, pairs


def _thread_count():
    import os

    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except (AttributeError, OSError):
        return max(1, min(os.cpu_count() or 1, 8))


def evaluate_direct(
    dataset, results, iou_types=("bbox", "segm"), segm_areas=None, segm_area="mask", keep_ious=False, threads=None
):
    """COCO evaluation of ``results`` (checked COCO result dicts) against ``dataset`` (a GT dict).

    segm_areas: float [N] mask areas of the results (pixel counts), when the caller knows them;
    otherwise they are computed from the RLEs. segm_area: "mask" (each segm result's area is
    its mask's, as when bbox and segm results are evaluated as separate lists: the original's
    evaluation) or "box" (its box's w * h: one list holding both, as the seed evaluates).
    threads: for the IoUs and the two IoU types (default: the CPUs this process may use, at
    most 8; they overlap where faster-coco-eval's C++ code releases the GIL).
    keep_ious: keep each pair's IoU matrix (the report).
    Returns {iou type: CocoEvaluation}. Needs faster-coco-eval.
    """
    from concurrent.futures import ThreadPoolExecutor

    from faster_coco_eval.core import mask as mask_api

    if segm_area not in ("mask", "box"):
        raise ValueError(f"segm_area must be mask or box, got {segm_area!r}")
    iou_types = tuple(iou_types)
    gt = _GroundTruth(dataset)
    _, _, scores, det_pairs = _detection_columns(results)
    boxes = None
    if "bbox" in iou_types or ("segm" in iou_types and segm_area == "box"):
        boxes = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
    # pycocotools: the detections of a pair sorted by score (stable), the first maxDets[-1] matched;
    # only pairs with ground truth need it (the others' detections are all unmatched)
    order = {}
    for pair, rows in det_pairs.items():
        if pair in gt.by_pair:
            rows = np.asarray(rows, dtype=np.int64)
            order[pair] = rows[np.argsort(-scores[rows], kind="stable")][:_MAX_DETS].tolist()
    gt_boxes = (
        {pair: np.array([gt.annotations[p]["bbox"] for p in gt.by_pair[pair]], dtype=np.float64) for pair in order}
        if "bbox" in iou_types
        else {}
    )
    gt_rles = {pair: gt.rles(pair, mask_api) for pair in order} if "segm" in iou_types else {}

    def pair_iou(task):
        iou_type, pair = task
        crowd = gt.crowd(pair)
        if iou_type == "bbox":
            return mask_api.iou(boxes[order[pair]], gt_boxes[pair], crowd)
        return mask_api.iou([results[r]["segmentation"] for r in order[pair]], gt_rles[pair], crowd)

    def areas_for(iou_type):
        if iou_type == "bbox" or segm_area == "box":
            areas = boxes[:, 2] * boxes[:, 3]
        elif segm_areas is not None:
            areas = np.asarray(segm_areas, dtype=np.float64).reshape(-1)
        else:
            areas = np.array([float(mask_api.area(r["segmentation"])) for r in results], dtype=np.float64)
        if areas.shape[0] != len(results):
            raise ValueError(f"{areas.shape[0]} areas for {len(results)} results")
        return areas

    tasks = [(iou_type, pair) for iou_type in iou_types for pair in order]
    threads = _thread_count() if threads is None else max(1, int(threads))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        computed = list(pool.map(pair_iou, tasks, chunksize=64)) if threads > 1 else [pair_iou(t) for t in tasks]
        ious = {iou_type: {} for iou_type in iou_types}
        for (iou_type, pair), matrix in zip(tasks, computed):
            ious[iou_type][pair] = np.asarray(matrix, dtype=np.float64).reshape(len(order[pair]), -1)
        jobs = [(iou_type, ious[iou_type], areas_for(iou_type)) for iou_type in iou_types]
        run = pool.map if threads > 1 else map
        evaluations = dict(
            zip(iou_types, run(lambda job: _accumulate(gt, det_pairs, scores, order, *job, keep_ious), jobs))
        )
    return evaluations


def _accumulate(gt, det_pairs, scores, order, iou_type, ious, areas, keep_ious):
    """faster-coco-eval's C++ matching + accumulation and its summarize, on our IoUs."""
    from faster_coco_eval import COCOeval_faster
    from faster_coco_eval import faster_eval_api_cpp as cpp

    evaluator = COCOeval_faster(iouType=iou_type, print_function=lambda *a, **k: None)
    params = evaluator.params
    params.imgIds, params.catIds = list(gt.image_ids), list(gt.cat_ids)
    params.maxDets = sorted(params.maxDets)
    if params.maxDets[-1] != _MAX_DETS:
        raise RuntimeError(f"faster-coco-eval's maxDets {params.maxDets} are not COCO's")
    gt_data, dt_data = cpp.Dataset(), cpp.Dataset()
    for pair, positions in gt.by_pair.items():
        for record in gt.records(positions):
            gt_data.append_ref(pair[0], pair[1], record)
    area_list, score_list = areas.tolist(), scores.tolist()
    for pair, rows in det_pairs.items():
        for row in rows:
            dt_data.append_ref(
                pair[0], pair[1], {"id": row + 1, "score": score_list[row], "area": area_list[row], "iscrowd": 0}
            )
    as_lists = {pair: matrix.tolist() for pair, matrix in ious.items()}
    iou_lists = [[as_lists.get((image_id, cat_id), []) for cat_id in gt.cat_ids] for image_id in gt.image_ids]
    evaluator.eval = cpp.COCOevalEvaluateAccumulate(
        copy.deepcopy(params), iou_lists, gt_data, dt_data, params.imgIds, params.catIds, True
    )
    evaluator.summarize()
    return CocoEvaluation(
        iou_type=iou_type,
        stats=np.asarray(evaluator.stats[:12], dtype=np.float64),
        precision=np.asarray(evaluator.eval["precision"]),
        recall=np.asarray(evaluator.eval["recall"]),
        cat_ids=list(gt.cat_ids),
        iou_thresholds=np.asarray(params.iouThrs),
        recall_thresholds=np.asarray(params.recThrs),
        area_labels=list(params.areaRngLbl),
        ious={pair: (matrix, order[pair], gt.by_pair[pair]) for pair, matrix in ious.items()} if keep_ious else {},
    )
