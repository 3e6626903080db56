"""Helpers of the video tests (reused by the predict-video tests): tiny clips written with PyAV
(H.264 with or without an AAC track, lossless FFV1 / PNG, variable frame rates, odd sizes), a check of
an MP4's top-level boxes, and an MJPEG-over-HTTP server on loopback that a test can stop and restart
mid-stream (at another resolution) to drop a live source."""

import contextlib
import io
import socket
import struct
import threading
import time
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
from PIL import Image

# lossless codecs: (pixel format written, container formats that take it)
_PIX_FMT = {"libx264": "yuv420p", "ffv1": "bgr0", "png": "rgb24", "mjpeg": "yuvj420p", "rawvideo": "yuv420p"}


def gradient_frames(count, width=64, height=48, seed=0):
    """``count`` distinct RGB uint8 frames [H, W, 3]: a noisy gradient that moves (deterministic)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        base = np.stack([(xs * 4 + i * 9) % 256, (ys * 5 + i * 7) % 256, (xs + ys + i * 13) % 256], axis=2)
        noise = rng.integers(0, 16, size=(height, width, 3))
        frames.append(((base + noise) % 256).astype(np.uint8))
    return frames


def make_clip(
    path,
    frames_rgb,
    rate=Fraction(25),
    codec="libx264",
    container=None,
    audio=False,
    vfr_pts=None,
    time_base=None,
    faststart=False,
    rotation=None,
):
    """Write ``frames_rgb`` (uint8 [H, W, 3] arrays) as a clip with PyAV; returns ``path``.

    ``rate``: the nominal frame rate (a Fraction: 25/2, 30000/1001). ``codec``: "libx264" (yuv420p),
    "ffv1" (bgr0, lossless) or "png" (rgb24, lossless; MOV/MP4 only), or "rawvideo" with a ``.y4m`` path
    (the clip Chromium's fake camera plays: ``--use-file-for-fake-video-capture``). ``container``: "mp4",
    "mkv", "mov", "y4m" (default: from the suffix). ``audio``: add an AAC track (a 440 Hz tone) as long as the video.
    ``vfr_pts``: the frames' pts in ``time_base`` ticks (default 1/rate) for variable rates; default:
    frame i at i / rate.
    ``faststart``: MP4/MOV with the moov box first (else last, as cameras write it). ``rotation``: a
    display rotation in degrees counter-clockwise (a phone held upright), as a display matrix.
    """
    path = Path(path)
    rate = Fraction(rate)
    fmt = container or path.suffix.lstrip(".")
    fmt = {"mkv": "matroska", "y4m": "yuv4mpegpipe"}.get(fmt, fmt)
    time_base = Fraction(time_base) if time_base is not None else 1 / rate
    if vfr_pts is None:
        pts = [round(i / rate / time_base) for i in range(len(frames_rgb))]
    else:
        pts = [int(p) for p in vfr_pts]
    height, width = frames_rgb[0].shape[:2]
    options = {"movflags": "+faststart"} if faststart else {}
    out = av.open(str(path), "w", format=fmt, options=options)
    try:
        video = out.add_stream(codec, rate=rate)
        video.width, video.height = width, height
        video.pix_fmt = _PIX_FMT[codec]
        if rotation is not None:
            video.set_display_rotation(rotation)
        video.time_base = time_base
        video.codec_context.time_base = time_base
        if codec == "libx264":
            video.options = {"crf": "18", "preset": "ultrafast"}
        sound = None
        if audio:
            sound = out.add_stream("aac", rate=16000)
            sound.layout = "mono"
        for rgb, ticks in zip(frames_rgb, pts):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = ticks, time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            end_s = float((pts[-1] + (pts[-1] - pts[-2] if len(pts) > 1 else 1)) * time_base)
            _write_tone(out, sound, end_s)
    finally:
        out.close()
    return path


def _write_tone(out, sound, seconds, sample_rate=16000):
    total = round(seconds * sample_rate)
    done = 0
    while done < total:
        count = min(1024, total - done)
        t = (np.arange(done, done + count) / sample_rate).astype(np.float32)
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, done, Fraction(1, sample_rate)
        out.mux(sound.encode(frame))
        done += count
    out.mux(sound.encode(None))


def top_level_boxes(path):
    """The types of an MP4's top-level boxes in file order, e.g. ["ftyp", "moov", "free", "mdat"]."""
    data = Path(path).read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        elif size == 0:
            size = len(data) - offset
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        offset += size
    return boxes


def probe(path):
    """What a player sees in a file: {"video": codec, "pix_fmt", "width", "height", "frames" (decoded),
    "rate" (average), "pts" (seconds), "audio": codec or None}."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {
            "video": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "rate": stream.average_rate,
            "audio": container.streams.audio[0].codec_context.name if container.streams.audio else None,
        }
        frames = list(container.decode(stream))
        info["frames"] = len(frames)
        info["pts"] = [float(f.pts * f.time_base) for f in frames]
        info["rgb"] = [f.to_ndarray(format="rgb24") for f in frames]
    return info


def jpeg_bytes(rgb, quality=95):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def level_frame(level, width, height):
    """A flat grey frame whose level tells a frame's number after JPEG (levels 8 apart survive)."""
    return np.full((height, width, 3), level, dtype=np.uint8)


class MjpegServer:
    """MJPEG over HTTP (``multipart/x-mixed-replace``) on 127.0.0.1 in a thread, as IP cameras serve it.

    Frame k is a flat grey of level ``(8 * k) % 256`` at ``size`` (w, h), sent ``fps`` times a second;
    ``max_frames`` ends each response after that many frames; the frames numbered in ``garbage`` are sent
    as undecodable bytes. ``stop()`` closes the listening socket
    and every open connection (a drop); ``start()`` again binds the same port (``size`` may change).
    ``sent`` counts the frames sent since the server was made; ``stalled.set()`` holds every connection
    open without sending (a camera that hangs), ``stalled.clear()`` sends again.
    """

    def __init__(self, size=(64, 48), fps=20.0, max_frames=None, port=0, garbage=()):
        self.size, self.fps, self.max_frames = size, fps, max_frames
        self.garbage = set(garbage)
        self.port = port
        self.sent = 0
        self.sent_at = {}  # frame number -> time.monotonic() when it was sent (latency measurements)
        self._server = None
        self._thread = None
        self._connections = set()
        self._lock = threading.Lock()
        self.stalled = threading.Event()  # set: connections stay open but no frame is sent
        self._generation = 0  # one more at each stop(): the handlers of a stopped server end

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self, size=None):
        if size is not None:
            self.size = size
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with owner._lock:
                    owner._connections.add(self.connection)
                try:
                    owner._serve(self)
                except OSError:
                    pass
                finally:
                    with owner._lock:
                        owner._connections.discard(self.connection)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def _serve(self, handler):
        width, height = self.size
        handler.send_response(200)
        handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        count, generation = 0, self._generation
        while (self.max_frames is None or count < self.max_frames) and generation == self._generation:
            if self.stalled.is_set():
                time.sleep(0.01)
                continue
            with self._lock:
                number = self.sent
                self.sent += 1
                self.sent_at[number] = time.monotonic()
            data = jpeg_bytes(level_frame((8 * number) % 256, width, height))
            if number in self.garbage:  # a damaged part: JPEG markers around bytes no decoder takes
                data = b"\xff\xd8" + bytes(range(256)) * 3 + b"\xff\xd9"
            head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            handler.wfile.write(head + data + b"\r\n")
            handler.wfile.flush()
            count += 1
            time.sleep(1.0 / self.fps)

    def stop(self):
        if self._server is None:
            return
        self._generation += 1
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._server = None

    def __enter__(self):
        return self.start() if self._server is None else self

    def __exit__(self, *exc):
        self.stop()


