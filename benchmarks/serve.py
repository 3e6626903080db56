"""Serving, measured side by side in one run: ``python -m benchmarks.serve [--model M] [--backend B]``.

1. Bare: the same images through ``OnnxPredictor`` in this process (decode + prepare + run + finish), the
   reference of the latency figure.
2. Concurrency 1 on a ``retinamask serve`` process: p50 latency / bare p50 (goal <= 1.10).
3. Throughput at concurrency 4 for each session layout (1 session x all threads, N sessions x 1 thread,
   with and without batching) against ``retinamask infer`` on the same images and model (goal >= 0.9x).
4. JSON + RLE encoding of 100 detections (goal <= 10 ms).
5. Overload: concurrency 32 against ``--max-queue 8`` (goal: only 200 and 503).
6. Fair sharing with video jobs: ``/v1/predict`` p50 at concurrency 1 on serve's default layout, idle and
   while a long video job (``POST /v1/videos``) runs (goal: within 2x of idle). ``--video-only``: just this.

Servers run as subprocesses on loopback with bounded traffic; the load monitor marks a run disturbed by
other processes as unfit for the record.
"""

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cpu_load import LoadMonitor
from benchmarks.machine import environment
from benchmarks.tables import table_head, table_row

LAYOUTS = {  # name -> serve flags (2 cores)
    "1 session x 2 threads": ["--sessions", "1", "--threads", "2"],
    "2 sessions x 1 thread": ["--sessions", "2", "--threads", "1"],
    "1 session x 2 threads, batch 4": ["--sessions", "1", "--threads", "2", "--max-batch", "4"],
    "2 sessions x 1 thread, batch 4": ["--sessions", "2", "--threads", "1", "--max-batch", "4"],
}


def images_for(folder, count):
    from retinamask.data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(folder, num_train=0, num_val=count, seed=7)
    return sorted(Path(data["val_images"]).glob("*.png"))


def bare_ms(model, backend, images, repeats, monitor):
    """Median ms per image of decode + prepare + run + finish (pasted masks) in this process: one session
    with all the CPUs' threads, as ``serve --sessions 1``."""
    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.core.jobs import usable_cpus
    from retinamask.formats.images import decode_image_bytes

    predictor = OnnxPredictor(model, backend=backend, threads=usable_cpus())  # as a 1-session server's
    payloads = [p.read_bytes() for p in images]

    def one(data):
        prepared = predictor.prepare(decode_image_bytes(data))
        return predictor.finish(predictor.run([prepared])[0], prepared)

    for data in payloads[:2]:
        one(data)
    times = []
    with monitor.timed("bare"):
        for _ in range(repeats):
            for data in payloads:
                started = time.perf_counter()
                one(data)
                times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


