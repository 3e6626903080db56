"""A client of the HTTP service (stdlib only): one image -> the server's answer, and a bounded load
generator for ``retinamask bench --url``. Both send traffic only to the URL given, with bounded counts."""

import json
import mimetypes
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from retinamask.core.errors import InputError, RetinaMaskError


class ServerError(RetinaMaskError):
    """The server answered with an error (its status and one-line message)."""

    def __init__(self, status, message, path=None):
        super().__init__(f"the server answered {status}: {message}", path)
        self.status = status


@dataclass
class Client:
    """``url``: the server's base URL (http://127.0.0.1:8000). ``api_key``: sent as a Bearer token."""

    url: str
    api_key: str | None = None
    timeout_s: float = 60.0

    def _request(self, path, data=None, content_type=None, query=""):
        headers = {}
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
        except (urllib.error.URLError, OSError) as e:
            raise RetinaMaskError(f"cannot reach the server: {getattr(e, 'reason', e)}", self.url) from None

    def get_json(self, path):
        status, body, _ = self._request(path)
        if status != 200:
            raise ServerError(status, _message(body), self.url + path)
        return json.loads(body)

    def predict_bytes(self, data, content_type="application/octet-stream", query=""):
        """(status, body bytes, headers) of POST /v1/predict."""
        return self._request("/v1/predict", data=data, content_type=content_type, query=query)

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


def _message(body):
    try:
        return json.loads(body)["error"]["message"]
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
        }


def run_load(client, images, concurrency, requests, query="masks=rle"):
    """Send ``requests`` POST /v1/predict (images in turn) from ``concurrency`` threads; a LoadResult.
    Bounded: exactly ``requests`` requests, each with the client's timeout."""
    payloads = [(Path(p).read_bytes(), mimetypes.guess_type(str(p))[0] or "application/octet-stream") for p in images]
    result = LoadResult(concurrency, requests, 0.0)
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker():
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            data, content_type = payloads[index % len(payloads)]
            started = time.perf_counter()
            try:
                status, body, _ = client.predict_bytes(data, content_type, query)
            except RetinaMaskError:
                status, body = "connection error", b""
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    result.latencies_ms.append(elapsed)
                    for stage, ms in json.loads(body).get("timings_ms", {}).items():
                        result.stages_ms.setdefault(stage, []).append(ms)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    result.seconds = time.perf_counter() - started
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


def format_load_report(url, levels, rss_before=None, rss_after=None):
    """The Markdown table ``bench --url`` prints (one row per concurrency level)."""
    lines = [
        f"Server {url}: POST /v1/predict, masks as RLE",
        "",
        "| concurrency | requests | ok | errors | p50 ms | p95 ms | p99 ms | images/s | server stages (median ms) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in levels:
        errors = ", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "none"
        stages = ", ".join(f"{k} {v:.1f}" for k, v in row["server_stages_ms"].items())
        lines.append(
            f"| {row['concurrency']} | {row['requests']} | {row['ok']} | {errors} | {row['p50_ms']:.1f} | "
            f"{row['p95_ms']:.1f} | {row['p99_ms']:.1f} | {row['images_per_s']:.2f} | {stages} |"
        )
    if rss_before is not None and rss_after is not None:
        lines += ["", f"server RSS: {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB after"]
    return "\n".join(lines)
