"""The web page in a real headless Chromium (Debian's), driven as a person would: choose an image, wait
for the overlay, move the score slider. The page's detections equal the API's; the screenshot is not blank."""

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
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
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
    assert high_rows == sum(d["score"] >= 0.9 for d in api) and high_rows < rows
    assert requests == [] and timings == 6
    pixels = np.asarray(Image.open(tmp_path / "page.png").convert("RGB")).astype(np.int16)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # not blank: the overlay
    shutil.copy(tmp_path / "page.png", tmp_path.parent / "serve_page_screenshot.png")
