"""``retinamask serve`` as a user starts it (a process, nothing named, loopback), stopped by SIGTERM with
requests in flight; ``predict --url`` and ``bench --url`` against it; a 2000-request soak (slow)."""

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serve_support import call, demo_images, json_of, post_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return demo_images(tmp_path_factory.mktemp("serve_process_images"), count=4)[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``python -m retinamask serve ARGS`` on a free loopback port; waits until ready."""

    def __init__(self, tmp_path, *args):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve_{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("RETINAMASK_API_KEY", None)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "retinamask",
                    "serve",
                    "--port",
                    str(self.port),
                    "--backend",
                    "onnxruntime",
                    *args,
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 180
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if call(f"{self.base}/v1/health/ready", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, "not ready in 180 s:\n" + self.log.read_text()
            time.sleep(0.2)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = ServeProcess(tmp_path_factory.mktemp("serve_process"), "--max-batch", "2")
    yield server
    server.stop()


def test_with_nothing_named_it_serves_the_shipped_model_on_loopback(served, images):
    log = served.log.read_text()
    assert "no model named: serving the shipped model retinamask_shapes_small.onnx" in log
    assert f"serving on http://127.0.0.1:{served.port}" in log
    status, _, body = post_image(served.base, images[0])
    answer = json_of(body)
    assert status == 200 and answer["detections"] and answer["model"] == "retinamask_shapes_small"
    assert all(set(d["segmentation"]) == {"size", "counts"} for d in answer["detections"])
    # bound to the loopback address only: not reachable on the machine's other addresses
    for address in {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}:
        with pytest.raises(OSError), socket.create_connection((address, served.port), timeout=2):
            pass


def test_predict_url_writes_what_local_predict_writes(served, images, tmp_path):
    from retinamask.cli import main
    from retinamask.config.shipped import SHIPPED_ONNX

    inputs = [str(p) for p in images[:3]]
    common = ["--score-threshold", "0.3"]
    assert (
        main(["predict", "--url", served.base, "--input", *inputs, "--output", str(tmp_path / "remote"), *common]) == 0
    )
    assert (
        main(
            [
                "predict",
                "--model",
                str(SHIPPED_ONNX),
                "--backend",
                "onnxruntime",
                "--input",
                *inputs,
                "--output",
                str(tmp_path / "local"),
                *common,
            ]
        )
        == 0
    )
    for path in images[:3]:
        for suffix in (".json", ".png"):
            remote = (tmp_path / "remote" / (path.stem + suffix)).read_bytes()
            assert remote == (tmp_path / "local" / (path.stem + suffix)).read_bytes(), path.stem + suffix


def test_bench_url_reports_latency_throughput_errors_and_rss(served, images, capsys):
    from retinamask.cli import main

    assert (
        main(["bench", "--url", served.base, "--concurrency", "1,2", "--requests", "6", "--input", *map(str, images)])
        == 0
    )
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\d+) \| 6 \| 6 \| none \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
    assert [r[0] for r in rows] == ["1", "2"], out
    assert all(float(p50) <= float(p95) <= float(p99) and float(rate) > 0 for _, p50, p95, p99, rate in rows)
    assert "infer" in out and "queue" in out and re.search(r"server RSS: [\d.]+ MiB before, [\d.]+ MiB after", out)


def test_sigterm_answers_every_accepted_request_then_exits_0(tmp_path, images):
    server = ServeProcess(tmp_path, "--max-queue", "32")
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post_image, server.base, images[i % len(images)]) for i in range(8)]
        time.sleep(0.3)  # the requests are accepted (and queued behind one session)
        server.process.send_signal(signal.SIGTERM)
        statuses = [f.result(timeout=120)[0] for f in futures]
    assert statuses == [200] * 8
    assert server.process.wait(60) == 0
    log = server.log.read_text()
    assert "Traceback" not in log


@pytest.mark.slow
def test_soak_2000_requests_keeps_memory_flat(tmp_path, images):
    """2000 requests at concurrency 4 after a 2000-request warm-up: no error, and RSS flat -- sampled after each
    250, the median of the last three within 5 % of the first three's. Measured over 6000 requests on a 2-core
    machine: RSS climbs for the first ~1750 (the allocator and the runtime's arena taking their working set),
    then wanders 359-385 MiB with no trend, one sample to the next; a single before/after pair after a
    200-request warm-up failed once at +5.5 %. A leak keeps climbing."""
    from retinamask.serve.client import Client, run_load, server_rss_bytes

    server = ServeProcess(tmp_path, "--max-queue", "64")
    samples, ok, errors, rates = [], 0, {}, []
    try:
        client = Client(server.base)
        warm = run_load(client, images, 4, 2000).summary()
        for _ in range(8):
            chunk = run_load(client, images, 4, 250).summary()
            ok, errors = ok + chunk["ok"], {**errors, **chunk["errors"]}
            rates.append(chunk["images_per_s"])
            samples.append(server_rss_bytes(client))
    finally:
        assert server.stop() == 0
    assert warm["ok"] == 2000 and ok == 2000 and not errors, errors
    first, last = statistics.median(samples[:3]), statistics.median(samples[-3:])
    mib = " ".join(f"{s / 2**20:.1f}" for s in samples)
    print(f"soak: RSS MiB after each 250: {mib}; {statistics.median(rates):.1f} images/s")
    assert last <= 1.05 * first, (first, last, samples)
