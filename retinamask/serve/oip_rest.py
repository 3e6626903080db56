"""The Open Inference Protocol over REST (KServe v2 / Triton), on the same app as ``/v1``: health, server and
model metadata, and ``POST /v2/models/{name}[/versions/{v}]/infer`` in plain JSON or with Triton's binary
data extension (a JSON header of ``Inference-Header-Content-Length`` bytes, then the binary tensors in
order, each ``parameters.binary_data_size`` long), which is what ``tritonclient.http`` sends by default.

Tensors and parameters: :mod:`retinamask.serve.oip`. Errors: ``{"error": "message"}`` (``errors.py``).
"""

import time

import orjson
from fastapi import Request
from fastapi.responses import Response

from retinamask.serve import oip
from retinamask.serve.errors import OrjsonResponse, ServeError
from retinamask.serve.pipeline import check_key, require_ready
from retinamask.serve.request import read_body

HEADER_LENGTH = "Inference-Header-Content-Length"
MODEL = "/v2/models/{name}"
VERSIONED = "/v2/models/{name}/versions/{version}"
ROUTE_LABELS = (  # /metrics route label of each v2 path (model names and versions vary)
    ("/infer", MODEL + "/infer"),
    ("/ready", MODEL + "/ready"),
)
_ERRORS = {  # the OpenAPI page's error answers of /v2 routes
    400: {"description": 'a bad request, tensor, datatype, parameter or image: {"error": "message"}'},
    401: {"description": "missing or wrong API key"},
    404: {"description": "unknown model or version"},
    413: {"description": "body over --max-image-mb"},
    503: {"description": "not ready (warming up, draining) or the queue is full (Retry-After)"},
    504: {"description": "no answer within --timeout-s"},
}
_INFER_DESCRIPTION = """One image per request. Input `image`: the encoded image file as a BYTES tensor of shape
`[1]` or `[1, 1]`, with the binary data extension (raw bytes; what `tritonclient.http` sends) or in JSON
as base64. Parameters: `score_threshold` (0..1), `max_detections` (1..1000), `binary_data_output`.
Outputs, best first: `boxes` FP32 [K, 4] (x0, y0, x1, y1 in image pixels), `scores` FP32 [K], `labels`
INT32 [K] (category ids), `class_names` BYTES [K], `masks` BYTES [K] (COCO compressed RLE counts of an
`image_height` x `image_width` mask; the response parameters give the size). Binary outputs when asked
(`binary_data`, `binary_data_output`), JSON otherwise; the request `id` is echoed."""


FIXED_ROUTES = ("/v2", "/v2/health/live", "/v2/health/ready")


def route_label(path):
    """The /metrics route of a /v2 path: its template (``/v2/models/{name}/infer``), else "other"."""
    if path in FIXED_ROUTES:
        return path
    if path.startswith("/v2/models/"):
        for suffix, label in ROUTE_LABELS:
            if path.endswith(suffix):
                return label
        return MODEL
    return "other"


def add_routes(app, state):
    """The /v2 routes of ``state``'s model on ``app``."""

    def key(request):
        check_key(state.settings.api_key, request.headers.get("authorization"), request.headers.get("x-api-key"))

    @app.get("/v2/health/live", summary="OIP: the process is up", tags=["Open Inference Protocol"])
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", summary="OIP: warm and accepting work", tags=["Open Inference Protocol"])
    async def ready():
        return _ready(state)

    @app.get("/v2", summary="OIP: server metadata (name, version, extensions)", tags=["Open Inference Protocol"])
    async def server_metadata():
        return oip.server_metadata()

    async def model_metadata(request: Request, name: str, version: str | None = None):
        key(request)
        oip.check_model(state.model, name, version)
        return oip.model_metadata(state.model)

    async def model_ready(name: str, version: str | None = None):
        oip.check_model(state.model, name, version)
        return _ready(state)

    async def infer(request: Request, name: str, version: str | None = None):
        key(request)
        oip.check_model(state.model, name, version)
        require_ready(state)
        deadline = time.perf_counter() + state.settings.timeout_s
        body = await read_body(request, state.settings.max_body_bytes)
        parsed = parse_body(body, request.headers.get(HEADER_LENGTH), request.headers.get("content-encoding"))
        return answer_response(await oip.infer(state, parsed, deadline))

    tags = ["Open Inference Protocol"]
    for path in (MODEL, VERSIONED):
        app.add_api_route(path, model_metadata, methods=["GET"], summary="OIP: model metadata", tags=tags)
        app.add_api_route(path + "/ready", model_ready, methods=["GET"], summary="OIP: model ready", tags=tags)
        app.add_api_route(
            path + "/infer",
            infer,
            methods=["POST"],
            summary="OIP: detect and segment one image (KServe v2 / Triton)",
            description=_INFER_DESCRIPTION,
            responses=_ERRORS,
            tags=tags,
            response_class=Response,
        )


