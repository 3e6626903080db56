"""Video in the service, as an application uses it: a clip uploaded as a job (its JSONL equals ``predict``'s
on the same clip, its MP4 seekable), cancel, expiry, every limit and error, a SIGTERM and a restart with
a finished and a running job, and the live stream over a WebSocket (latest-frame policy: a client
sending 3x faster than the model gets bounded latency and the drops counted)."""

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from serve_support import SlowModel, call, json_of, raw_post, running
from test_predict_video import predict_cli, read_jsonl, shape_frames
from video_support import gradient_frames, jpeg_bytes, make_clip, probe

KEY = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return shape_frames(tmp_path_factory.mktemp("video_frames"), 10)


@pytest.fixture(scope="module")
def model():
    from retinamask.serve.model import ServedModel
    from retinamask.serve.settings import ServeSettings

    return SlowModel(ServedModel(ServeSettings(backend="onnxruntime", sessions=2, threads=1)))


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    from retinamask.serve.app import create_app
    from retinamask.serve.settings import ServeSettings

    settings = ServeSettings(
        backend="onnxruntime",
        sessions=2,
        threads=1,
        jobs_dir=tmp_path_factory.mktemp("jobs"),
        max_video_mb=1,
        max_video_seconds=5,
        max_queued_jobs=2,
        api_key="s3cret",
    )
    app = create_app(settings, model=model)
    with running(app) as base:
        yield base, app.state.server


def upload(base, data, query="", content_type="video/mp4", headers=KEY):
    return call(f"{base}/v1/videos{query}", data, {"Content-Type": content_type, **headers}, "POST")


def wait_for(base, job_id, states=("done", "failed", "cancelled"), timeout=120, until=None):
    deadline = time.monotonic() + timeout
    while True:
        status = json_of(call(f"{base}/v1/videos/{job_id}", headers=KEY)[2])
        if status["state"] in states and (until is None or until(status)):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def error_of(answer, status, code):
    got, _, body = answer
    assert got == status, body
    error = json_of(body)["error"]
    assert error["code"] == code and "\n" not in error["message"] and "Traceback" not in body.decode()
    return error["message"]


def test_a_job_gives_predicts_jsonl_and_ytvis_and_a_seekable_browser_mp4(server, frames, tmp_path):
    base, _ = server
    clip = make_clip(tmp_path / "shapes.mp4", frames, rate=10)

    status, headers, body = upload(base, clip.read_bytes(), "?score_threshold=0.3")
    assert status == 202, body
    job = json_of(body)
    assert job["state"] in ("queued", "running") and job["frames_total"] == 10
    assert headers["location"] == job["urls"]["status"]
    done = wait_for(base, job["id"])
    assert done["state"] == "done" and done["frames_done"] == 10 and done["fps"] > 0 and done["eta_s"] == 0

    # predict on the same clip with the same backend: the same lines, the same YouTube-VIS results
    assert predict_cli("--input", clip, "--output", tmp_path / "cli", "--track", "--save-ytvis") == 0
    lines = call(job["urls"]["results_jsonl"], headers=KEY)[2]
    assert lines == (tmp_path / "cli" / "shapes.jsonl").read_bytes()
    assert sum(len(r["detections"]) for r in read_jsonl(tmp_path / "cli" / "shapes.jsonl")) > 10
    ytvis = call(job["urls"]["results_ytvis"], headers=KEY)[2]
    assert json.loads(ytvis) == json.loads((tmp_path / "cli" / "results_ytvis.json").read_text())

    status, headers, video = call(job["urls"]["video"], headers=KEY)
    assert status == 200 and headers["content-type"] == "video/mp4" and headers["accept-ranges"] == "bytes"
    (tmp_path / "job.mp4").write_bytes(video)
    info = probe(tmp_path / "job.mp4")
    assert info["video"] == "h264" and info["pix_fmt"] == "yuv420p" and info["frames"] == 10
    cli_frames = probe(tmp_path / "cli" / "shapes.mp4")["rgb"]
    assert all((a == b).all() for a, b in zip(info["rgb"], cli_frames))  # the same annotated pixels
    status, headers, part = call(job["urls"]["video"], headers={**KEY, "Range": "bytes=100-199"})
    assert status == 206 and part == video[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(video)}"

    metrics = call(f"{base}/metrics")[2].decode()
    assert 'retinamask_video_jobs{state="done"}' in metrics
    assert _metric(metrics, 'retinamask_video_frames_total{source="job"}') >= 10
    assert 'retinamask_requests_total{route="/v1/videos/{id}/video",status="206"}' in metrics


