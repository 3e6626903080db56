"""What makes a dataset run (``retinamask infer``) faster on this machine: sessions x threads, batch 2,
OpenVINO's THROUGHPUT hint, the preprocessing workers (issue 17's levers), interleaved.

Each setting runs ``run_inference`` over the same images into a fresh folder (never a resume) and
is timed end to end (images/s from the summary's wall time: loading, inference and writing). The
settings run round-robin ``--rounds`` times; the table gives each setting's best and median
images/s and its ratio to the first row (one session with every core, batch 1: infer's default until
these figures made it 2 sessions, ``runtime/auto_backend.DATASET_SESSIONS``).

Models: the shipped ONNX (``--resize original``, 448 short side) over the demo's synthetic val
images; with ``--r50`` also R-50 RetinaMask (the benchmark's random weights, ``--resize original``,
640x480 JPEGs on an 800x1088 canvas) in fp32 and INT8 (quantized from it here).

    .venv/bin/python -m benchmarks.infer_levers --workdir /tmp/levers [--r50] [--rounds 2]
"""

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

from benchmarks.cpu_load import LoadMonitor
from benchmarks.machine import environment
from benchmarks.tables import number, table_head, table_row
from retinamask.runtime.infer import run_inference

# (label, run_inference keywords); the first is the reference of the ratios
SETTINGS = (
    ("1 session x 2 threads, batch 1", {"sessions": 1}),
    ("2 sessions x 1 thread, batch 1", {"sessions": 2}),
    ("1 session x 2 threads, batch 2", {"sessions": 1, "batch_size": 2}),
    ("2 sessions x 1 thread, batch 2", {"sessions": 2, "batch_size": 2}),
    ("1 session, THROUGHPUT hint", {"sessions": 1, "performance_hint": "THROUGHPUT"}),
    ("2 sessions x 1 thread, workers 1", {"sessions": 2, "workers": 1}),
)


def shipped_case(workdir, count):
    from retinamask.apps.demo import DEMO_VAL_SEED
    from retinamask.config.shipped import shipped_onnx_path
    from retinamask.data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(workdir / "shapes", num_train=0, num_val=count, seed=DEMO_VAL_SEED)
    return "shipped model fp32 (448, original resize)", shipped_onnx_path(), data["val_images"]


def r50_cases(workdir, count):
    from benchmarks.r50 import CONFIG, build_benchmark_model, write_jpegs
    from retinamask.config import load_config
    from retinamask.export.onnx_export import export_model
    from retinamask.export.options import ExportOptions
    from retinamask.export.quantize import quantize_onnx

    images = workdir / "jpegs"
    write_jpegs(images, count)
    fp32, int8 = workdir / "r50_original.onnx", workdir / "r50_original_int8.onnx"
    if not fp32.exists():
        export_model(build_benchmark_model(), load_config(CONFIG), fp32, ExportOptions(resize="original"))
    if not int8.exists():
        calibration = workdir / "calibration"
        write_jpegs(calibration, 8, start_variant=1000)
        quantize_onnx(fp32, int8, calibration, 8)
    return [("R-50 fp32 (800x1088, original resize)", fp32, images), ("R-50 INT8", int8, images)]


def measure(cases, rounds, workdir, monitor):
    """{case: {setting: [images/s per round]}} with the settings interleaved round by round."""
    rates = {case[0]: {label: [] for label, _ in SETTINGS} for case in cases}
    for round_index in range(rounds):
        for name, model, images in cases:
            for label, options in SETTINGS:
                with tempfile.TemporaryDirectory(dir=workdir) as out, monitor.timed(f"{name} / {label}"):
                    summary = run_inference(model, images, out, "run", backend="openvino", progress=False, **options)
                rates[name][label].append(summary["e2e"]["images_per_s"])
                logging.info("round %d %s / %s: %.2f images/s", round_index + 1, name, label, rates[name][label][-1])
    return rates


def report(rates, counts):
    lines = []
    for name, per_setting in rates.items():
        reference = max(per_setting[SETTINGS[0][0]])
        lines += [
            f"\n{name}, {counts[name]} images, OpenVINO",
            *table_head("setting", "best images/s:", "median:", "x:"),
        ]
        for label, values in per_setting.items():
            best = max(values)
            lines.append(table_row(label, number(best), number(statistics.median(values)), number(best / reference)))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/infer_levers"))
    parser.add_argument("--r50", action="store_true", help="also R-50 fp32 and INT8 (exports and quantizes once)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shipped-images", type=int, default=100)
    parser.add_argument("--r50-images", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cases = [shipped_case(args.workdir, args.shipped_images)]
    counts = {cases[0][0]: args.shipped_images}
    if args.r50:
        cases += r50_cases(args.workdir, args.r50_images)
        counts.update({case[0]: args.r50_images for case in cases[1:]})
    monitor = LoadMonitor()
    rates = measure(cases, args.rounds, args.workdir, monitor)
    head = environment(threads=None)
    print(json.dumps({key: head[key] for key in ("date", "command", "cpu", "cpu_class", "load_average_at_start")}))
    print(report(rates, counts))
    print("\nload check:", monitor.verdict())
    if args.json:
        args.json.write_text(json.dumps({"environment": head, "rates": rates, "load": monitor.summary()}, indent=2))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("retinamask").setLevel(logging.WARNING)
    main()
