"""The annotated video: H.264 in MP4 that browsers play, at the source's exact timing, with its audio.

Decisions:

* H.264 by libx264 (PyAV's wheels bundle it), else libopenh264 (BSD-licensed, in some builds); yuv420p;
  ``movflags=+faststart`` (the moov box before mdat: a browser starts playing before the whole file
  has arrived). ``crf`` sets libx264's quality (libopenh264 takes a bit rate instead: 0.15 bit per
  pixel and frame). ``preset`` "superfast" by default: 6 ms of CPU a 640x480 frame on the test
  machine against 10 ms for "veryfast", for files ~25 % larger (the CPU belongs to the model).
* No B-frames: each frame's decode time is its presentation time, so variable frame rates come out
  exact (with B-frames x264 invents decode times that shorten a VFR file and need a negative-time
  edit list).
* Timing: the stream's time base is the one given (the source's), each frame's pts the ticks given:
  fractional (30000/1001) and variable frame rates are kept exactly. A pts not above the previous one
  (a damaged source) is moved one tick past it: an MP4 cannot hold two frames at one instant.
* Orientation: frames are written as given (the source's stored orientation, which the detections
  use); ``display_matrix`` (``VideoInfo.display_matrix``: a phone's rotation) is copied into the MP4
  so that players turn the annotated video as they turn the source.
* Sizes: yuv420p needs even sides; an odd width or height is padded right / bottom by repeating the
  edge pixels. A frame of another size (a live source re-opened at a new resolution) is scaled to the
  first frame's size.
* Audio: the audio stream of ``audio_from`` is copied packet by packet (no re-encode, no quality lost),
  aligned with the source's first video frame and cut at the end of the written video (a run stopped
  early gets the audio of what it wrote). The video is encoded into a temporary video-only MP4 first;
  ``close()`` remuxes its packets with the audio into the final temporary file. An audio codec the
  MP4 muxer refuses is left out (``audio_copied`` False, ``audio_note`` says why): the video matters more.
* ``lossless``: FFV1 (``bgr0``: the RGB pixels exactly) in Matroska instead, for clips whose pixels must
  decode exactly (generated test data); ``threads`` 1 makes the encoder's bytes depend on the frames only.
* Atomic: written under a temporary name in the target's folder (core.fileio's naming, so that
  ``remove_stale_temp_files`` cleans up after a killed process) and renamed onto ``path`` by close().
  Leaving the ``with`` block on an exception still closes (the frames written so far make a valid,
  playable file: a source damaged mid-way or a stopped run keeps what it got); ``abort()`` discards.
"""

import contextlib
import heapq
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from retinamask.core.errors import OutputError, one_line
from retinamask.core.fileio import temp_path_beside

H264_ENCODERS = ("libx264", "libopenh264")
PRESET = "superfast"
_OPENH264_BITS_PER_PIXEL = 0.15  # of width * height * frame rate: ~1.4 Mbit/s at 640x480 30 fps


def h264_encoder():
    """The first H.264 encoder this FFmpeg build has (libx264, libopenh264); None when there is none."""
    available = av.codecs_available
    return next((name for name in H264_ENCODERS if name in available), None)


