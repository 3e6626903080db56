"""RetinaMask R-50-FPN on this machine, every route in ONE run: latency table, throughput of the
host-side stages, and the matmul peaks the latencies are judged against.

    .venv/bin/python -m benchmarks.suite [--quick] [--json OUT] [--workdir DIR] [--threads N] [--sweep]

Prints Markdown tables (copy them into benchmarks/RESULTS.md):

1. End-to-end latency per image, batch 1, input 1344x1344: preprocessed tensor in -> final
   detections (boxes, labels, scores) and 28x28 mask probabilities out. Routes: PyTorch eager
   (our model with its own post-processing), ONNX Runtime end2end and seed layout (+ host NMS),
   OpenVINO fp32 and bf16, INT8 (ONNX Runtime static QDQ quantization, run in both runtimes),
   batched inference, and the GPU routes (reported unavailable here). Each row: median and
   minimum time, speed-up over PyTorch eager measured in this run, GFLOP counted from the ONNX
   graph (dense part + mask head x the RoIs it ran on), achieved GFLOP/s and its share of the
   matmul peak of that precision (measured in this run).
2. Matmul peaks: fp32 (ONNX Runtime / OpenVINO / torch), bf16 (OpenVINO / torch), int8
   (ONNX Runtime / OpenVINO), all on the same threads as the models.
3. Preprocessing throughput (JPEG -> tensor, ``load_image_rgb`` + ``seed_preprocess``) through
   the worker processes ``retinamask infer`` uses, for 0..N workers.
4. Post-processing (mask paste + RLE) and COCO evaluation of synthetic images with synthetic
   ground truth and detections: pycocotools vs faster-coco-eval (stats must be identical).
5. ``infer`` wall time over a folder of JPEGs (streaming preprocessing) vs the seed's route
   (``preprocess`` to .bin files, then ``infer`` on them).

Weights: random He init with the classification bias lowered so that ~100 detections survive,
as with a trained model (benchmarks/r50.py). Nothing here asserts a speed: the
numbers are the result. ``--quick`` shrinks repeats and sets (a smoke run, not for the record).
Each section lives in its module of ``benchmarks.sections``; this one runs them in order.
"""

import argparse
import contextlib
import json
import logging
import sys
import tempfile
from pathlib import Path

from benchmarks.cpu_load import LoadMonitor, other_busy_processes
from benchmarks.flops import count_flops
from benchmarks.machine import environment, load_average
from benchmarks.r50 import CONFIG, INPUT_SIZE, benchmark_input, build_benchmark_model, write_jpegs
from benchmarks.sections import infer_routes, latency, peaks, postprocess_eval, preprocessing, sweep
from benchmarks.sections.models import prepare_models

FULL = {
    "warmup": 2,
    "repeats": 5,
    "calibration_images": 16,
    "preprocess_images": 32,
    "eval_images": 5000,
    "infer_images": 8,
    "peak_size": 2048,
    "peak_repeats": 10,
    "batched": True,
}
QUICK = {
    "warmup": 1,
    "repeats": 2,
    "calibration_images": 2,
    "preprocess_images": 8,
    "eval_images": 300,
    "infer_images": 3,
    "peak_size": 1024,
    "peak_repeats": 3,
    "batched": False,
}

logger = logging.getLogger("suite")


def markdown_head(report):
    """The title, the load check, warnings about other busy processes, and the machine."""
    env, size = report["environment"], report["input_size"]
    lines = [f"# RetinaMask R-50-FPN, {size}x{size}, batch 1, CPU {env['cpu_class']} — {env['date']}", ""]
    load = report.get("load")
    if load:
        sections = ", ".join(
            f"{name} {section['other_cpu_seconds']:.1f} of {section['elapsed_s']:.0f} s"
            for name, section in load["sections"].items()
        )
        lines += [load["verdict"], "", f"Other CPU-seconds per timed section: {sections}.", ""]
    busy = report.get("other_busy_processes") or []
    if busy:
        lines += [
            "**Warning: other processes used the CPU during this run, so these are not a quiet run's timings: "
            + "; ".join(f"{b['when']}: pid {b['pid']} {b['cpu_percent']:.0f}% `{b['command'][:60]}`" for b in busy)
            + "**",
            "",
        ]
    return lines + [
        f"CPU: {env['cpu']} ({env['logical_cpus']} CPUs, {env['physical_cores']} physical cores; "
        f"{' '.join(env['cpu_flags'])}); threads {env['threads']}; load average (1, 5, 15 min) at start "
        f"{', '.join(f'{v:.2f}' for v in env['load_average_at_start'] or ())}, at end "
        f"{', '.join(f'{v:.2f}' for v in env.get('load_average_at_end') or ())}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"Command: `{env['command']}`",
        "",
    ]


