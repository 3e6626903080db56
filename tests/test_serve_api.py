"""The HTTP service on the shipped model: every endpoint, answers equal to the local predictor's
(boxes, scores, labels, RLE), batched equal to unbatched, readiness that means warm."""

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from retinamask.config.shipped import SHIPPED_ONNX
from serve_support import SlowModel, call, demo_images, json_of, post_image, running


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return demo_images(tmp_path_factory.mktemp("serve_images"), count=8)


@pytest.fixture(scope="module")
def model():
    from retinamask.serve.model import ServedModel
    from retinamask.serve.settings import ServeSettings

    return ServedModel(ServeSettings(backend="onnxruntime", max_batch=4))


@pytest.fixture(scope="module")
def server(model):
    from retinamask.serve.app import create_app
    from retinamask.serve.settings import ServeSettings

    with running(create_app(ServeSettings(backend="onnxruntime", max_batch=1), model=model)) as base:
        yield base


def _expected(path, score_threshold=0.0):
    """The local predictor's answer for ``path`` as COCO results (independent of the server's threads,
    queue and batching): category ids from the model, bbox with the original's +1, RLE."""
    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.formats.model_info import read_model_info
    from retinamask.ops.coco_results import results_from_detections
    from retinamask.ops.masks import encode_masks

    predictor = _expected.predictor = getattr(_expected, "predictor", None) or OnnxPredictor(
        SHIPPED_ONNX, backend="onnxruntime"
    )
    detections = predictor(path)
    keep = np.flatnonzero(detections.scores >= score_threshold)
    chosen = detections.take(keep)
    ids = read_model_info(SHIPPED_ONNX).category_ids
    return results_from_detections(0, chosen, ids, encode_masks(chosen.masks) if len(chosen) else []), chosen


def _same(results, expected):
    assert len(results) == len(expected) > 0
    for got, want in zip(results, expected):
        assert got["category_id"] == want["category_id"]
        assert got["score"] == pytest.approx(want["score"], abs=0)  # float32 values, exactly
        assert got["bbox"] == want["bbox"]
        assert got["segmentation"] == want["segmentation"]


def test_predict_answers_the_local_predictors_detections(server, images):
    for path in images[0][:3]:
        status, headers, body = post_image(server, path)
        assert status == 200 and headers["content-type"] == "application/json"
        answer = json_of(body)
        expected, chosen = _expected(path)
        _same(answer["detections"], expected)
        assert answer["image"] == {"height": chosen.image_hw[0], "width": chosen.image_hw[1]}
        assert [d["category_name"] for d in answer["detections"]] == chosen.class_names
        assert answer["model"] == "retinamask_shapes_small" and answer["backend"] == "onnxruntime"
        assert answer["precision"] == "fp32" and answer["resize"].startswith("original")
        assert set(answer["timings_ms"]) == {"decode", "preprocess", "queue", "infer", "postprocess", "encode"}
        assert all(v >= 0 for v in answer["timings_ms"].values())


def test_the_three_ways_to_send_an_image_give_one_answer(server, images):
    path = images[0][1]
    data = path.read_bytes()
    raw = json_of(post_image(server, data)[2])["detections"]
    boundary = "retinamask-test-boundary"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, body = call(
        f"{server}/v1/predict", multipart, {"Content-Type": f"multipart/form-data; boundary={boundary}"}, "POST"
    )
    assert status == 200 and json_of(body)["detections"] == raw
    payload = json.dumps({"image": base64.b64encode(data).decode()}).encode()
    status, _, body = call(f"{server}/v1/predict", payload, {"Content-Type": "application/json"}, "POST")
    assert status == 200 and json_of(body)["detections"] == raw


