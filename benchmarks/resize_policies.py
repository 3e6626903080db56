"""Resize policies side by side, in ONE run (issue 10): speed of R-50 per image and accuracy of the
shipped model per policy.

    .venv/bin/python -m benchmarks.resize_policies [--quick] [--int8] [--workdir DIR] [--json OUT]

Prints Markdown tables (copied into benchmarks/RESULTS.md, "Resize policies"):

1. R-50-FPN RetinaMask (end2end, K = 100), batch 1, one 640 x 480 image (a textured synthetic
   picture), preprocessed tensor in -> detections + 28x28 masks out, per policy:
   ``seed`` (long side 1344, 1344 x 1344 canvas: the seed's square model), ``buckets`` and
   ``original`` (the dynamic-H/W model; a 4:3 image gets 800 x 1088 under both). Routes: ONNX
   Runtime fp32, OpenVINO fp32, OpenVINO bf16 where the CPU has it, and with ``--int8`` the
   INT8 models (ONNX Runtime static QDQ; 8 calibration images) in both runtimes. Median of the
   repeats; speed-up of each policy over seed on the same route.
2. Dynamic vs static shapes for the dynamic-H/W model at 800 x 1088 (the choice the runtime
   sessions make): ONNX Runtime as exported vs free-dimension overrides; OpenVINO one dynamic
   compile vs ``reshape`` to the static shape.
3. The shipped shapes model on its held-out val split (seed 7, 200 images, as the demo):
   bbox / segm mAP through ``retinamask infer`` (``--backend auto``, fp32) + ``evaluate`` per policy.
   ``original`` is the per-image exact canvas; ``buckets`` pads to a few fixed canvases.

R-50 weights: random, with ~100 detections surviving (benchmarks/r50.py), as
``python -m benchmarks.suite``. The load check (benchmarks/cpu_load.py): CPU time of the whole
machine (/proc/stat) minus this process tree's own, over the timed parts; above 10 % of the
machine the run is marked unfit for the record. Nothing here asserts a speed.
"""

import argparse
import functools
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cpu_load import LoadMonitor
from benchmarks.machine import command_line, cpu_model, utc_now
from benchmarks.r50 import CONFIG, INPUT_SIZE, MAX_DETECTIONS, build_benchmark_model
from benchmarks.tables import table_head
from benchmarks.timing import median_ms
from retinamask.core.cpu import CLASS_DESCRIPTION_FLAGS, cpu_class, this_cpu

IMAGE_HW = (480, 640)
MAX_LOAD_SHARE = 0.10  # this script's record limit (the suite's is cpu_load.MAX_OTHER_SHARE)
FULL = {"warmup": 2, "repeats": 5, "val_images": 200, "calibration_images": 8}
QUICK = {"warmup": 1, "repeats": 1, "val_images": 20, "calibration_images": 2}

logger = logging.getLogger("resize_policies")


def load_report(monitor):
    """The load check as this script reports it: other CPU-seconds, timed seconds, CPUs, share, verdict."""
    summary = monitor.summary()
    return {
        "other_cpu_s": round(summary["other_cpu_seconds"], 1),
        "timed_s": round(summary["elapsed_s"], 1),
        "cpus": summary["logical_cpus"],
        "other_share": round(summary["share"], 4),
        "fit_for_record": summary["fit_for_record"],
    }


def cpu_description():
    """{"model", "flags" (those a class description shows), "class" ('A', 'B (AVX2)' or '?')}."""
    cpu = this_cpu()
    klass = cpu_class(cpu)
    return {
        "model": cpu_model(),
        "flags": [flag for flag in CLASS_DESCRIPTION_FLAGS if flag in cpu.flags],
        "class": "B (AVX2)" if klass == "B" else klass,
    }


def test_image():
    from retinamask.export.verify import synthetic_image

    return synthetic_image(*IMAGE_HW, variant=3)


# ---------------------------------------------------------------------------------------------
# 1 + 2: R-50 latency


