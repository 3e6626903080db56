"""Helpers of the serve tests: the demo images, a real uvicorn server in a thread (loopback, port 0),
plain HTTP calls, and a model wrapper that slows or breaks the runtime on demand."""

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi", reason="the serve extra is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed")


def demo_images(root, count=6):
    """``count`` synthetic shapes images (the demo's generator, seed 7) and their annotation file."""
    from retinamask.data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(root, num_train=0, num_val=count, seed=7)
    return sorted(Path(data["val_images"]).glob("*.png")), Path(data["val_annotations"])


@contextlib.contextmanager
def running(app, wait_ready=True):
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL once it is
    ready (its warm-up done), or at once without ``wait_ready``."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not (server.started and server.servers):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    while wait_ready and call(f"{base}/v1/health/ready")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server never became ready")
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def call(url, data=None, headers=None, method=None, timeout=120):
    """(status, headers, body bytes) of one request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post_image(base, path_or_bytes, query="", headers=None, content_type="image/png"):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return call(f"{base}/v1/predict{query}", data, {"Content-Type": content_type, **(headers or {})}, "POST")


def json_of(body):
    return json.loads(body)


class SlowModel:
    """A ServedModel whose runtime takes ``delay`` more seconds per run, or raises, while told to."""

    def __init__(self, model):
        self._model = model
        self.delay = 0.0
        self.fail = False

    def __getattr__(self, name):
        return getattr(self._model, name)

    def runners(self):
        def wrap(run):
            def slow_run(prepared):
                time.sleep(self.delay)
                if self.fail:
                    raise RuntimeError("simulated runtime failure (test)")
                return run(prepared)

            return slow_run

        return [wrap(run) for run in self._model.runners()]

    def warm_up(self):
        return self._model.warm_up()


def raw_post(server, path, head, chunks=()):
    """POST ``path``: send a request head (and then ``chunks``, stopping as soon as the server answers); the reply bytes
    and how many body bytes were sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1])), timeout=10) as conn:
        request_line = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n".encode()
        conn.sendall(request_line + head + b"\r\n")
        try:
            for chunk in chunks:
                conn.settimeout(0.01)
                try:
                    if conn.recv(1, socket.MSG_PEEK):
                        break
                except (TimeoutError, BlockingIOError):
                    pass
                conn.settimeout(10)
                conn.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        conn.settimeout(10)
        reply = conn.recv(65536)
        head, _, body = reply.partition(b"\r\n\r\n")
        length = int(
            next(
                (
                    v
                    for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:])
                    if k.strip().lower() == b"content-length"
                ),
                0,
            )
        )
        while len(body) < length:
            more = conn.recv(65536)
            if not more:
                break
            body += more
        return head + b"\r\n\r\n" + body, sent
