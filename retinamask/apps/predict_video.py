"""Video through a predictor, frame by frame: the generator every video path runs (torch-free).

>>> from retinamask.apps.onnx_predictor import OnnxPredictor
>>> for result in predict_video(OnnxPredictor("model.onnx"), "clip.mp4", track=True):
...     result.index, result.seconds, result.detections.boxes, result.track_ids

Frames are decoded in their own thread (:class:`FrameFeed`) while the model runs on the previous one:

* a file (or ``stream_buffer``) goes through a bounded queue: every frame is processed, and the
  decoder waits when the model is behind (a live source says so once);
* a live source (URL, camera) keeps only the latest frame while the model is busy: the others are
  dropped and counted (``FrameResult.dropped``), so the answer is never more than a frame late.

Memory stays constant: at most ``queue`` frames wait, and results are yielded, never gathered.
"""

import collections
import logging
import threading
from dataclasses import dataclass

import numpy as np

from retinamask.core.detections import Detections
from retinamask.formats.images import as_rgb_array
from retinamask.formats.video_read import open_video
from retinamask.ops.tracking import ByteTracker

log = logging.getLogger(__name__)

FILE_QUEUE = 8  # decoded frames waiting for the model (files): enough to hide decoding jitter
STREAM_BUFFER = 64  # --stream-buffer: frames a live source may get ahead before its decoder waits


@dataclass
class FrameResult:
    """One processed frame: its index in the source, its timestamp (``seconds``; ``pts`` in the source's
    time base, exact), the detections (image pixels) and, when tracking, their track ids (int64 [N], -1
    for a detection left untracked; None without)."""

    index: int
    seconds: float
    pts: int
    detections: Detections
    track_ids: np.ndarray | None
    rgb: np.ndarray
    dropped: int = 0  # frames dropped since the previous result (live sources, latest-frame policy)


@dataclass(frozen=True)
class FrameOptions:
    """How frames are read and kept: ``vid_stride`` keeps one frame in N; ``stream_buffer`` keeps every
    frame of a live source (bounded) instead of the latest; ``timeout`` (s) to open and to read; ``reconnect``
    attempts when a live source drops; ``max_frames`` / ``duration`` (s of the source's time) stop a run."""

    vid_stride: int = 1
    stream_buffer: bool = False
    timeout: float = 10.0
    reconnect: int = 5
    max_frames: int | None = None
    duration: float | None = None

    def __post_init__(self):
        if self.vid_stride < 1:
            raise ValueError(f"vid_stride must be >= 1, got {self.vid_stride}")


def predict_video(predict, source, *, track=False, tracked_only=False, tracker=None, options=None, **kwargs):
    """Yield a :class:`FrameResult` per processed frame of ``source`` (a video file, URL or camera).

    ``predict``: ``rgb uint8 [H, W, 3] -> Detections`` (the PyTorch ``Predictor`` or ``OnnxPredictor``).
    ``track``: ByteTrack ids (``tracker``: a :class:`~retinamask.ops.tracking.ByteTracker` of your own);
    ``tracked_only``: leave out the detections no track took. ``options``: a :class:`FrameOptions`, or its
    fields as keywords. Raises InputError for a source that cannot be opened, and after the frames before
    the damage for one that breaks mid-way.
    """
    options = options or FrameOptions(**kwargs)
    with open_video(source, timeout=options.timeout, reconnect=options.reconnect) as reader:
        yield from frames_of(predict, reader, track=track, tracked_only=tracked_only, tracker=tracker, options=options)


def frames_of(predict, reader, *, track=False, tracked_only=False, tracker=None, options=None):
    """:func:`predict_video` on a reader already open (its ``info`` read first, e.g. to open a writer).

    ``predict`` may also be a list of predictors (sessions of one model, e.g. ``create_sessions``): a file's
    frames then run on them at once, one frame each, and come out in order (tracking stays sequential). A
    live source uses the first alone: in parallel, each frame would take longer to answer."""
    options = options or FrameOptions()
    predictors = list(predict) if isinstance(predict, (list, tuple)) else [predict]
    if track and tracker is None:
        tracker = ByteTracker()
    live = reader.info.live
    latest_only = live and not options.stream_buffer
    feed = FrameFeed(reader, options.vid_stride, latest_only, STREAM_BUFFER if live else FILE_QUEUE, reader.info.source)
    frames = _stopped(feed, options.duration)
    detected = _detected(predictors[:1] if live else predictors, frames)
    try:
        for processed, (frame, dropped, detections) in enumerate(detected, start=1):
            track_ids = None
            if track:
                track_ids = tracker.update(detections.boxes, detections.scores, detections.labels, frame.seconds)
                if tracked_only:
                    keep = np.flatnonzero(track_ids >= 1)
                    detections, track_ids = detections.take(keep), track_ids[keep]
            yield FrameResult(frame.index, frame.seconds, frame.pts, detections, track_ids, frame.rgb, dropped)
            if options.max_frames is not None and processed >= options.max_frames:
                break
    finally:
        detected.close()
        feed.close()


