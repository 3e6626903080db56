"""The Open Inference Protocol (KServe v2, Triton's predict protocol) for the served model, whatever the
wire: ``oip_rest`` (JSON + Triton's binary data extension) and ``oip_grpc`` (``inference.GRPCInferenceService``)
turn their requests into an :class:`InferRequest` and serialize the :class:`InferAnswer` this module gives.

The model takes one input, ``image``: the encoded image file (JPEG, PNG, ...) as a BYTES tensor of shape
``[1]`` or ``[1, 1]`` (one image per request: concurrent requests are batched by the server). It answers
five outputs, best first: ``boxes`` FP32 [K, 4] (x0, y0, x1, y1 in image pixels, as ``predict``'s
``box_xyxy``), ``scores`` FP32 [K], ``labels`` INT32 [K] (the dataset's category ids), ``class_names``
BYTES [K], ``masks`` BYTES [K] (COCO compressed RLE ``counts`` strings, those of ``/v1/predict``; their
size is the image's, in the response parameters ``image_height`` / ``image_width``). Request parameters:
``score_threshold``, ``max_detections`` (as ``/v1/predict``'s query) and ``binary_data_output``.

The image runs the one path of ``/v1/predict`` (``pipeline.detect``: the same decoding, limits, queue,
sessions and metrics). Errors are ServeErrors: 400 for a bad request, tensor, datatype or image, 404 for
an unknown model or version, 503 when not ready or the queue is full.
"""

import base64
import binascii
import math
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from retinamask.serve import encode
from retinamask.serve.errors import ServeError
from retinamask.serve.pipeline import detect, require_ready, timed

INPUT = "image"
VERSION = "1"
OUTPUTS = {  # name -> (datatype, shape); -1: the number of detections
    "boxes": ("FP32", [-1, 4]),
    "scores": ("FP32", [-1]),
    "labels": ("INT32", [-1]),
    "class_names": ("BYTES", [-1]),
    "masks": ("BYTES", [-1]),
}
DATATYPES = {  # the protocol's datatypes -> bytes per element (BYTES: length-prefixed elements)
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BF16": 2,
    "BYTES": None,
}
EXTENSIONS = ["binary_tensor_data", "parameters"]
PARAMETERS = ("score_threshold", "max_detections", "binary_data_output")
IGNORED_PARAMETERS = ("priority", "timeout")  # Triton's scheduling hints: accepted, no effect here
MAX_DETECTIONS = 1000  # as /v1/predict's query allows


@dataclass
class Tensor:
    """One input as it arrived: ``raw`` bytes (the binary data extension, gRPC ``raw_input_contents``),
    ``json`` (REST ``data``) or ``items`` (gRPC ``contents.bytes_contents``)."""

    name: str
    datatype: str
    shape: list
    raw: bytes | None = None
    json: object = None
    items: list | None = None


@dataclass
class InferRequest:
    id: str
    parameters: dict
    inputs: list  # of Tensor
    outputs: list = field(default_factory=list)  # of (name, parameters dict); empty: all outputs


@dataclass
class Output:
    name: str
    datatype: str
    shape: list
    values: object  # a numpy array, or a list of bytes for BYTES
    binary: bool = False  # REST: send it with the binary data extension


@dataclass
class InferAnswer:
    model_name: str
    id: str
    outputs: list  # of Output
    parameters: dict


def bad(message):
    return ServeError(400, "bad_request", message)


def server_metadata():
    from retinamask import __version__

    return {"name": "retinamask", "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(model):
    platform = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}.get(model.backend, model.backend)
    return {
        "name": model.name,
        "versions": [VERSION],
        "platform": platform,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": name, "datatype": dt, "shape": list(shape)} for name, (dt, shape) in OUTPUTS.items()],
    }


def check_model(model, name, version=None):
    """404 unless ``name`` is the served model's and ``version`` (if any) is its one version."""
    if name != model.name:
        raise ServeError(404, "unknown_model", f"unknown model {name!r}: this server serves {model.name!r}")
    if version not in (None, "", VERSION):
        raise ServeError(404, "unknown_version", f"model {name!r} has no version {version!r} (only {VERSION!r})")


async def infer(state, request, deadline=None):
    """An InferRequest -> its InferAnswer, through the one predict path (``pipeline.detect``)."""
    model = state.model
    require_ready(state)
    if deadline is None:
        deadline = time.perf_counter() + state.settings.timeout_s
    score_threshold, max_detections, binary_default = options(request.parameters)
    wanted = requested_outputs(request.outputs, binary_default)
    data = image_of(request.inputs)
    timings = {}
    rgb, detections = await detect(state, data, timings, deadline)
    keep = encode.select(detections, score_threshold, max_detections)
    outputs = await timed(timings, "encode", output_tensors, model, detections, keep, wanted)
    state.metrics.observe_stages(timings)
    size = {"image_height": int(rgb.shape[0]), "image_width": int(rgb.shape[1])}
    return InferAnswer(model.name, request.id, outputs, size)


