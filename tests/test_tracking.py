"""The ByteTrack-style tracker: identities through motion, crossings, occlusion, frame rates, scores, classes."""

import math

import numpy as np
import pytest

from retinamask.ops.tracking import ByteTracker, box_iou


class Mover:
    """A box moving at constant velocity (px/s), visible except during ``hidden`` (start, end) seconds."""

    def __init__(self, centre, velocity, size=(40.0, 40.0), label=1, score=0.9, hidden=()):
        self.centre, self.velocity, self.size = np.array(centre, float), np.array(velocity, float), size
        self.label, self.score, self.hidden = label, score, hidden

    def box(self, t):
        cx, cy = self.centre + t * self.velocity
        w, h = self.size
        return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]

    def visible(self, t):
        return not any(start <= t < end for start, end in self.hidden)


def run_scene(movers, times, tracker=None, jitter=0.0, seed=0):
    """Track the visible movers at ``times``; return {mover index: [id per frame it was seen]}."""
    tracker = tracker or ByteTracker()
    rng = np.random.default_rng(seed)
    seen = {k: [] for k in range(len(movers))}
    for t in times:
        present = [k for k, m in enumerate(movers) if m.visible(t)]
        boxes = np.array([movers[k].box(t) for k in present], float).reshape(-1, 4)
        boxes += jitter * rng.standard_normal(boxes.shape)
        ids = tracker.update(
            boxes, [movers[k].score for k in present], [movers[k].label for k in present], seconds=float(t)
        )
        assert ids.dtype == np.int64 and ids.shape == (len(present),)
        for k, track_id in zip(present, ids):
            seen[k].append(int(track_id))
    return seen


def frame_times(fps, seconds, every=1):
    return [i / fps for i in range(0, round(seconds * fps), every)]


def single_ids(seen):
    """Each mover's one id (asserting it never changed)."""
    for k, ids in seen.items():
        assert len(set(ids)) == 1, f"mover {k} changed id: {ids}"
    return {k: ids[0] for k, ids in seen.items()}


def test_constant_velocity_objects_keep_their_ids_from_1():
    movers = [
        Mover((50, 50), (120, 0)),
        Mover((300, 200), (-90, 40), size=(30, 60), label=3),
        Mover((200, 60), (0, 150), size=(24, 24), label=7),
    ]
    ids = single_ids(run_scene(movers, frame_times(30, 2.0), jitter=1.0))
    assert sorted(ids.values()) == [1, 2, 3]


def test_two_crossing_objects_keep_their_ids():
    # Same class, same size, passing through each other (at the crossing their boxes overlap at IoU ~0.6).
    movers = [Mover((40, 100), (160, 0), label=1), Mover((360, 108), (-160, 0), label=1)]
    ids = single_ids(run_scene(movers, frame_times(30, 2.5), jitter=0.5))
    assert ids[0] != ids[1]


def test_crossing_with_the_front_object_hiding_the_other():
    # The detector sees only the front object while they overlap: the hidden one comes back with its id.
    movers = [Mover((40, 100), (150, 0)), Mover((360, 100), (-150, 0), hidden=[(0.95, 1.3)])]
    ids = single_ids(run_scene(movers, frame_times(30, 2.5)))
    assert ids[0] != ids[1]


@pytest.mark.parametrize("hidden_s, same_id", [(0.5, True), (0.9, True), (1.2, False), (2.0, False)])
def test_occlusion_shorter_than_lost_seconds_keeps_the_id_longer_gives_a_new_one(hidden_s, same_id):
    movers = [Mover((40, 100), (60, 10), hidden=[(1.0, 1.0 + hidden_s)]), Mover((300, 300), (-20, 0), label=3)]
    seen = run_scene(movers, frame_times(30, 1.0 + hidden_s + 1.0), tracker=ByteTracker(lost_seconds=1.0))
    before, after = set(seen[0][:30]), set(seen[0][30:])
    assert len(before) == 1 and len(after) == 1
    assert (before == after) is same_id
    if not same_id:
        assert after == {3}  # ids are never reused: the next one after 1 and 2
    assert set(seen[1]) == {2}


