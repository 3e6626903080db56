"""Result files of a video run: the per-frame JSON lines (written as frames are processed), YouTube-VIS
results, and MOT / MOTS text for the tracked detections.

A frame record is what ``predict`` writes per processed frame: ``{"frame": index in the source, "pts":
seconds, "detections": [{"label", "class_name", "score", "box_xyxy", "mask_rle": {"size": [h, w],
"counts": str}, "track_id": int or None, "category_id"?}]}`` (records may carry more keys).

Decisions:

* JSONL: each record is one ``os.write`` of one complete line to a file opened without buffering, so a
  run stopped by Ctrl-C, SIGTERM or an exception leaves only complete lines (a regular file's write is
  not interrupted by a signal that Python handles); a write that fails part-way (disk full) is cut back
  to the last complete line and raises OutputError. Only SIGKILL or a power cut can stop the kernel
  inside a write (between pages: a line over 4 KiB can be cut); :func:`read_jsonl` leaves such an
  unfinished last line out. The file is a log, written in place (not atomic).
* A detection's category: its ``"category_id"`` when it has one, else ``category_ids[label - 1]`` when
  ``category_ids`` is given (as ``ops.coco_results`` maps labels), else its label.
* YouTube-VIS: one result per track id (ascending); its category is the score-weighted vote of its
  detections (ties: the smaller id), its score the mean of its detections' scores; ``segmentations``
  has one entry per record in the records' order (a strided run: the processed frames), or, with
  ``frame_count``, one per frame of the source (the skipped ones None), the mask RLE or None.
  Untracked detections (track_id None or negative) are left out.
* MOT: ``frame`` is the source frame index + 1 (MOT counts from 1 and the ground truth numbers every
  frame of the source, strided runs included); ``bb_left``, ``bb_top`` in MOTChallenge's 1-based pixel
  coordinates (x1 + 1, y1 + 1: py-motmetrics' loader subtracts the 1 again), width and height in
  pixels; untracked detections left out.
* MOTS: ``time_frame`` counts from 1 as well (MOTSChallenge's convention; KITTI MOTS counts from 0);
  ``class_id`` the detection's category; the RLE is the COCO compressed string. MOTS forbids overlapping
  masks in a frame: a pixel claimed by several tracked masks is kept by the highest-scoring one (as
  MOTSChallenge's own tools require), so a mask may lose pixels; one left empty is dropped.
"""

import contextlib
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util

from retinamask.core.errors import InputError, OutputError
from retinamask.core.fileio import json_default


