"""Where the session run loses time inside the server at concurrency 1 (issue 26's open question):
``python -m benchmarks.serve_latency [--repeats N]``.

``benchmarks.serve`` found the server's ``infer`` stage ~7 ms (16 %) slower than the same session's run in
its bare loop. This runs, in one process, one image at a time, four ways in rotating order (so that a drift
in the machine's load touches each alike), and gives the median session run of each against the bare one:

- bare: prepare, then run, in this thread (``benchmarks.serve``'s bare path);
- other thread: prepare on another thread, run in this one (the server makes the tensor on an anyio thread);
- batcher: prepare here, run through the app's queue on its session thread (no HTTP);
- app: ``/v1/predict`` on the app served by uvicorn in a thread: its ``infer`` stage.

All four run the app's one ONNX Runtime fp32 session (1 session x 2 threads): with a second session in the
process the ways that came right after a run of the other session were 1.2-1.5x slower (its pool threads
spinning after its run, most likely). The step from one way to the next names the part of the
server that costs the time. Needs a quiet machine: the load check says whether it was.
"""

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.cpu_load import LoadMonitor
from benchmarks.machine import environment
from benchmarks.serve import images_for

WAYS = ("bare", "other thread", "batcher", "app")


def _ways(predictor, batcher, pool, client):
    """name -> f(image bytes) -> seconds of the session run."""
    from retinamask.formats.images import decode_image_bytes

    def prepare(data):
        return predictor.prepare(decode_image_bytes(data))

    def timed_run(prepared):
        started = time.perf_counter()
        predictor.run([prepared])
        return time.perf_counter() - started

    def on_batcher(data):
        prepared = prepare(data)
        item = batcher.submit(prepared, prepared.canvas_hw)
        item.future.result()
        return item.finished - item.started

    def on_app(data):
        status, body, _ = client.predict_bytes(data, "image/png", "masks=rle")
        assert status == 200, body
        return json.loads(body)["timings_ms"]["infer"] / 1000

    return {
        "bare": lambda data: timed_run(prepare(data)),
        "other thread": lambda data: timed_run(pool.submit(prepare, data).result()),
        "batcher": on_batcher,
        "app": on_app,
    }


@contextlib.contextmanager
def _serving(app):
    """uvicorn on a free loopback port in a thread of this process; the base URL once the app is ready."""
    import uvicorn

    from retinamask.serve.client import Client

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not (server.started and server.servers):
        time.sleep(0.05)
    base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    while Client(base, retries=0)._request("/v1/health/ready")[0] != 200:
        time.sleep(0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def run(args):
    from retinamask.serve.app import create_app
    from retinamask.serve.client import Client
    from retinamask.serve.settings import ServeSettings

    monitor = LoadMonitor()
    report = {"environment": environment(threads=None), "model": str(args.model)}
    times = {name: [] for name in WAYS}
    with tempfile.TemporaryDirectory() as scratch:
        payloads = [p.read_bytes() for p in images_for(Path(scratch) / "data", args.images)]
        app = create_app(ServeSettings(model=args.model, backend="onnxruntime", sessions=1, threads=2))
        with _serving(app) as base, ThreadPoolExecutor(1) as pool:
            state = app.state.server  # every way runs the app's one session (two would spin against each other)
            ways = _ways(state.model.predictors[0], state.batcher, pool, Client(base, retries=0))
            for data in payloads:  # every canvas once, every way
                for way in ways.values():
                    way(data)
            turn = 0
            with monitor.timed("four ways"):
                for _ in range(args.repeats):
                    for data in payloads:
                        for name in WAYS[turn % 4 :] + WAYS[: turn % 4]:
                            times[name].append(ways[name](data) * 1000)
                        turn += 1
    report["run_ms"] = {name: statistics.median(values) for name, values in times.items()}
    report["count"] = len(times["bare"])
    report["verdict"] = monitor.verdict()
    return report


def markdown(report):
    env, run_ms = report["environment"], report["run_ms"]
    bare = run_ms["bare"]
    cells = ", ".join(f"{name} {ms:.1f} ms ({ms / bare:.2f}x)" for name, ms in run_ms.items())
    return (
        f"Session run at concurrency 1, median of {report['count']} per way — {env['date']}, {env['cpu']} "
        f"({env['cpu_class']}): {cells}. {report['verdict']}"
    )


def main(argv=None):
    from retinamask.config.shipped import SHIPPED_ONNX

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_ONNX, help="exported model (default: the shipped one)")
    parser.add_argument("--images", type=int, default=16, help="synthetic images (default 16)")
    parser.add_argument("--repeats", type=int, default=4, help="passes over the images (default 4)")
    args = parser.parse_args(argv)
    print(markdown(run(args)))


if __name__ == "__main__":
    main()