class SilentServer:
    """A TCP port on 127.0.0.1 that accepts connections (the kernel's backlog) but never answers:
    a source that hangs, for the open/read timeouts."""

    def __init__(self):
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(8)
        self.port = self._socket.getsockname()[1]

    def close(self):
        self._socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def free_port():
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_audio_only(path, seconds=0.5):
    """An MP4 (M4A) with one AAC track and no video."""
    out = av.open(str(path), "w", format="mp4")
    try:
        sound = out.add_stream("aac", rate=16000)
        sound.layout = "mono"
        _write_tone(out, sound, seconds)
    finally:
        out.close()
    return path


SYSTEM_PYTHON = "/usr/bin/python3"


def rtsp_server_available():
    """Whether Debian's GStreamer RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0, x264enc) is here."""
    import subprocess

    check = 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import Gst, GstRtspServer; '
    check += 'Gst.init(None); assert Gst.ElementFactory.find("x264enc")'
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def require_rtsp_server():
    """Skip the test where Debian's GStreamer RTSP server is missing; fail instead under
    RETINAMASK_REQUIRE_RTSP=1 (``.ci/run``, which installs it)."""
    import os

    import pytest

    if not rtsp_server_available():
        message = "no GStreamer RTSP server (Debian: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp ...)"
        if os.environ.get("RETINAMASK_REQUIRE_RTSP") == "1":
            pytest.fail(message)
        pytest.skip(message)