def options(parameters):
    """The request parameters -> (score_threshold, max_detections, binary_data_output); 400 for others."""
    unknown = sorted(set(parameters) - set(PARAMETERS) - set(IGNORED_PARAMETERS))
    if unknown:
        raise bad(
            f"unknown parameter(s) {', '.join(map(repr, unknown))}: this model takes score_threshold (0..1), "
            f"max_detections (1..{MAX_DETECTIONS}) and binary_data_output"
        )
    threshold = parameters.get("score_threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise bad(f"parameter score_threshold must be a number in [0, 1], got {threshold!r}")
    count = parameters.get("max_detections", 100)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_DETECTIONS:
        raise bad(f"parameter max_detections must be an integer in [1, {MAX_DETECTIONS}], got {count!r}")
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise bad(f"parameter binary_data_output must be true or false, got {binary!r}")
    return float(threshold), count, binary


def requested_outputs(outputs, binary_default):
    """[(name, binary)] of the outputs to answer: the named ones in their order, else all five."""
    if not outputs:
        return [(name, binary_default) for name in OUTPUTS]
    wanted, seen = [], set()
    for name, parameters in outputs:
        if name not in OUTPUTS:
            raise bad(f"unknown output {name!r}: the outputs are {', '.join(OUTPUTS)}")
        if name in seen:
            raise bad(f"output {name!r} is requested twice")
        seen.add(name)
        extra = sorted(set(parameters) - {"binary_data"})
        if extra:
            raise bad(f"output {name!r}: unsupported parameter(s) {', '.join(extra)} (only binary_data)")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise bad(f"output {name!r}: binary_data must be true or false, got {binary!r}")
        wanted.append((name, binary))
    return wanted


def image_of(inputs):
    """The encoded image file the request carries: one BYTES input ``image`` of shape [1] or [1, 1]."""
    if len(inputs) != 1:
        raise bad(
            f"this model takes one input, {INPUT!r} (BYTES, shape [1]: the encoded image file); "
            f"the request has {len(inputs)}"
        )
    tensor = inputs[0]
    if tensor.name != INPUT:
        raise bad(f"unknown input {tensor.name!r}: this model takes one input, {INPUT!r} (BYTES, shape [1])")
    if tensor.datatype not in DATATYPES:
        raise bad(f"input {INPUT!r}: unknown datatype {tensor.datatype!r} (the protocol's: {', '.join(DATATYPES)})")
    if tensor.datatype != "BYTES":
        raise bad(f"input {INPUT!r} must be BYTES (the encoded image file), not {tensor.datatype}")
    count = element_count(tensor.shape, INPUT)
    if count > 1:
        raise bad(
            f"input {INPUT!r} has shape {tensor.shape}: one image per request, shape [1] or [1, 1] "
            "(send images as concurrent requests: the server batches them, --max-batch)"
        )
    if tensor.shape not in ([1], [1, 1]):
        raise bad(f"input {INPUT!r} has shape {tensor.shape}: one image is shape [1] or [1, 1]")
    elements = _elements(tensor)
    if len(elements) != count:
        raise bad(f"input {INPUT!r} has shape {tensor.shape} (1 element) but its data holds {len(elements)}")
    return elements[0]


def element_count(shape, name):
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise bad(f"input {name!r}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise bad(f"input {name!r}: shape {shape} has a negative dimension")
    return math.prod(shape)


def _elements(tensor):
    if tensor.raw is not None:
        return deserialize_bytes(tensor.raw, tensor.name)
    if tensor.items is not None:
        return list(tensor.items)
    if tensor.json is None:
        raise bad(f"input {tensor.name!r} carries no data")
    values = _flatten(tensor.json)
    try:
        return [base64.b64decode(v, validate=True) for v in values]
    except (binascii.Error, ValueError, TypeError):
        raise bad(
            f"input {tensor.name!r}: JSON BYTES elements must be strings holding the base64 of the image file "
            "(or send the file raw with the binary data extension, as tritonclient does)"
        ) from None


def _flatten(data):
    if isinstance(data, list):
        return [v for item in data for v in _flatten(item)]
    return [data]


def deserialize_bytes(blob, name):
    """BYTES elements on the wire (each a 4-byte little-endian length, then its bytes) -> list of bytes."""
    elements, offset, size = [], 0, len(blob)
    view = memoryview(blob)
    while offset < size:
        if offset + 4 > size:
            raise bad(f"input {name!r}: {size - offset} byte(s) left where a 4-byte BYTES element length belongs")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + length > size:
            raise bad(
                f"input {name!r}: a BYTES element says {length} bytes but only {size - offset} remain in the tensor"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def serialize_bytes(elements):
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def output_tensors(model, detections, keep, wanted):
    """The requested outputs of ``detections[keep]`` (RLE masks only when ``masks`` is asked for)."""
    chosen = detections.take(keep)
    count = len(chosen)
    made = {}
    for name, binary in wanted:
        if name == "boxes":
            values = np.ascontiguousarray(chosen.boxes, dtype="<f4").reshape(count, 4)
        elif name == "scores":
            values = np.ascontiguousarray(chosen.scores, dtype="<f4")
        elif name == "labels":
            ids = np.asarray(model.category_ids, dtype="<i4")
            values = ids[np.asarray(chosen.labels, np.int64) - 1] if count else np.zeros(0, "<i4")
        elif name == "class_names":
            values = [n.encode("utf-8") for n in chosen.class_names or ()]
        else:
            rles = encode.rle_masks(chosen, model.mask_threshold, model.mask_paste)
            values = [r["counts"].encode("ascii") for r in rles]
        datatype, shape = OUTPUTS[name]
        made[name] = Output(name, datatype, [count, *shape[1:]], values, binary)
    return [made[name] for name, _ in wanted]


def raw_bytes(output):
    """An output's bytes on the wire (the binary data extension, gRPC ``raw_output_contents``)."""
    if output.datatype == "BYTES":
        return serialize_bytes(output.values)
    return output.values.tobytes()


def json_data(output):
    """An output's JSON ``data``: row-major, floats exact (float32 values as Python floats)."""
    if output.datatype == "BYTES":
        return [v.decode("utf-8") for v in output.values]
    return output.values.reshape(-1).tolist()
