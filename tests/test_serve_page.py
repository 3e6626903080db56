"""The web page in a real headless Chromium (Debian's), driven as a person would: choose an image, wait
for the overlay, move the score slider. The page's detections equal the API's, its labels are placed best
first and never cover one another; the screenshot is not blank."""

import shutil

import numpy as np
import pytest
from PIL import Image

from browser import CHROMIUM_FLAGS, chromium_path
from serve_support import demo_images, json_of, post_image, running


@pytest.fixture(scope="module")
def server():
    from retinamask.serve.app import create_app
    from retinamask.serve.settings import ServeSettings

    with running(create_app(ServeSettings(backend="onnxruntime"))) as base:
        yield base


def test_a_person_uploads_an_image_and_sees_the_detections(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    chromium = chromium_path()
    image = demo_images(tmp_path / "data", count=1)[0][0]
    api = json_of(post_image(server, image)[2])["detections"]
    flags = [flag for flag in CHROMIUM_FLAGS if flag != "--headless"]  # playwright runs it headless itself
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
            page.set_input_files("#file", str(image))
            page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
            shown = page.evaluate("JSON.parse(JSON.stringify(state.result.detections))")
            rows = page.locator("#detections tbody tr").count()
            threshold = float(page.input_value("#score"))
            labels = page.evaluate("JSON.parse(document.body.dataset.labels)")
            canvas_wh = page.evaluate("[overlay.width, overlay.height]")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            page.fill("#score", "0.1")  # crowded: 45 labels on this image, most of them on a few objects
            page.dispatch_event("#score", "input")
            crowded = page.evaluate("JSON.parse(document.body.dataset.labels)")
            # the slider filters without a new request
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.fill("#score", "0.9")
            page.dispatch_event("#score", "input")
            high_rows = page.locator("#detections tbody tr").count()
            timings = page.locator("#timings tbody tr").count()
        finally:
            browser.close()
    assert shown == api  # the page drew exactly the API's answer
    assert rows == sum(d["score"] >= threshold for d in api) > 0
    # one label per drawn detection, placed best first, none covering another (predict's rule, ops/draw.py)
    for placed, at_least in ((labels, threshold), (crowded, 0.1)):
        expected = sorted((d for d in api if d["score"] >= at_least), key=lambda d: -d["score"])
        assert [label["text"] for label in placed] == [f"{d['category_name']} {d['score']:.2f}" for d in expected]
        _assert_apart_and_inside([label["rect"] for label in placed], canvas_wh)
    assert len(labels) > 8 and len(crowded) > 30  # crowded enough for the old page to stack labels
    assert high_rows == sum(d["score"] >= 0.9 for d in api) and high_rows < rows
    assert requests == [] and timings == 6
    pixels = np.asarray(Image.open(tmp_path / "page.png").convert("RGB")).astype(np.int16)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # not blank: the overlay
    # docs/serve_page.png is this screenshot (pytest --basetemp DIR: DIR/serve_page_screenshot.png), scaled to
    # 960 px wide and quantized to 256 colours
    shutil.copy(tmp_path / "page.png", tmp_path.parent / "serve_page_screenshot.png")


def _assert_apart_and_inside(rects, canvas_wh):
    width, height = canvas_wh
    for i, (x1, y1, x2, y2) in enumerate(rects):
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (i, rects[i])
        for j, (u1, v1, u2, v2) in enumerate(rects[:i]):
            assert not (x1 < u2 and u1 < x2 and y1 < v2 and v1 < y2), f"label {i} covers label {j}"