class VideoWriter:
    """Writes RGB frames as an H.264 MP4 at ``path`` (see the module's decisions). A context manager."""

    def __init__(
        self,
        path,
        width,
        height,
        time_base,
        frame_rate=None,
        audio_from=None,
        crf=20,
        preset=PRESET,
        display_matrix=None,
        lossless=False,
        threads=None,
    ):
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        if self.width < 1 or self.height < 1:
            raise ValueError(f"bad video size {width}x{height}")
        self.time_base = Fraction(time_base)
        self.frame_rate = Fraction(frame_rate) if frame_rate else None
        self.audio_from = None if audio_from is None else str(audio_from)
        self.crf = int(crf)
        self.preset = str(preset)
        self.display_matrix = None if display_matrix is None else [int(v) for v in display_matrix]
        self.lossless = bool(lossless)
        if self.lossless and self.audio_from is not None:
            raise ValueError("a lossless (FFV1, Matroska) clip takes no audio copy")
        self.threads = threads
        self.frames = 0
        self.audio_copied = False
        self.audio_note = None
        self._last_pts = None
        even = 0 if self.lossless else 1  # FFV1 takes any size; yuv420p needs even sides
        self._encoded_w = self.width + even * (self.width % 2)
        self._encoded_h = self.height + even * (self.height % 2)
        self._video_tmp = temp_path_beside(self.path)
        self._muxed_tmp = None  # the video and the audio, made by close()
        self._container = None
        self._stream = None
        self._closed = False
        self._result = None
        try:
            self._open()
        except BaseException:
            self.abort()
            raise

    def _open(self):
        codec = "ffv1" if self.lossless else h264_encoder()
        if codec is None:
            raise OutputError("this FFmpeg build has no H.264 encoder (libx264 or libopenh264)", self.path)
        try:
            if self.lossless:
                self._container = av.open(str(self._video_tmp), "w", format="matroska")
            else:
                self._container = av.open(str(self._video_tmp), "w", format="mp4", options={"movflags": "+faststart"})
            stream = self._container.add_stream(codec, rate=self.frame_rate)
            stream.width, stream.height = self._encoded_w, self._encoded_h
            stream.pix_fmt = "bgr0" if self.lossless else "yuv420p"
            if self.display_matrix is not None:
                stream.set_display_matrix(self.display_matrix)
            stream.time_base = self.time_base
            stream.codec_context.time_base = self.time_base
            threads = {} if self.threads is None else {"threads": str(int(self.threads))}
            if codec == "ffv1":
                stream.options = threads
            elif codec == "libx264":
                stream.options = {"crf": str(self.crf), "preset": self.preset, "bf": "0", **threads}
            else:
                rate = float(self.frame_rate or 30)
                stream.bit_rate = int(self._encoded_w * self._encoded_h * rate * _OPENH264_BITS_PER_PIXEL)
        except (av.FFmpegError, OSError) as e:
            raise _output_error(e, self.path) from None
        self._stream = stream

    def write(self, rgb, pts):
        """Add one frame: ``rgb`` uint8 [H, W, 3], ``pts`` in time-base ticks (strictly increasing)."""
        if self._closed:
            raise ValueError("write() on a closed VideoWriter")
        pts = int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        frame = av.VideoFrame.from_ndarray(self._fit(rgb), format="rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        try:
            self._container.mux(self._stream.encode(frame))
        except (av.FFmpegError, OSError) as e:
            raise _output_error(e, self.path) from None
        self._last_pts = pts
        self.frames += 1

    def _fit(self, rgb):
        """``rgb`` at the first frame's size, padded to even sides (edge pixels repeated)."""
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected a uint8 [H, W, 3] RGB frame, got {rgb.dtype} {rgb.shape}")
        if rgb.shape[:2] != (self.height, self.width):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            rgb = frame.reformat(width=self.width, height=self.height).to_ndarray(format="rgb24")
        pad_h, pad_w = self._encoded_h - self.height, self._encoded_w - self.width
        if pad_h or pad_w:
            rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        return np.ascontiguousarray(rgb)

    def close(self):
        """Finish the file and rename it onto ``path``; returns ``path``. With no frame written, nothing
        is written (the temporary file is removed) and None is returned. Idempotent."""
        if self._closed:
            return self._result
        self._closed = True
        try:
            if self.frames == 0:
                self._discard()
                return None
            try:
                self._container.mux(self._stream.encode(None))
                self._container.close()
            except (av.FFmpegError, OSError) as e:
                raise _output_error(e, self.path) from None
            self._container = None
            final = self._video_tmp
            if self.audio_from is not None:
                final = self._with_audio()
            try:
                _fsync(final)
                os.replace(final, self.path)
            except OSError as e:
                raise OutputError(f"cannot write: {e.strerror or e}", self.path) from None
            if final != self._video_tmp:
                _unlink(self._video_tmp)
            self._result = self.path
            return self.path
        except BaseException:
            self._discard()
            raise

    def _end_seconds(self):
        """Where the written video ends: the last pts plus one frame (at the nominal rate when given)."""
        step = (1 / self.frame_rate / self.time_base) if self.frame_rate else 1
        return float((self._last_pts + step) * self.time_base)

    def _with_audio(self):
        """Remux the encoded video and the audio of ``audio_from`` into a new temporary file; returns it
        (or the video-only file when the source has no audio or its codec cannot go into an MP4)."""
        try:
            source = av.open(self.audio_from)
        except (av.FFmpegError, OSError) as e:
            self.audio_note = f"audio left out: cannot read {self.audio_from} ({one_line(e)})"
            return self._video_tmp
        with source:
            if not source.streams.audio:
                return self._video_tmp
            self._muxed_tmp = temp_path_beside(self.path)
            try:
                _remux(self._video_tmp, source, self._muxed_tmp, self._end_seconds())
            except (av.FFmpegError, OSError, ValueError) as e:
                _unlink(self._muxed_tmp)
                self.audio_note = f"audio left out: {one_line(e)}"
                return self._video_tmp
        self.audio_copied = True
        return self._muxed_tmp

    def abort(self):
        """Stop and remove the temporary file(s); ``path`` is left as it was."""
        self._closed = True
        self._discard()

    def _discard(self):
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        _unlink(self._video_tmp)
        if self._muxed_tmp is not None:
            _unlink(self._muxed_tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._closed:
            return
        if exc_type is None:
            self.close()
        else:  # keep what was written: a valid file of the frames before the failure
            with contextlib.suppress(Exception):
                self.close()


def _remux(video_path, source, out_path, end_seconds):
    """Copy the video packets of ``video_path`` and the first audio stream of ``source`` into
    ``out_path`` (MP4, +faststart), interleaved by time; audio aligned with the source's first video
    frame and cut at ``end_seconds``."""
    audio_in = source.streams.audio[0]
    zero = Fraction(0)
    if source.streams.video:
        first = source.streams.video[0]
        if first.start_time is not None and first.time_base:
            zero = first.start_time * first.time_base
    audio_tb = Fraction(audio_in.time_base)
    shift = round(zero / audio_tb)
    mp4 = {"movflags": "+faststart"}
    with av.open(str(video_path)) as video, av.open(str(out_path), "w", format="mp4", options=mp4) as out:
        video_in = video.streams.video[0]
        video_tb = Fraction(video_in.time_base)
        video_out = out.add_stream_from_template(video_in)
        audio_out = out.add_stream_from_template(audio_in)

        def video_packets():
            for packet in video.demux(video_in):
                if packet.dts is not None:
                    yield packet.dts * video_tb, 0, packet, video_out

        def audio_packets():
            for packet in source.demux(audio_in):
                if packet.dts is None or packet.pts is None:
                    continue
                packet.pts -= shift
                packet.dts -= shift
                if packet.pts * audio_tb >= end_seconds:
                    return
                if packet.pts + (packet.duration or 0) <= 0:
                    continue  # sound from before the first video frame
                yield packet.dts * audio_tb, 1, packet, audio_out

        for _, _, packet, stream in heapq.merge(video_packets(), audio_packets(), key=lambda item: item[:2]):
            packet.stream = stream
            out.mux(packet)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path):
    with contextlib.suppress(FileNotFoundError, OSError):
        os.unlink(path)


def _output_error(error, path):
    return OutputError(f"cannot write the video: {one_line(getattr(error, 'strerror', None) or error)}", path)