def prepare_r50(workdir, settings, int8, reuse):
    """Exports: seed 1344 and the dynamic-H/W (original) model; INT8 copies with ``int8``."""
    from retinamask.config import load_config
    from retinamask.export import export_model
    from retinamask.export.quantize import quantize_onnx

    paths = {"seed": workdir / "r50_seed1344.onnx", "dynamic": workdir / "r50_original.onnx"}
    model, cfg = None, load_config(CONFIG)
    for name, resize in (("seed", "seed"), ("dynamic", "original")):
        if reuse and paths[name].exists():
            continue
        model = model or build_benchmark_model()
        logger.info("exporting %s", paths[name])
        export_model(
            model,
            cfg,
            paths[name],
            resize=resize,
            canvas_side=INPUT_SIZE if resize == "seed" else None,
            max_detections=MAX_DETECTIONS,
            verify=False,
        )
    if int8:
        calibration = workdir / "calibration"
        calibration.mkdir(exist_ok=True)
        from PIL import Image

        from retinamask.export.verify import synthetic_image

        for i in range(settings["calibration_images"]):
            path = calibration / f"{i:03d}.jpg"
            if not path.exists():
                Image.fromarray(synthetic_image(*IMAGE_HW, variant=1000 + i)).save(path, quality=90)
        for name in ("seed", "dynamic"):
            target = workdir / f"{paths[name].stem}_int8.onnx"
            if not (reuse and target.exists()):
                logger.info("quantizing %s", paths[name])
                quantize_onnx(paths[name], target, calibration, settings["calibration_images"])
            paths[f"{name}_int8"] = target
    return paths


def latency_rows(paths, settings, threads, int8, monitor):
    from retinamask.data.transforms import policy_preprocess
    from retinamask.formats.model_info import read_model_info
    from retinamask.runtime.backends import create_session, openvino_capabilities

    image = test_image()
    routes = [("onnxruntime", "fp32", ""), ("openvino", "fp32", "")]
    if "BF16" in openvino_capabilities():
        routes.append(("openvino", "bf16", ""))
    if int8:
        routes += [("onnxruntime", "fp32", "_int8"), ("openvino", "fp32", "_int8")]
    rows = []
    for backend, precision, suffix in routes:
        label = f"{'ONNX Runtime' if backend == 'onnxruntime' else 'OpenVINO'} {'int8' if suffix else precision}"
        row = {"route": label}
        for policy_name, model_key in (("seed", "seed"), ("buckets", "dynamic"), ("original", "dynamic")):
            path = paths[model_key + suffix]
            info = read_model_info(path, resize=policy_name)
            session = create_session(path, backend, "cpu", precision, threads=threads, model_info=info)
            chw, geometry = policy_preprocess(image, info.resize, info.pixel_mean, info.pixel_std)
            batch = chw[None]
            sizes = np.asarray([geometry.resized_hw], np.int64)
            run = (
                functools.partial(session.run, batch, sizes)
                if session.dynamic_hw
                else functools.partial(session.run, batch)
            )
            logger.info("%s %s: canvas %s", label, policy_name, geometry.canvas_hw)
            row[policy_name] = median_ms(run, settings["warmup"], settings["repeats"], monitor, "latency")
            row[f"{policy_name}_canvas"] = "x".join(map(str, geometry.canvas_hw))
            del session, run  # free it before the next one is built
        rows.append(row)
    return rows