def _metric(text, name):
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))


def test_multipart_stride_and_no_tracking(server, frames, tmp_path):
    base, _ = server
    clip = make_clip(tmp_path / "b.mkv", frames[:6], codec="ffv1", rate=10)
    boundary = "XyZ"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="b.mkv"\r\n'
            "Content-Type: video/x-matroska\r\n\r\n"
        ).encode()
        + clip.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    answer = upload(base, body, "?track=0&vid_stride=2", f"multipart/form-data; boundary={boundary}")
    assert answer[0] == 202, answer[2]
    job = json_of(answer[2])
    assert job["source"]["name"] == "b.mkv" and job["frames_total"] == 3 and "results_ytvis" not in job["urls"]
    wait_for(base, job["id"])
    records = [json.loads(line) for line in call(job["urls"]["results_jsonl"], headers=KEY)[2].splitlines()]
    assert [r["frame"] for r in records] == [0, 2, 4]
    assert all(d["track_id"] is None for r in records for d in r["detections"])
    error_of(call(job["urls"]["status"] + "/results_ytvis.json", headers=KEY), 404, "no_tracks")


def test_results_only_jobs_write_the_jsonl_and_no_video(server, frames, tmp_path):
    base, _ = server
    clip = make_clip(tmp_path / "c.mp4", frames[:4], rate=10)
    answer = upload(base, clip.read_bytes(), "?video=0")
    assert answer[0] == 202, answer[2]
    job = json_of(answer[2])
    assert "video" not in job["urls"] and job["options"]["video"] is False
    assert wait_for(base, job["id"])["state"] == "done"
    records = [json.loads(line) for line in call(job["urls"]["results_jsonl"], headers=KEY)[2].splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2, 3]
    error_of(call(job["urls"]["status"] + "/video", headers=KEY), 404, "no_video")


def test_every_limit_and_error_is_one_json_line_before_the_work_starts(server, frames, tmp_path):
    base, state = server
    clip = make_clip(tmp_path / "c.mp4", frames[:3], rate=10).read_bytes()
    error_of(upload(base, clip, headers={}), 401, "unauthorized")
    # a declared length over --max-video-mb: answered from the head alone
    reply, _ = raw_post(base, "/v1/videos", b"Content-Type: video/mp4\r\nContent-Length: 1048577\r\n")
    assert reply.startswith(b"HTTP/1.1 413") and b"payload_too_large" in reply and b"--max-video-mb" in reply
    # no Content-Length (chunked): refused while it streams, long before the sender's 8 MB are read
    chunk = b"\0" * 65536
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(128))
    reply, sent = raw_post(base, "/v1/videos", b"Content-Type: video/mp4\r\nTransfer-Encoding: chunked\r\n", body)
    assert reply.startswith(b"HTTP/1.1 413") and b"payload_too_large" in reply and sent < 4 * 1024 * 1024
    # the same in a multipart body: counted while the parser reads it
    part = b'--b\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n\r\n'
    body = (b"%x\r\n" % len(c) + c + b"\r\n" for c in [part] + [chunk] * 128)
    head = b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n"
    reply, sent = raw_post(base, "/v1/videos", head, body)
    assert reply.startswith(b"HTTP/1.1 413") and b"payload_too_large" in reply and sent < 4 * 1024 * 1024
    assert "not a video" in error_of(upload(base, b"this is text, not a video\n"), 415, "not_a_video")
    error_of(upload(base, clip, content_type="image/png"), 415, "unsupported_media_type")
    long_clip = make_clip(tmp_path / "long.mp4", gradient_frames(60, 64, 48), rate=10).read_bytes()
    assert "--max-video-seconds 5" in error_of(upload(base, long_clip), 422, "video_too_long")
    error_of(upload(base, clip, "?vid_stride=0"), 422, "invalid_parameter")
    error_of(upload(base, b"", content_type="video/mp4"), 422, "empty_body")
    error_of(
        upload(
            base,
            b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n',
            content_type="multipart/form-data; boundary=b",
        ),
        422,
        "missing_video",
    )
    error_of(call(f"{base}/v1/videos/nope", headers=KEY), 404, "no_such_job")
    error_of(call(f"{base}/v1/videos/nope/video", headers=KEY), 404, "no_such_job")
    folders = [p for p in Path(state.videos.root).iterdir() if p.is_dir()]
    assert all((p / "job.json").is_file() for p in folders)  # no folder left behind by a refused upload