def test_query_parameters_filter_and_encode(server, images):
    path = images[0][2]
    full = json_of(post_image(server, path)[2])["detections"]
    some = json_of(post_image(server, path, "?score_threshold=0.5")[2])["detections"]
    assert some == [d for d in full if d["score"] >= 0.5] and 0 < len(some) < len(full)
    assert json_of(post_image(server, path, "?max_detections=2")[2])["detections"] == full[:2]
    bare = json_of(post_image(server, path, "?masks=none")[2])["detections"]
    assert all("segmentation" not in d for d in bare) and len(bare) == len(full)
    polygons = json_of(post_image(server, path, "?masks=polygon&score_threshold=0.5")[2])["detections"]
    assert all(isinstance(d["segmentation"], list) and d["segmentation"] for d in polygons)
    assert all(len(ring) >= 6 and len(ring) % 2 == 0 for d in polygons for ring in d["segmentation"])


def test_png_answer_is_predicts_overlay(server, images, tmp_path):
    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.apps.predict_images import predict_images

    path = images[0][0]
    status, headers, body = post_image(server, path, "?format=png&score_threshold=0.3")
    assert status == 200 and headers["content-type"] == "image/png"
    predict_images(OnnxPredictor(SHIPPED_ONNX, backend="onnxruntime"), [path], tmp_path, score_threshold=0.3)
    assert body == (tmp_path / f"{path.stem}.png").read_bytes()


def test_batched_and_unbatched_answers_are_identical(model, images):
    """Four same-canvas images sent at once to a server that batches (max 4, 1 s wait) run as one batch
    (the batch-size histogram says so) and answer exactly what a server without batching answers."""
    from retinamask.serve.app import create_app
    from retinamask.serve.settings import ServeSettings

    paths = [p for p in images[0] if model.prepare(_rgb(p)).canvas_hw == (448, 448)][:4]
    assert len(paths) == 4
    settings = ServeSettings(backend="onnxruntime", max_batch=4, batch_wait_ms=1000)
    app = create_app(settings, model=model)
    with running(app) as base, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: json_of(post_image(base, p)[2])["detections"], paths))
        metrics = call(f"{base}/metrics")[2].decode()
    assert _metric(metrics, "retinamask_batch_size_sum") > _metric(metrics, "retinamask_batch_size_count")
    for path, answer in zip(paths, answers):
        _same(answer, _expected(path)[0])


def _rgb(path):
    from retinamask.formats.images import load_image_rgb

    return load_image_rgb(path)


def _metric(text, name, labels=""):
    for line in text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.split()[-1])
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_models_health_metrics_docs_and_page(server):
    status, _, body = call(f"{server}/v1/models")
    described = json_of(body)["models"][0]
    assert status == 200
    assert described["classes"] == ["circle", "rectangle", "triangle", "star", "cross", "ring"]
    assert described["category_ids"] == [1, 3, 7, 12, 18, 25]  # the shapes dataset's ids (non-contiguous)
    assert described["layout"] == "end2end" and described["resize"].startswith("original")
    assert described["input_contract"]["image_sizes"] == "int64 [B, 2]"
    assert call(f"{server}/v1/health/live")[0] == 200
    assert json_of(call(f"{server}/v1/health/ready")[2]) == {"status": "ready"}
    metrics = call(f"{server}/metrics")[2].decode()
    assert _metric(metrics, "retinamask_requests_total", '{route="/v1/models",status="200"}') >= 1
    for name in ("retinamask_stage_seconds_bucket", "retinamask_queue_depth", "retinamask_in_flight_requests"):
        assert name in metrics
    assert "retinamask_response_bytes_count" in metrics and "process_resident_memory_bytes" in metrics
    status, _, body = call(f"{server}/openapi.json")
    assert status == 200 and "/v1/predict" in json_of(body)["paths"]
    assert call(f"{server}/docs")[0] == 200
    status, _, page = call(f"{server}/")
    assert status == 200 and b"static/app.js" in page
    for asset in ("app.js", "style.css"):
        status, _, text = call(f"{server}/static/{asset}")
        assert status == 200 and b"http://" not in text and b"https://" not in text  # no CDN, nothing external
    assert call(f"{server}/static/../app.py")[0] == 404


