"""Malformed Open Inference Protocol requests, over REST and gRPC: each gets the protocol's error (a 400
with ``{"error": "message"}``, or INVALID_ARGUMENT), never a 500, a traceback or a logged exception, and
the server keeps serving: a truncated binary body, a header length larger than the body, BYTES lengths
that overrun, a non-image, a decompression bomb, a shape that disagrees with the data, an unknown
datatype, a missing input, 1000 inputs (and a few more)."""

import json
import logging
import struct
import zlib

import pytest

from oip_support import MODEL, make_images
from serve_support import call, json_of, running

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (the grpc extra)")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("oip_bad_images"))["png"].read_bytes()


@pytest.fixture(scope="module")
def server():
    from retinamask.serve.app import create_app
    from retinamask.serve.model import ServedModel
    from retinamask.serve.settings import ServeSettings

    settings = ServeSettings(backend="onnxruntime", sessions=1, grpc_port=0, max_image_mb=2)
    app = create_app(settings, model=ServedModel(settings))
    with running(app) as base:
        yield base, f"127.0.0.1:{app.state.server.grpc_port}"


@pytest.fixture
def no_exceptions_logged(caplog):
    """Fails the test if the server logged an error (an unexpected exception) while it ran."""
    with caplog.at_level(logging.ERROR):
        yield
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def element(data):
    """One BYTES element on the wire: a 4-byte little-endian length, then the bytes."""
    return struct.pack("<I", len(data)) + data


def image_input(size, shape=(1,), datatype="BYTES", name="image"):
    return {"name": name, "datatype": datatype, "shape": list(shape), "parameters": {"binary_data_size": size}}


def binary_request(inputs, blob, header_length=None, extra=None):
    """(body, headers) of a request with the binary data extension: the JSON header, then ``blob``."""
    header = json.dumps({"inputs": inputs, **(extra or {})}).encode()
    length = len(header) if header_length is None else header_length
    return header + blob, {"Inference-Header-Content-Length": str(length)}


