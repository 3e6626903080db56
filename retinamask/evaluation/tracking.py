"""Tracking metrics of predicted per-frame tracks against YouTube-VIS ground truth (py-motmetrics).

Ground truth: a YouTube-VIS annotation document (``retinamask data shapes --video`` writes one): per
video, one annotation per object with a visible-mask RLE (or None) per frame; the annotation id is the
object's identity. Predictions: per video id, the per-frame records of ``predict``'s JSONL::

    {"frame": i, "pts": s, "detections": [{"label", "class_name", "score", "box_xyxy",
                                          "mask_rle": {"size": [h, w], "counts": str}, "track_id": int | None}]}

``frame`` is the index of the frame in the clip (the ground truth's frame); only the frames with a record
are scored (a ``--vid-stride`` run is scored on the frames it processed). Detections without a track id
are not part of the tracker's output and are left out.

Matching is by **mask** IoU >= ``iou_threshold`` (0.5; pycocotools' RLE IoU), class-agnostic as in the
MOTChallenge (a wrong class does not break an identity; ``class_accuracy`` reports it apart). Objects
whose visible area is under ``min_gt_area`` pixels in a frame (a sliver entering the frame or peeking
out from behind another) are *ignored* there: neither a miss when not found, nor a false positive when a
prediction lies on them (as MOTChallenge treats its ignore regions). CLEAR MOT (MOTA, misses, false
positives, ID switches, fragmentations) and identity scores (IDF1, IDP, IDR) come from py-motmetrics
(``pip install 'retinamask[track-eval]'``); TrackEval is not used (its wheel pulls a second, non-headless
OpenCV).
"""

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from retinamask.core.errors import InputError, RetinaMaskError

DEFAULT_IOU_THRESHOLD = 0.5
DEFAULT_MIN_GT_AREA = 20  # px: the shapes dataset's smallest annotated visible area (shapes_render.MIN_VISIBLE_AREA)
TRACK_EVAL_HINT = "pip install 'retinamask[track-eval]'"
# py-motmetrics' names -> ours
_METRICS = {
    "num_frames": "frames",
    "mota": "mota",
    "idf1": "idf1",
    "idp": "idp",
    "idr": "idr",
    "precision": "precision",
    "recall": "recall",
    "num_switches": "id_switches",
    "num_fragmentations": "fragmentations",
    "num_false_positives": "false_positives",
    "num_misses": "misses",
    "num_objects": "gt_objects",
    "num_unique_objects": "gt_tracks",
    "num_predictions": "predictions",
    "mostly_tracked": "mostly_tracked",
    "mostly_lost": "mostly_lost",
    "motp": "motp",
}


def _motmetrics():
    try:
        import motmetrics
    except ImportError:
        raise RetinaMaskError(f"tracking metrics need py-motmetrics: {TRACK_EVAL_HINT}") from None
    return motmetrics


def load_ytvis_ground_truth(source):
    """A YouTube-VIS annotation document from a path (or the dict itself), checked for its keys."""
    if isinstance(source, dict):
        document, path = source, None
    else:
        path = Path(source)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError("ground truth not found", path) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read the ground truth: {e}", path) from None
    if not isinstance(document, dict) or any(key not in document for key in ("videos", "annotations", "categories")):
        raise InputError("not a YouTube-VIS annotation file (needs videos, annotations, categories)", path)
    return document