def test_same_identities_at_30_fps_10_fps_and_with_dropped_frames():
    """The real-time dt: the same motion sampled three ways gives the same tracks, and the lost buffer is
    in seconds (a 30-frame buffer would keep the 1.4 s gap at 10 fps; 1 s of real time does not)."""

    def scene():
        return [
            Mover((40, 100), (160, 0)),
            Mover((360, 108), (-160, 0)),
            Mover((100, 300), (50, -20), label=3, hidden=[(0.6, 1.2)]),  # back within lost_seconds
            Mover((300, 320), (-40, 0), label=7, hidden=[(0.8, 2.2)]),  # back after lost_seconds
        ]

    results = [
        run_scene(scene(), frame_times(30, 3.0)),
        run_scene(scene(), frame_times(10, 3.0)),
        run_scene(scene(), frame_times(30, 3.0, every=2)),
        run_scene(scene(), frame_times(30000 / 1001, 3.0, every=3)),
    ]
    for seen in results:
        assert [len(set(seen[k])) for k in range(4)] == [1, 1, 1, 2]
        assert sorted({i for ids in seen.values() for i in ids}) == [1, 2, 3, 4, 5]
        assert seen[3][-1] == 5
    firsts = [{k: ids[0] for k, ids in seen.items()} for seen in results]
    assert all(f == firsts[0] for f in firsts)


def test_a_burst_of_dropped_frames_is_bridged_by_the_real_elapsed_time():
    # 0.3 s without frames at 250 px/s: the objects move 75 px, about twice their size. A one-frame
    # prediction step would find no overlap and start new tracks; the real dt lands on them.
    times = [t for t in frame_times(30, 2.0) if not 1.0 < t < 1.3]
    movers = [Mover((40, 100), (250, 0), label=1), Mover((40, 300), (250, -30), label=3)]
    ids = single_ids(run_scene(movers, times, jitter=0.5))
    assert sorted(ids.values()) == [1, 2]


def test_variable_frame_intervals():
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.uniform(0.01, 0.25, size=40))
    movers = [Mover((40, 100), (200, 0)), Mover((560, 110), (-200, 0), label=3)]
    ids = single_ids(run_scene(movers, times))
    assert sorted(ids.values()) == [1, 2]


def test_low_score_detections_continue_a_track_but_never_start_one():
    tracker = ByteTracker(high_threshold=0.5, low_threshold=0.1, new_track_threshold=0.6)
    box = np.array([[100.0, 100.0, 140.0, 140.0]])
    assert tracker.update(box, [0.3], [1], seconds=0.0).tolist() == [-1]  # low: no track
    assert tracker.update(box, [0.55], [1], seconds=0.1).tolist() == [-1]  # high, below new_track_threshold
    assert tracker.update(box, [0.05], [1], seconds=0.2).tolist() == [-1]  # under low_threshold: ignored
    assert tracker.update(box, [0.9], [1], seconds=0.3).tolist() == [1]
    for k in range(1, 6):  # the score dips (occlusion): the low detections keep the track
        assert tracker.update(box + [2.0 * k, 0, 2.0 * k, 0], [0.2], [1], seconds=0.3 + k / 30).tolist() == [1]
    assert tracker.update(box + [12.0, 0, 12.0, 0], [0.9], [1], seconds=0.5).tolist() == [1]


def test_low_score_detections_do_not_revive_lost_tracks():
    tracker = ByteTracker(lost_seconds=2.0)
    box = np.array([[100.0, 100.0, 140.0, 140.0]])
    tracker.update(box, [0.9], [1], seconds=0.0)
    tracker.update(box, [0.9], [1], seconds=0.1)
    tracker.update(np.zeros((0, 4)), [], [], seconds=0.2)  # lost
    assert tracker.update(box, [0.3], [1], seconds=0.3).tolist() == [-1]
    assert tracker.update(box, [0.9], [1], seconds=0.4).tolist() == [1]  # a high one does


