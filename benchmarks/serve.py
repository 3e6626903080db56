"""Serving, measured side by side in one run: ``python -m benchmarks.serve [--model M] [--backend B]``.

1. Bare: the same images through ``OnnxPredictor`` in this process (decode + prepare + run + finish), the
   reference of the latency figure.
2. Concurrency 1 on a ``retinamask serve`` process (1 session x 2 threads) against the bare loop, a pass of
   each in turn for ``--c1-rounds`` rounds: the median of the rounds' p50 ratios (goal <= 1.10; paired, so
   that the machine's drift between the two cannot pass for the server's cost). ``--c1-only``: just this.
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


class BareLoop:
    """The same images through ``OnnxPredictor`` in this process: decode + prepare + run + finish (pasted masks),
    one session with all the CPUs' threads, as ``serve --sessions 1``: the reference of the latency figure."""

    def __init__(self, model, backend, images):
        from retinamask.apps.onnx_predictor import OnnxPredictor
        from retinamask.core.jobs import usable_cpus

        self.predictor = OnnxPredictor(model, backend=backend, threads=usable_cpus())  # as a 1-session server's
        self.payloads = [p.read_bytes() for p in images]
        for data in self.payloads[:2]:
            self._one(data)

    def _one(self, data):
        from retinamask.formats.images import decode_image_bytes

        prepared = self.predictor.prepare(decode_image_bytes(data))
        return self.predictor.finish(self.predictor.run([prepared])[0], prepared)

    def times_ms(self, repeats, monitor, section="bare"):
        times = []
        with monitor.timed(section):
            for _ in range(repeats):
                for data in self.payloads:
                    started = time.perf_counter()
                    self._one(data)
                    times.append((time.perf_counter() - started) * 1000)
        return times


def c1_against_bare(server, bare, images, rounds, monitor):
    """Concurrency 1 on ``server`` (one pass over the images a round) and the bare loop, alternating ``rounds``
    times, so that a machine's drift moves both sides of each round's ratio: the p50s pooled, and the median of
    the rounds' p50 ratios."""
    from retinamask.serve.client import run_load

    run_load(server.client, images, 1, 4)  # warm the connection and the server's threads
    bare_times, served, ratios = [], [], []
    for round_ in range(rounds):
        time.sleep(0.5)  # the other side's pool threads stop spinning
        times = bare.times_ms(1, monitor, f"c1 round {round_}: bare")
        time.sleep(0.5)
        with monitor.timed(f"c1 round {round_}: served"):
            summary = run_load(server.client, images, 1, len(images)).summary()
        bare_times += times
        served.append(summary)
        ratios.append(summary["p50_ms"] / statistics.median(times))
    return {
        "rounds": rounds,
        "bare_p50_ms": statistics.median(bare_times),
        "served_p50_ms": statistics.median(s["p50_ms"] for s in served),
        "ratio_median": statistics.median(ratios),
        "ratios": [round(r, 3) for r in ratios],
        "errors": sum(sum(s["errors"].values()) for s in served),
    }


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
    report = {"environment": environment(threads=None), "model": str(args.model), "backend": args.backend}
    with tempfile.TemporaryDirectory() as scratch:
        images = images_for(Path(scratch) / "data", args.images)
        if args.video_only:
            report["video"] = video_sharing(args, images, scratch, monitor)
        elif args.c1_only:
            report["c1"] = c1_section(args, images, scratch, monitor)
        else:
            report.update(all_sections(args, images, scratch, monitor))
    if not (args.video_only or args.c1_only):
        report["encode_100_ms"] = encode_ms()
    report["load"] = monitor.summary()
    report["verdict"] = monitor.verdict()
    return report


def c1_section(args, images, scratch, monitor):
    bare = BareLoop(args.model, args.backend, images)
    server = Server(args.model, args.backend, LAYOUTS["1 session x 2 threads"], scratch)
    try:
        return c1_against_bare(server, bare, images, args.c1_rounds, monitor)
    finally:
        server.stop()


def all_sections(args, images, scratch, monitor):
    report = {}
    bare = BareLoop(args.model, args.backend, images)
    report["bare_ms"] = statistics.median(bare.times_ms(args.repeats, monitor))
    report["bare_passes"] = args.repeats
    report["infer_images_per_s"] = infer_images_per_s(args.model, args.backend, images, scratch, monitor)
    report["layouts"] = {}
    for name, flags in LAYOUTS.items():
        server = Server(args.model, args.backend, flags, scratch)
        try:
            row = {"c4": load(server, images, 4, args.requests, monitor, f"{name} c4")}
            if name == "1 session x 2 threads":
                row["c1"] = c1_against_bare(server, bare, images, args.c1_rounds, monitor)
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
    return report


def c1_markdown(c1):
    return (
        f"- concurrency 1 (1 session x 2 threads), {c1['rounds']} rounds alternating with the bare loop "
        f"(decode + preprocess + run + postprocess in-process): p50 {c1['served_p50_ms']:.1f} ms vs bare "
        f"{c1['bare_p50_ms']:.1f} ms; median of the rounds' ratios **{c1['ratio_median']:.2f}x** "
        f"({', '.join(f'{r:.2f}' for r in c1['ratios'])}; goal <= 1.10); errors {c1['errors']}"
    )


def markdown(report):
    env = report["environment"]
    if "layouts" not in report:  # --video-only, --c1-only
        title, body = (
            ("video jobs beside /v1/predict", video_markdown(report["video"]))
            if "video" in report
            else ("concurrency 1 against the bare loop", c1_markdown(report["c1"]))
        )
        return "\n".join(
            [
                f"### Serving: {title} — {env['date']}",
                "",
                f"CPU: {env['cpu']} ({env['cpu_class']}); model {Path(report['model']).name}, {report['backend']}; "
                f"{report['verdict']}",
                "",
                body,
            ]
        )
    lines = [
        f"### Serving — {env['date']}",
        "",
        f"CPU: {env['cpu']} ({env['cpu_class']}); model {Path(report['model']).name}, {report['backend']}; "
        f"{report['verdict']}",
        "",
        c1_markdown(report["layouts"]["1 session x 2 threads"]["c1"]),
        f"- bare loop alone first ({report['bare_passes']} passes): median {report['bare_ms']:.1f} ms an image",
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
    parser.add_argument(
        "--c1-rounds", type=int, default=6, help="concurrency-1 rounds, each a pass served and a pass bare (default 6)"
    )
    parser.add_argument("--c1-only", action="store_true", help="only concurrency 1 against the bare loop")
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