def evaluate_tracking(
    ground_truth, predictions, *, iou_threshold=DEFAULT_IOU_THRESHOLD, min_gt_area=DEFAULT_MIN_GT_AREA
):
    """Score predicted tracks; return a JSON-ready dict.

    ground_truth: a YouTube-VIS annotation file or document. predictions: {video id: [frame records]}
    (only these videos are scored). Returns ``{"videos": {video id: metrics}, "overall": metrics,
    "switches_per_track": {video id: {gt annotation id: id switches}}, "iou_threshold", "min_gt_area"}``;
    metrics: frames, mota, idf1, idp, idr, precision, recall, id_switches, fragmentations,
    false_positives, misses, gt_objects (object-frames), gt_tracks, predictions, mostly_tracked,
    mostly_lost, motp (mean 1 - IoU of matches), switches_per_gt_track, class_accuracy.
    """
    mm = _motmetrics()
    if not 0.0 < iou_threshold <= 1.0:
        raise RetinaMaskError(f"IoU threshold must be in (0, 1], got {iou_threshold}")
    document = load_ytvis_ground_truth(ground_truth)
    videos = {video["id"]: video for video in document["videos"]}
    category_of_name = {c["name"]: c["id"] for c in document["categories"]}
    accumulators, names, class_hits, switches = [], [], {}, {}
    for given_id, records in predictions.items():
        video_id = int(given_id) if isinstance(given_id, str) and given_id.isdigit() else given_id  # JSON keys
        if video_id not in videos:
            raise InputError(f"video id {given_id!r} is not in the ground truth")
        annotations = [a for a in document["annotations"] if a["video_id"] == video_id]
        accumulator, hits = _accumulate(
            mm, videos[video_id], annotations, records, category_of_name, iou_threshold, min_gt_area
        )
        accumulators.append(accumulator)
        names.append(video_id)
        class_hits[video_id] = hits
        events = accumulator.mot_events
        counts = events[events["Type"] == "SWITCH"].groupby("OId").size()
        switches[video_id] = {a["id"]: int(counts.get(float(a["id"]), 0)) for a in annotations}

    if not accumulators:
        raise RetinaMaskError("no predicted videos to score")
    with _quiet_motmetrics():
        table = mm.metrics.create().compute_many(
            accumulators, metrics=list(_METRICS), names=[str(n) for n in names], generate_overall=True
        )
    result = {"videos": {}, "switches_per_track": switches, "iou_threshold": iou_threshold, "min_gt_area": min_gt_area}
    for name in [*names, "OVERALL"]:
        row = table.loc[str(name)]
        metrics = {ours: _plain(ours, row[theirs]) for theirs, ours in _METRICS.items()}
        metrics["switches_per_gt_track"] = metrics["id_switches"] / max(metrics["gt_tracks"], 1)
        correct, total = np.sum(list(class_hits.values()), axis=0) if name == "OVERALL" else class_hits[name]
        metrics["class_accuracy"] = float(correct / total) if total else float("nan")
        if name == "OVERALL":
            result["overall"] = metrics
        else:
            result["videos"][name] = metrics
    return result


@contextlib.contextmanager
def _quiet_motmetrics():
    """py-motmetrics logs its own timings on the root logger at INFO ("partials: 0.107 seconds."): not ours."""

    def not_motmetrics(record):
        return "motmetrics" not in record.pathname

    root = logging.getLogger()
    root.addFilter(not_motmetrics)
    try:
        yield
    finally:
        root.removeFilter(not_motmetrics)


_RATES = ("mota", "idf1", "idp", "idr", "precision", "recall", "motp")


def _plain(name, value):
    value = float(value.item() if hasattr(value, "item") else value)
    return value if name in _RATES else int(value)  # counts (the overall row holds them as floats)


