"""Tracking quality on held-out generated clips: the shipped model frame by frame, ByteTracker, py-motmetrics.

    .venv/bin/python -m benchmarks.tracking [--num-videos 6] [--frames 90] [--fps 30000/1001] [--workdir DIR]

Clips: ``retinamask data shapes --video`` with split ``heldout`` and seed 2026, which neither the tracker's
defaults nor the model were tuned on (the tracker was developed on split ``val``, seed 0..4). Each clip is
read by predict's frame loop (``predict_video``) and every frame goes through the shipped ONNX model
(``OnnxPredictor``, one thread);
the detections are cached and tracked three ways, all scored by mask IoU >= 0.5 against the per-frame
visible masks (:mod:`retinamask.evaluation.tracking`):

* ``model``: every frame, with the frames' real timestamps;
* ``model, stride 2``: one frame in two (what ``--vid-stride 2`` sees): the real elapsed time carries the
  motion model over the gaps;
* ``ground-truth boxes``: the tracker fed the true visible boxes (score 0.9, true class), so that the
  tracker's own share of the errors is seen apart from the detector's.

Prints the CPU, a per-clip and overall table per way (MOTA, IDF1, ID switches, precision, recall, ...),
the model's frames/s and the load check (the machine may be shared: the quality figures do not depend on
it, the frames/s does).
"""

import argparse
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from benchmarks.cpu_load import LoadMonitor
from benchmarks.machine import cpu_model, load_average
from retinamask.apps.onnx_predictor import OnnxPredictor
from retinamask.apps.predict_video import predict_video
from retinamask.config.shipped import shipped_onnx_path
from retinamask.data.shapes_video import generate_shapes_videos, parse_size
from retinamask.evaluation.tracking import evaluate_tracking, format_tracking_table
from retinamask.ops.coco_results import detections_to_json
from retinamask.ops.tracking import ByteTracker

HELDOUT_SPLIT = "heldout"
HELDOUT_SEED = 2026


def detect_clip(predictor, path, monitor):
    """Per frame of the clip: (frame index, seconds, boxes, scores, labels, JSON detections), through the
    product's frame loop (``predict_video``: the decoding thread, the frames' real timestamps)."""
    frames = []
    with monitor.timed("model"):
        for result in predict_video(predictor, str(path)):
            detections = result.detections
            frames.append(
                (
                    result.index,
                    result.seconds,
                    detections.boxes,
                    detections.scores,
                    detections.labels,
                    detections_to_json(detections),
                )
            )
    return frames


def track_records(frames, tracker, stride=1):
    """The JSONL records of a tracked run over every ``stride``-th frame of the cached detections."""
    records = []
    for index, seconds, boxes, scores, labels, record in frames[::stride]:
        ids = tracker.update(boxes, scores, labels, seconds)
        detections = [dict(d, track_id=int(i) if i > 0 else None) for d, i in zip(record["detections"], ids)]
        records.append({"frame": index, "pts": seconds, "detections": detections})
    return records


def ground_truth_records(document, video, fps, tracker):
    """The tracker fed the true visible boxes of each frame (score 0.9, true class, true mask)."""
    names = {c["id"]: c["name"] for c in document["categories"]}
    anns = [a for a in document["annotations"] if a["video_id"] == video["id"]]
    records = []
    for frame in range(video["length"]):
        present = [a for a in anns if a["segmentations"][frame] is not None]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bboxes"][frame] for a in present)]).reshape(-1, 4)
        labels = [a["category_id"] for a in present]
        ids = tracker.update(boxes, [0.9] * len(present), labels, frame / fps)
        detections = [
            {
                "class_name": names[a["category_id"]],
                "score": 0.9,
                "mask_rle": a["segmentations"][frame],
                "track_id": int(i),
            }
            for a, i in zip(present, ids)
        ]
        records.append({"frame": frame, "pts": frame / fps, "detections": detections})
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--fps", default="30000/1001")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--threads", type=int, default=1, help="the model's intra-op threads (default: 1)")
    parser.add_argument("--lost-seconds", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, help="where the clips go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        print(f"CPU: {cpu_model()}; load average at start: {load_average()}")
        paths = generate_shapes_videos(
            workdir, args.num_videos, args.seed, split=HELDOUT_SPLIT, size=parse_size(args.size),
            frames=args.frames, fps=args.fps,
        )  # fmt: skip
        document = json.loads(paths["annotations"].read_text())
        fps = float(Fraction(str(document["videos"][0]["frame_rate"])))
        print(
            f"clips: {args.num_videos} x {args.frames} frames, {args.size} at {args.fps} fps "
            f"(split {HELDOUT_SPLIT!r}, seed {args.seed}); {len(document['annotations'])} ground-truth tracks"
        )
        predictor = OnnxPredictor(shipped_onnx_path(), threads=args.threads)
        monitor = LoadMonitor()
        started = time.perf_counter()
        detected = {
            v["id"]: detect_clip(predictor, paths["root"] / v["file_name"], monitor) for v in document["videos"]
        }
        model_seconds = monitor.summary()["elapsed_s"]
        num_frames = sum(len(f) for f in detected.values())
        print(
            f"model: {num_frames} frames in {model_seconds:.1f} s ({num_frames / model_seconds:.1f} frames/s, "
            f"{args.threads} thread(s)); all detection {time.perf_counter() - started:.1f} s"
        )

        def tracker():
            return ByteTracker(lost_seconds=args.lost_seconds)

        ways = {
            "model": {v: track_records(f, tracker()) for v, f in detected.items()},
            "model, stride 2": {v: track_records(f, tracker(), stride=2) for v, f in detected.items()},
            "ground-truth boxes": {
                v["id"]: ground_truth_records(document, v, fps, tracker()) for v in document["videos"]
            },
        }
        report = {"cpu": cpu_model(), "clips": args.num_videos, "frames": args.frames, "fps": args.fps, "ways": {}}
        for name, predictions in ways.items():
            scores = evaluate_tracking(document, predictions)
            report["ways"][name] = scores
            print(f"\n{name} (mask IoU >= 0.5):\n{format_tracking_table(scores)}")
        print("\n" + monitor.verdict())
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
