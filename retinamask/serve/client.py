"""A client of the HTTP service (stdlib only): one image -> the server's answer, and a bounded load
generator for ``retinamask bench --url``. Both send traffic only to the URL given, with bounded counts.

Predicting is idempotent, so the client retries it (and GETs) when a proxy or the server answers
500/502/503/504 or the connection is reset (a Ray Serve replica that died with the request, a full queue):
at most ``retries`` times, with exponential backoff capped at ``max_backoff_s`` (a Retry-After is
honoured within that cap), each retry logged as one warning line."""

import http.client
import json
import logging
import mimetypes
import statistics
import struct
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from retinamask.core.errors import InputError, RetinaMaskError

log = logging.getLogger(__name__)
RETRY_STATUSES = (500, 502, 503, 504)


class ConnectionLost(RetinaMaskError):
    """The connection was reset or closed before a whole answer came (retried: the request is idempotent)."""


class ServerError(RetinaMaskError):
    """The server answered with an error (its status and one-line message)."""

    def __init__(self, status, message, path=None):
        super().__init__(f"the server answered {status}: {message}", path)
        self.status = status


@dataclass
class Client:
    """``url``: the server's base URL (http://127.0.0.1:8000). ``api_key``: sent as a Bearer token.
    ``retries``: how many times an idempotent request is retried (0: never); ``backoff_s`` the first wait,
    doubled each time up to ``max_backoff_s``. ``retried`` counts the retries made."""

    url: str
    api_key: str | None = None
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 4.0
    retried: int = field(default=0, init=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def _request(self, path, data=None, content_type=None, query="", headers=None):
        """(status, body, headers) of one request; ConnectionLost for a reset, RetinaMaskError when unreachable."""
        headers = dict(headers or {})
        if content_type:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.url.rstrip("/") + path + (f"?{query}" if query else "")
        request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers or {})
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ConnectionError | http.client.HTTPException) and not isinstance(
                reason, ConnectionRefusedError
            ):
                raise ConnectionLost(f"the connection was lost: {type(reason).__name__}: {reason}", self.url) from None
            raise RetinaMaskError(f"cannot reach the server: {reason}", self.url) from None

    def _retrying(self, path, *args, **kwargs):
        """``_request`` again on 500/502/503/504 or a lost connection, with bounded backoff (idempotent only)."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                status, body, headers = self._request(path, *args, **kwargs)
            except ConnectionLost as e:
                if last:
                    raise
                cause, wait = e.cause, self._backoff(attempt)
            else:
                if status not in RETRY_STATUSES or last:
                    return status, body, headers
                cause, wait = f"answered {status}", self._backoff(attempt, headers.get("Retry-After"))
            with self._lock:
                self.retried += 1
            log.warning(
                "%s%s: %s; retry %d of %d in %.2f s", self.url.rstrip("/"), path, cause, attempt + 1, self.retries, wait
            )
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _backoff(self, attempt, retry_after=None):
        wait = self.backoff_s * 2**attempt
        if retry_after is not None and retry_after.strip().isdigit():  # seconds (an HTTP date is ignored)
            wait = max(wait, float(retry_after))
        return min(wait, self.max_backoff_s)

    def get_json(self, path):
        status, body, _ = self._retrying(path)
        if status != 200:
            raise ServerError(status, _message(body), self.url + path)
        return json.loads(body)

    def predict_bytes(self, data, content_type="application/octet-stream", query=""):
        """(status, body bytes, headers) of POST /v1/predict (retried: see the module)."""
        return self._retrying("/v1/predict", data=data, content_type=content_type, query=query)

    def infer_bytes(self, data, model):
        """(status, body bytes, headers) of the Open Inference Protocol's POST /v2/models/MODEL/infer with the
        image file as tritonclient sends it (binary data extension, every output binary; retried)."""
        element = _bytes_element(data)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": len(element)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        headers = {"Inference-Header-Content-Length": str(len(header))}
        return self._retrying(f"/v2/models/{model}/infer", data=header + element, headers=headers)

    def predict_file(self, path, query=""):
        """The JSON answer for the image file ``path``; ServerError for an error answer."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"cannot read: {e.strerror or e}", path) from None
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        status, body, _ = self.predict_bytes(data, content_type, query)
        if status != 200:
            raise ServerError(status, _message(body), path)
        return json.loads(body)


def _bytes_element(data):
    """One BYTES tensor element on the wire (the protocol's: 4-byte little-endian length, then the bytes)."""
    return struct.pack("<I", len(data)) + data


def _message(body):
    try:
        error = json.loads(body)["error"]
        return error if isinstance(error, str) else error["message"]  # /v2's, or ours
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list = field(default_factory=list)  # of 200 answers
    statuses: dict = field(default_factory=dict)  # status (or "connection error") -> count
    stages_ms: dict = field(default_factory=dict)  # server stage -> list of ms
    retried: int = 0  # retries the client made (500/502/503/504, lost connections)

    def summary(self):
        lat = sorted(self.latencies_ms)

        def pct(p):
            return lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))] if lat else float("nan")

        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": self.statuses.get(200, 0),
            "errors": {str(k): v for k, v in sorted(self.statuses.items(), key=str) if k != 200},
            "p50_ms": pct(50),
            "p95_ms": pct(95),
            "p99_ms": pct(99),
            "images_per_s": self.statuses.get(200, 0) / self.seconds if self.seconds else 0.0,
            "server_stages_ms": {k: statistics.median(v) for k, v in self.stages_ms.items() if v},
            "retried": self.retried,
        }


PROTOCOLS = {  # bench --url --protocol: what each drives
    "v1": "POST /v1/predict, masks as RLE",
    "v2": "Open Inference Protocol over HTTP: POST /v2/models/MODEL/infer, binary data extension",
    "grpc": "Open Inference Protocol over gRPC: ModelInfer, raw contents",
}


