"""Reading video with PyAV: files (probed, not judged by extension), stream URLs and cameras, as RGB frames
with exact timestamps; live sources re-opened with backoff when they drop.

Decisions:

* Timestamps are exact: ``pts`` in the video stream's ``time_base`` ticks (fractional and variable frame
  rates kept), relative to the first decoded frame. A live source's time base is 1/1000: its ``pts`` are
  the milliseconds of a monotonic clock since its first frame arrived, strictly increasing across
  reconnects (a stream's own clock restarts when it is re-opened; the wall clock does not).
* Pixels are exact: ``frame.to_ndarray(format="rgb24")``; a lossless clip gives back its source images.
  The decoder runs without threads: FFmpeg's frame threading can hide a damaged packet (the frames come
  out concealed, no error) and adds frames of latency; decoding costs far less than the model.
* Orientation: frames are given as stored (images ignore EXIF orientation for the same reason: the
  detections refer to stored pixels); a display rotation (phones) is reported in
  ``VideoInfo.display_matrix`` for the writer to copy.
* The first frame is decoded by :func:`open_video` itself, so a source that opens but delivers nothing
  (no stream, an undecodable codec, a silent server) fails there, within the timeout.
* Files: a damaged file yields its good frames (those still buffered in the decoder included) and then
  raises one InputError naming the frame index where decoding failed.
* Live (URL schemes rtsp, rtmp, udp, tcp, srt, http(s) without a duration; a camera): a read error or an
  end of stream is a drop. The source is re-opened with exponential backoff (0.5 s doubling, at most
  8 s), each attempt logged; the attempt count starts again once a frame arrives. No frame is ever
  made up; a new resolution is yielded as is (and logged). After ``reconnect`` failed attempts in a
  row: InputError. An undecodable packet of a live source (joined mid-GOP, a lost packet) is skipped
  and counted, not a drop. RTSP is opened over TCP without probing the media (its SDP describes the
  streams), other URLs with 0.5 s of probing: FFmpeg's default (5 s) buffers seconds of frames that
  then come out stale, in a burst.
* A camera "0".."9" is /dev/videoN through v4l2 (Linux).
* Every failure is one :class:`~retinamask.core.errors.InputError` naming the source.
"""

import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from retinamask.core.errors import InputError, one_line
from retinamask.core.fileio import check_input_file
from retinamask.formats.video_probe import (
    LIVE_SCHEMES,
    camera_device,
    display_matrix,
    is_video_file,
    mp4_without_index,
    source_kind,
    url_scheme,
)

__all__ = ["LIVE_SCHEMES", "VideoFrame", "VideoInfo", "VideoReader", "is_video_file", "open_video", "source_kind"]

LIVE_TIME_BASE = Fraction(1, 1000)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 8.0
LIVE_ANALYZE_US = 500_000  # probing of a stream URL other than RTSP: 0.5 s, not FFmpeg's 5 s
LIVE_BAD_PACKETS = 100  # undecodable packets in a row that make a live source a drop

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    source: str  # the path or URL as given
    width: int
    height: int
    codec: str
    time_base: Fraction  # of the video stream (live: 1/1000, pts are milliseconds)
    frame_rate: Fraction | None  # exact average rate (30000/1001, 25/2); None when unknown
    frames: int | None  # number of frames when the container says or it can be computed; None for live
    duration: float | None  # seconds; None for live
    has_audio: bool
    live: bool  # a stream or camera (no end, latest-frame policy), not a file
    # how players turn the stored frames (9 ints, FFmpeg's display matrix: a phone's rotation); None: upright.
    # Frames are given in stored orientation (as images ignore EXIF); VideoWriter(display_matrix=) copies it
    display_matrix: tuple[int, ...] | None = None


