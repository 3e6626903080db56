"""The page's video half in a real headless Chromium (Debian's), as a person uses it: "Use the camera" with
Chromium's fake camera playing a clip the test generates (the answers drawn on the page equal the server's
answers, and /v1/predict's on the very JPEGs the page sent), and "Upload a video" (progress to done, then
the annotated MP4 plays in the page)."""

import base64
import io
import shutil
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from browser import CHROMIUM_FLAGS, chromium_path
from serve_support import call, json_of, running
from test_predict_video import shape_frames
from video_support import make_clip, probe


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from retinamask.serve.app import create_app
    from retinamask.serve.settings import ServeSettings

    settings = ServeSettings(backend="onnxruntime", jobs_dir=tmp_path_factory.mktemp("page_jobs"))
    with running(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return shape_frames(tmp_path_factory.mktemp("page_frames"), 8)


def _browser(p, extra=()):
    flags = [flag for flag in CHROMIUM_FLAGS if flag != "--headless"]  # playwright runs it headless itself
    return p.chromium.launch(executable_path=chromium_path(), args=[*flags, *extra])


def test_the_camera_frames_go_over_the_websocket_and_the_answers_are_drawn(server, frames, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    # the fake camera loops this clip: each shapes frame held 5 frames at 10 fps
    held = [rgb for rgb in frames for _ in range(5)]
    camera = make_clip(tmp_path / "camera.y4m", held, rate=Fraction(10), codec="rawvideo")
    fake_camera = (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    )
    wanted = 8
    with playwright.sync_playwright() as p:
        browser = _browser(p, fake_camera)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
            page.click("#camera")
            page.wait_for_function(f"Number(document.body.dataset.liveAnswers || 0) >= {wanted}", timeout=120_000)
            page.screenshot(path=str(tmp_path / "camera.png"), full_page=True)
            page.click("#camera")  # stop
            log = page.evaluate("JSON.parse(JSON.stringify(window.live.log))")
            threshold = float(page.input_value("#score"))
            stats = page.inner_text("#live-stats")
            camera_state = page.evaluate("document.body.dataset.camera")
            stopped = page.inner_text("#status")
        finally:
            browser.close()

    assert len(log) >= wanted and [e["frame"] for e in log] == sorted(e["frame"] for e in log)
    assert "frames/s" in stats and "latency" in stats and camera_state in ("on", "off")
    assert stopped.startswith("camera off (")
    tracked = 0
    for entry in log[-4:]:  # the last answers: what the page drew equals the server's answer ...
        expected = sorted((d for d in entry["detections"] if d["score"] >= threshold), key=lambda d: -d["score"])
        labels = [
            (f"#{d['track_id']} " if d["track_id"] is not None else "") + f"{d['category_name']} {d['score']:.2f}"
            for d in expected
        ]
        assert entry["drawn"] == labels
        tracked += sum(d["track_id"] is not None for d in expected)
        # ... and the server's answer equals /v1/predict on the very JPEG the page sent
        jpeg = base64.b64decode(entry["jpeg"])
        api = json_of(call(f"{server}/v1/predict", jpeg, {"Content-Type": "image/jpeg"}, "POST")[2])["detections"]
        assert [{k: v for k, v in d.items() if k != "track_id"} for d in entry["detections"]] == api
    assert tracked > 0
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(log[-1]["jpeg"]))).convert("RGB"))
    assert sent.shape[:2] == (192, 224)  # the camera's frames are the clip's
    pixels = np.asarray(Image.open(tmp_path / "camera.png").convert("RGB")).astype(np.int16)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # not blank: the overlay
    # docs/serve_video_page.png is this screenshot (pytest --basetemp DIR: DIR/serve_video_page_screenshot.png)
    shutil.copy(tmp_path / "camera.png", tmp_path.parent / "serve_video_page_screenshot.png")