def sender(client, protocol="v1", query="masks=rle", model=None, grpc_address=None):
    """``send(data, content_type) -> (status, server stages in ms or None)`` of one request in ``protocol``
    (PROTOCOLS); ``model``: the served model's name (v2, grpc); ``grpc_address``: HOST:PORT (grpc)."""
    if protocol == "v1":

        def send(data, content_type):
            status, body, _ = client.predict_bytes(data, content_type, query)
            return status, json.loads(body).get("timings_ms") if status == 200 else None

        return send
    if protocol == "v2":
        return lambda data, content_type: (client.infer_bytes(data, model)[0], None)
    if protocol == "grpc":
        return _grpc_sender(client, model, grpc_address)
    raise ValueError(f"unknown protocol {protocol!r} (one of {', '.join(PROTOCOLS)})")


def _grpc_sender(client, model, address):
    """ModelInfer over one channel (thread-safe) with tritonclient's generated stubs (the [grpc] extra)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address, options=options))
    metadata = [("authorization", f"Bearer {client.api_key}")] if client.api_key else None

    def send(data, content_type):
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name="image", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(_bytes_element(data))
        try:
            stub.ModelInfer(request, timeout=client.timeout_s, metadata=metadata)
        except grpc.RpcError as e:
            return e.code().name, None
        return 200, None

    return send


def run_load(client, images, concurrency, requests, query="masks=rle", send=None):
    """Send ``requests`` requests (images in turn) from ``concurrency`` threads; a LoadResult. ``send``: a
    :func:`sender` (default: POST /v1/predict with ``query``). Bounded: exactly ``requests`` requests (and
    the client's bounded retries), each with the client's timeout."""
    send = send or sender(client, "v1", query)
    payloads = [(Path(p).read_bytes(), mimetypes.guess_type(str(p))[0] or "application/octet-stream") for p in images]
    result = LoadResult(concurrency, requests, 0.0)
    lock = threading.Lock()
    counter = iter(range(requests))
    retried = client.retried

    def worker():
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            data, content_type = payloads[index % len(payloads)]
            started = time.perf_counter()
            try:
                status, stages = send(data, content_type)
            except RetinaMaskError:
                status, stages = "connection error", None
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    result.latencies_ms.append(elapsed)
                    for stage, ms in (stages or {}).items():
                        result.stages_ms.setdefault(stage, []).append(ms)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    result.seconds = time.perf_counter() - started
    result.retried = client.retried - retried
    return result


def server_rss_bytes(client):
    """The server process's resident memory from /metrics (process_resident_memory_bytes), or None."""
    status, body, _ = client._request("/metrics")
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    return None


class RemotePredictor:
    """``predict``'s predictor interface (rgb -> Detections) over a server: ``retinamask predict --url``
    writes the same ``{name}.json`` / ``.png`` as a local run. The image travels as PNG (lossless: the
    server decodes exactly the pixels this process decoded); detections come back exactly (float32 boxes
    and scores survive JSON; masks are the server's RLE)."""

    def __init__(self, url, api_key=None, timeout_s=120.0):
        self.client = Client(url, api_key, timeout_s)
        described = self.client.get_json("/v1/models")["models"][0]
        self.category_ids = [int(i) for i in described["category_ids"]]
        self.name = described["name"]

    def __call__(self, rgb):
        import io

        import numpy as np
        from PIL import Image
        from pycocotools import mask as mask_api

        from retinamask.core.detections import Detections

        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
        status, body, _ = self.client.predict_bytes(buffer.getvalue(), "image/png", "masks=rle")
        if status != 200:
            raise ServerError(status, _message(body), self.client.url)
        found = json.loads(body)["detections"]
        xywh = np.asarray([d["bbox"] for d in found], np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1.0], axis=1).astype(np.float32)
        rles = [{"size": d["segmentation"]["size"], "counts": d["segmentation"]["counts"].encode()} for d in found]
        masks = np.ascontiguousarray(mask_api.decode(rles).transpose(2, 0, 1)) if rles else None
        return Detections(
            boxes=boxes,
            scores=np.asarray([d["score"] for d in found], np.float32),
            labels=np.asarray([self.category_ids.index(d["category_id"]) + 1 for d in found], np.int64),
            class_names=[d["category_name"] for d in found],
            masks=masks if masks is not None else np.zeros((0, *rgb.shape[:2]), np.uint8),
            image_hw=tuple(rgb.shape[:2]),
        )


def format_load_report(url, levels, rss_before=None, rss_after=None, protocol="v1"):
    """The Markdown table ``bench --url`` prints (one row per concurrency level) for one protocol."""
    lines = [
        f"Server {url}: {PROTOCOLS[protocol]}",
        "",
        "| concurrency | requests | ok | errors | p50 ms | p95 ms | p99 ms | images/s | server stages (median ms) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in levels:
        errors = ", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "none"
        stages = ", ".join(f"{k} {v:.1f}" for k, v in row["server_stages_ms"].items()) or "(in /metrics)"
        lines.append(
            f"| {row['concurrency']} | {row['requests']} | {row['ok']} | {errors} | {row['p50_ms']:.1f} | "
            f"{row['p95_ms']:.1f} | {row['p99_ms']:.1f} | {row['images_per_s']:.2f} | {stages} |"
        )
    retried = sum(row.get("retried", 0) for row in levels)
    if retried:
        lines += ["", f"client retries: {retried} (answers 500/502/503/504 or lost connections, retried with backoff)"]
    if rss_before is not None and rss_after is not None:
        lines += ["", f"server RSS: {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB after"]
    return "\n".join(lines)
