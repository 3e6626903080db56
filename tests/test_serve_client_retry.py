"""``retinamask.serve.client.Client`` (``predict --url``, ``bench --url``) retries an idempotent predict
on 500/502/503/504 from a proxy and on a lost connection, with bounded backoff and one log line each; other
answers are returned at once. Against a scripted stand-in server (the Ray replica kill: test_serve_ray.py)."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from retinamask.serve.client import Client, ConnectionLost, ServerError, run_load

ANSWER = {"detections": [], "timings_ms": {"infer": 1.0}}


class Scripted:
    """A loopback HTTP server answering POSTs from a script: an int status, or "drop" (close the
    connection without an answer, as a proxy whose replica died); then 200 for ever."""

    def __init__(self, script):
        self.script, self.seen = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                step = outer.script.pop(0) if outer.script else 200
                outer.seen.append((self.path, step))
                if step == "drop":
                    self.close_connection = True
                    return
                body = json.dumps(ANSWER if step == 200 else {"error": {"code": "x", "message": f"scripted {step}"}})
                self.send_response(step)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if step == 503:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(script):
        servers.append(Scripted(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_5xx_and_dropped_connections_are_retried_with_a_log_line(scripted, tmp_path, caplog):
    server = scripted(["drop", 500, 502, 504])
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG fake")
    client = Client(server.url, backoff_s=0.01, max_backoff_s=0.05)
    with caplog.at_level(logging.WARNING, logger="retinamask.serve.client"):
        assert client.predict_file(image) == ANSWER
    assert [step for _, step in server.seen] == ["drop", 500, 502, 504, 200] and client.retried == 4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and "connection was lost" in lines[0] and "retry 1 of 4" in lines[0]
    assert "answered 500; retry 2 of 4" in lines[1] and "answered 504; retry 4 of 4" in lines[3]


def test_retries_are_bounded_and_retry_after_is_honoured_within_the_cap(scripted):
    server = scripted([503] * 10)
    client = Client(server.url, retries=2, backoff_s=0.01, max_backoff_s=0.2)
    started = time.monotonic()
    status = client.predict_bytes(b"x", "image/png")[0]
    elapsed = time.monotonic() - started
    assert status == 503 and len(server.seen) == 3 and client.retried == 2
    assert 0.4 <= elapsed < 2.0  # Retry-After: 1 capped at 0.2 s, twice
    server = scripted(["drop"] * 3)
    with pytest.raises(ConnectionLost, match="connection was lost"):
        Client(server.url, retries=2, backoff_s=0.01).predict_bytes(b"x", "image/png")


@pytest.mark.parametrize("status", [400, 401, 413, 415, 422])
def test_client_errors_are_not_retried(scripted, tmp_path, status):
    server = scripted([status])
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    client = Client(server.url, backoff_s=0.01)
    with pytest.raises(ServerError, match=f"answered {status}: scripted {status}"):
        client.predict_file(image)
    assert len(server.seen) == 1 and client.retried == 0


def test_no_retries_when_asked_and_the_load_report_counts_retries(scripted, tmp_path):
    server = scripted([503, 503])
    client = Client(server.url, retries=0)
    assert client.predict_bytes(b"x", "image/png")[0] == 503
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    result = run_load(Client(server.url, backoff_s=0.01, max_backoff_s=0.05), [image], 2, 6).summary()
    assert result["ok"] == 6 and not result["errors"] and result["retried"] == 1