def markdown(report):
    """The whole report, section by section."""
    lines = markdown_head(report)
    lines += latency.markdown(report["latency"], report["flops"]["end2end"])
    lines += peaks.markdown(report["peaks"])
    if report.get("sweep"):
        lines += sweep.markdown(report["sweep"])
    lines += preprocessing.markdown(report["preprocessing"], report["input_size"])
    lines += postprocess_eval.markdown(report["postprocess_eval"])
    lines += infer_routes.markdown(report["infer"])
    prep = report["preparation_s"]
    if prep:
        lines.append("Preparation (not timed above): " + ", ".join(f"{k} {v:.0f} s" for k, v in prep.items()) + ".")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sets (smoke run)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write every number as JSON here")
    parser.add_argument("--workdir", default=None, help="keep exported models and data here (default: a temp dir)")
    parser.add_argument("--reuse-models", action="store_true", help="reuse models already in --workdir")
    parser.add_argument("--threads", type=int, default=None, help="threads everywhere (default: physical cores)")
    parser.add_argument(
        "--sweep", action="store_true", help="also time alternative session options and the compiled-model caches"
    )
    parser.add_argument("--input-size", dest="canvas_side", type=int, default=INPUT_SIZE, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_sections(report, args, settings, threads, workdir):
    """Every section in order, each timed part a section of the load monitor; fills ``report``."""
    from retinamask.apps.evaluate import WORKER_LIMIT
    from retinamask.config import load_config
    from retinamask.core.jobs import default_workers

    monitor = LoadMonitor()
    model = build_benchmark_model()
    paths, report["preparation_s"] = prepare_models(
        workdir, model, load_config(CONFIG), args.canvas_side, settings, args.reuse_models
    )
    report["flops"] = {key: count_flops(paths[key]) for key in ("end2end", "seed")}
    with monitor.timed("matmul peaks"):
        report["peaks"] = peaks.matmul_peaks(workdir, threads, settings["peak_size"], settings["peak_repeats"])
    images = benchmark_input(args.canvas_side)
    with monitor.timed("latency table"):
        report["latency"] = latency.latency_rows(
            paths, model, images, report["flops"], report["peaks"], threads, settings
        )
    report["other_busy_processes"] += other_busy_processes("after the latency table")
    if args.sweep:
        with monitor.timed("sweep"):
            report["sweep"] = sweep.session_option_sweep(paths, images, threads, settings, workdir)
    jpegs = workdir / "jpegs"
    write_jpegs(jpegs, settings["preprocess_images"])
    with monitor.timed("preprocessing"):
        report["preprocessing"] = preprocessing.preprocessing_throughput(
            paths["end2end"], jpegs, sorted({0, 1, threads})
        )
    with monitor.timed("post-processing + evaluation"):
        report["postprocess_eval"] = postprocess_eval.postprocess_and_evaluate(
            settings["eval_images"], default_workers(WORKER_LIMIT)
        )
    infer_dir = workdir / "infer_jpegs"
    write_jpegs(infer_dir, settings["infer_images"], start_variant=500)
    with monitor.timed("infer routes"):
        report["infer"] = infer_routes.infer_routes(paths["end2end"], infer_dir, workdir, threads)
    report["load"] = {**monitor.summary(), "verdict": monitor.verdict()}
    if not report["load"]["fit_for_record"]:
        logger.warning(report["load"]["verdict"])


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[suite] %(message)s", stream=sys.stderr)

    from retinamask.core.cpu import physical_cores

    settings = QUICK if args.quick else FULL
    threads = args.threads or physical_cores()
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="retinamask-suite-")))
        report = {
            "input_size": args.canvas_side,
            "quick": args.quick,
            "settings": settings,
            "environment": environment(threads),
            "other_busy_processes": other_busy_processes("start"),
        }
        if report["other_busy_processes"]:
            logger.warning("other processes are using the CPU: %s", report["other_busy_processes"])
        run_sections(report, args, settings, threads, workdir)
    report["other_busy_processes"] += other_busy_processes("end")
    report["environment"]["load_average_at_end"] = load_average()
    text = markdown(report)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=1, default=str))
        print(f"\n(written {args.json_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
