"""Every bad request and every overload gets one JSON error {"error": {"code", "message"}} with its
status (docs/errors.md, HTTP errors), never a traceback, and the server keeps serving."""

import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from serve_support import SlowModel, call, demo_images, json_of, post_image, raw_post, running


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return demo_images(tmp_path_factory.mktemp("serve_error_images"), count=1)[0][0]


@pytest.fixture(scope="module")
def model():
    from retinamask.serve.model import ServedModel
    from retinamask.serve.settings import ServeSettings

    return SlowModel(ServedModel(ServeSettings(backend="onnxruntime", sessions=1)))


@pytest.fixture(scope="module")
def server(model):
    from retinamask.serve.app import create_app
    from retinamask.serve.settings import ServeSettings

    settings = ServeSettings(
        backend="onnxruntime",
        sessions=1,
        max_image_mb=1,
        max_pixels=2_000_000,
        api_key="s3cret",
        max_queue=1,
        timeout_s=3,
    )
    with running(create_app(settings, model=model)) as base:
        yield base


KEY = {"Authorization": "Bearer s3cret"}


def _error(answer, status, code=None):
    got_status, headers, body = answer
    assert got_status == status, body
    error = json_of(body)["error"]
    assert set(error) == {"code", "message"} and error["message"] and "\n" not in error["message"]
    assert "Traceback" not in body.decode()
    if code is not None:
        assert error["code"] == code, error
    return error, headers


def _png(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width, height):
    """A PNG that declares width x height pixels (a decompression bomb's header) and holds almost no data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_body_over_the_limit_is_413_before_it_is_read(server):
    # a declared length over the limit: answered from the head alone, no body byte is needed
    reply, _ = raw_post(server, "/v1/predict", b"Content-Type: image/png\r\nContent-Length: 1048577\r\n")
    assert reply.startswith(b"HTTP/1.1 413") and b"payload_too_large" in reply and b"1 MB" in reply
    # no Content-Length (chunked): refused while streaming, long before the sender's 8 MB are read
    chunk = b"\0" * 65536
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(128))
    reply, sent = raw_post(server, "/v1/predict", b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n", body)
    assert reply.startswith(b"HTTP/1.1 413") and b"payload_too_large" in reply
    assert sent < 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("payload", "content_type", "status", "code"),
    [
        (b"just some text", "text/plain", 415, "unsupported_media_type"),
        (b"this is not a PNG at all", "image/png", 415, "not_an_image"),
        (b"", "image/png", 422, "bad_image"),
        (None, "image/png", 422, "bad_image"),  # truncated: filled in below
        (_png(2000, 1001), "image/png", 422, "bad_image"),  # 2 002 000 pixels > --max-pixels 2 000 000
        (_png_header_only(40000, 40000), "image/png", 422, "bad_image"),  # a decompression bomb's header
        (b'{"image": "%%%"}', "application/json", 422, "bad_base64"),
        (b'{"url": "http://example.com/a.png"}', "application/json", 422, "missing_image"),
    ],
)
def test_bad_images_are_415_or_422(server, image, payload, content_type, status, code):
    if payload is None:
        payload = image.read_bytes()[:-200]
    _error(post_image(server, payload, headers=KEY, content_type=content_type), status, code)
    assert post_image(server, image, headers=KEY)[0] == 200  # still serving


def test_too_many_pixels_and_the_bomb_name_the_cause(server):
    error, _ = _error(post_image(server, _png(2000, 1001), headers=KEY), 422)
    assert "2000x1001" in error["message"] and "2000000" in error["message"]
    error, _ = _error(post_image(server, _png_header_only(40000, 40000), headers=KEY), 422)
    assert "decompression bomb" in error["message"] and "1600000000 pixels" in error["message"]


@pytest.mark.parametrize(
    "query", ["?score_threshold=2", "?score_threshold=abc", "?max_detections=0", "?masks=bitmap", "?format=gif"]
)
def test_bad_query_values_are_422(server, image, query):
    error, _ = _error(post_image(server, image, query, headers=KEY), 422, "invalid_parameter")
    assert query.split("=")[0][1:] in error["message"]


def test_missing_or_wrong_key_is_401(server, image):
    _error(post_image(server, image), 401, "unauthorized")
    _, headers = _error(post_image(server, image, headers={"Authorization": "Bearer wrong"}), 401)
    assert headers["www-authenticate"] == "Bearer"
    _error(call(f"{server}/v1/models"), 401)
    assert post_image(server, image, headers={"X-API-Key": "s3cret"})[0] == 200
    assert call(f"{server}/v1/health/ready")[0] == 200  # probes need no key


def test_a_full_queue_is_503_with_retry_after(server, model, image):
    """One session busy for 1 s per image and a queue of 1: of 4 requests at once, at least two find
    the queue full; every answer is 200 or 503, and the server serves afterwards."""
    model.delay = 1.0
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post_image(server, image, headers=KEY), range(4)))
    finally:
        model.delay = 0.0
    statuses = sorted(a[0] for a in answers)
    assert set(statuses) == {200, 503} and statuses.count(503) >= 2, statuses
    for answer in answers:
        if answer[0] == 503:
            _, headers = _error(answer, 503, "queue_full")
            assert headers["retry-after"] == "1"
    assert post_image(server, image, headers=KEY)[0] == 200


def test_over_the_timeout_is_504_and_the_server_goes_on(server, model, image):
    model.delay = 4.0  # > --timeout-s 3
    try:
        started = time.monotonic()
        error, _ = _error(post_image(server, image, headers=KEY), 504, "timeout")
        assert time.monotonic() - started < 3.9 and "3 s" in error["message"]
    finally:
        model.delay = 0.0
    time.sleep(1.5)  # the slow run finishes
    assert post_image(server, image, headers=KEY)[0] == 200


def test_a_runtime_failure_is_one_line_and_logged_with_its_traceback(server, model, image, caplog):
    model.fail = True
    try:
        with caplog.at_level("ERROR", logger="retinamask.serve.batcher"):
            error, _ = _error(post_image(server, image, headers=KEY), 500, "inference_failed")
    finally:
        model.fail = False
    assert "simulated runtime failure" in error["message"]
    assert any(record.exc_info for record in caplog.records), "no traceback in the server log"
    assert post_image(server, image, headers=KEY)[0] == 200


def test_unknown_routes_and_methods_are_json_errors(server):
    _error(call(f"{server}/v1/detect"), 404, "not_found")
    _error(call(f"{server}/v1/predict"), 405, "method_not_allowed")
