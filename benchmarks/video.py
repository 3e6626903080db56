"""Video through ``predict`` against ``infer`` over the same frames, live latency, and memory over a long stream
(issue 25's speed and memory goals).

* **throughput**: a 640x480 generated clip (H.264) through the video job (``predict --input clip.mp4``:
  decoding, the model, JSONL + RLE, overlay drawing and H.264 encoding, overlapped) against ``infer`` over
  the same frames as JPEGs (its defaults: 2 sessions on 2 cores, preprocessing workers), and the job with
  ``--no-video`` (results only: no overlay, no H.264), interleaved ``--rounds`` times; frames/s end to end,
  best of the rounds, and the ratio (goal: >= 0.9x). On the shipped model and, with ``--r50``, R-50 RetinaMask
  (``--resize original``, the benchmark's random weights).
* **latency** (``--live``): a loopback MJPEG camera sending faster than the model; the time from a frame's
  sending to its answer, with the latest-frame policy, against the model's own time per frame (goal: under
  two inference times).
* **memory** (``--soak N``): N frames of a live stream through the shipped model; RSS after the first 500
  frames and at the end (goal: < 5 % growth).

    .venv/bin/python -m benchmarks.video --workdir /tmp/video_bench [--r50] [--live] [--soak 10000]
"""

import argparse
import functools
import json
import logging
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from benchmarks.cpu_load import LoadMonitor
from benchmarks.machine import environment
from benchmarks.tables import number, table_head, table_row

SIZE = (640, 480)


def make_clip(workdir, frames):
    """A 640x480 generated clip (H.264, 25 fps) and its frames as JPEGs (quality 95), made once."""
    import av
    from PIL import Image

    from retinamask.data.shapes_video import generate_shapes_videos

    data = generate_shapes_videos(workdir / "clips", 1, seed=3, size=SIZE, frames=frames, fps=Fraction(25))
    clip = data["clips"][0]
    jpegs = workdir / f"jpegs_{frames}"
    if not jpegs.is_dir() or len(list(jpegs.iterdir())) != frames:
        jpegs.mkdir(parents=True, exist_ok=True)
        with av.open(str(clip)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(jpegs / f"{i:06d}.jpg", quality=95)
    return clip, jpegs


def video_rate(model, clip, out, backend, annotated=True):
    """frames/s of the video job (what ``predict --model M --input clip`` runs, ``--no-video`` without
    ``annotated``), end to end."""
    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.apps.predict_sources import Source
    from retinamask.apps.predict_videos import VideoJobOptions, predict_videos
    from retinamask.runtime.auto_backend import dataset_sessions

    count, threads, _ = dataset_sessions()  # predict's default for video files, as infer's for datasets
    predictors = OnnxPredictor.sessions(model, count, threads, backend=backend)
    started = time.perf_counter()
    options = VideoJobOptions(annotated=annotated)
    summary = predict_videos(predictors, [Source("video", str(clip), clip.stem)], out, options, progress=False)
    return summary["frames"] / (time.perf_counter() - started)


def infer_rate(model, jpegs, out, backend):
    from retinamask.runtime.infer import run_inference

    summary = run_inference(model, jpegs, out, "run", backend=backend, progress=False)
    return summary["e2e"]["images_per_s"]


ROUTES = (  # label, rate function, whether it reads the clip (else the JPEGs)
    ("infer JPEGs", infer_rate, False),
    ("predict video", video_rate, True),
    ("predict video --no-video", functools.partial(video_rate, annotated=False), True),
)


def throughput(cases, rounds, workdir, backend, monitor):
    """{case: {route label: [frames/s]}} of :data:`ROUTES`, interleaved round by round."""
    rates = {name: {label: [] for label, _, _ in ROUTES} for name, _, _, _ in cases}
    for round_index in range(rounds):
        for name, model, clip, jpegs in cases:
            for label, run, reads_clip in ROUTES:
                source = clip if reads_clip else jpegs
                with tempfile.TemporaryDirectory(dir=workdir) as out, monitor.timed(f"{name} / {label}"):
                    rates[name][label].append(run(model, source, Path(out), backend))
                logging.info("round %d %s / %s: %.2f frames/s", round_index + 1, name, label, rates[name][label][-1])
    return rates


def latency(model, backend, frames=150, fps=100.0):
    """The latest-frame policy on a loopback MJPEG camera at ``fps`` (faster than the model): the delay from
    each frame's sending to its answer, and the model's time per frame at that size."""
    import numpy as np

    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.apps.predict_video import predict_video

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from video_support import MjpegServer, level_frame

    predictor = OnnxPredictor(model, backend=backend)
    frame = level_frame(128, *SIZE)
    for _ in range(3):
        predictor(frame)
    started = time.perf_counter()
    for _ in range(10):
        predictor(frame)
    inference_s = (time.perf_counter() - started) / 10
    delays, dropped = [], 0
    with MjpegServer(size=SIZE, fps=fps) as server:
        for result in predict_video(predictor, server.url, max_frames=frames):
            answered = time.monotonic()
            first = min(server.sent_at)
            delays.append(answered - server.sent_at[first + result.index])
            dropped += result.dropped
    delays = np.asarray(delays[5:])  # after the connection settled
    return {
        "inference_ms": 1000 * inference_s,
        "delay_p50_ms": 1000 * float(np.percentile(delays, 50)),
        "delay_p95_ms": 1000 * float(np.percentile(delays, 95)),
        "delay_max_ms": 1000 * float(delays.max()),
        "frames": frames,
        "dropped": dropped,
        "stream_fps": fps,
    }


def soak(model, backend, frames, fps=200.0):
    """RSS (MB) after 500 frames and after ``frames`` frames of a live loopback stream, latest-frame policy."""
    import resource

    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.apps.predict_video import predict_video

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from video_support import MjpegServer

    def rss_mb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))

    predictor = OnnxPredictor(model, backend=backend)
    after_500 = None
    with MjpegServer(size=(320, 240), fps=fps) as server:
        for i, _ in enumerate(predict_video(predictor, server.url, max_frames=frames, track=True), start=1):
            if i == 500:
                after_500 = rss_mb()
    end = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    growth = end / after_500 - 1
    return {"frames": frames, "rss_after_500_mb": after_500, "rss_end_mb": end, "growth": growth, "peak_mb": peak}