def bomb():
    """A PNG that declares 40000 x 40000 pixels and holds almost no data (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def _rest_cases(png):
    one = element(png)
    return {
        "truncated binary body": (*binary_request([image_input(len(one))], one[:-100]), "only"),
        "header length larger than the body": (
            *binary_request([image_input(len(one))], one, header_length=10**6),
            "Inference-Header-Content-Length",
        ),
        "header length not a number": (*binary_request([image_input(len(one))], one, header_length="ten"), "number"),
        "BYTES length that overruns": (
            *binary_request([image_input(len(one))], struct.pack("<I", len(png) + 50) + png),
            "BYTES element says",
        ),
        "BYTES length cut in the middle": (*binary_request([image_input(2)], b"\x05\x00"), "4-byte"),
        "bytes after the last tensor": (*binary_request([image_input(len(one))], one + b"extra"), "after"),
        "a non-image": (*binary_request([image_input(len(element(b"hello")))], element(b"hello")), "image"),
        "a decompression bomb": (
            *binary_request([image_input(len(element(bomb())))], element(bomb())),
            "decompression bomb",
        ),
        "shape [1] with two elements": (*binary_request([image_input(2 * len(one))], one + one), "holds 2"),
        "shape [2] (a batch)": (*binary_request([image_input(2 * len(one), shape=(2,))], one + one), "one image"),
        "shape [1, 3]": (*binary_request([image_input(len(one), shape=(1, 3))], one), "one image"),
        "shape not a list": (*binary_request([image_input(len(one), shape=())], one), "shape"),
        "unknown datatype": (*binary_request([image_input(len(one), datatype="STRING")], one), "unknown datatype"),
        "FP32 data for image": (*binary_request([image_input(12, (1, 3), "FP32")], b"\0" * 12), "must be BYTES"),
        "missing input": (*binary_request([], b""), "one input"),
        "no inputs key": (b'{"id": "x"}', {}, "inputs"),
        "1000 inputs": (
            *binary_request([image_input(5, name=f"image{i}") for i in range(1000)], element(b"x") * 1000),
            "the request has 1000",
        ),
        "not JSON": (b"\x89PNG not json", {}, "not valid JSON"),
        "negative binary_data_size": (*binary_request([image_input(-1)], b""), "non-negative"),
        "unknown parameter": (
            *binary_request([image_input(len(one))], one, extra={"parameters": {"score_treshold": 0.5}}),
            "score_treshold",
        ),
        "score_threshold out of range": (
            *binary_request([image_input(len(one))], one, extra={"parameters": {"score_threshold": 1.5}}),
            "score_threshold",
        ),
        "unknown output": (*binary_request([image_input(len(one))], one, extra={"outputs": [{"name": "x"}]}), "x"),
        "JSON data that is not base64": (
            json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}).encode(),
            {},
            "base64",
        ),
        "compressed body": (*binary_request([image_input(len(one))], one), "Content-Encoding"),
    }


REST_CASES = list(_rest_cases(b"PNG").keys())


@pytest.mark.parametrize("case", REST_CASES)
def test_rest_bad_input_is_400_and_the_server_goes_on(server, png, case, no_exceptions_logged):
    body, headers, fragment = _rest_cases(png)[case]
    if case == "compressed body":
        headers = {**headers, "Content-Encoding": "gzip"}
    status, _, answer = call(server[0] + INFER, body, headers, "POST")
    assert status == 400, (status, answer)
    error = json_of(answer)
    assert set(error) == {"error"} and isinstance(error["error"], str) and fragment in error["error"], error
    assert "Traceback" not in error["error"] and "\n" not in error["error"]
    good_body, good_headers = binary_request([image_input(len(element(png)))], element(png))
    assert call(server[0] + INFER, good_body, good_headers, "POST")[0] == 200  # still serving


def test_a_body_over_the_limit_is_413_from_the_head_alone(server):
    """A declared length over --max-image-mb (2) is refused before any body byte is sent."""
    import http.client

    connection = http.client.HTTPConnection(server[0].removeprefix("http://"), timeout=30)
    connection.putrequest("POST", INFER)
    connection.putheader("Content-Length", str(3 * 1024 * 1024))
    connection.putheader("Inference-Header-Content-Length", "100")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "max-image-mb" in json_of(response.read())["error"]
    connection.close()


def _grpc_request(png, inputs=None, raw=None, **fields):
    request = service_pb2.ModelInferRequest(model_name=MODEL, **fields)
    for name, datatype, shape in [("image", "BYTES", [1])] if inputs is None else inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend([element(png)] if raw is None else raw)
    return request


GRPC_CASES = {
    "BYTES length that overruns": (lambda png: _grpc_request(png, raw=[struct.pack("<I", 10**6) + png]), "BYTES"),
    "BYTES length cut in the middle": (lambda png: _grpc_request(png, raw=[b"\x05\x00"]), "4-byte"),
    "raw contents for two inputs": (lambda png: _grpc_request(png, raw=[element(png)] * 2), "raw_input_contents"),
    "a non-image": (lambda png: _grpc_request(png, raw=[element(b"hello")]), "image"),
    "a decompression bomb": (lambda png: _grpc_request(png, raw=[element(bomb())]), "decompression bomb"),
    "shape [1] with two elements": (lambda png: _grpc_request(png, raw=[element(png) * 2]), "holds 2"),
    "shape [4] (a batch)": (lambda png: _grpc_request(png, [("image", "BYTES", [4])]), "one image"),
    "unknown datatype": (lambda png: _grpc_request(png, [("image", "STRING", [1])]), "unknown datatype"),
    "missing input": (lambda png: _grpc_request(png, [], raw=[]), "one input"),
    "no data": (lambda png: _grpc_request(png, raw=[]), "no data"),
    "1000 inputs": (
        lambda png: _grpc_request(png, [(f"i{i}", "BYTES", [1]) for i in range(1000)], raw=[element(b"x")] * 1000),
        "the request has 1000",
    ),
    "string parameter": (
        lambda png: _with_parameter(_grpc_request(png), "max_detections", string_param="10"),
        "max_detections",
    ),
}


def _with_parameter(request, name, **value):
    request.parameters[name].CopyFrom(service_pb2.InferParameter(**value))
    return request


@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_grpc_bad_input_is_invalid_argument_and_the_server_goes_on(server, png, case, no_exceptions_logged):
    make, fragment = GRPC_CASES[case]
    with grpc.insecure_channel(server[1], options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(make(png), timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        assert fragment in e.value.details() and "Traceback" not in e.value.details()
        assert len(stub.ModelInfer(_grpc_request(png), timeout=60).raw_output_contents) == 5  # still serving


def test_a_grpc_message_over_the_limit_is_refused_by_grpc(server, png):
    """The receive limit is --max-image-mb plus headroom: a 4 MiB message fails as RESOURCE_EXHAUSTED."""
    big = _grpc_request(png, raw=[element(b"\0" * (4 * 1024 * 1024))])
    channel = grpc.insecure_channel(server[1], options=[("grpc.max_send_message_length", -1)])
    with channel, pytest.raises(grpc.RpcError) as e:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(big, timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
