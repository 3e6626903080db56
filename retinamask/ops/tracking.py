"""ByteTrack-style multi-object tracking on one stream's detections, in real time (no torch).

The tracker follows ByteTrack (Zhang et al., 2022): each frame, high-score detections are matched first
against every track (tracked and lost), then low-score detections against the tracked ones still
unmatched, so a detection whose score dips under occlusion continues its track instead of being
dropped; only unmatched high-score detections above ``new_track_threshold`` start tracks. Matching is an
optimal assignment (``scipy.optimize.linear_sum_assignment``) on an IoU cost between the detections and
the tracks' predicted boxes.

Where the usual implementations count frames (a constant-velocity step of one frame, a lost buffer of
``30`` frames at a frame rate fixed at 30), this one counts seconds: the Kalman state holds velocities in
pixels per second, the prediction step uses the real time elapsed since the track's last step (the
frame's ``seconds``), and lost tracks are kept ``lost_seconds`` of real time. Dropped frames, a frame
stride, a variable or fractional frame rate give the same motion model as a steady 30 fps.

Classes: association is class-agnostic with a cost penalty (``class_penalty``, added to ``1 - IoU``)
when a detection's label differs from the track's label (the score-weighted vote of the labels it was
matched with). A detector that flickers between two similar classes keeps its track (given a clear
overlap: IoU at least ``match_iou + class_penalty``), while a same-class candidate of similar overlap
wins. ``class_penalty=0`` is class-agnostic, ``math.inf``
forbids matches across labels.
"""

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

# Kalman noise, as fractions of the box's width (x, w) or height (y, h). ByteTrack's per-frame values at
# 30 fps (position 1/20, velocity 1/160 per frame) turned into rates per second: a continuous random
# walk on position and velocity whose variance grows with the elapsed time, so that three steps of 1/30 s
# add the same uncertainty as one step of 1/10 s.
_REFERENCE_RATE = 30.0
POSITION_NOISE_PER_SQRT_S = (1.0 / 20.0) * math.sqrt(_REFERENCE_RATE)
VELOCITY_NOISE_PER_SQRT_S = (_REFERENCE_RATE / 160.0) * math.sqrt(_REFERENCE_RATE)
MEASUREMENT_NOISE = 1.0 / 20.0  # of the size, per observation (independent of the frame rate)
INITIAL_POSITION_STD = 2.0 / 20.0  # of the size
INITIAL_VELOCITY_STD = 10.0 * _REFERENCE_RATE / 160.0  # of the size per second (fast objects allowed)
MIN_SIDE = 1.0  # px: predicted boxes never shrink below this


class _KalmanBox:
    """Constant-velocity Kalman filter on (cx, cy, w, h) and their velocities per second."""

    __slots__ = ("covariance", "mean")

    def __init__(self, box_xyxy):
        measurement = _xyxy_to_cxcywh(box_xyxy)
        self.mean = np.concatenate([measurement, np.zeros(4)])
        scale = _noise_scale(measurement)
        std = np.concatenate([INITIAL_POSITION_STD * scale, INITIAL_VELOCITY_STD * scale])
        self.covariance = np.diag(np.square(std))

    def predict(self, dt, freeze_size=False):
        """Move the state ``dt`` seconds ahead (``freeze_size``: a lost track stops growing or shrinking)."""
        if freeze_size:
            self.mean[6:] = 0.0
        if dt <= 0.0:
            return
        transition = np.eye(8)
        transition[:4, 4:] = dt * np.eye(4)
        scale = _noise_scale(self.mean[:4])
        std_squared = np.square(np.concatenate([POSITION_NOISE_PER_SQRT_S * scale, VELOCITY_NOISE_PER_SQRT_S * scale]))
        self.mean = transition @ self.mean
        self.covariance = transition @ self.covariance @ transition.T + np.diag(std_squared * dt)
        self.mean[2:4] = np.maximum(self.mean[2:4], MIN_SIDE)

    def update(self, box_xyxy):
        measurement = _xyxy_to_cxcywh(box_xyxy)
        noise = np.diag(np.square(MEASUREMENT_NOISE * _noise_scale(self.mean[:4])))
        projected = self.covariance[:4, :4] + noise
        gain = np.linalg.solve(projected, self.covariance[:4, :]).T  # P H^T S^-1 (S symmetric)
        self.mean = self.mean + gain @ (measurement - self.mean[:4])
        self.covariance = self.covariance - gain @ self.covariance[:4, :]
        self.mean[2:4] = np.maximum(self.mean[2:4], MIN_SIDE)

    def box_xyxy(self):
        cx, cy, w, h = self.mean[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _xyxy_to_cxcywh(box):
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, MIN_SIDE), max(y2 - y1, MIN_SIDE)])