def test_empty_frames():
    tracker = ByteTracker(lost_seconds=0.5)
    empty = tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), seconds=0.0)
    assert empty.dtype == np.int64 and empty.shape == (0,)
    box = np.array([[10.0, 10.0, 50.0, 50.0]])
    assert tracker.update(box, [0.9], [1], seconds=0.1).tolist() == [1]
    assert tracker.update(box, [0.9], [1], seconds=0.2).tolist() == [1]
    for t in (0.3, 0.4, 0.5):
        assert tracker.update([], [], [], seconds=t).tolist() == []
    assert tracker.update(box, [0.9], [1], seconds=0.6).tolist() == [1]  # 0.4 s lost <= 0.5
    for t in (0.7, 0.8, 0.9, 1.0, 1.1, 1.2):
        tracker.update([], [], [], seconds=t)
    assert tracker.update(box, [0.9], [1], seconds=1.3).tolist() == [2]


def test_a_one_frame_track_that_is_not_confirmed_is_dropped():
    tracker = ByteTracker(lost_seconds=5.0)
    box = np.array([[10.0, 10.0, 50.0, 50.0]])
    assert tracker.update(box, [0.9], [1], seconds=0.0).tolist() == [1]  # a spurious detection
    tracker.update([], [], [], seconds=0.1)
    assert tracker.update(box, [0.9], [1], seconds=0.2).tolist() == [2]


def test_deterministic():
    rng = np.random.default_rng(0)
    movers = [
        Mover(rng.uniform(0, 400, 2), rng.uniform(-150, 150, 2), label=int(rng.integers(1, 4)), score=s)
        for s in rng.uniform(0.2, 1.0, size=12)
    ]
    times = frame_times(25, 2.0)
    first = run_scene(movers, times, jitter=2.0, seed=5)
    assert run_scene(movers, times, jitter=2.0, seed=5) == first
    tracker = ByteTracker()
    run_scene(movers, times, tracker=tracker, jitter=2.0, seed=5)
    tracker.reset()
    assert run_scene(movers, times, tracker=tracker, jitter=2.0, seed=5) == first


def test_label_flicker_keeps_the_track_and_labels_break_ties():
    tracker = ByteTracker()
    box = np.array([[100.0, 100.0, 140.0, 140.0]])
    assert tracker.update(box, [0.9], [1], seconds=0.0).tolist() == [1]
    assert tracker.update(box, [0.8], [25], seconds=0.04).tolist() == [1]  # circle <-> ring: same object
    assert tracker.update(box, [0.9], [1], seconds=0.08).tolist() == [1]

    # Two tracks on one spot, a circle and a star: each detection goes to its class's track.
    tracker = ByteTracker()
    pair = np.array([[100.0, 100.0, 140.0, 140.0], [102.0, 100.0, 142.0, 140.0]])
    assert tracker.update(pair, [0.9, 0.9], [1, 12], seconds=0.0).tolist() == [1, 2]
    swapped = pair[::-1].copy()  # the circle's box now where the star's was, and back
    assert tracker.update(swapped, [0.9, 0.9], [1, 12], seconds=0.04).tolist() == [1, 2]


def test_class_penalty_extremes():
    box = np.array([[100.0, 100.0, 140.0, 140.0]])
    strict = ByteTracker(class_penalty=math.inf)
    strict.update(box, [0.9], [1], seconds=0.0)
    assert strict.update(box, [0.9], [3], seconds=0.04).tolist() == [2]
    agnostic = ByteTracker(class_penalty=0.0)
    agnostic.update(box, [0.9], [1], seconds=0.0)
    assert agnostic.update(box, [0.9], [3], seconds=0.04).tolist() == [1]


def test_bad_arguments():
    tracker = ByteTracker()
    tracker.update([[0, 0, 10, 10]], [0.9], [1], seconds=1.0)
    with pytest.raises(ValueError, match="went back"):
        tracker.update([[0, 0, 10, 10]], [0.9], [1], seconds=0.5)
    with pytest.raises(ValueError, match="boxes"):
        tracker.update([[0, 0, 10, 10]], [0.9, 0.8], [1], seconds=2.0)
    with pytest.raises(ValueError):
        ByteTracker(high_threshold=0.5, new_track_threshold=0.4)
    tracker.reset()
    assert tracker.update([[0, 0, 10, 10]], [0.9], [1], seconds=0.0).tolist() == [1]


def test_box_iou():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0, 0.0]])