def shape_mode_rows(path, settings, threads, monitor):
    """Dynamic vs static for the dynamic model at 800 x 1088, both runtimes."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    batch = rng.uniform(-120, 130, (1, 3, 800, 1088)).astype(np.float32)
    sizes = np.asarray([[800, 1066]], np.int64)
    rows = []

    def ort_session(overrides):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        for name, value in overrides.items():
            options.add_free_dimension_override_by_name(name, value)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    dynamic = ort_session({})
    dims = dynamic.get_inputs()[0].shape
    static = ort_session({dims[2]: 800, dims[3]: 1088})
    for mode, session in (("dynamic (as exported)", dynamic), ("static (free-dimension overrides)", static)):
        start = time.perf_counter()
        session.run(None, {"input": batch, "image_sizes": sizes})
        first = (time.perf_counter() - start) * 1000
        ms = median_ms(
            functools.partial(session.run, None, {"input": batch, "image_sizes": sizes}),
            settings["warmup"],
            settings["repeats"],
            monitor,
            "shape modes",
        )
        rows.append({"runtime": "ONNX Runtime fp32", "mode": mode, "ms": ms, "first_call_ms": first})
    try:
        import openvino as ov
    except ImportError:
        return rows
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    for mode in ("dynamic (one compile)", "static (reshape + compile per canvas)"):
        model = core.read_model(str(path))
        if mode.startswith("static"):
            model.reshape({0: ov.PartialShape([1, 3, 800, 1088]), 1: ov.PartialShape([1, 2])})
        start = time.perf_counter()
        request = core.compile_model(model, "CPU", config).create_infer_request()
        compile_ms = (time.perf_counter() - start) * 1000
        infer = functools.partial(request.infer, {0: batch, 1: sizes})
        ms = median_ms(infer, settings["warmup"], settings["repeats"], monitor, "shape modes")
        rows.append({"runtime": "OpenVINO fp32", "mode": mode, "ms": ms, "compile_ms": compile_ms})
    return rows


# ---------------------------------------------------------------------------------------------
# 3: accuracy of the shipped model per policy


def prepare_shipped(workdir, settings, reuse):
    """The val split and the shipped model exported seed (448) and original (dynamic)."""
    from retinamask.apps.demo import DEMO_VAL_SEED, SHIPPED_CONFIG, SHIPPED_WEIGHTS
    from retinamask.config import load_config
    from retinamask.data.shapes import generate_shapes_dataset
    from retinamask.export import export_onnx

    data = generate_shapes_dataset(workdir / "shapes", num_train=0, num_val=settings["val_images"], seed=DEMO_VAL_SEED)
    cfg = load_config(SHIPPED_CONFIG)
    models = {"seed": workdir / "shapes_seed.onnx", "dynamic": workdir / "shapes_original.onnx"}
    for key, resize in (("seed", "seed"), ("dynamic", "original")):
        if not (reuse and models[key].exists()):
            export_onnx(cfg, SHIPPED_WEIGHTS, models[key], resize=resize, dynamic_batch=True, verify=False)
    return data, models


def shipped_accuracy(workdir, settings, threads, reuse, monitor):
    import shutil

    from retinamask.apps.evaluate import evaluate_outputs
    from retinamask.runtime.infer import run_inference

    data, models = prepare_shipped(workdir, settings, reuse)
    rows = []
    for policy, key in (("seed", "seed"), ("buckets", "dynamic"), ("original", "dynamic")):
        run_dir = workdir / f"infer_{policy}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh folder: never time a resume
        with monitor.timed("accuracy"):
            summary = run_inference(
                models[key],
                data["val_images"],
                output_dir=workdir,
                output_dirname=run_dir.name,
                threads=threads,
                resize=policy,
                progress=False,
            )
        canvases = sorted(
            {
                (r.get("canvas_height"), r.get("canvas_width"))
                for r in json.loads((run_dir / "images.json").read_text())["images"]
                if r.get("canvas_height")
            }
        )
        evaluation = evaluate_outputs(
            run_dir,
            data["val_annotations"],
            model_path=models[key],
            resize=policy,
            output_path=workdir / f"eval_{policy}.txt",
            progress=False,
            resume=False,
        )
        stats = evaluation["stats"]
        rows.append(
            {
                "policy": policy,
                "bbox": stats["bbox"]["AP"],
                "segm": stats["segm"]["AP"],
                "session": summary["session"],
                "images": evaluation["images_evaluated"],
                "canvases": len(canvases) if canvases else 1,
                "infer_images_per_s": summary["e2e"]["images_per_s"],
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------


def markdown(report):
    env, lines = report["environment"], []
    lines.append(
        f"CPU: {env['cpu']['model']} ({', '.join(env['cpu']['flags'])}; class {env['cpu']['class']}), "
        f"{env['threads']} threads; {env['date']}; `{env['command']}`"
    )
    load = report["load"]
    lines.append(
        f"Load check: other processes used {load['other_cpu_s']} CPU-s over {load['timed_s']} s timed "
        f"({100 * load['other_share']:.1f} % of {load['cpus']} CPUs) -> "
        f"{'fit for the record' if load['fit_for_record'] else 'NOT fit for the record'}"
    )
    lines += [
        "",
        "R-50-FPN RetinaMask, one 640x480 image, batch 1, ms per image (median); speed-up over seed 1344²:",
        "",
        *table_head("route", "seed 1344²:", "buckets:", "original:", "original vs seed:", "buckets vs seed:"),
    ]
    for row in report["latency"]:
        lines.append(
            f"| {row['route']} | {row['seed']:.0f} ({row['seed_canvas']}) | {row['buckets']:.0f} "
            f"({row['buckets_canvas']}) | {row['original']:.0f} ({row['original_canvas']}) | "
            f"{row['seed'] / row['original']:.2f}x | {row['seed'] / row['buckets']:.2f}x |"
        )
    lines += [
        "",
        "The dynamic-H/W model at 800x1088, dynamic vs static shapes (ms per image, median):",
        "",
        *table_head("runtime", "mode", "ms:", "first call / compile ms:"),
    ]
    for row in report["shape_modes"]:
        extra = row.get("first_call_ms", row.get("compile_ms"))
        lines.append(f"| {row['runtime']} | {row['mode']} | {row['ms']:.0f} | {extra:.0f} |")
    if report.get("accuracy"):
        acc = report["accuracy"]
        original = next(r for r in acc if r["policy"] == "original")
        lines += [
            "",
            f"Shipped shapes model, held-out val split (seed 7, {original['images']} images), "
            f"{original['session']} (`infer --backend auto` + `evaluate`):",
            "",
            *table_head(
                "policy",
                "canvases used:",
                "bbox mAP:",
                "segm mAP:",
                "Δ bbox vs original:",
                "Δ segm vs original:",
                "infer images/s:",
            ),
        ]
        for row in acc:
            lines.append(
                f"| {row['policy']} | {row['canvases']} | {row['bbox']:.4f} | {row['segm']:.4f} | "
                f"{row['bbox'] - original['bbox']:+.4f} | {row['segm'] - original['segm']:+.4f} | "
                f"{row['infer_images_per_s']:.1f} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 20 val images: a smoke run, not the record")
    parser.add_argument("--int8", action="store_true", help="also INT8 models (quantized here; ~1-2 min each)")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false", help="skip the shipped model's mAP")
    parser.add_argument("--workdir", default=None, help="models and data (default: a temporary folder)")
    parser.add_argument("--reuse-models", action="store_true", help="keep models already in --workdir")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="export/quantize the models and write the data into --workdir, then stop (run the "
        "timed part later with --reuse-models, alone on the machine)",
    )
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: physical cores)")
    parser.add_argument("--json", default=None, help="also write the report as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from retinamask.core.cpu import physical_cores

    settings = QUICK if args.quick else FULL
    threads = args.threads or physical_cores()
    with tempfile.TemporaryDirectory(prefix="resize-policies-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        monitor = LoadMonitor(max_other_share=MAX_LOAD_SHARE)
        paths = prepare_r50(workdir, settings, args.int8, args.reuse_models)
        if args.prepare_only:
            if args.accuracy:
                prepare_shipped(workdir, settings, args.reuse_models)
            print(f"prepared {workdir}")
            return 0
        report = {
            "environment": {
                "cpu": cpu_description(),
                "threads": threads,
                "settings": settings,
                "date": utc_now(),
                "command": " ".join(["python", *command_line()]),
            }
        }
        report["latency"] = latency_rows(paths, settings, threads, args.int8, monitor)
        report["shape_modes"] = shape_mode_rows(paths["dynamic"], settings, threads, monitor)
        if args.accuracy:
            report["accuracy"] = shipped_accuracy(workdir, settings, threads, args.reuse_models, monitor)
        report["load"] = load_report(monitor)
    text = markdown(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