def test_a_runtime_failure_fails_the_job_in_one_line_and_the_server_goes_on(server, model, frames, tmp_path):
    base, _ = server
    clip = make_clip(tmp_path / "e.mp4", frames[:3], rate=10).read_bytes()
    model.fail = True
    try:
        job = json_of(upload(base, clip)[2])
        failed = wait_for(base, job["id"])
    finally:
        model.fail = False
    assert failed["state"] == "failed" and failed["error"].startswith("inference failed (RuntimeError)")
    assert "\n" not in failed["error"]
    assert wait_for(base, json_of(upload(base, clip)[2])["id"])["state"] == "done"


def test_frames_over_max_pixels_are_refused_when_probed(frames, tmp_path):
    from retinamask.serve.errors import ServeError
    from retinamask.serve.video_job import probe_upload

    clip = make_clip(tmp_path / "big.mp4", frames[:2], rate=10)
    assert probe_upload(clip, "big.mp4", 5, 224 * 192).width == 224
    with pytest.raises(ServeError) as e:
        probe_upload(clip, "big.mp4", 5, 224 * 192 - 1)
    assert (e.value.status, e.value.code) == (422, "bad_video") and "--max-pixels" in e.value.message


def test_cancel_keeps_a_valid_video_then_delete_removes_and_old_jobs_expire(server, model, frames, tmp_path):
    base, state = server
    clip = make_clip(tmp_path / "d.mp4", frames * 4, rate=10).read_bytes()  # 40 frames: 4 s
    model.delay = 0.15
    try:
        job = json_of(upload(base, clip)[2])
        second = json_of(upload(base, clip)[2])  # waits behind the first (--max-jobs 1)
        third = json_of(upload(base, clip)[2])
        # --max-queued-jobs 2: refused from the head (a client still sending gets the answer, not the read)
        head = b"Content-Type: video/mp4\r\nContent-Length: %d\r\n" % len(clip)
        reply, _ = raw_post(base, "/v1/videos", head, (clip[i : i + 65536] for i in range(0, len(clip), 65536)))
        assert reply.startswith(b"HTTP/1.1 503") and b"jobs_full" in reply and b"Retry-After: 5" in reply.title()
        running_now = wait_for(base, job["id"], ("running",), until=lambda s: s["frames_done"] >= 3)
        assert running_now["eta_s"] > 0
        error_of(call(job["urls"]["video"], headers=KEY), 409, "job_not_ended")
        error_of(call(job["urls"]["results_ytvis"], headers=KEY), 409, "job_not_done")
        assert json_of(call(second["urls"]["status"], headers=KEY)[2])["state"] == "queued"
        assert json_of(call(second["urls"]["status"], data=None, headers=KEY, method="DELETE")[2])["state"] == (
            "cancelled"
        )
        status, _, body = call(job["urls"]["status"], headers=KEY, method="DELETE")
    finally:
        model.delay = 0.0
    cancelled = json_of(body)
    assert status == 200 and cancelled["state"] == "cancelled" and 3 <= cancelled["frames_done"] < 40
    lines = call(job["urls"]["results_jsonl"], headers=KEY)[2].splitlines()
    (tmp_path / "cancelled.mp4").write_bytes(call(job["urls"]["video"], headers=KEY)[2])
    assert probe(tmp_path / "cancelled.mp4")["frames"] == len(lines) == cancelled["frames_done"]
    error_of(call(second["urls"]["video"], headers=KEY), 404, "no_video")  # cancelled before a frame
    assert call(job["urls"]["status"], headers=KEY, method="DELETE")[0] == 204  # ended: removed
    error_of(call(job["urls"]["status"], headers=KEY), 404, "no_such_job")
    assert not (Path(state.videos.root) / job["id"]).exists()

    wait_for(base, third["id"])
    assert state.videos.sweep(time.time() + 10) == []  # younger than --jobs-ttl
    expired = state.videos.sweep(time.time() + state.settings.jobs_ttl + 1)
    assert third["id"] in expired and second["id"] in expired
    error_of(call(third["urls"]["status"], headers=KEY), 404, "no_such_job")