class JsonlWriter:
    """One JSON object per line at ``path`` (truncated when it exists), each line in the file when
    :meth:`write` returns (written by the kernel; ``close()`` also fsyncs). A context manager."""

    def __init__(self, path):
        self.path = Path(path)
        self.lines = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", self.path) from None
        self._size = 0

    def write(self, record):
        if self._fd is None:
            raise ValueError("write() on a closed JsonlWriter")
        data = (json.dumps(record, separators=(",", ":"), default=json_default) + "\n").encode("utf-8")
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as e:
            with contextlib.suppress(OSError):  # leave only complete lines
                os.ftruncate(self._fd, self._size)
            raise OutputError(f"cannot write: {e.strerror or e}", self.path) from None
        self._size += len(data)
        self.lines += 1

    def close(self):
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path):
    """The records of a JSON-lines file, in order. A last line without its newline (a writer killed
    mid-line; :class:`JsonlWriter` never leaves one) is left out; any other bad line is an InputError
    naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path) from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: "" or an unfinished line
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InputError(f"line {number} is not JSON ({e.msg})", path) from None
    return records


def _category(detection, category_ids):
    if detection.get("category_id") is not None:
        return int(detection["category_id"])
    label = int(detection["label"])
    return int(category_ids[label - 1]) if category_ids is not None else label


def _tracked(detection):
    track_id = detection.get("track_id")
    return track_id is not None and int(track_id) >= 0


def ytvis_results(frame_records, video_id, category_ids=None, frame_count=None):
    """The YouTube-VIS results of one video: a list of ``{"video_id", "category_id", "score",
    "segmentations"}``, one per track (see the module's decisions). ``frame_count``: the number of frames
    of the annotated video; then ``segmentations`` has that many entries, placed by the records'
    ``"frame"`` (source index: a strided run leaves the frames it skipped None), instead of one per record.
    """
    records = list(frame_records)
    if frame_count is None:
        positions, length = range(len(records)), len(records)
    else:
        positions, length = [int(r["frame"]) for r in records], int(frame_count)
        if any(not 0 <= p < length for p in positions):
            raise ValueError(f"a record's frame is outside the video's {length} frames")
    tracks = defaultdict(dict)  # track id -> {position: detection}
    for position, record in zip(positions, records):
        for detection in record.get("detections", ()):
            if not _tracked(detection):
                continue
            kept = tracks[int(detection["track_id"])]
            if position not in kept or detection["score"] > kept[position]["score"]:
                kept[position] = detection
    results = []
    for track_id in sorted(tracks):
        by_position = tracks[track_id]
        votes = defaultdict(float)
        for detection in by_position.values():
            votes[_category(detection, category_ids)] += float(detection["score"])
        category = min(votes, key=lambda c: (-votes[c], c))
        scores = [float(d["score"]) for d in by_position.values()]
        segmentations = [
            _rle(by_position[p]["mask_rle"]) if p in by_position and by_position[p].get("mask_rle") else None
            for p in range(length)
        ]
        results.append(
            {
                "video_id": video_id,
                "category_id": category,
                "score": sum(scores) / len(scores),
                "segmentations": segmentations,
            }
        )
    return results


def _rle(rle):
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode() if isinstance(counts, bytes) else counts}


def _number(value, decimals):
    """A float written short: at most ``decimals`` decimals, no trailing zeros."""
    text = f"{float(value):.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def mot_lines(frame_records):
    """MOT txt lines ``frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1`` of the tracked
    detections (frame = source index + 1, bb_left and bb_top 1-based)."""
    lines = []
    for record in frame_records:
        frame = int(record["frame"]) + 1
        for detection in record.get("detections", ()):
            if not _tracked(detection):
                continue
            x1, y1, x2, y2 = (float(v) for v in detection["box_xyxy"])
            fields = [str(frame), str(int(detection["track_id"]))]
            fields += [_number(v, 3) for v in (x1 + 1, y1 + 1, x2 - x1, y2 - y1)]
            fields += [_number(detection["score"], 6), "-1", "-1", "-1"]
            lines.append(",".join(fields))
    return lines


def mots_lines(frame_records, category_ids=None):
    """MOTS txt lines ``time_frame id class_id img_height img_width rle`` of the tracked detections
    (time_frame = source index + 1; overlaps resolved, see the module's decisions)."""
    lines = []
    for record in frame_records:
        frame = int(record["frame"]) + 1
        tracked = [d for d in record.get("detections", ()) if _tracked(d) and d.get("mask_rle")]
        tracked.sort(key=lambda d: -float(d["score"]))
        taken = None
        for detection in tracked:
            rle = _rle(detection["mask_rle"])
            height, width = rle["size"]
            mask = mask_util.decode({"size": [height, width], "counts": rle["counts"].encode()}).astype(bool)
            if taken is None or taken.shape != mask.shape:
                taken = np.zeros_like(mask)
            elif (mask & taken).any():
                mask &= ~taken
                rle = _encode(mask)
            if not mask.any():
                continue
            taken |= mask
            fields = [frame, int(detection["track_id"]), _category(detection, category_ids), height, width]
            lines.append(" ".join(str(v) for v in fields) + " " + rle["counts"])
    return lines


def _encode(mask):
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}
