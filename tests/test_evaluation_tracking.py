"""Tracking metrics against YouTube-VIS ground truth: hand-made tracks whose figures are known."""

import json
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from retinamask.core.errors import InputError, RetinaMaskError
from retinamask.data.shapes_video import generate_shapes_videos
from retinamask.evaluation.tracking import evaluate_tracking, format_tracking_table, load_ytvis_ground_truth
from retinamask.ops.tracking import ByteTracker

H, W = 60, 80
FRAMES = 4
CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "rectangle", "supercategory": "shape"},
]

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def rect_rle(x, y, w, h):
    mask = np.zeros((H, W), np.uint8)
    mask[y : y + h, x : x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


# Two objects moving right: A (id 11, circle) on top, B (id 12, rectangle) below; 10x10 px squares.
def box_a(frame):
    return (5 + 5 * frame, 5, 10, 10)


def box_b(frame):
    return (5 + 5 * frame, 35, 10, 10)


def gt_document(extra_annotations=()):
    annotations = []
    for ann_id, category, box in ((11, 1, box_a), (12, 3, box_b)):
        rles = [rect_rle(*box(f)) for f in range(FRAMES)]
        annotations.append(
            {
                "id": ann_id,
                "video_id": 1,
                "category_id": category,
                "segmentations": rles,
                "bboxes": [list(map(float, box(f))) for f in range(FRAMES)],
                "areas": [100] * FRAMES,
                "iscrowd": 0,
                "height": H,
                "width": W,
            }
        )
    annotations.extend(extra_annotations)
    video = {"id": 1, "width": W, "height": H, "length": FRAMES, "file_names": [], "file_name": "val/000000.mp4"}
    return {"videos": [dict(video, frame_rate="25/2")], "annotations": annotations, "categories": CATEGORIES}


def detection(box, track_id, class_name="circle"):
    x, y, w, h = box
    return {
        "label": 0,
        "class_name": class_name,
        "score": 0.9,
        "box_xyxy": [x, y, x + w, y + h],
        "mask_rle": rect_rle(*box),
        "track_id": track_id,
    }


def records(ids_a, ids_b, frames=range(FRAMES)):
    """Per-frame records: object A with track id ids_a[f] and B with ids_b[f] (None: no detection)."""
    out = []
    for f in frames:
        detections = []
        if ids_a[f] is not None:
            detections.append(detection(box_a(f), ids_a[f], "circle"))
        if ids_b[f] is not None:
            detections.append(detection(box_b(f), ids_b[f], "rectangle"))
        out.append({"frame": f, "pts": f / 12.5, "detections": detections})
    return out


def test_a_perfect_tracker():
    scores = evaluate_tracking(gt_document(), {1: records([1] * 4, [2] * 4)})
    m = scores["overall"]
    assert (m["mota"], m["idf1"], m["id_switches"], m["precision"], m["recall"]) == (1.0, 1.0, 0, 1.0, 1.0)
    assert (m["frames"], m["gt_objects"], m["gt_tracks"], m["mostly_tracked"], m["class_accuracy"]) == (4, 8, 2, 2, 1.0)
    assert m["motp"] == pytest.approx(0.0)
    assert scores["videos"][1]["mota"] == 1.0
    assert evaluate_tracking(gt_document(), {"1": records([1] * 4, [2] * 4)})["videos"] == scores["videos"]  # JSON keys
    assert scores["switches_per_track"] == {1: {11: 0, 12: 0}}
    assert "overall" in format_tracking_table(scores)


def test_one_changed_id_is_one_switch():
    # A's track id changes from 1 to 3 at frame 2: one switch; IDF1 by hand: A<->1 for 2 frames, B<->2 for 4:
    # IDTP 6, IDFP 2 (track 3), IDFN 2 (A's last two frames) -> 2*6 / (2*6 + 2 + 2) = 0.75.
    m = evaluate_tracking(gt_document(), {1: records([1, 1, 3, 3], [2] * 4)})
    assert m["overall"]["id_switches"] == 1
    assert m["switches_per_track"][1] == {11: 1, 12: 0}
    assert m["overall"]["mota"] == pytest.approx(1 - 1 / 8)
    assert m["overall"]["idf1"] == pytest.approx(0.75)
    assert m["overall"]["switches_per_gt_track"] == 0.5


def test_swapped_ids_are_two_switches():
    m = evaluate_tracking(gt_document(), {1: records([1, 1, 2, 2], [2, 2, 1, 1])})["overall"]
    assert m["id_switches"] == 2 and m["mota"] == pytest.approx(1 - 2 / 8)


def test_a_missed_object_lowers_recall_by_hand():
    # B found in frame 0 only: 3 misses of 8 object-frames -> recall 5/8, precision 1, MOTA 1 - 3/8.
    m = evaluate_tracking(gt_document(), {1: records([1] * 4, [2, None, None, None])})["overall"]
    assert (m["misses"], m["false_positives"], m["id_switches"]) == (3, 0, 0)
    assert m["recall"] == pytest.approx(5 / 8) and m["precision"] == 1.0
    assert m["mota"] == pytest.approx(1 - 3 / 8)
    assert (m["mostly_tracked"], m["mostly_lost"]) == (1, 0)  # B tracked 1 of 4 frames: partly (>= 20 %)


def test_false_positive_and_low_iou():
    recs = records([1] * 4, [2] * 4)
    recs[0]["detections"].append(detection((60, 20, 10, 10), 5))  # nothing there: a false positive
    recs[1]["detections"][0]["mask_rle"] = rect_rle(box_a(1)[0] + 4, 5, 10, 10)  # IoU 60/140 < 0.5
    m = evaluate_tracking(gt_document(), {1: recs})["overall"]
    assert (m["false_positives"], m["misses"]) == (2, 1)
    assert m["precision"] == pytest.approx(7 / 9) and m["recall"] == pytest.approx(7 / 8)
    # With a lower threshold the shifted mask matches.
    m = evaluate_tracking(gt_document(), {1: recs}, iou_threshold=0.4)["overall"]
    assert (m["false_positives"], m["misses"]) == (1, 0)


def test_untracked_detections_and_unrecorded_frames_are_left_out():
    recs = records([1] * 4, [2] * 4, frames=[0, 2, 3])  # frame 1 not processed (a stride, a drop)
    recs[0]["detections"].append(detection((60, 20, 10, 10), None))
    m = evaluate_tracking(gt_document(), {1: recs})["overall"]
    assert (m["frames"], m["gt_objects"], m["mota"], m["false_positives"]) == (3, 6, 1.0, 0)


def test_small_ground_truth_is_ignored():
    sliver = {
        "id": 13,
        "video_id": 1,
        "category_id": 1,
        "segmentations": [rect_rle(70, 50, 3, 3)] * FRAMES,  # 9 px < 20
        "bboxes": [[70.0, 50.0, 3.0, 3.0]] * FRAMES,
        "areas": [9] * FRAMES,
        "iscrowd": 0,
        "height": H,
        "width": W,
    }
    document = gt_document([sliver])
    assert evaluate_tracking(document, {1: records([1] * 4, [2] * 4)})["overall"]["mota"] == 1.0  # not a miss
    recs = records([1] * 4, [2] * 4)
    recs[0]["detections"].append(detection((70, 50, 3, 3), 7))
    assert evaluate_tracking(document, {1: recs})["overall"]["false_positives"] == 0  # nor a false positive
    assert evaluate_tracking(document, {1: recs}, min_gt_area=0)["overall"]["gt_tracks"] == 3


def test_a_wrong_class_keeps_the_identity_scores():
    recs = records([1] * 4, [2] * 4)
    recs[2]["detections"][0]["class_name"] = "rectangle"
    m = evaluate_tracking(gt_document(), {1: recs})["overall"]
    assert m["mota"] == 1.0 and m["class_accuracy"] == pytest.approx(7 / 8)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="not in the ground truth"):
        evaluate_tracking(gt_document(), {2: records([1] * 4, [2] * 4)})
    with pytest.raises(InputError, match="out of range"):
        evaluate_tracking(gt_document(), {1: [{"frame": 9, "pts": 0, "detections": []}]})
    with pytest.raises(InputError, match="twice"):
        evaluate_tracking(gt_document(), {1: records([1] * 4, [1] * 4)})
    with pytest.raises(InputError, match="YouTube-VIS"):
        load_ytvis_ground_truth({"images": []})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt_document()))
    assert load_ytvis_ground_truth(path)["videos"][0]["id"] == 1
    with pytest.raises(InputError, match="not found"):
        load_ytvis_ground_truth(tmp_path / "missing.json")


