"""Accuracy of each deployment precision on the embedded val set: the shipped model exported
once in float32 and once quantized to INT8, run through `infer` + `evaluate` (the COCO flow's
code) with ONNX Runtime and OpenVINO, fp32 / bf16 / fp16 / INT8. Prints a Markdown table of bbox and
segm mAP, their change against ONNX Runtime fp32 and the pure-inference throughput at the
model's 448x448 canvas; a route this CPU cannot run (bf16 without avx512_bf16 or AMX, fp16
without avx512_fp16) is a row that says why. The CPU is named above the table.

    .venv/bin/python -m benchmarks.accuracy [--workdir DIR] [--num-images 200] [--calib-images 32]

Val: the demo's split (seed 7, never trained or tuned on). INT8 calibration: images of a
separate split generated with seed 11, so calibration never sees the evaluated images.
"""

import argparse
import tempfile
from pathlib import Path

from retinamask.apps.demo import DEMO_VAL_SEED, SHIPPED_CONFIG, SHIPPED_WEIGHTS
from retinamask.apps.evaluate import evaluate_outputs
from retinamask.core.cpu import describe_cpu_class, this_cpu
from retinamask.data.shapes import generate_shapes_dataset
from retinamask.export.onnx_export import export_onnx
from retinamask.runtime.backends import BackendUnavailable
from retinamask.runtime.infer import run_inference

CALIBRATION_SEED = 11
# (label, model, backend, precision)
ROUTES = (
    ("ONNX Runtime fp32", "fp32", "onnxruntime", "fp32"),
    ("OpenVINO fp32", "fp32", "openvino", "fp32"),
    ("OpenVINO bf16", "fp32", "openvino", "bf16"),
    ("OpenVINO fp16", "fp32", "openvino", "fp16"),
    ("ONNX Runtime INT8", "int8", "onnxruntime", "fp32"),
    ("OpenVINO INT8", "int8", "openvino", "fp32"),
)


def prepare(workdir, num_images, calib_images):
    val = generate_shapes_dataset(workdir / "val", num_train=0, num_val=num_images, seed=DEMO_VAL_SEED)
    calib = generate_shapes_dataset(workdir / "calib", num_train=0, num_val=calib_images, seed=CALIBRATION_SEED)
    models = {"fp32": workdir / "shapes_fp32.onnx", "int8": workdir / "shapes_int8.onnx"}
    for kind, path in models.items():
        if not path.exists():
            export_onnx(
                SHIPPED_CONFIG,
                SHIPPED_WEIGHTS,
                path,
                dynamic_batch=True,
                verify=kind == "fp32",
                int8=kind == "int8",
                calibration_dir=calib["val_images"] if kind == "int8" else None,
                calibration_images=calib_images if kind == "int8" else None,
            )
    return val, models


def measure(workdir, val, models):
    rows = []
    for label, kind, backend, precision in ROUTES:
        name = f"{kind}_{backend}_{precision}"
        try:
            infer = run_inference(
                models[kind],
                val["val_images"],
                output_dir=workdir,
                output_dirname=name,
                backend=backend,
                precision=precision,
                progress=False,
            )
        except BackendUnavailable as e:
            rows.append(dict(route=label, error=e.cause))
            continue
        report = evaluate_outputs(
            workdir / name,
            val["val_annotations"],
            layout="end2end",
            output_path=workdir / f"{name}_evaluation.txt",
            progress=False,
        )
        stats = report["stats"]
        rows.append(
            dict(
                route=label,
                bbox=stats["bbox"]["AP"],
                segm=stats["segm"]["AP"],
                fps=infer["throughput"],
                model_mb=models[kind].stat().st_size / 2**20,
            )
        )
    return rows


def markdown(rows, num_images):
    base = rows[0]
    cpu = this_cpu()
    lines = [
        f"Shipped shapes model, {num_images} val images (seed {DEMO_VAL_SEED}), 448x448, batch 1; "
        f"{cpu.model_name or 'CPU'}, {describe_cpu_class(cpu)}",
        "",
        "| route | model MB | bbox mAP | Δ bbox | segm mAP | Δ segm | inference fps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['route']} | unavailable: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['route']} | {r['model_mb']:.1f} | {r['bbox']:.4f} | {r['bbox'] - base['bbox']:+.4f} | "
            f"{r['segm']:.4f} | {r['segm'] - base['segm']:+.4f} | {r['fps']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="keep data, models and outputs here (default: a temp dir)")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--calib-images", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        val, models = prepare(workdir, args.num_images, args.calib_images)
        print(markdown(measure(workdir, val, models), args.num_images))


if __name__ == "__main__":
    main()
