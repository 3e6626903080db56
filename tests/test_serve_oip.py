"""The Open Inference Protocol (KServe v2) over REST as a user drives it, with the official Triton client
(``tritonclient.http``): health, metadata, infer with a JPEG and a PNG (binary by default, JSON and
binary outputs), an image over 4 MiB, a request id, no detections, concurrent requests, the errors. The
answers equal ``/v1/predict``'s and ``predict --model``'s for the same image."""

import base64
import json

import numpy as np
import pytest

import oip_support as oips
from oip_support import MODEL, OUTPUTS, arrays_of, make_images, predict_records
from serve_support import call, json_of, running

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed (the test extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("oip_images"))


@pytest.fixture(scope="module")
def local(images, tmp_path_factory):
    return predict_records(images, tmp_path_factory.mktemp("oip_predict"))


@pytest.fixture(scope="module")
def server():
    from retinamask.serve.app import create_app
    from retinamask.serve.model import ServedModel
    from retinamask.serve.settings import ServeSettings

    settings = ServeSettings(backend="onnxruntime")
    with running(create_app(settings, model=ServedModel(settings))) as base:
        yield base


def _client(base):
    return httpclient.InferenceServerClient(base.removeprefix("http://"))


def _image_input(path_or_bytes, binary=True):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object), binary_data=binary)
    return tensor


def test_health_and_metadata(server):
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("resnet50") and not client.is_model_ready(MODEL, "2")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "retinamask" and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata(MODEL)
    assert model == client.get_model_metadata(MODEL, "1")
    assert model["name"] == MODEL and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
        ("boxes", "FP32", [-1, 4]),
        ("scores", "FP32", [-1]),
        ("labels", "INT32", [-1]),
        ("class_names", "BYTES", [-1]),
        ("masks", "BYTES", [-1]),
    ]
    with pytest.raises(InferenceServerException, match="unknown model 'resnet50'") as e:
        client.get_model_metadata("resnet50")
    assert e.value.status() == "404"
    client.close()


@pytest.mark.parametrize(("kind", "content_type"), [("png", "image/png"), ("jpeg", "image/jpeg")])
def test_infer_equals_v1_predict_and_predict_model(server, images, local, kind, content_type):
    """tritonclient's defaults: the image binary, every output binary (no outputs named)."""
    client = _client(server)
    result = client.infer(MODEL, [_image_input(images[kind])])
    response = result.get_response()
    assert response["model_name"] == MODEL and response["model_version"] == "1" and "id" not in response
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    arrays = arrays_of(result)
    assert len(arrays["scores"]) > 0
    v1 = oips.v1_answer(server, images[kind], content_type)
    oips.assert_same_as_v1_and_predict(arrays, response["parameters"], v1, local[kind])
    client.close()


def test_json_and_binary_outputs_parameters_and_request_id(server, images):
    client = _client(server)
    full = arrays_of(client.infer(MODEL, [_image_input(images["png"])]))
    for binary in (False, True):
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in OUTPUTS]
        result = client.infer(MODEL, [_image_input(images["png"])], outputs=outputs, request_id=f"req-{binary}")
        response = result.get_response()
        assert response["id"] == f"req-{binary}"
        assert all(("data" in o) != binary for o in response["outputs"])
        arrays = arrays_of(result)
        for name in OUTPUTS:
            assert np.array_equal(np.asarray(arrays[name]), np.asarray(full[name])), name
    # a subset of outputs, in the order asked; parameters filter as /v1/predict's query does
    outputs = [httpclient.InferRequestedOutput("scores", binary_data=False), httpclient.InferRequestedOutput("labels")]
    result = client.infer(MODEL, [_image_input(images["png"])], outputs=outputs, parameters={"score_threshold": 0.5})
    assert [o["name"] for o in result.get_response()["outputs"]] == ["scores", "labels"]
    keep = full["scores"] >= 0.5
    assert 0 < keep.sum() < len(keep)
    assert np.array_equal(result.as_numpy("scores"), full["scores"][keep])
    assert np.array_equal(result.as_numpy("labels"), full["labels"][keep])
    assert result.as_numpy("boxes") is None
    result = client.infer(MODEL, [_image_input(images["png"])], parameters={"max_detections": 2})
    assert np.array_equal(result.as_numpy("scores"), full["scores"][:2])
    client.close()


def test_an_image_over_4_mib(server, images, local):
    client = _client(server)
    result = client.infer(MODEL, [_image_input(images["noise"])])
    v1 = oips.v1_answer(server, images["noise"], "image/png")
    oips.assert_same_as_v1_and_predict(arrays_of(result), result.get_response()["parameters"], v1, local["noise"])
    client.close()