def test_sigterm_stops_a_running_job_with_valid_files_and_a_restart_keeps_the_finished_one(frames, tmp_path):
    from test_serve_process import ServeProcess

    jobs = tmp_path / "jobs"
    short = make_clip(tmp_path / "short.mp4", frames[:4], rate=10).read_bytes()
    long_clip = make_clip(tmp_path / "long.mp4", frames * 6, rate=10).read_bytes()  # 60 frames
    server = ServeProcess(tmp_path, "--jobs-dir", str(jobs), "--sessions", "1")
    try:
        done = json_of(upload(server.base, short, headers={})[2])
        wait_for_plain(server.base, done["id"], ("done",))
        running_job = json_of(upload(server.base, long_clip, headers={})[2])
        queued = json_of(upload(server.base, short, headers={})[2])  # waits behind it (--max-jobs 1)
        wait_for_plain(server.base, running_job["id"], ("running",), lambda s: s["frames_done"] >= 3)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
    finally:
        server.stop()
    record = json.loads((jobs / running_job["id"] / "job.json").read_text())
    assert record["state"] == "failed" and record["error"].startswith("interrupted")
    folder = jobs / running_job["id"]
    lines = read_jsonl(folder / "video.jsonl")
    assert 3 <= len(lines) < 60 and probe(folder / "video.mp4")["frames"] == len(lines)  # valid, playable
    assert not list(folder.glob("upload*"))
    assert json.loads((jobs / queued["id"] / "job.json").read_text())["state"] == "queued"

    # a job the server was running when it died (kill -9): its record still says running
    crashed = jobs / "crashed"
    crashed.mkdir()
    (crashed / "job.json").write_text(json.dumps({**record, "id": "crashed", "state": "running", "error": None}))

    again = ServeProcess(tmp_path, "--jobs-dir", str(jobs), "--sessions", "1")
    try:
        assert json_of(call(f"{again.base}/v1/videos/{done['id']}")[2])["state"] == "done"
        assert call(f"{again.base}/v1/videos/{done['id']}/video")[0] == 200
        assert wait_for_plain(again.base, queued["id"], ("done",))["frames_done"] == 4  # queued: it runs now
        for job_id in (running_job["id"], "crashed"):
            status = json_of(call(f"{again.base}/v1/videos/{job_id}")[2])
            assert status["state"] == "failed" and status["error"].startswith("interrupted"), status
    finally:
        assert again.stop() == 0
    assert "Traceback" not in server.log.read_text() + again.log.read_text()


def wait_for_plain(base, job_id, states, until=None):
    deadline = time.monotonic() + 120
    while True:
        status = json_of(call(f"{base}/v1/videos/{job_id}")[2])
        if status["state"] in states and (until is None or until(status)):
            return status
        assert status["state"] not in ("failed", "cancelled") and time.monotonic() < deadline, status
        time.sleep(0.05)


# ---- the live stream


def ws_url(base, query=""):
    return base.replace("http://", "ws://") + "/v1/stream" + query


def test_a_stream_answers_as_predict_does_with_track_ids(server, frames):
    from websockets.sync.client import connect

    base, _ = server
    jpegs = [jpeg_bytes(rgb) for rgb in frames[:4]]
    answers = []
    with connect(ws_url(base, "?track=1&score_threshold=0.3&api_key=s3cret")) as ws:
        for data in jpegs:  # one at a time: nothing dropped
            ws.send(data)
            answers.append(json.loads(ws.recv(timeout=60)))
    assert [a["frame"] for a in answers] == [0, 1, 2, 3] and all(a["dropped"] == 0 for a in answers)
    for data, answer in zip(jpegs, answers):
        api = json_of(
            call(f"{base}/v1/predict?score_threshold=0.3", data, {"Content-Type": "image/jpeg", **KEY}, "POST")[2]
        )["detections"]
        assert [{k: v for k, v in d.items() if k != "track_id"} for d in answer["detections"]] == api
        assert answer["image"] == {"height": 192, "width": 224} and answer["timings_ms"]["infer"] > 0
    assert all(isinstance(d["track_id"], int) for d in answers[0]["detections"])
    assert answers[0]["detections"]
    with connect(ws_url(base, "?track=1&score_threshold=0.3&api_key=s3cret")) as ws:  # its own tracker
        ws.send(jpegs[0])
        again = json.loads(ws.recv(timeout=60))
    assert again["detections"] == answers[0]["detections"]  # the same ids: they start again per connection