class RtspServer:
    """tests/rtsp_server.py (GStreamer's RTSP PLAY server, run by the system Python that has ``gi``) on
    127.0.0.1: H.264 of a moving ball at ``size`` and ``fps``, a keyframe every 10 frames, at ``url``.
    ``stop()`` kills it (a drop), ``start()`` starts it again on the same port (``size`` may change)."""

    def __init__(self, size=(160, 120), fps=10, port=None):
        self.size, self.fps = size, fps
        self.port = port or free_port()
        self._process = None

    @property
    def url(self):
        return f"rtsp://127.0.0.1:{self.port}/test"

    def start(self, size=None):
        import subprocess

        if size is not None:
            self.size = size
        script = Path(__file__).with_name("rtsp_server.py")
        args = [SYSTEM_PYTHON, str(script), str(self.port), *map(str, self.size), str(self.fps)]
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if self._process.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the RTSP test server did not start")
        return self

    def stop(self):
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process.stdout.close()
            self._process = None

    def __enter__(self):
        return self.start() if self._process is None else self

    def __exit__(self, *exc):
        self.stop()


def serve_tcp_stream(port, container="mpegts", frames=20, fps=25, size=(64, 48)):
    """Send ``frames`` gradient frames as H.264 in ``container`` (mpegts, flv) to the first client of
    tcp://127.0.0.1:port, at ``fps``, then close (an end of stream). Blocks: run it in a subprocess
    (:func:`tcp_stream_process`); PyAV holds the GIL while it waits for the client."""
    out = av.open(f"tcp://127.0.0.1:{port}?listen=1", "w", format=container, timeout=(20, 20))
    try:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"tune": "zerolatency", "preset": "ultrafast", "g": "10"}
        for i, rgb in enumerate(gradient_frames(frames, *size)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
            time.sleep(1 / fps)
        out.mux(stream.encode(None))
    finally:
        out.close()


def tcp_stream_process(port, **kwargs):
    """:func:`serve_tcp_stream` in a child process (the project's Python); returns the Popen."""
    import subprocess
    import sys

    code = f"import video_support; video_support.serve_tcp_stream({port}, **{kwargs!r})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent)


def predict_cli(*args):
    """``retinamask predict`` on the shipped ONNX model with ONNX Runtime (in this process); its exit code."""
    from retinamask.cli import main
    from retinamask.config.shipped import shipped_onnx_path

    return main(["predict", "--model", str(shipped_onnx_path()), "--backend", "onnxruntime", *map(str, args)])


def read_jsonl(path):
    """A JSONL file's records, asserting that every line is complete."""
    import json

    lines = Path(path).read_text().splitlines(keepends=True)
    assert all(line.endswith("\n") for line in lines)
    return [json.loads(line) for line in lines]
