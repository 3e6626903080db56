"""Live sources on loopback, started and stopped by the tests: an MJPEG-over-HTTP camera (a Python server in
a thread) and an RTSP PLAY server (GStreamer's, Debian's packages). Latency stays bounded (the latest frame
is kept, drops are counted), a dropped stream is re-opened (even at a new size), a dead one ends the run
with its files valid, SIGTERM leaves a playable MP4 and complete JSONL lines (exit 143)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retinamask.apps.predict_video import predict_video
from retinamask.config.shipped import shipped_onnx_path
from retinamask.core.detections import Detections
from retinamask.core.errors import InputError
from video_support import MjpegServer, RtspServer, free_port, predict_cli, probe, read_jsonl, require_rtsp_server

REPO = Path(__file__).resolve().parents[1]


class SlowModel:
    """A stand-in model that takes ``seconds`` per frame and finds one box of the frame's grey level."""

    class_names = ("level",)

    def __init__(self, seconds):
        self.seconds = seconds

    def __call__(self, rgb):
        time.sleep(self.seconds)
        level = float(rgb[..., 0].mean())
        return Detections(
            boxes=np.array([[0, 0, 8, 8]], np.float32),
            scores=np.array([level / 255.0], np.float32),
            labels=np.array([1]),
            class_names=["level"],
            masks=np.zeros((1, *rgb.shape[:2]), np.uint8),
            image_hw=rgb.shape[:2],
        )


def test_a_stream_faster_than_the_model_is_answered_with_the_latest_frame(tmp_path):
    inference = 0.1
    with MjpegServer(fps=40) as server:
        results, lags = [], []
        for result in predict_video(SlowModel(inference), server.url, max_frames=12):
            results.append(result)
            lags.append(server.sent - 1 - result.index)  # frames sent after this one, when its answer came
    indices = [r.index for r in results]
    assert indices == sorted(indices) and len(results) == 12
    assert sum(r.dropped for r in results) > 12  # the model is 4x slower than the stream: most frames dropped
    # never more than two inference times behind: 2 x 0.1 s x 40 fps = 8 frames (+2 for the network)
    assert max(lags[2:]) <= 10, lags


def test_stream_buffer_keeps_every_frame(tmp_path):
    with MjpegServer(fps=40, max_frames=30) as server:
        indices = [r.index for r in predict_video(SlowModel(0.01), server.url, stream_buffer=True, max_frames=25)]
    assert indices == list(range(25))


def test_a_dropped_stream_is_reopened_at_its_new_size_and_a_dead_one_ends_the_run(tmp_path, capsys):
    server = MjpegServer(size=(64, 48), fps=20).start()
    seen = []
    try:
        for result in predict_video(SlowModel(0.0), server.url, reconnect=3, stream_buffer=True, max_frames=30):
            seen.append((result.index, result.rgb.shape[:2]))
            if len(seen) == 10:
                server.stop()
                time.sleep(0.3)
                server.start(size=(80, 64))
    finally:
        server.stop()
    assert len(seen) == 30 and [i for i, _ in seen] == sorted(i for i, _ in seen)
    assert (48, 64) in {hw for _, hw in seen} and (64, 80) in {hw for _, hw in seen}

    # a stream that stays down: the reconnects are logged, the run ends with valid files, exit 1
    server = MjpegServer(fps=20).start()
    out = tmp_path / "out"
    stopper = _stop_after(server, 1.5)
    code = predict_cli("--input", server.url, "--output", out, "--reconnect", "2", "--timeout", "2")
    stopper.join()
    err = capsys.readouterr().err
    assert code == 1 and "reconnect" in err and "Traceback" not in err
    stem = next(out.glob("*.jsonl")).stem
    records = read_jsonl(out / f"{stem}.jsonl")
    assert len(records) > 3 and probe(out / f"{stem}.mp4")["frames"] == len(records)


def _stop_after(server, seconds):
    import threading

    thread = threading.Thread(target=lambda: (time.sleep(seconds), server.stop()), daemon=True)
    thread.start()
    return thread


def test_a_url_that_cannot_be_opened_fails_within_the_timeout(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/nothing"
    start = time.monotonic()
    assert predict_cli("--input", url, "--output", tmp_path / "out", "--timeout", "2", "--reconnect", "0") == 1
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err
    assert url in err and "Traceback" not in err
    with pytest.raises(InputError):
        next(predict_video(SlowModel(0), url, timeout=2, reconnect=0))


def test_an_rtsp_camera_is_tracked_into_a_playable_mp4(tmp_path):
    require_rtsp_server()
    with RtspServer(size=(320, 240)) as server:
        assert predict_cli("--input", server.url, "--output", tmp_path / "out", "--max-frames", "8", "--track") == 0
        port = server.port
    stem = "127.0.0.1_" + str(port) + "_test"
    records = read_jsonl(tmp_path / "out" / f"{stem}.jsonl")
    assert len(records) == 8 and [r["pts"] for r in records] == sorted(r["pts"] for r in records)
    info = probe(tmp_path / "out" / f"{stem}.mp4")
    assert info["video"] == "h264" and info["frames"] == 8 and (info["width"], info["height"]) == (320, 240)


def test_sigterm_during_a_live_run_leaves_valid_files_and_exits_143(tmp_path):
    with MjpegServer(fps=20) as server:
        out = tmp_path / "out"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "retinamask", "predict", "--model", str(shipped_onnx_path())]
        process = subprocess.Popen(
            [*command, "--input", server.url, "--output", str(out)], env=env, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(p.stat().st_size for p in out.glob("*.jsonl")):
            time.sleep(0.2)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    stem = next(out.glob("*.jsonl")).stem
    records = read_jsonl(out / f"{stem}.jsonl")
    assert records and probe(out / f"{stem}.mp4")["frames"] == len(records)
    assert not list(out.glob(".*tmp*")) and "Traceback" not in err