def test_a_client_3x_faster_than_the_model_gets_bounded_latency_and_drops_counted(server, model, frames):
    from websockets.sync.client import connect

    base, _ = server
    jpegs = [jpeg_bytes(rgb) for rgb in frames]
    model.delay = 0.3  # the model: ~0.3 s a frame; the client sends every 0.1 s
    sent_at, answers = {}, []
    try:
        with connect(ws_url(base, "?api_key=s3cret")) as ws:

            def receive():
                while True:
                    try:
                        message = ws.recv(timeout=30)
                    except Exception:
                        return
                    answers.append((time.monotonic(), json.loads(message)))

            receiver = threading.Thread(target=receive)
            receiver.start()
            for i in range(30):
                sent_at[i] = time.monotonic()
                ws.send(jpegs[i % len(jpegs)])
                time.sleep(0.1)
            deadline = time.monotonic() + 30
            while (not answers or answers[-1][1]["frame"] != 29) and time.monotonic() < deadline:
                time.sleep(0.05)
            metrics = call(f"{base}/metrics")[2].decode()
            assert _metric(metrics, "retinamask_stream_connections") == 1
        receiver.join(30)
    finally:
        model.delay = 0.0
    frames_answered = [a["frame"] for _, a in answers]
    assert frames_answered == sorted(frames_answered) and frames_answered[-1] == 29
    assert 5 <= len(answers) <= 16  # ~3 s of sending at ~0.3 s a frame, not 30
    assert sum(a["dropped"] for _, a in answers) + len(answers) == 30  # every frame answered or counted
    assert answers[-1][1]["dropped_total"] == 30 - len(answers)
    latencies = [at - sent_at[a["frame"]] for at, a in answers]
    run_s = max(sum(a["timings_ms"].values()) for _, a in answers) / 1000  # one frame's way through the server
    # at most ~2 runs (the one running when it arrived, then its own), never a backlog of 30 - len(answers) runs
    assert max(latencies) < 2 * run_s + 0.3, (latencies, run_s)
    metrics = call(f"{base}/metrics")[2].decode()
    assert _metric(metrics, 'retinamask_video_frames_dropped_total{source="stream"}') >= 30 - len(answers)
    assert _metric(metrics, "retinamask_stream_connections") == 0


def test_stream_close_codes_name_the_problem(server, frames):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    base, _ = server

    def closed_with(query, message):
        try:
            with connect(ws_url(base, query)) as ws:
                ws.send(message)  # may already fail: a wrong key is refused before the first frame
                ws.recv(timeout=60)
        except ConnectionClosed as e:
            return e.rcvd.code, e.rcvd.reason
        raise AssertionError("the stream was not closed")

    assert closed_with("", jpeg_bytes(frames[0]))[0] == 4401  # no key
    assert closed_with("?api_key=wrong", jpeg_bytes(frames[0]))[0] == 4401
    assert closed_with("?api_key=s3cret", "a text message")[0] == 1003
    code, reason = closed_with("?api_key=s3cret", b"not an image at all")
    assert code == 4415 and reason.startswith("frame 0:")
    assert closed_with("?api_key=s3cret&score_threshold=2", jpeg_bytes(frames[0]))[0] == 4422
    assert closed_with("?api_key=s3cret", b"\0" * (16 * 1024 * 1024 + 1))[0] == 1009


def test_a_job_thread_runs_at_a_lower_cpu_priority_and_its_threads_inherit_it():
    import os

    from retinamask.serve.video_jobs import lower_priority

    seen = {}

    def job_thread():
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["lowered"] = lower_priority(10)
        seen["own"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) - before
        child = threading.Thread(target=lambda: seen.update(child=os.getpriority(os.PRIO_PROCESS, 0)))
        child.start()
        child.join()
        seen["child_vs_own"] = seen["child"] - os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=job_thread)
    thread.start()
    thread.join()
    if not seen["lowered"]:
        pytest.skip("no per-thread priorities here")
    assert seen["own"] == min(10, 19 - os.getpriority(os.PRIO_PROCESS, 0))
    assert seen["child_vs_own"] == 0  # a decoding or writing thread the job starts is as nice as the job
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main  # other threads untouched


def test_one_jobs_dir_is_refused_for_several_ray_replicas(tmp_path, capsys):
    from retinamask.cli import main

    assert main(["serve", "--ray", "--replicas", "2", "--jobs-dir", str(tmp_path)]) == 2
    assert "--jobs-dir with several Ray replicas" in capsys.readouterr().err


def test_two_servers_on_one_jobs_dir_are_refused(server):
    from retinamask.core.errors import ConfigError
    from retinamask.serve.video_jobs import VideoJobs

    _, state = server
    with pytest.raises(ConfigError, match="another server uses this --jobs-dir"):
        VideoJobs(state.settings, state.model)