def _accumulate(mm, video, annotations, records, category_of_name, iou_threshold, min_gt_area):
    """One video's MOTAccumulator and its (correct, total) class hits over matched pairs."""
    accumulator = mm.MOTAccumulator(auto_id=False)
    length = int(video["length"])
    seen_frames = set()
    gt_category, hyp_category = {}, {}  # per frame: id -> category id
    for record in records:
        frame = int(record["frame"])
        if not 0 <= frame < length or frame in seen_frames:
            raise InputError(f"video {video['id']}: frame {frame} is out of range 0..{length - 1} or repeated")
        seen_frames.add(frame)
        gt_ids, gt_rles, gt_categories, ignored_rles = [], [], [], []
        for annotation in annotations:
            rle = annotation["segmentations"][frame]
            if rle is None:
                continue
            area = annotation["areas"][frame] if annotation.get("areas") else mask_utils.area(rle)
            if area < min_gt_area:
                ignored_rles.append(rle)
            else:
                gt_ids.append(annotation["id"])
                gt_rles.append(rle)
                gt_categories.append(annotation["category_id"])
        hyp_ids, hyp_rles, hyp_categories = _hypotheses(video, frame, record, category_of_name)

        iou = _mask_iou(gt_rles, hyp_rles)  # [gt, hyp]
        if ignored_rles and hyp_rles:
            on_ignored = (_mask_iou(ignored_rles, hyp_rles) >= iou_threshold).any(axis=0)
            keep = ~(on_ignored & ~(iou >= iou_threshold).any(axis=0))
            hyp_ids = [h for h, k in zip(hyp_ids, keep) if k]
            hyp_categories = [c for c, k in zip(hyp_categories, keep) if k]
            iou = iou[:, keep]
        distances = np.where(iou >= iou_threshold, 1.0 - iou, np.nan)
        accumulator.update(gt_ids, hyp_ids, distances, frameid=frame)

        gt_category[frame] = dict(zip(gt_ids, gt_categories))
        hyp_category[frame] = dict(zip(hyp_ids, hyp_categories))

    events = accumulator.mot_events
    pairs = events[events["Type"].isin(["MATCH", "SWITCH"])]
    frames = pairs.index.get_level_values("FrameId")
    hits = [gt_category[f][int(o)] == hyp_category[f][int(h)] for f, o, h in zip(frames, pairs["OId"], pairs["HId"])]
    return accumulator, (int(np.sum(hits)), len(hits))


def _hypotheses(video, frame, record, category_of_name):
    ids, rles, categories = [], [], []
    for detection in record.get("detections", []):
        track_id = detection.get("track_id")
        if track_id is None:
            continue
        if track_id in ids:
            raise InputError(f"video {video['id']}, frame {frame}: track id {track_id} appears twice")
        rle = detection["mask_rle"]
        if list(rle["size"]) != [video["height"], video["width"]]:
            raise InputError(
                f"video {video['id']}, frame {frame}: mask size {rle['size']} is not the video's "
                f"[{video['height']}, {video['width']}]"
            )
        ids.append(int(track_id))
        rles.append(rle)
        categories.append(detection.get("category_id", category_of_name.get(detection.get("class_name"))))
    return ids, rles, categories


def _mask_iou(gt_rles, hyp_rles):
    if not gt_rles or not hyp_rles:
        return np.zeros((len(gt_rles), len(hyp_rles)))
    # pycocotools: iou(detections, ground truth) is [len(dt), len(gt)]; no crowd.
    return (
        np.asarray(mask_utils.iou(hyp_rles, gt_rles, [0] * len(gt_rles)), dtype=np.float64)
        .reshape(len(hyp_rles), len(gt_rles))
        .T
    )


def format_tracking_table(scores):
    """A text table: one line per video and the overall line (MOTA, IDF1, ID switches, P/R, ...)."""
    header = f"{'video':>8} {'frames':>6} {'MOTA':>7} {'IDF1':>7} {'IDsw':>5} {'sw/trk':>6} {'prec':>6} {'recall':>6}"
    header += f" {'FP':>5} {'miss':>5} {'tracks':>6} {'MT':>4} {'ML':>4} {'class':>6}"
    lines = [header]
    rows = [(str(v), m) for v, m in scores["videos"].items()] + [("overall", scores["overall"])]
    for name, m in rows:
        lines.append(
            f"{name:>8} {m['frames']:>6} {m['mota']:>7.3f} {m['idf1']:>7.3f} {m['id_switches']:>5} "
            f"{m['switches_per_gt_track']:>6.2f} {m['precision']:>6.3f} {m['recall']:>6.3f} "
            f"{m['false_positives']:>5} {m['misses']:>5} {m['gt_tracks']:>6} {m['mostly_tracked']:>4} "
            f"{m['mostly_lost']:>4} {m['class_accuracy']:>6.3f}"
        )
    return "\n".join(lines)