def test_ready_only_after_the_warm_up(model, images):
    """While the warm-up inference runs: live 200, ready 503 (Retry-After), predict 503; then ready 200."""
    import time

    from retinamask.serve.app import create_app
    from retinamask.serve.settings import ServeSettings

    gate = threading.Event()
    gated = SlowModel(model)
    gated.warm_up = lambda: (gate.wait(60), model.warm_up())[1]
    with running(create_app(ServeSettings(backend="onnxruntime"), model=gated), wait_ready=False) as base:
        status, headers, body = call(f"{base}/v1/health/ready")
        assert status == 503 and json_of(body) == {"status": "warming up"} and headers["retry-after"] == "1"
        assert call(f"{base}/v1/health/live")[0] == 200
        status, _, body = post_image(base, images[0][0])
        assert status == 503 and json_of(body)["error"]["code"] == "not_ready"
        gate.set()
        deadline = time.monotonic() + 60
        while call(f"{base}/v1/health/ready")[0] != 200:
            assert time.monotonic() < deadline, "never ready after the warm-up"
            time.sleep(0.05)
        assert post_image(base, images[0][0])[0] == 200


FIRST_REQUEST = """
import json, sys, time
from fastapi.testclient import TestClient
from retinamask.serve import create_app
from retinamask.serve.settings import ServeSettings

png = open(sys.argv[1], "rb").read()
with TestClient(create_app(ServeSettings(backend="onnxruntime"))) as client:
    while client.get("/v1/health/ready").status_code != 200:
        time.sleep(0.05)
    loaded = {name: name in sys.modules for name in ("PIL.PngImagePlugin", "PIL.JpegImagePlugin")}
    decode = [
        client.post("/v1/predict", content=png, headers={"content-type": "image/png"}).json()["timings_ms"]["decode"]
        for _ in range(5)
    ]
print(json.dumps({"loaded": loaded, "decode_ms": decode}))
"""


def test_the_warm_up_loads_the_image_decoders_the_first_request_would_pay_for(images):
    """A fresh server process: readiness comes after Pillow's PNG and JPEG plugins are loaded (the first
    Image.open of a process imports them: a first PNG's decode took 10-34 ms, later ones 1-2 ms)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", FIRST_REQUEST, str(images[0][0])], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["loaded"] == {"PIL.PngImagePlugin": True, "PIL.JpegImagePlugin": True}
    assert len(measured["decode_ms"]) == 5 and all(ms > 0 for ms in measured["decode_ms"])
    print("decode ms, first request first:", measured["decode_ms"])


def test_a_subpixel_server_answers_the_local_subpixel_predictors_masks(images):
    """``serve --mask-paste subpixel``: the fused RLE route pastes as the local predictor with
    ``mask_paste="subpixel"`` does; /v1/models says which paste; any other name is refused."""
    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.core.errors import ConfigError
    from retinamask.ops.masks import encode_masks
    from retinamask.serve.app import create_app
    from retinamask.serve.model import ServedModel
    from retinamask.serve.settings import ServeSettings

    settings = ServeSettings(backend="onnxruntime", sessions=1, mask_paste="subpixel")
    local = OnnxPredictor(SHIPPED_ONNX, backend="onnxruntime", mask_paste="subpixel")
    plain = OnnxPredictor(SHIPPED_ONNX, backend="onnxruntime")
    differs = False
    with running(create_app(settings, model=ServedModel(settings))) as base:
        for path in images[0][:3]:
            status, _, body = post_image(base, path)
            assert status == 200
            got = [d["segmentation"] for d in json_of(body)["detections"]]
            detections = local(path)
            assert got == encode_masks(detections.masks)
            differs |= got != encode_masks(plain(path).masks)
        status, _, body = call(f"{base}/v1/models")
        assert status == 200 and json_of(body)["models"][0]["mask_paste"] == "subpixel"
    assert differs  # the two pastes differ on these small shapes
    with pytest.raises(ConfigError, match="--mask-paste must be original or subpixel"):
        ServeSettings(mask_paste="seed")