class Server:
    """``python -m retinamask serve`` on a free loopback port, until stopped."""

    def __init__(self, model, backend, flags, log_dir):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "retinamask",
            "serve",
            "--model",
            str(model),
            "--backend",
            backend,
            "--port",
            str(self.port),
            "--max-queue",
            "64",
            *flags,
        ]
        self.log = Path(log_dir) / f"serve_{self.port}.log"
        with open(self.log, "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        from retinamask.serve.client import Client

        self.client = Client(self.url, retries=0)  # measured as answered: a 503 counts, never hidden by a retry
        deadline = time.monotonic() + 300
        while True:
            try:
                if self.client._request("/v1/health/ready")[0] == 200:
                    break
            except Exception:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: see {self.log}")
            time.sleep(0.2)

    def stop(self):
        self.process.terminate()
        self.process.wait(120)


def load(server, images, concurrency, requests, monitor, section):
    from retinamask.serve.client import run_load

    run_load(server.client, images, concurrency, max(4, concurrency))  # warm the connections and threads
    with monitor.timed(section):
        return run_load(server.client, images, concurrency, requests).summary()


def infer_images_per_s(model, backend, images, scratch, monitor):
    """``retinamask infer`` (streaming from the images, its defaults) on the same images and model."""
    from retinamask.runtime.infer import run_inference

    folder = Path(scratch) / "infer_images"
    folder.mkdir(exist_ok=True)
    for path in images:
        (folder / path.name).write_bytes(path.read_bytes())
    with monitor.timed("infer"):
        started = time.perf_counter()
        summary = run_inference(
            model, folder, output_dir=scratch, output_dirname=f"infer_{time.time_ns()}", backend=backend, progress=False
        )
        seconds = time.perf_counter() - started
    return summary["count"] / seconds


def encode_ms(repeats=20):
    """Median ms to encode 100 detections on a 640x480 image as COCO results with RLE, then JSON: the
    server's route (mask probabilities + boxes -> the fused paste + RLE -> orjson)."""
    from retinamask.core.detections import Detections
    from retinamask.serve import encode

    rng = np.random.default_rng(0)
    xy = rng.integers(0, 560, size=(100, 2)).astype(np.float32)
    wh = rng.integers(20, 120, size=(100, 2)).astype(np.float32)
    boxes = np.concatenate([xy, np.minimum(xy + wh, [639, 479])], axis=1).astype(np.float32)
    v, u = np.mgrid[0:28, 0:28]
    radius = rng.uniform(6, 14, size=(100, 1, 1))  # smooth blobs, as a mask head gives, not noise
    probs = np.exp(-((u - 13.5) ** 2 + (v - 13.5) ** 2) / radius**2).astype(np.float32)
    detections = Detections(
        boxes,
        rng.random(100).astype(np.float32),
        rng.integers(1, 7, 100).astype(np.int64),
        [f"c{i}" for i in range(100)],
        mask_probs=probs,
        image_hw=(480, 640),
    )
    keep = encode.select(detections)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode.json_bytes({"detections": encode.coco_results(detections, keep, list(range(1, 7)))})
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def video_clip(path, images, frames, size=(640, 480), rate=25):
    """An H.264 clip of ``frames`` frames: the images in turn on a grey ``size`` canvas (the model sees shapes)."""
    from fractions import Fraction

    from PIL import Image

    from retinamask.formats.video_write import VideoWriter

    width, height = size
    pictures = []
    for image in images:
        rgb = np.asarray(Image.open(image).convert("RGB"))[:height, :width]
        canvas = np.full((height, width, 3), 127, np.uint8)
        canvas[: rgb.shape[0], : rgb.shape[1]] = rgb
        pictures.append(canvas)
    with VideoWriter(path, width, height, Fraction(1, rate), rate) as writer:
        for i in range(frames):
            writer.write(pictures[(i // 5) % len(pictures)], i)
    return path


def video_sharing(args, images, scratch, monitor):
    """/v1/predict at concurrency 1, idle, then while a video job runs, on one default server (2 sessions x
    1 thread, --max-jobs 1). The job must be running from before the first request to after the last."""
    import urllib.request

    clip = video_clip(Path(scratch) / "long.mp4", images, args.video_frames)
    server = Server(args.model, args.backend, [], scratch)
    try:
        idle = load(server, images, 1, args.requests // 2, monitor, "video: idle c1")
        request = urllib.request.Request(
            f"{server.url}/v1/videos", clip.read_bytes(), {"Content-Type": "video/mp4"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            job = json.loads(response.read())

        def status():
            with urllib.request.urlopen(job["urls"]["status"], timeout=60) as response:
                return json.loads(response.read())

        deadline = time.monotonic() + 120
        while (before := status())["frames_done"] < 5:
            if before["state"] not in ("queued", "running") or time.monotonic() > deadline:
                raise RuntimeError(f"the video job did not start: {before}")
            time.sleep(0.1)
        busy = load(server, images, 1, args.requests // 2, monitor, "video: c1 during a job")
        after = status()
        if after["state"] != "running":
            raise RuntimeError(f"the video job ended before the measurement did ({after}): raise --video-frames")
        frames_during = after["frames_done"] - before["frames_done"]
    finally:
        server.stop()
    return {
        "clip": f"{args.video_frames} frames 640x480 H.264",
        "idle_c1": idle,
        "during_job_c1": busy,
        "job_frames_per_s_during": after["fps"],
        "job_frames_during": frames_during,
        "ratio_p50": busy["p50_ms"] / idle["p50_ms"],
    }


def video_markdown(video):
    idle, busy = video["idle_c1"], video["during_job_c1"]
    return (
        f"- `/v1/predict` concurrency 1 while a video job runs ({video['clip']}, serve's defaults: 2 sessions x "
        f"1 thread, `--max-jobs 1`): p50 **{busy['p50_ms']:.1f} ms** vs {idle['p50_ms']:.1f} ms idle = "
        f"**{video['ratio_p50']:.2f}x** (goal <= 2); p95 {busy['p95_ms']:.1f} vs {idle['p95_ms']:.1f} ms; the job "
        f"went on at {video['job_frames_per_s_during']:.2f} frames/s ({video['job_frames_during']} frames during "
        "the measurement)"
    )


def run(args):
    monitor = LoadMonitor()
    if args.video_only:
        report = {"environment": environment(threads=None), "model": str(args.model), "backend": args.backend}
        with tempfile.TemporaryDirectory() as scratch:
            images = images_for(Path(scratch) / "data", args.images)
            report["video"] = video_sharing(args, images, scratch, monitor)
        report["load"] = monitor.summary()
        report["verdict"] = monitor.verdict()
        return report
    report = {"environment": environment(threads=None), "model": str(args.model), "backend": args.backend}
    with tempfile.TemporaryDirectory() as scratch:
        images = images_for(Path(scratch) / "data", args.images)
        report["bare_ms"] = bare_ms(args.model, args.backend, images, args.repeats, monitor)
        report["infer_images_per_s"] = infer_images_per_s(args.model, args.backend, images, scratch, monitor)
        report["layouts"] = {}
        for name, flags in LAYOUTS.items():
            server = Server(args.model, args.backend, flags, scratch)
            try:
                row = {"c4": load(server, images, 4, args.requests, monitor, f"{name} c4")}
                if name == "1 session x 2 threads":
                    row["c1"] = load(server, images, 1, args.requests // 2, monitor, f"{name} c1")
            finally:
                server.stop()
            report["layouts"][name] = row
        server = Server(args.model, args.backend, ["--max-queue", "8"], scratch)
        try:
            from retinamask.serve.client import run_load

            with monitor.timed("overload"):
                report["overload"] = run_load(server.client, images, 32, 96).summary()
        finally:
            server.stop()
        report["video"] = video_sharing(args, images, scratch, monitor)
    report["encode_100_ms"] = encode_ms()
    report["load"] = monitor.summary()
    report["verdict"] = monitor.verdict()
    return report


def markdown(report):
    env = report["environment"]
    if "layouts" not in report:  # --video-only
        return "\n".join(
            [
                f"### Serving: video jobs beside /v1/predict — {env['date']}",
                "",
                f"CPU: {env['cpu']} ({env['cpu_class']}); model {Path(report['model']).name}, {report['backend']}; "
                f"{report['verdict']}",
                "",
                video_markdown(report["video"]),
            ]
        )
    c1 = report["layouts"]["1 session x 2 threads"]["c1"]
    lines = [
        f"### Serving — {env['date']}",
        "",
        f"CPU: {env['cpu']} ({env['cpu_class']}); model {Path(report['model']).name}, {report['backend']}; "
        f"{report['verdict']}",
        "",
        f"- concurrency 1: p50 {c1['p50_ms']:.1f} ms vs bare {report['bare_ms']:.1f} ms "
        f"(decode + preprocess + run + postprocess in-process): **{c1['p50_ms'] / report['bare_ms']:.2f}x** "
        "(goal <= 1.10)",
        f"- `retinamask infer` on the same images: {report['infer_images_per_s']:.2f} images/s",
        f"- JSON + RLE encoding of 100 detections (640x480): **{report['encode_100_ms']:.2f} ms** (goal <= 10)",
        "",
        *table_head("session layout", "c=4 images/s:", "vs infer:", "p50 ms:", "p95 ms:", "p99 ms:", "errors"),
    ]
    for name, row in report["layouts"].items():
        c4 = row["c4"]
        ratio = c4["images_per_s"] / report["infer_images_per_s"]
        cells = [f"{c4[k]:.0f}" for k in ("p50_ms", "p95_ms", "p99_ms")]
        lines.append(table_row(name, f"{c4['images_per_s']:.2f}", f"{ratio:.2f}x", *cells, str(c4["errors"] or "none")))
    over = report["overload"]
    lines += [
        "",
        f"- overload, concurrency 32, `--max-queue 8`, 96 requests: {over['ok']} x 200, "
        f"errors {over['errors'] or 'none'} (goal: only 200 and 503)",
        video_markdown(report["video"]),
    ]
    return "\n".join(lines)


def main(argv=None):
    from retinamask.config.shipped import SHIPPED_ONNX

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_ONNX, help="exported model (default: the shipped one)")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino"])
    parser.add_argument("--images", type=int, default=16, help="synthetic images (default 16)")
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency-4 run (default 96)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images for the bare time")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--video-frames", type=int, default=600, help="frames of the video job's clip (default 600)")
    parser.add_argument("--video-only", action="store_true", help="only /v1/predict beside a running video job")
    args = parser.parse_args(argv)
    report = run(args)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
