"""The Open Inference Protocol over gRPC (``serve --grpc-port``) as a user drives it, with the official
Triton client (``tritonclient.grpc``): health, metadata, infer with a JPEG and a PNG, an image over gRPC's
default 4 MiB, a request id, no detections, concurrent requests, the errors as gRPC status codes. The
answers equal ``/v1/predict``'s and ``predict --model``'s; the same queue and metrics serve both."""

import socket
import threading

import numpy as np
import pytest

import oip_support as oips
from oip_support import MODEL, OUTPUTS, arrays_of, make_images, predict_records
from serve_support import call, running

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (the grpc extra)")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("oip_grpc_images"))


@pytest.fixture(scope="module")
def local(images, tmp_path_factory):
    return predict_records(images, tmp_path_factory.mktemp("oip_grpc_predict"))


@pytest.fixture(scope="module")
def server():
    """(the HTTP base URL, the gRPC address) of one app serving both."""
    from retinamask.serve.app import create_app
    from retinamask.serve.model import ServedModel
    from retinamask.serve.settings import ServeSettings

    settings = ServeSettings(backend="onnxruntime", grpc_port=0)
    app = create_app(settings, model=ServedModel(settings))
    with running(app) as base:
        yield base, f"127.0.0.1:{app.state.server.grpc_port}"


def _client(server):
    return grpcclient.InferenceServerClient(server[1])


def _image_input(path_or_bytes):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object))
    return tensor


def _code(error):
    return error.value.status().removeprefix("StatusCode.")


def test_health_and_metadata_and_loopback_only(server):
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "retinamask" and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata(MODEL, as_json=True)
    assert model["name"] == MODEL and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": ["1"]}]  # int64 in proto JSON
    assert [o["name"] for o in model["outputs"]] == list(OUTPUTS)
    for call_it in (lambda: client.get_model_metadata("resnet50"), lambda: client.is_model_ready(MODEL, "2")):
        with pytest.raises(InferenceServerException) as e:
            call_it()
        assert _code(e) == "NOT_FOUND"
    client.close()
    port = int(server[1].rsplit(":", 1)[1])  # bound to loopback only (no --host given)
    for address in {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}:
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
            pass


KINDS = [("png", "image/png"), ("jpeg", "image/jpeg"), ("noise", "image/png")]


@pytest.mark.parametrize(("kind", "content_type"), KINDS)
def test_infer_equals_v1_predict_and_predict_model(server, images, local, kind, content_type):
    """The PNG, the JPEG and a PNG over 4 MiB (gRPC's default receive limit, raised by --max-image-mb)."""
    client = _client(server)
    result = client.infer(MODEL, [_image_input(images[kind])], request_id=f"grpc-{kind}")
    response = result.get_response(as_json=True)
    assert response["id"] == f"grpc-{kind}" and response["model_name"] == MODEL
    assert len(result.get_response().raw_output_contents) == len(OUTPUTS)
    parameters = {k: int(v["int64_param"]) for k, v in response["parameters"].items()}
    arrays = arrays_of(result)
    assert len(arrays["scores"]) > 0
    v1 = oips.v1_answer(server[0], images[kind], content_type)
    oips.assert_same_as_v1_and_predict(arrays, parameters, v1, local[kind])
    client.close()


def test_parameters_outputs_and_empty_detections(server, images):
    client = _client(server)
    full = arrays_of(client.infer(MODEL, [_image_input(images["png"])]))
    outputs = [grpcclient.InferRequestedOutput("labels"), grpcclient.InferRequestedOutput("scores")]
    result = client.infer(MODEL, [_image_input(images["png"])], outputs=outputs, parameters={"score_threshold": 0.5})
    keep = full["scores"] >= 0.5
    assert 0 < keep.sum() < len(keep)
    assert [o.name for o in result.get_response().outputs] == ["labels", "scores"]
    assert np.array_equal(result.as_numpy("scores"), full["scores"][keep])
    assert np.array_equal(result.as_numpy("labels"), full["labels"][keep])
    result = client.infer(MODEL, [_image_input(images["png"])], parameters={"max_detections": 3})
    assert np.array_equal(result.as_numpy("boxes"), full["boxes"][:3])
    result = client.infer(MODEL, [_image_input(images["blank"])])
    assert list(result.get_response().raw_output_contents) == [b""] * len(OUTPUTS)  # empty tensors, present
    assert result.as_numpy("boxes").shape == (0, 4) and result.as_numpy("boxes").dtype == np.float32
    assert all(result.as_numpy(name).shape == (0,) for name in OUTPUTS[1:])
    client.close()