def test_no_detections_decode_as_empty_tensors(server, images, local):
    client = _client(server)
    for binary in (True, False):
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in OUTPUTS]
        result = client.infer(MODEL, [_image_input(images["blank"])], outputs=outputs)
        assert result.as_numpy("boxes").shape == (0, 4) and result.as_numpy("boxes").dtype == np.float32
        for name in ("scores", "labels", "class_names", "masks"):
            assert result.as_numpy(name).shape == (0,), name
    assert local["blank"]["detections"] == []
    client.close()


def test_concurrent_requests_answer_what_single_ones_do(server, images):
    """Eight requests in flight from one client (its own concurrency, as tritonclient does it)."""
    client = httpclient.InferenceServerClient(server.removeprefix("http://"), concurrency=4)
    paths = [images["png"], images["jpeg"]] * 4
    expected = {p: arrays_of(client.infer(MODEL, [_image_input(p)])) for p in paths[:2]}
    pending = [client.async_infer(MODEL, [_image_input(p)], request_id=str(i)) for i, p in enumerate(paths)]
    for i, (path, request) in enumerate(zip(paths, pending)):
        result = request.get_result()
        assert result.get_response()["id"] == str(i)
        arrays = arrays_of(result)
        for name in OUTPUTS:
            assert np.array_equal(np.asarray(arrays[name]), np.asarray(expected[path][name])), name
    client.close()
    metrics = call(f"{server}/metrics")[2].decode()
    assert 'retinamask_requests_total{route="/v2/models/{name}/infer",status="200"}' in metrics


def test_a_json_request_with_a_base64_image(server, images):
    """Plain JSON both ways (no binary extension): the image as base64 in ``data``."""
    data = images["png"].read_bytes()
    image = {"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": [[base64.b64encode(data).decode()]]}
    request = {
        "id": "json-1",
        "inputs": [image],
        "outputs": [{"name": name} for name in OUTPUTS],
    }
    status, headers, body = call(
        f"{server}/v2/models/{MODEL}/versions/1/infer", json.dumps(request).encode(), {}, "POST"
    )
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json_of(body)
    assert answer["id"] == "json-1"
    got = {o["name"]: o for o in answer["outputs"]}
    expected = arrays_of(_client(server).infer(MODEL, [_image_input(data)]))
    assert got["boxes"]["shape"] == [len(expected["scores"]), 4]
    assert np.array_equal(np.asarray(got["boxes"]["data"], np.float32).reshape(-1, 4), expected["boxes"])
    assert np.array_equal(np.asarray(got["scores"]["data"], np.float32), expected["scores"])
    assert got["masks"]["data"] == expected["masks"] and got["class_names"]["data"] == expected["class_names"]


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda png: [_image_input(png[:-300])], "400", "image"),  # a truncated (corrupt) PNG
        (lambda png: [_image_input(b"not an image at all")], "400", "not a"),
        (lambda png: [_renamed(_image_input(png), "input")], "400", "unknown input 'input'"),
        (lambda png: [_fp32_image()], "400", "must be BYTES"),
        (lambda png: [_image_input(png), _renamed(_image_input(png), "image2")], "400", "one input"),
    ],
)
def test_errors_are_the_protocols(server, images, make, status, message):
    client = _client(server)
    png = images["png"].read_bytes()
    with pytest.raises(InferenceServerException, match=message) as e:
        client.infer(MODEL, make(png))
    assert e.value.status() == status and "Traceback" not in str(e.value)
    with pytest.raises(InferenceServerException, match="unknown model") as e:
        client.infer("yolo", [_image_input(png)])
    assert e.value.status() == "404"
    assert len(client.infer(MODEL, [_image_input(png)]).as_numpy("scores")) > 0  # still serving
    client.close()


def _renamed(tensor, name):
    tensor._name = name
    return tensor


def _fp32_image():
    tensor = httpclient.InferInput("image", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), np.float32))
    return tensor


def test_unknown_v2_routes_are_protocol_errors(server):
    status, _, body = call(f"{server}/v2/repository/index", b"{}", {}, "POST")
    assert status == 404 and isinstance(json_of(body)["error"], str)
    status, _, body = call(f"{server}/v2/models/{MODEL}/infer")  # GET
    assert status == 405 and isinstance(json_of(body)["error"], str)


def test_the_openapi_page_documents_the_v2_routes(server):
    paths = json_of(call(f"{server}/openapi.json")[2])["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert "/v2/models/{name}/versions/{version}/infer" in paths and "/v2/health/ready" in paths
    assert "`image`" in infer["description"] and "`masks` BYTES" in infer["description"]
    assert {"400", "404", "503"} <= set(infer["responses"])