def _ready(state):
    if not state.ready:
        reason = "draining" if state.draining else "warming up"
        raise ServeError(503, "not_ready", f"not ready ({reason})", {"Retry-After": "1"})
    return OrjsonResponse({"ready": True})


def parse_body(body, header_length, content_encoding=None):
    """An infer request body (JSON, or a JSON header and binary tensors) -> oip.InferRequest."""
    if content_encoding not in (None, "", "identity"):
        raise oip.bad(f"Content-Encoding {content_encoding} is not accepted: send the request uncompressed")
    size = len(body)
    if header_length is None:
        header, rest = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise oip.bad(f"{HEADER_LENGTH} is not a number: {header_length!r}") from None
        if not 0 <= length <= size:
            raise oip.bad(f"{HEADER_LENGTH} is {length} but the body holds {size} bytes")
        header, rest = body[:length], body[length:]
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        raise oip.bad(f"the inference request header is not valid JSON: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise oip.bad('an inference request is a JSON object with "inputs": [...]')
    inputs, offset = [], 0
    for index, item in enumerate(request["inputs"]):
        tensor, offset = _input(item, index, rest, offset)
        inputs.append(tensor)
    if offset != len(rest):
        raise oip.bad(f"{len(rest) - offset} byte(s) after the binary tensors (binary_data_size disagrees)")
    return oip.InferRequest(
        id=_text(request.get("id", ""), "id"),
        parameters=_mapping(request.get("parameters"), "parameters"),
        inputs=inputs,
        outputs=[_output(item) for item in _list(request.get("outputs"), "outputs")],
    )


def _input(item, index, rest, offset):
    """One input of the header (and its binary data at ``offset`` in ``rest``) -> (Tensor, next offset)."""
    if not isinstance(item, dict):
        raise oip.bad(f"inputs[{index}] is not an object")
    name = _text(item.get("name"), f"inputs[{index}].name")
    parameters = _mapping(item.get("parameters"), f"input {name!r} parameters")
    tensor = oip.Tensor(name, _text(item.get("datatype"), f"input {name!r} datatype"), item.get("shape"))
    size = parameters.get("binary_data_size")
    if size is None:
        tensor.json = item.get("data")
        return tensor, offset
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise oip.bad(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if offset + size > len(rest):
        raise oip.bad(
            f"input {name!r}: binary_data_size {size} but only {len(rest) - offset} byte(s) of binary data remain "
            "(a truncated body?)"
        )
    tensor.raw = rest[offset : offset + size]
    return tensor, offset + size


def _output(item):
    if not isinstance(item, dict):
        raise oip.bad("outputs[] entries are objects {name, parameters?}")
    return _text(item.get("name"), "outputs[].name"), _mapping(item.get("parameters"), "output parameters")


def _text(value, what):
    if not isinstance(value, str):
        raise oip.bad(f"{what} must be a string, got {value!r}")
    return value


def _mapping(value, what):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise oip.bad(f"{what} must be an object, got {value!r}")
    return value


def _list(value, what):
    if value is None:
        return []
    if not isinstance(value, list):
        raise oip.bad(f"{what} must be a list, got {value!r}")
    return value


def answer_response(answer):
    """An InferAnswer -> the HTTP response: JSON, or a JSON header and the binary outputs."""
    outputs, blobs = [], []
    for output in answer.outputs:
        entry = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if output.binary:
            blob = oip.raw_bytes(output)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = oip.json_data(output)
        outputs.append(entry)
    payload = {"model_name": answer.model_name, "model_version": oip.VERSION}
    if answer.id:
        payload["id"] = answer.id
    payload["parameters"] = answer.parameters
    payload["outputs"] = outputs
    header = orjson.dumps(payload)
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