def _noise_scale(cxcywh):
    w, h = max(float(cxcywh[2]), MIN_SIDE), max(float(cxcywh[3]), MIN_SIDE)
    return np.array([w, h, w, h])


class _Track:
    __slots__ = ("filter", "hits", "label_votes", "last_seen", "time", "track_id")

    def __init__(self, track_id, box, score, label, seconds):
        self.track_id = track_id
        self.filter = _KalmanBox(box)
        self.time = seconds  # the time the filter's state refers to
        self.last_seen = seconds
        self.hits = 1
        self.label_votes = {int(label): float(score)}

    @property
    def label(self):
        # Highest vote; equal votes: the smaller label (deterministic).
        return min(self.label_votes, key=lambda k: (-self.label_votes[k], k))

    def observe(self, box, score, label, seconds):
        self.filter.update(box)
        self.last_seen = seconds
        self.hits += 1
        self.label_votes[int(label)] = self.label_votes.get(int(label), 0.0) + float(score)


class ByteTracker:
    """Track detections across the frames of one stream; ``update`` once per frame, in time order.

    A track gets its id (1, 2, ... in order of creation, never reused) in the frame that starts it, and
    that detection is returned with it. A track matched in no later frame than its first is dropped
    at once (a one-frame false positive does not linger as a lost track); one matched twice or more is
    kept ``lost_seconds`` after it was last seen. Lost tracks keep moving with their velocity (their
    size frozen) and can be matched again by high-score detections only.

    high_threshold: detections scoring at least this take part in the first association (all tracks).
    low_threshold: detections scoring at least this (and below ``high_threshold``) take part in the second
        association, with tracked (not lost) tracks only; they continue tracks but never start one.
        Lower scores are ignored (id -1).
    new_track_threshold: an unmatched detection scoring at least this starts a track.
    match_iou: the least IoU of a match in the first association (ByteTrack's 0.8 cost = IoU 0.2).
    low_match_iou: the least IoU of a match in the second association (ByteTrack's 0.5).
    lost_seconds: a track unmatched for longer than this (real time) is removed; its id is never reused.
    class_penalty: added to the cost ``1 - IoU`` of a detection whose label differs from the track's, so
        that a match across labels needs an IoU of at least ``match_iou + class_penalty`` and loses to a
        same-label candidate of similar overlap (0: class-agnostic; ``math.inf``: labels must agree).
    """

    def __init__(
        self,
        *,
        high_threshold=0.5,
        low_threshold=0.1,
        new_track_threshold=0.6,
        match_iou=0.2,
        lost_seconds=1.0,
        low_match_iou=0.5,
        class_penalty=0.2,
    ):
        if not 0.0 <= low_threshold <= high_threshold:
            raise ValueError(f"need 0 <= low_threshold <= high_threshold, got {low_threshold}, {high_threshold}")
        if new_track_threshold < high_threshold:
            raise ValueError(f"new_track_threshold {new_track_threshold} is below high_threshold {high_threshold}")
        for name, value in (("match_iou", match_iou), ("low_match_iou", low_match_iou)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if not lost_seconds >= 0.0:
            raise ValueError(f"lost_seconds must be >= 0, got {lost_seconds}")
        if not class_penalty >= 0.0:
            raise ValueError(f"class_penalty must be >= 0, got {class_penalty}")
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.new_track_threshold = float(new_track_threshold)
        self.match_iou = float(match_iou)
        self.low_match_iou = float(low_match_iou)
        self.lost_seconds = float(lost_seconds)
        self.class_penalty = float(class_penalty)
        self.reset()

    def reset(self):
        """Forget every track and restart ids at 1 (a new stream)."""
        self._tracks = []  # live tracks (tracked or lost), in creation order
        self._next_id = 1
        self._seconds = None  # the last frame's time

    def update(self, boxes, scores, labels, seconds):
        """Associate one frame's detections; return int64 [N] track ids (>= 1), -1 for untracked ones.

        boxes: float [N, 4] x1 y1 x2 y2 in image pixels; scores [N]; labels int [N]; seconds: the frame's
        timestamp in seconds (may jump forward: dropped frames, strides, variable frame rate; never back).
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels")
        seconds = float(seconds)
        if not math.isfinite(seconds):
            raise ValueError(f"frame time must be finite, got {seconds}")
        previous = self._seconds
        if previous is not None and seconds < previous:
            raise ValueError(f"frame time went back from {previous} s to {seconds} s (reset() for a new stream)")

        for track in self._tracks:
            track.filter.predict(seconds - track.time, freeze_size=track.last_seen < track.time)
            track.time = seconds
        ids = np.full(len(boxes), -1, dtype=np.int64)
        valid = np.isfinite(scores) & np.isfinite(boxes).all(axis=1)
        high = np.flatnonzero(valid & (scores >= self.high_threshold))
        low = np.flatnonzero(valid & (scores >= self.low_threshold) & (scores < self.high_threshold))

        # 1. High-score detections against every track (tracked and lost).
        matched_tracks = self._associate(self._tracks, high, boxes, scores, labels, seconds, ids, self.match_iou)
        # 2. Low-score detections against the tracks seen in the previous frame and not matched above.
        tracked = [t for t in self._tracks if t not in matched_tracks and t.last_seen == previous]
        matched_tracks |= self._associate(tracked, low, boxes, scores, labels, seconds, ids, self.low_match_iou)
        # 3. New tracks from unmatched confident detections (by descending score, then index).
        for i in sorted(high, key=lambda k: (-scores[k], k)):
            if ids[i] < 0 and scores[i] >= self.new_track_threshold:
                track = _Track(self._next_id, boxes[i], scores[i], labels[i], seconds)
                self._next_id += 1
                self._tracks.append(track)
                ids[i] = track.track_id
        # 4. Forget tracks lost too long, and tracks seen once that were not confirmed by this frame.
        self._tracks = [
            t
            for t in self._tracks
            if seconds - t.last_seen <= self.lost_seconds and not (t.hits == 1 and t.last_seen < seconds)
        ]
        self._seconds = seconds
        return ids

    def _associate(self, tracks, detections, boxes, scores, labels, seconds, ids, min_iou):
        """Optimal assignment of ``detections`` (indices) to ``tracks``; writes ``ids``, returns the matched tracks."""
        if not len(tracks) or not len(detections):
            return set()
        predicted = np.stack([t.filter.box_xyxy() for t in tracks])
        cost = 1.0 - box_iou(predicted, boxes[detections])
        if self.class_penalty > 0.0:
            differs = np.array([t.label for t in tracks])[:, None] != labels[detections][None, :]
            cost = cost + np.where(differs, self.class_penalty, 0.0)
        # A pair may match when its cost is within the limit; leaving a track or a detection unmatched costs
        # the limit (ByteTrack's lapjv cost_limit): the solver then never trades a good match for two poor
        # ones. Pairs over the limit cost the same as leaving both unmatched and are skipped if assigned.
        limit = 1.0 - min_iou
        allowed = cost <= limit
        rows, cols = linear_sum_assignment(np.where(allowed, cost - limit - 1e-9, 0.0))
        matched = set()
        for r, c in zip(rows, cols):
            if not allowed[r, c]:
                continue
            track, i = tracks[r], detections[c]
            track.observe(boxes[i], scores[i], labels[i], seconds)
            ids[i] = track.track_id
            matched.add(track)
        return matched


def box_iou(a, b):
    """IoU matrix [len(a), len(b)] of xyxy boxes (continuous coordinates: area = (x2 - x1) * (y2 - y1))."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