def _stopped(feed, duration):
    """The feed's ``(frame, dropped)`` up to ``duration`` seconds of the source's time."""
    for frame, dropped in feed:
        if duration is not None and frame.seconds >= duration:
            return
        yield frame, dropped


def _detected(predictors, frames):
    """``(frame, dropped, detections)`` in frame order: one predictor runs each frame in turn here; several
    run a frame each at once in threads (the runtimes release the GIL), at most one frame each in flight."""
    if len(predictors) == 1:
        for frame, dropped in frames:
            yield frame, dropped, predictors[0](as_rgb_array(frame.rgb))
        return
    from concurrent.futures import ThreadPoolExecutor

    pending = collections.deque()
    with ThreadPoolExecutor(len(predictors), thread_name_prefix="predict") as pool:
        try:
            for i, (frame, dropped) in enumerate(frames):
                model = predictors[i % len(predictors)]
                pending.append((frame, dropped, pool.submit(model, as_rgb_array(frame.rgb))))
                if len(pending) == len(predictors):
                    frame, dropped, future = pending.popleft()
                    yield frame, dropped, future.result()
            while pending:
                frame, dropped, future = pending.popleft()
                yield frame, dropped, future.result()
        finally:
            for _, _, future in pending:
                future.cancel()


class FrameFeed:
    """Decode ``reader``'s frames in a daemon thread and hand them over as ``(frame, dropped)``.

    ``latest_only``: keep the newest frame only (the others counted in ``dropped``); otherwise a FIFO of
    ``capacity`` frames, the decoder waiting when it is full. ``stride``: keep frames whose index is a
    multiple of it. The reader is read and closed in the feed's own thread; an error it raises (a drop
    past its reconnects, damaged data) is raised to the consumer after the frames before it.
    """

    def __init__(self, reader, stride, latest_only, capacity, name="source"):
        self._reader = reader
        self._stride = stride
        self._latest_only = latest_only
        self._capacity = capacity
        self._name = name
        self._frames = collections.deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._finished = False
        self._error = None
        self._dropped = 0
        self._behind_said = False
        self._thread = threading.Thread(target=self._decode, name=f"decode {name}", daemon=True)
        self._thread.start()

    def _decode(self):
        try:
            for frame in self._reader:
                if frame.index % self._stride:
                    continue
                with self._ready:
                    if self._stopping:
                        return
                    self._put(frame)
                    self._ready.notify_all()
        except BaseException as e:  # handed to the consumer, raised there
            self._error = e
        finally:
            try:
                self._reader.close()
            finally:
                with self._ready:
                    self._finished = True
                    self._ready.notify_all()

    def _put(self, frame):
        if self._latest_only:
            self._dropped += len(self._frames)
            self._frames.clear()
        elif len(self._frames) >= self._capacity:
            if self._reader.info.live and not self._behind_said:
                log.warning(
                    "%s: the model is behind the stream (%d frames buffered): frames wait and the answers lag",
                    self._name,
                    len(self._frames),
                )
                self._behind_said = True
            while len(self._frames) >= self._capacity and not self._stopping:
                self._ready.wait()
        self._frames.append(frame)

    def __iter__(self):
        while True:
            with self._ready:
                while not self._frames and not self._finished:
                    self._ready.wait()
                if not self._frames:
                    break
                frame = self._frames.popleft()
                dropped, self._dropped = self._dropped, 0
                self._ready.notify_all()
            yield frame, dropped
        if self._error is not None:
            raise self._error

    def close(self, wait=2.0):
        """Stop decoding (the thread ends at its next frame, or its read timeout) and free the frames."""
        with self._ready:
            self._stopping = True
            self._frames.clear()
            self._ready.notify_all()
        self._thread.join(wait)