def test_contents_instead_of_raw_input_contents(server, images):
    """A client that sends ``contents.bytes_contents`` (not tritonclient's raw form) gets the same answer."""
    import grpc

    data = images["png"].read_bytes()
    request = service_pb2.ModelInferRequest(model_name=MODEL, id="contents")
    tensor = request.inputs.add(name="image", datatype="BYTES", shape=[1, 1])
    tensor.contents.bytes_contents.append(data)
    with grpc.insecure_channel(server[1]) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert response.id == "contents" and [o.name for o in response.outputs] == list(OUTPUTS)
    expected = _client(server).infer(MODEL, [_image_input(data)]).get_response()
    assert list(response.raw_output_contents) == list(expected.raw_output_contents)


def test_concurrent_requests_share_the_queue_with_rest(server, images):
    """Eight gRPC requests in flight (async_infer) while REST answers too: every answer is the single one's;
    /metrics counts the gRPC ones."""
    client = _client(server)
    paths = [images["png"], images["jpeg"]] * 4
    expected = {p: arrays_of(client.infer(MODEL, [_image_input(p)])) for p in paths[:2]}
    done, results = threading.Semaphore(0), {}

    def callback(index):
        def finished(result, error):
            results[index] = error or result
            done.release()

        return finished

    for i, path in enumerate(paths):
        client.async_infer(MODEL, [_image_input(path)], callback(i), request_id=str(i))
    rest = oips.v1_answer(server[0], images["png"], "image/png")
    for _ in paths:
        assert done.acquire(timeout=60)
    for i, path in enumerate(paths):
        assert not isinstance(results[i], Exception), results[i]
        arrays = arrays_of(results[i])
        assert all(np.array_equal(np.asarray(arrays[n]), np.asarray(expected[path][n])) for n in OUTPUTS)
    assert [d["score"] for d in rest["detections"]] == expected[images["png"]]["scores"].tolist()
    client.close()
    metrics = call(f"{server[0]}/metrics")[2].decode()
    assert 'retinamask_requests_total{route="grpc ModelInfer",status="OK"}' in metrics


def _fp32_image():
    tensor = grpcclient.InferInput("image", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), np.float32))
    return tensor


def _named(name, data):
    tensor = grpcclient.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object))
    return tensor


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (lambda png: [_image_input(png[:-300])], "INVALID_ARGUMENT", "image"),  # a truncated (corrupt) PNG
        (lambda png: [_image_input(b"not an image at all")], "INVALID_ARGUMENT", "not a"),
        (lambda png: [_named("input", png)], "INVALID_ARGUMENT", "unknown input 'input'"),
        (lambda png: [_fp32_image()], "INVALID_ARGUMENT", "must be BYTES"),
        (lambda png: [_image_input(png), _named("image2", png)], "INVALID_ARGUMENT", "one input"),
    ],
)
def test_errors_are_grpc_status_codes(server, images, make, code, message):
    client = _client(server)
    png = images["png"].read_bytes()
    with pytest.raises(InferenceServerException, match=message) as e:
        client.infer(MODEL, make(png))
    assert _code(e) == code and "Traceback" not in str(e.value)
    with pytest.raises(InferenceServerException, match="unknown model") as e:
        client.infer("yolo", [_image_input(png)])
    assert _code(e) == "NOT_FOUND"
    with pytest.raises(InferenceServerException, match="score_threshold") as e:
        client.infer(MODEL, [_image_input(png)], parameters={"score_threshold": 2.0})
    assert _code(e) == "INVALID_ARGUMENT"
    assert len(client.infer(MODEL, [_image_input(png)]).as_numpy("scores")) > 0  # still serving
    client.close()