def test_missing_motmetrics_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "motmetrics", None)
    with pytest.raises(RetinaMaskError, match=r"pip install 'retinamask\[track-eval\]'"):
        evaluate_tracking(gt_document(), {1: records([1] * 4, [2] * 4)})


def test_tracker_on_ground_truth_detections_of_generated_clips(tmp_path):
    """The pieces together: generated clips, ByteTracker fed the ground truth's boxes, scored."""
    paths = generate_shapes_videos(tmp_path, 2, 4, size=(160, 120), frames=25, fps="12.5")
    document = json.loads(paths["annotations"].read_text())
    predictions = {}
    for video in document["videos"]:
        anns = [a for a in document["annotations"] if a["video_id"] == video["id"]]
        tracker, recs = ByteTracker(), []
        for frame in range(video["length"]):
            present = [a for a in anns if a["segmentations"][frame] is not None]
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bboxes"][frame] for a in present)]
            ids = tracker.update(np.array(boxes).reshape(-1, 4), [0.9] * len(present), [1] * len(present), frame / 12.5)
            detections = [
                {"class_name": "x", "score": 0.9, "mask_rle": a["segmentations"][frame], "track_id": int(i)}
                for a, i in zip(present, ids)
            ]
            recs.append({"frame": frame, "pts": frame / 12.5, "detections": detections})
        predictions[video["id"]] = recs
    m = evaluate_tracking(paths["annotations"], predictions)["overall"]
    assert m["precision"] == 1.0 and m["recall"] == 1.0  # every detection tracked from its first frame
    assert m["mota"] >= 0.9 and m["idf1"] >= 0.8