@dataclass(frozen=True)
class VideoFrame:
    index: int  # 0-based index in the source, every decoded frame counted; live: across reconnects
    pts: int  # in VideoInfo.time_base ticks, relative to the first frame
    seconds: float  # pts * time_base
    rgb: np.ndarray  # uint8 [H, W, 3]; H, W may change after a live reconnect


def open_video(source, *, timeout=10.0, reconnect=5, log=None):
    """Open a video file, stream URL or camera; returns a :class:`VideoReader` (its first frame decoded).

    ``timeout``: seconds allowed to open the source and for each read. ``reconnect``: attempts to
    re-open a live source after a drop. ``log``: a callable taking one line (default: this module's
    logger, warning level). Raises InputError when the source cannot be opened within the timeout,
    has no video stream or cannot be decoded.
    """
    return VideoReader(str(source), timeout=timeout, reconnect=reconnect, log=log)


class VideoReader:
    """A context manager and an iterator of :class:`VideoFrame`; iterate it from one thread at a time.
    ``close()`` may be called from another thread (the reading thread stops at its next frame).

    ``reconnects``: successful re-opens of a live source after a drop; ``dropped_reconnects``: failed
    re-open attempts; ``drops``: times a live source dropped.
    """

    def __init__(self, source, *, timeout=10.0, reconnect=5, log=None):
        self.source = source
        self.timeout = float(timeout)
        self.reconnect = int(reconnect)
        self._log = log or _LOG.warning
        self.reconnects = self.dropped_reconnects = self.drops = 0
        self._closing = threading.Event()
        self._lock = threading.Lock()  # held while the container is read
        self._container = None
        self._index = 0
        self._first_pts = None
        self._last_pts = None
        self._clock_zero = None
        self._size = None
        camera = camera_device(source)
        scheme = url_scheme(source)
        self._target, self._open_args = source, {}
        if camera:
            self._target, self._open_args = camera, {"format": "v4l2"}
        elif scheme in ("rtsp", "rtsps"):
            # the SDP describes the streams: no probing of the media (FFmpeg's default 5 s of it would
            # come out as seconds of stale frames in one burst)
            self._open_args = {"options": {"rtsp_transport": "tcp", "analyzeduration": "0", "probesize": "32"}}
        elif scheme in LIVE_SCHEMES:  # http(s) too: a live MPEG-TS over HTTP would hold 5 s of frames
            self._open_args = {"options": {"analyzeduration": str(LIVE_ANALYZE_US)}}
        elif scheme is None:
            check_input_file(source, "a video file")
        self._url = camera is not None or scheme is not None
        self._live = camera is not None or scheme in LIVE_SCHEMES  # http(s): until its duration is known
        self.skipped_packets = 0
        self._pending, self._first_frame = self._open()
        try:
            first, self._clock_zero = self._first_frame
            stream = self._container.streams.video[0]
            if scheme in ("http", "https") and self._container.duration:
                self._live = False  # a file served over HTTP
            self.info = self._make_info(stream, first, self._live)
            self._size = (first.height, first.width)
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------------------
    def _open(self):
        """Open the source and decode its first frame -> (a frame generator, that first frame)."""
        try:
            container = av.open(self._target, timeout=(self.timeout, self.timeout), **self._open_args)
        except Exception as e:
            raise InputError(self._open_cause(e), self.source) from None
        try:
            if not container.streams.video:
                kinds = ", ".join(f"{s.type} {s.codec_context.name}" for s in container.streams) or "none"
                raise InputError(f"no video stream (streams: {kinds})", self.source)
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise InputError("the video codec is not one FFmpeg can decode", self.source)
            frames = self._decoded(container, stream)
            try:
                first = (next(frames), time.monotonic())
            except StopIteration:
                raise InputError("no video frame could be decoded", self.source) from None
            except (av.FFmpegError, OSError) as e:
                what = "reading failed" if self._live else "decoding failed at frame 0"
                raise InputError(f"{what} ({self._read_cause(e)})", self.source) from None
        except BaseException:
            container.close()
            raise
        self._container = container
        return frames, first

    def _open_cause(self, error):
        if isinstance(error, av.error.ExitError):
            return f"no answer within the timeout ({self.timeout:g} s)"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, FileNotFoundError):
            if self._open_args.get("format") == "v4l2":
                return "camera not found" if self._target == self.source else f"camera {self._target} not found"
            return "not found"
        if isinstance(error, av.error.InvalidDataError):
            if not self._url and mp4_without_index(self.source):
                return "an MP4/MOV without its index (no moov box): truncated, or a recording never finished"
            what = "stream" if self._url else "file"
            return f"not a media {what} FFmpeg can read ({_cause(error)})"
        return f"cannot open: {_cause(error)}"

    def _read_cause(self, error):
        if isinstance(error, av.error.ExitError):
            return f"no data within the timeout ({self.timeout:g} s)"
        return _cause(error)

    def _make_info(self, stream, first, live):
        codec = stream.codec_context.name
        has_audio = bool(self._container.streams.audio)
        # a live source: only a rate the stream declares (FFmpeg's guess for MJPEG is a made-up 25)
        rate = stream.average_rate if live else (stream.average_rate or stream.guessed_rate)
        rate = Fraction(rate) if rate else None
        size = (first.width, first.height)
        matrix = display_matrix(first)
        if live:
            return VideoInfo(self.source, *size, codec, LIVE_TIME_BASE, rate, None, None, has_audio, True, matrix)
        duration = None
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration and not has_audio:  # the container's also counts a longer audio track
            duration = self._container.duration / av.time_base
            if self._container.format.name.startswith("matroska") and stream.start_time and stream.time_base:
                # Matroska's duration counts from 0, not from the first timestamp (HLS, MPEG-TS: from it)
                duration = max(duration - float(stream.start_time * stream.time_base), 0.0) or None
        frames = stream.frames or None
        if frames is None and duration is not None and rate is not None:
            frames = round(duration * rate)
        time_base = Fraction(stream.time_base) if stream.time_base else 1 / (rate or 25)
        return VideoInfo(self.source, *size, codec, time_base, rate, frames, duration, has_audio, False, matrix)

    # -- decoding --------------------------------------------------------------------------------
    def _decoded(self, container, stream):
        """The av.VideoFrames of ``stream``. A file's damaged packet: the frames still buffered in the
        decoder come out, then the error is raised again. A live source's undecodable packet (joined
        mid-GOP, a lost packet) is skipped and counted in ``skipped_packets``; ``LIVE_BAD_PACKETS`` in a
        row make a drop."""
        bad_in_a_row = 0
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    if not self._live or bad_in_a_row >= LIVE_BAD_PACKETS:
                        raise
                    bad_in_a_row += 1
                    self.skipped_packets += 1
                    continue
                if frames:
                    bad_in_a_row = 0
                yield from frames
        except (av.FFmpegError, OSError) as error:
            try:
                buffered = stream.codec_context.decode(None)
            except (av.FFmpegError, OSError):
                buffered = []
            yield from buffered
            raise error

    def __iter__(self):
        if self._live:
            yield from self._live_frames()
        else:
            yield from self._file_frames()

    def _take_first(self):
        """The first frame of a newly opened container (decoded while opening), once."""
        frame, self._first_frame = self._first_frame, None
        return frame

    def _file_frames(self):
        first = self._take_first()
        if first is not None:
            yield self._frame(*first)
        while not self._closing.is_set():
            try:
                frame = self._next_frame()
            except (av.FFmpegError, OSError) as error:
                cause = self._read_cause(error)
                raise InputError(f"decoding failed at frame {self._index} ({cause})", self.source) from None
            if frame is None:
                self._check_complete()
                return
            yield self._frame(frame)
        self._close_container()

    def _check_complete(self):
        """At the end of a file: InputError when the frames stop clearly before the video's declared
        duration (a file cut short: its header still says how long it was)."""
        info, last = self.info, self._last_pts
        if info.duration is None or last is None or not info.frame_rate:
            return
        ends = float(last * info.time_base) + 1 / float(info.frame_rate)
        if ends < info.duration - max(2 / float(info.frame_rate), 0.1):
            raise InputError(
                f"the video ends at frame {self._index} ({ends:.2f} s of the {info.duration:.2f} s its header "
                "declares): the file is truncated or damaged",
                self.source,
            )

    def _next_frame(self):
        """The next decoded av.VideoFrame of the open container; None at its end or once closed."""
        with self._lock:
            if self._container is None or self._closing.is_set():
                return None
            return next(self._pending, None)

    def _live_frames(self):
        while not self._closing.is_set():
            first = self._take_first()
            if first is not None:
                yield self._frame(*first)
                continue
            try:
                frame = self._next_frame()
                arrived = time.monotonic()
            except (av.FFmpegError, OSError) as error:
                cause = self._read_cause(error)
            else:
                if frame is not None:
                    yield self._frame(frame, arrived)
                    continue
                cause = "end of stream"
            if self._closing.is_set():
                break
            self._reopen(cause)
        self._close_container()

    def _reopen(self, cause):
        """Re-open a live source after a drop, with backoff; raises InputError after the attempts."""
        self.drops += 1
        self._close_container()
        dropped = f"stream dropped after frame {self._index - 1}" if self._index else "stream dropped"
        dropped += f" ({cause})"
        failed = None  # why the last attempt failed
        for attempt in range(1, self.reconnect + 1):
            delay = min(BACKOFF_FIRST_S * 2 ** (attempt - 1), BACKOFF_MAX_S)
            line = f"{self.source}: {dropped}; reconnecting, attempt {attempt}/{self.reconnect} in {delay:g} s"
            self._log(line + (f" (attempt {attempt - 1}: {failed})" if failed else ""))
            if self._closing.wait(delay):
                return
            try:
                self._pending, first = self._open()
            except InputError as error:
                self.dropped_reconnects += 1
                failed = error.cause
                continue
            self.reconnects += 1
            frame = first[0]
            if (frame.height, frame.width) != self._size:
                self._log(
                    f"{self.source}: reconnected at {frame.width}x{frame.height} (was {self._size[1]}x{self._size[0]})"
                )
                self._size = (frame.height, frame.width)
            self._first_frame = first
            return
        last = f" (the last: {failed})" if failed else ""
        raise InputError(f"{dropped}; {self.reconnect} reconnect attempts failed{last}", self.source)

    def _frame(self, frame, arrived=None):
        rgb = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
        if self._live:
            pts = round((arrived - self._clock_zero) * 1000)
        else:
            pts = frame.pts if frame.pts is not None else self._estimated_ticks()
            if self._first_pts is None:
                self._first_pts = pts
            pts -= self._first_pts
        if self._live and self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        index = self._index
        self._index += 1
        return VideoFrame(index, int(pts), float(pts * self.info.time_base), rgb)

    def _estimated_ticks(self):
        """A frame without a pts: its place at the nominal rate, in time-base ticks."""
        rate = self.info.frame_rate or Fraction(25)
        ticks = self._index / rate / self.info.time_base
        return round(ticks) + (self._first_pts or 0)

    # -- closing ---------------------------------------------------------------------------------
    def _close_container(self):
        with self._lock:
            if self._container is not None:
                self._container.close()
                self._container = None

    def close(self):
        """Stop reading and release the source; safe from another thread (the reading thread ends at
        its next frame or read timeout) and more than once."""
        self._closing.set()
        if self._lock.acquire(blocking=False):
            try:
                if self._container is not None:
                    self._container.close()
                    self._container = None
            finally:
                self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _cause(error):
    """An FFmpeg error's text without the trailing file name PyAV adds."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return one_line(text)