def test_an_uploaded_video_shows_progress_then_plays_annotated(server, frames, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    clip = make_clip(tmp_path / "shapes.mp4", frames, rate=10)
    flags = ("--autoplay-policy=no-user-gesture-required",)
    with playwright.sync_playwright() as p:
        browser = _browser(p, flags)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(server + "/")
            page.set_input_files("#video-file", str(clip))
            page.wait_for_function("document.body.dataset.videoState === 'running'", timeout=60_000)
            page.wait_for_function("document.body.dataset.videoState === 'done'", timeout=120_000)
            progress = page.evaluate("document.getElementById('job-progress').value")
            text = page.inner_text("#job-status")
            page.evaluate(
                "() => new Promise((done, fail) => { const v = document.getElementById('job-video');"
                " if (v.ended) return done(); v.onerror = () => fail('video error ' + (v.error && v.error.code));"
                " v.onended = () => done(); v.currentTime = 0; v.play().catch(fail); })"
            )
            played = page.evaluate("document.getElementById('job-video').currentTime")
            src = page.evaluate("document.getElementById('job-video').currentSrc")
            links = page.eval_on_selector_all("#job-links a", "els => els.map(a => a.textContent)")
            shown_png = page.evaluate(  # the frame the <video> shows after a seek to the start, as decoded
                "() => new Promise(done => { const v = document.getElementById('job-video');"
                " v.onseeked = () => requestAnimationFrame(() => { const c = document.createElement('canvas');"
                " c.width = v.videoWidth; c.height = v.videoHeight; c.getContext('2d').drawImage(v, 0, 0);"
                " done(c.toDataURL('image/png')); }); v.currentTime = 0.01; })"
            )
            box = page.locator("#job-video").bounding_box()
            # a video dropped on the image drop becomes a job too (not a /v1/predict request)
            posted = []
            page.on("request", lambda r: posted.append((r.method, r.url.split("?")[0].rsplit("/", 2)[-2:])))
            clip_b64 = base64.b64encode(clip.read_bytes()).decode()
            page.evaluate(
                "b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));"
                " const data = new DataTransfer();"
                " data.items.add(new File([bytes], 'dropped.mp4', {type: 'video/mp4'}));"
                " document.getElementById('drop').dispatchEvent("
                " new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true})); }",
                clip_b64,
            )
            page.wait_for_function("document.body.dataset.videoState === 'done'", timeout=120_000)
        finally:
            browser.close()
    assert progress == 1 and text.startswith("done: 8/8 frames")
    assert ("POST", ["v1", "videos"]) in posted and not any(url[-1] == "predict" for _, url in posted)
    assert played == pytest.approx(0.8, abs=0.11)  # 8 frames at 10 fps played to the end
    assert src.endswith("/video") and links == ["the annotated MP4", "results.jsonl", "results_ytvis.json"]
    (tmp_path / "job.mp4").write_bytes(call(src)[2])
    annotated = probe(tmp_path / "job.mp4")["rgb"][0]
    data = base64.b64decode(shown_png.split(",", 1)[1])
    shown = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
    assert box["width"] > 200
    assert np.abs(shown - annotated).mean() < 8  # the page shows the annotated frame ...
    assert np.abs(shown - frames[0]).mean() > 2 * np.abs(shown - annotated).mean()  # ... not the source's


def test_with_an_api_key_the_page_sends_it_on_the_stream_and_the_jobs(frames, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    from retinamask.serve.app import create_app
    from retinamask.serve.settings import ServeSettings

    camera = make_clip(
        tmp_path / "camera.y4m", [rgb for rgb in frames[:2] for _ in range(5)], rate=10, codec="rawvideo"
    )
    fake_camera = (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    )
    clip = make_clip(tmp_path / "keyed.mp4", frames[:3], rate=10)
    settings = ServeSettings(backend="onnxruntime", sessions=1, api_key="s3cret")
    with running(create_app(settings)) as base, playwright.sync_playwright() as p:
        browser = _browser(p, fake_camera)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.fill("#key", "wrong")
            page.click("#camera")
            page.wait_for_function("(document.body.dataset.camera || '').startsWith('closed')", timeout=60_000)
            refused = (page.evaluate("document.body.dataset.camera"), page.inner_text("#status"))
            page.fill("#key", "s3cret")
            page.click("#camera")
            page.wait_for_function("Number(document.body.dataset.liveAnswers || 0) >= 2", timeout=60_000)
            page.click("#camera")
            page.set_input_files("#video-file", str(clip))
            page.wait_for_function("document.body.dataset.videoState === 'done'", timeout=120_000)
            src = page.evaluate("document.getElementById('job-video').currentSrc")
            duration = page.evaluate(
                "() => new Promise(done => { const v = document.getElementById('job-video');"
                " if (v.readyState >= 1) done(v.duration); else v.onloadedmetadata = () => done(v.duration); })"
            )
        finally:
            browser.close()
    assert refused[0] == "closed 4401" and "missing or wrong API key" in refused[1]
    assert src.startswith("blob:") and duration == pytest.approx(0.3, abs=0.11)  # fetched with the key