def report(rates, counts):
    lines = []
    for name, per_route in rates.items():
        reference = max(per_route["infer JPEGs"])
        lines += [f"\n{name}, {counts[name]} frames 640x480", *table_head("route", "best frames/s:", "median:", "x:")]
        for label, values in per_route.items():
            best = max(values)
            lines.append(table_row(label, number(best), number(statistics.median(values)), number(best / reference)))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/video_bench"))
    parser.add_argument("--frames", type=int, default=150, help="frames of the shipped model's clip")
    parser.add_argument("--r50", action="store_true", help="also R-50 (--resize original; exported once)")
    parser.add_argument("--r50-frames", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", default="openvino", choices=["onnxruntime", "openvino"])
    parser.add_argument("--live", action="store_true", help="also the live latency on a loopback camera")
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="also RSS over N live frames")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from retinamask.config.shipped import shipped_onnx_path

    shipped = shipped_onnx_path()
    clip, jpegs = make_clip(args.workdir, args.frames)
    cases = [("shipped model (448, original resize)", shipped, clip, jpegs)]
    counts = {cases[0][0]: args.frames}
    if args.r50:
        from benchmarks.r50 import CONFIG, build_benchmark_model
        from retinamask.config import load_config
        from retinamask.export.onnx_export import export_model
        from retinamask.export.options import ExportOptions

        r50 = args.workdir / "r50_original.onnx"
        if not r50.exists():
            export_model(build_benchmark_model(), load_config(CONFIG), r50, ExportOptions(resize="original"))
        r50_clip, r50_jpegs = make_clip(args.workdir, args.r50_frames)
        cases.append(("R-50 fp32 (800x1088, original resize)", r50, r50_clip, r50_jpegs))
        counts[cases[-1][0]] = args.r50_frames
    monitor = LoadMonitor()
    rates = throughput(cases, args.rounds, args.workdir, args.backend, monitor)
    results = {"rates": rates}
    if args.live:
        with monitor.timed("live latency"):
            results["latency"] = latency(shipped, args.backend)
    if args.soak:
        results["soak"] = soak(shipped, args.backend, args.soak)
    head = environment(threads=None)
    print(json.dumps({key: head[key] for key in ("date", "command", "cpu", "cpu_class", "load_average_at_start")}))
    print(report(rates, counts))
    for key in ("latency", "soak"):
        if key in results:
            rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in results[key].items()}
            print(f"\n{key}: " + json.dumps(rounded))
    print("\nload check:", monitor.verdict())
    if args.json:
        args.json.write_text(json.dumps({"environment": head, **results, "load": monitor.summary()}, indent=2))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("retinamask").setLevel(logging.WARNING)
    main()
