"""The same app as a Ray Serve deployment on a local Ray instance: two replicas serve /v1 and /v2; one
replica's process is killed with requests in flight, which the retrying client still gets answered; Ray
replaces it and requests after that succeed. Skipped only where Ray is missing."""

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_support import call, demo_images, json_of, post_image

ray = pytest.importorskip("ray", reason="Ray is not installed (the [ray] extra)")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the [ray] extra)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replica_pids():
    """PIDs of the live replica processes (Ray titles them ``ray::ServeReplica:APP:DEPLOYMENT``)."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                title = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                state = (proc / "stat").read_text().split(")")[-1].split()[0]
            except OSError:
                continue
            if title.startswith(b"ray::ServeReplica:retinamask") and state != "Z":
                pids.append(int(proc.name))
    return sorted(pids)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from retinamask.serve.ray_serve import APP_NAME, build_application
    from retinamask.serve.settings import ServeSettings

    port = _free_port()
    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
        settings = ServeSettings(backend="onnxruntime", threads=1, timeout_s=30, port=port)
        serve.run(build_application(settings, replicas=2), name=APP_NAME, route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while call(f"{base}/v1/health/ready", timeout=10)[0] != 200:
            assert time.monotonic() < deadline, "the deployment never became ready"
            time.sleep(0.5)
        yield base
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_and_a_killed_one_is_replaced(deployment, tmp_path, caplog):
    """Two replicas answer /v1/predict and the Open Inference Protocol's /v2 routes (tritonclient.http);
    a replica killed with requests in flight loses no image of the retrying client (``predict --url``'s):
    Ray's proxy answers those a 500 (or drops them), the client retries, and Ray replaces the replica."""
    from retinamask.serve.client import Client

    images = demo_images(tmp_path / "data", count=2)[0]
    pids = _replica_pids()
    assert len(pids) == 2, pids
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: post_image(deployment, images[i % 2]), range(8)))
    assert [a[0] for a in answers] == [200] * 8
    assert all(json_of(a[2])["detections"] for a in answers)
    _v2_answers_as_v1(deployment, images[0], json_of(answers[0][2]))

    # kill one replica's process while requests are in flight: the retrying client loses none of them
    client = Client(deployment, timeout_s=120, backoff_s=0.5, max_backoff_s=4.0)
    with ThreadPoolExecutor(4) as pool, caplog.at_level("WARNING", logger="retinamask.serve.client"):
        in_flight = [pool.submit(client.predict_file, images[i % 2]) for i in range(8)]
        time.sleep(0.2)
        os.kill(pids[0], signal.SIGKILL)
        answers = [future.result(timeout=300) for future in in_flight]
    assert all(answer["detections"] for answer in answers)
    retries = [r.getMessage() for r in caplog.records]
    print(f"in-flight requests when the replica died: 8, retried: {client.retried} {retries}")
    assert client.retried == len(retries)

    deadline = time.monotonic() + 180
    while True:  # Ray starts a new replica
        now = _replica_pids()
        if len(now) == 2 and pids[0] not in now:
            break
        assert time.monotonic() < deadline, f"no replacement replica: {now}"
        time.sleep(1)
    after = [post_image(deployment, images[i % 2])[0] for i in range(6)]
    assert after == [200] * 6


def _v2_answers_as_v1(base, image, v1):
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    import numpy as np

    client = httpclient.InferenceServerClient(base.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready("retinamask_shapes_small")
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image.read_bytes()], dtype=object))
    result = client.infer("retinamask_shapes_small", [tensor])
    assert result.as_numpy("scores").tolist() == [d["score"] for d in v1["detections"]]
    assert [m.decode() for m in result.as_numpy("masks")] == [d["segmentation"]["counts"] for d in v1["detections"]]
    client.close()


def test_the_serve_config_names_the_same_deployment(tmp_path):
    import yaml

    from retinamask.cli import main

    out = tmp_path / "serve.yaml"
    assert main(["serve", "--ray-config", str(out), "--autoscale", "1:4", "--max-queue", "8", "--timeout-s", "20"]) == 0
    config = yaml.safe_load(out.read_text())
    app = config["applications"][0]
    deployment = app["deployments"][0]
    assert app["import_path"] == "retinamask.serve.ray_serve:app_from_args"
    assert (
        deployment["autoscaling_config"]["min_replicas"] == 1 and deployment["autoscaling_config"]["max_replicas"] == 4
    )
    assert deployment["max_queued_requests"] == 8 and config["http_options"]["request_timeout_s"] == 20
    assert config["http_options"]["host"] == "127.0.0.1"