def test_grpc_port_without_the_extra_is_one_line(monkeypatch, capsys):
    import sys

    from retinamask.cli import main

    monkeypatch.setitem(sys.modules, "grpc", None)  # as if grpcio were not installed
    assert main(["serve", "--grpc-port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--grpc-port needs the grpc extra" in err and "pip install 'retinamask[grpc]'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["serve", "--grpc-port", "0", "--ray-config", "x.yaml"]) == 2
    assert "not offered with --ray" in capsys.readouterr().err


def test_a_taken_grpc_port_is_one_line(capsys):
    from retinamask.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--backend", "onnxruntime", "--port", "0", "--grpc-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen for gRPC on 127.0.0.1:{port} (in use?)" in err and "Traceback" not in err


def test_serve_grpc_port_as_a_user_starts_it_and_sigterm_answers_what_is_in_flight(tmp_path, images, capsys):
    """``retinamask serve --grpc-port P`` (a process): gRPC on loopback beside HTTP; ``bench --url`` drives
    the three protocols; SIGTERM with gRPC requests in flight answers them all, then exits 0."""
    import re
    import signal
    import time

    from retinamask.cli import main
    from test_serve_process import ServeProcess, _free_port

    port = _free_port()
    served = ServeProcess(tmp_path, "--grpc-port", str(port), "--max-queue", "32")
    try:
        assert f"gRPC (Open Inference Protocol, inference.GRPCInferenceService) on 127.0.0.1:{port}" in (
            served.log.read_text()
        )
        bench = ["bench", "--url", served.base, "--protocol", "v1,v2,grpc", "--grpc-port", str(port)]
        assert main([*bench, "--concurrency", "2", "--requests", "4", "--input", str(images["png"])]) == 0
        out = capsys.readouterr().out
        assert "POST /v1/predict" in out and "over HTTP: POST /v2/models/MODEL/infer" in out and "over gRPC" in out
        assert len(re.findall(r"^\| 2 \| 4 \| 4 \| none \| [\d.]+ \|", out, re.M)) == 3, out
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        done, results = threading.Semaphore(0), []

        def finished(result, error):
            results.append(error or result)
            done.release()

        for _ in range(4):
            client.async_infer(MODEL, [_image_input(images["png"])], finished)
        time.sleep(0.3)  # accepted, queued behind the sessions
        served.process.send_signal(signal.SIGTERM)
        for _ in range(4):
            assert done.acquire(timeout=120)
        assert all(not isinstance(r, Exception) and len(r.as_numpy("scores")) > 0 for r in results), results
        assert served.process.wait(60) == 0
        client.close()
    finally:
        served.stop()
    assert "Traceback" not in served.log.read_text()


def test_not_ready_and_the_api_key_over_both_protocols(images):
    """Before the warm-up: ready is false and infer is 503 / UNAVAILABLE; with --api-key, metadata and infer
    need the key (REST header, gRPC metadata), the health probes do not."""
    import httpx

    from retinamask.serve.app import create_app
    from retinamask.serve.model import ServedModel
    from retinamask.serve.settings import ServeSettings
    from serve_support import SlowModel

    settings = ServeSettings(backend="onnxruntime", sessions=1, grpc_port=0, api_key="s3cret")
    gate, model = threading.Event(), SlowModel(ServedModel(settings))
    model.warm_up = lambda: (gate.wait(60), model._model.warm_up())[1]
    app = create_app(settings, model=model)
    key = {"authorization": "Bearer s3cret"}
    with running(app, wait_ready=False) as base:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{app.state.server.grpc_port}")
        assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready(MODEL)
        with pytest.raises(InferenceServerException, match="not ready") as e:
            client.infer(MODEL, [_image_input(images["png"])], headers=key)
        assert _code(e) == "UNAVAILABLE"
        answer = httpx.post(f"{base}/v2/models/{MODEL}/infer", content=b"{}", headers=key)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert "not ready" in answer.json()["error"]
        assert httpx.get(f"{base}/v2/health/ready").status_code == 503
        gate.set()
        while not client.is_server_ready():
            threading.Event().wait(0.05)
        for call_it in (
            lambda: client.infer(MODEL, [_image_input(images["png"])]),
            lambda: client.get_model_metadata(MODEL),
            lambda: client.infer(MODEL, [_image_input(images["png"])], headers={"authorization": "Bearer wrong"}),
        ):
            with pytest.raises(InferenceServerException, match="API key") as e:
                call_it()
            assert _code(e) == "UNAUTHENTICATED"
        assert len(client.infer(MODEL, [_image_input(images["png"])], headers=key).as_numpy("scores")) > 0
        assert client.get_model_metadata(MODEL, headers={"x-api-key": "s3cret"}).name == MODEL
        answer = httpx.get(f"{base}/v2/models/{MODEL}")
        assert answer.status_code == 401 and "API key" in answer.json()["error"]
        assert httpx.get(f"{base}/v2/models/{MODEL}", headers=key).status_code == 200
        assert httpx.get(f"{base}/v2/models/{MODEL}/ready").status_code == 200  # probes need no key
        client.close()
