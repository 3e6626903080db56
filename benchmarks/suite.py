"""RetinaMask R-50-FPN on this machine, every route in ONE run: latency table, throughput of the
host-side stages, and the matmul peaks the latencies are judged against.

    .venv/bin/python benchmarks/suite.py [--quick] [--json OUT] [--workdir DIR] [--threads N]

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
as with a trained model (benchmarks/pytorch_latency.py). Nothing here asserts a speed: the
numbers are the result. ``--quick`` shrinks repeats and sets (a smoke run, not for the record).
"""

import argparse
import contextlib
import datetime
import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from cpu_load import LoadMonitor  # noqa: E402

CONFIG = "retinanet_mask_R-50-FPN_2x_adjust_std011_ms"
INPUT_SIZE = 1344
MAX_DETECTIONS = 100

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


# ---------------------------------------------------------------------------------------------
# environment


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    from retinamask.runtime.auto_backend import cpu_flags as all_flags

    return sorted(
        all_flags()
        & {
            "avx2",
            "avx512f",
            "avx512_bf16",
            "avx512_vnni",
            "avx_vnni",
            "amx_bf16",
            "amx_int8",
            "amx_tile",
            "avx512_fp16",
        }
    )


def package_versions():
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in (
        "retinamask",
        "torch",
        "torchvision",
        "onnx",
        "onnxruntime",
        "openvino",
        "onnxslim",
        "numpy",
        "opencv-python-headless",
        "pillow",
        "pycocotools",
        "faster-coco-eval",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment(threads):
    from retinamask.runtime.auto_backend import describe_cpu
    from retinamask.runtime.backends import physical_cores

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_class": describe_cpu(),
        "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": physical_cores(),
        "threads": threads,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": package_versions(),
    }


def _process_cpu_seconds():
    """pid -> (CPU seconds so far, command line) for every readable process."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            found[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / ticks, command)
        except (OSError, IndexError, ValueError):
            continue
    return found


def _own_processes():
    own, parents = {os.getpid()}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    changed = True
    while changed:  # this process's descendants (pool workers, forkserver)
        changed = False
        for pid, parent in parents.items():
            if parent in own and pid not in own:
                own.add(pid)
                changed = True
    return own


def other_busy_processes(when, interval=2.0, threshold=10.0):
    """Processes outside this one's tree that used more than ``threshold`` % of a CPU over
    ``interval`` seconds: a benchmark sharing the CPU with them measures the sharing."""
    if not Path("/proc/self/stat").exists():
        return []
    before = _process_cpu_seconds()
    time.sleep(interval)
    after = _process_cpu_seconds()
    own = _own_processes()
    busy = []
    for pid, (seconds, command) in after.items():
        if pid in own or pid not in before:
            continue
        percent = 100.0 * (seconds - before[pid][0]) / interval
        if percent > threshold:
            busy.append({"when": when, "pid": pid, "cpu_percent": percent, "command": command})
    return busy


# ---------------------------------------------------------------------------------------------
# FLOP counting on the ONNX graph


def count_flops(model_path):
    """Multiply-adds x 2 of the Conv / ConvTranspose / Gemm / MatMul nodes of an exported model.

    Shapes come from ONNX shape inference on the fixed input. Nodes at or after a RoiAlign are
    the mask head: their count is divided by their RoI axis (symbolic for end2end, 1000 for
    seed) to give a per-RoI figure. Returns {"dense_gflop", "mask_gflop_per_roi", "by_op"}.
    """
    import onnx

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)), data_prop=True)
    graph = proto.graph
    shapes = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        shapes[value.name] = [
            d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
        ]
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)

    after_roi_align = set()
    dense = per_roi = 0.0
    by_op = {}
    for node in graph.node:
        in_mask_head = node.op_type == "RoiAlign" or any(name in after_roi_align for name in node.input)
        if in_mask_head:
            after_roi_align.update(node.output)
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        flops, rows = _node_flops(node, shapes)
        if in_mask_head:
            per_roi += flops
        else:
            dense += flops * rows
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 1
    return {"dense_gflop": dense / 1e9, "mask_gflop_per_roi": per_roi / 1e9, "by_op": by_op}


def _node_flops(node, shapes):
    """(FLOPs for one index of the leading axis (image or RoI), that axis' size or 1 when symbolic)."""

    def dims(name):
        found = shapes.get(name)
        if found is None:
            raise ValueError(f"no shape for {name!r} (input of {node.op_type} {node.name!r})")
        return found

    attrs = {a.name: onnx_attr(a) for a in node.attribute}
    if node.op_type in ("Conv", "ConvTranspose"):
        x, w, y = dims(node.input[0]), dims(node.input[1]), dims(node.output[0])
        kernel = math.prod(w[2:])
        if node.op_type == "Conv":  # w [Cout, Cin/g, k..]: Cin/g * k MACs per output element
            macs = math.prod(y[1:]) * w[1] * kernel
        else:  # w [Cin, Cout/g, k..]: Cout/g * k MACs per input element
            macs = math.prod(x[1:]) * w[1] * kernel
        return 2.0 * macs, x[0] or 1
    a, y = dims(node.input[0]), dims(node.output[0])
    inner = a[0] if node.op_type == "Gemm" and attrs.get("transA", 0) else a[-1]
    return 2.0 * math.prod(d or 1 for d in y[1:]) * inner, y[0] or 1


def onnx_attr(attribute):
    import onnx

    return onnx.helper.get_attribute_value(attribute)


# ---------------------------------------------------------------------------------------------
# matmul peaks


def _matmul_model(path, size, int8=False):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if int8:
        weight = rng.integers(-127, 128, size=(size, size), dtype=np.int8)
        inits += [
            numpy_helper.from_array(weight, "Wq"),
            numpy_helper.from_array(np.float32(0.01), "w_scale"),
            numpy_helper.from_array(np.int8(0), "w_zero"),
            numpy_helper.from_array(np.float32(0.05), "a_scale"),
            numpy_helper.from_array(np.uint8(128), "a_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["A", "a_scale", "a_zero"], ["Aq"]),
            helper.make_node("DequantizeLinear", ["Aq", "a_scale", "a_zero"], ["Ad"]),
            helper.make_node("DequantizeLinear", ["Wq", "w_scale", "w_zero"], ["W"]),
            helper.make_node("MatMul", ["Ad", "W"], ["Y"]),
        ]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "W"))
        nodes.append(helper.make_node("MatMul", ["A", "W"], ["Y"]))
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _best_rate(fn, flops, repeats):
    fn()
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return flops / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peaks(workdir, threads, size, repeats):
    """GFLOP/s of a [size x size] x [size x size] matmul per runtime and precision (best of repeats)."""
    flops = 2.0 * size**3
    a = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    fp32_path = _matmul_model(workdir / "matmul_fp32.onnx", size)
    int8_path = _matmul_model(workdir / "matmul_int8.onnx", size, int8=True)
    rates = {}

    import onnxruntime as ort

    for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        rates[("onnxruntime", precision)] = _best_rate(lambda: session.run(None, {"A": a}), flops, repeats)
    try:
        import openvino as ov

        core = ov.Core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        for precision, path, hint in (
            ("fp32", fp32_path, "f32"),
            ("bf16", fp32_path, "bf16"),
            ("int8", int8_path, "f32"),
        ):
            if precision.upper() not in capabilities and precision != "fp32":
                continue
            compiled = core.compile_model(
                str(path),
                "CPU",
                {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
            )
            request = compiled.create_infer_request()
            rates[("openvino", precision)] = _best_rate(lambda: request.infer({0: a}), flops, repeats)
    except ImportError:
        pass
    try:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                x = torch.from_numpy(a).to(dtype)
                w = torch.from_numpy(a.T.copy()).to(dtype)
                rates[("torch", precision)] = _best_rate(lambda: torch.mm(x, w), flops, repeats)
        finally:
            torch.set_num_threads(previous)
    except ImportError:
        pass
    peaks = {}
    for (runtime, precision), rate in rates.items():
        if rate > peaks.get(precision, (None, 0.0))[1]:
            peaks[precision] = (runtime, rate)
    return {
        "size": size,
        "rates": [{"runtime": r, "precision": p, "gflops": v} for (r, p), v in rates.items()],
        "peak": {p: {"runtime": r, "gflops": v} for p, (r, v) in peaks.items()},
    }


# ---------------------------------------------------------------------------------------------
# models


def benchmark_model():
    from pytorch_latency import build_benchmark_model

    return build_benchmark_model()


def benchmark_input(size=INPUT_SIZE, variant=0):
    """One preprocessed image, float32 [1, 3, S, S]: a textured synthetic 4:3 picture through the
    seed transform (so the canvas has the zero padding a real landscape image gives)."""
    from retinamask.data.transforms import seed_preprocess
    from retinamask.export.verify import synthetic_image

    image = synthetic_image(height=size * 3 // 4, width=size, variant=variant)
    return seed_preprocess(image, size)[0][None]


def write_jpegs(folder, count, height=480, width=640, start_variant=100):
    """``count`` synthetic JPEG photos (quality 90), COCO-sized by default."""
    from PIL import Image

    from retinamask.export.verify import synthetic_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            Image.fromarray(synthetic_image(height, width, variant=start_variant + i)).save(path, quality=90)
        paths.append(path)
    return paths


def prepare_models(workdir, model, cfg, size, settings, reuse):
    """Export end2end (batch 1, K = 100), seed, and for full runs end2end with a dynamic batch and
    end2end with K = 50 (the eager model's mask cut); quantize the end2end models to INT8 (one
    calibration, shared through a range cache). Returns paths and how long each step took."""
    from retinamask.export import export_model
    from retinamask.export.quantize import quantize_onnx

    exports = {"end2end": {}, "seed": {"layout": "seed"}}
    if settings["batched"]:
        exports["end2end_dynamic"] = {"dynamic_batch": True}
        exports["end2end_k50"] = {"max_detections": 50}
    quantized = {"int8": "end2end"}
    if "end2end_k50" in exports:
        quantized["int8_k50"] = "end2end_k50"
    paths = {name: workdir / f"{name}.onnx" for name in list(exports) + list(quantized)}
    seconds = {}
    for name, options in exports.items():
        if reuse and paths[name].exists():
            logger.info("reusing %s", paths[name])
            continue
        logger.info("exporting %s ...", paths[name].name)
        start = time.perf_counter()
        export_model(
            model, cfg, paths[name], input_size=size, verify=False, **{"max_detections": MAX_DETECTIONS, **options}
        )
        seconds[name] = time.perf_counter() - start
    calibration = workdir / "calibration"
    write_jpegs(calibration, settings["calibration_images"], height=size * 3 // 4, width=size, start_variant=1000)
    cache = workdir / f"calibration_ranges_{settings['calibration_images']}.json"
    for name, source in quantized.items():
        if reuse and paths[name].exists():
            logger.info("reusing %s", paths[name])
            continue
        logger.info("quantizing %s ...", paths[source].name)
        start = time.perf_counter()
        quantize_onnx(paths[source], paths[name], calibration, settings["calibration_images"], calibration_cache=cache)
        seconds[name] = time.perf_counter() - start
    return paths, seconds


# ---------------------------------------------------------------------------------------------
# latency


def _times(fn, warmup, repeats):
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def eager_route(model, images):
    import torch

    tensor = torch.from_numpy(images)
    size = images.shape[-1]

    def run():
        with torch.no_grad():
            detections = model(tensor, [(size, size)] * images.shape[0])
        return [
            {
                "boxes": d["boxes"].numpy(),
                "labels": d["labels"].numpy(),
                "scores": d["scores"].numpy(),
                "masks": d["mask_probs"].numpy(),
            }
            for d in detections
        ]

    return run


def end2end_route(session, images):
    from retinamask.export.verify import output_detections

    return lambda: output_detections(session.run(images), "end2end")


def seed_route(session, images, nms_threshold=0.4, max_detections=MAX_DETECTIONS):
    """The seed layout's 1000 candidates per image, then the host's class-wise NMS (keep 100)."""
    from retinamask.ops.nms import classwise_nms

    def run():
        boxes, labels, scores, masks = session.run(images)
        results = []
        for i in range(boxes.shape[0]):
            keep = classwise_nms(boxes[i], scores[i], labels[i], nms_threshold, max_detections)
            results.append(
                {
                    "boxes": boxes[i][keep],
                    "labels": labels[i][keep],
                    "scores": scores[i][keep],
                    "masks": masks[i][keep][:, 0],
                    "mask_rois": boxes.shape[1],
                }
            )
        return results

    return run


def agreement(reference, detections, min_box_iou=0.9):
    """Share of the reference's detections that ``detections`` has too (same label, box IoU >=
    ``min_box_iou``), over the reference's count (eager keeps 50 with masks, others 100)."""
    from retinamask.export.verify import compare_detections

    matched = total = 0
    for ref, det in zip(reference, detections):
        det = {k: det[k] for k in ("boxes", "labels", "scores", "masks")}
        stats = compare_detections(ref, det, min_box_iou=min_box_iou)
        matched += stats["matched"]
        total += stats["reference"]
    return matched / total if total else 1.0


def latency_rows(paths, model, images, flops, peaks, threads, settings):
    """Every route on the same input; the first row (PyTorch eager) is the reference for ratios."""
    import torch

    from retinamask.runtime.backends import BackendUnavailable, candidate_configurations, create_session

    warmup, repeats = settings["warmup"], settings["repeats"]
    rows = []
    reference = None

    def measure(name, precision, run, rois_of, note="", batch=1, model_key="end2end"):
        nonlocal reference
        logger.info("timing %s ...", name)
        times, result = _times(run, warmup, repeats)
        median = statistics.median(times) / batch
        rois = rois_of(result)
        model_flops = flops[model_key]
        gflop = model_flops["dense_gflop"] + model_flops["mask_gflop_per_roi"] * rois / batch
        row = {
            "route": name,
            "precision": precision,
            "batch": batch,
            "median_s": median,
            "min_s": min(times) / batch,
            "times_s": times,
            "detections": sum(len(r["scores"]) for r in result) / batch,
            "mask_rois": rois / batch,
            "gflop": gflop,
            "gflops": gflop / median,
            "note": note,
        }
        peak = peaks["peak"].get("int8" if precision.startswith("int8") else precision)
        if peak:
            row["peak_gflops"] = peak["gflops"]
            row["peak_fraction"] = row["gflops"] / peak["gflops"]
        if reference is None:
            reference = result
            row["agreement_with_eager"] = 1.0
        else:
            row["agreement_with_eager"] = agreement(reference[:1], result[:1])
        rows.append(row)
        return row

    def unavailable(name, precision, cause):
        rows.append({"route": name, "precision": precision, "batch": 1, "error": cause})

    def mask_rows(result):
        return sum(r.get("mask_rois", len(r["scores"])) for r in result)

    torch.set_num_threads(threads)
    measure(
        "PyTorch eager (ours)",
        "fp32",
        eager_route(model, images),
        mask_rows,
        note=f"masks its top {model.num_masks_test} (NUM_MASKS_TEST); the ONNX routes mask all {MAX_DETECTIONS}",
    )

    def session_rows(specs):
        for name, path_key, backend, precision, note, batch in specs:
            try:
                session = create_session(
                    paths[path_key], backend, "cpu", "bf16" if precision == "bf16" else "fp32", threads=threads
                )
            except BackendUnavailable as e:
                unavailable(name, precision, e.cause)
                continue
            batch_images = np.repeat(images, batch, axis=0) if batch > 1 else images
            route = seed_route(session, batch_images) if path_key == "seed" else end2end_route(session, batch_images)
            measure(
                name,
                precision,
                route,
                mask_rows,
                note=note,
                batch=batch,
                model_key="seed" if path_key == "seed" else "end2end",
            )
            del session, route

    specs = [
        ("ONNX Runtime, end2end", "end2end", "onnxruntime", "fp32", "", 1),
        ("ONNX Runtime, seed layout + host NMS", "seed", "onnxruntime", "fp32", "mask head on all 1000 candidates", 1),
        ("OpenVINO, end2end", "end2end", "openvino", "fp32", "", 1),
        ("OpenVINO, end2end", "end2end", "openvino", "bf16", "", 1),
        ("ONNX Runtime, end2end INT8", "int8", "onnxruntime", "int8", "QDQ convs, float elsewhere", 1),
        ("OpenVINO, end2end INT8", "int8", "openvino", "int8", "QDQ convs, float elsewhere", 1),
    ]
    if "end2end_k50" in paths:
        k50 = "K = 50: masks the top 50 like eager"
        specs += [
            ("ONNX Runtime, end2end K=50", "end2end_k50", "onnxruntime", "fp32", k50, 1),
            ("OpenVINO, end2end K=50", "end2end_k50", "openvino", "bf16", k50, 1),
            ("ONNX Runtime, end2end K=50 INT8", "int8_k50", "onnxruntime", "int8", k50, 1),
            ("OpenVINO, end2end K=50 INT8", "int8_k50", "openvino", "int8", k50, 1),
        ]
    if "end2end_dynamic" in paths:
        specs += [
            ("ONNX Runtime, end2end, batch 2", "end2end_dynamic", "onnxruntime", "fp32", "per image", 2),
            ("OpenVINO, end2end, batch 2", "end2end_dynamic", "openvino", "bf16", "per image", 2),
        ]
    session_rows(specs)
    for backend, device, precision, reason in candidate_configurations():
        if device != "cpu":
            name = f"ONNX Runtime {'CUDA' if device == 'cuda' else 'TensorRT'}"
            if reason is not None:
                unavailable(name, precision, reason)
            else:
                session_rows([(name, "end2end", backend, precision, "", 1)])
    eager_median = rows[0]["median_s"]
    for row in rows:
        if "median_s" in row:
            row["speedup_vs_eager"] = eager_median / row["median_s"]
    return rows


# ---------------------------------------------------------------------------------------------
# session options and compiled-model caches


SWEEP = (
    # (backend, model, precision the session runs, label, runtime options, threads ("all" or 1), hint)
    ("onnxruntime", "end2end", "fp32", "ours (ORT_ENABLE_ALL, intra-op threads = cores, spinning)", {}, "all", None),
    ("onnxruntime", "end2end", "fp32", "1 thread", {}, 1, None),
    ("onnxruntime", "end2end", "fp32", "no spinning", {"session.intra_op.allow_spinning": "0"}, "all", None),
    ("onnxruntime", "end2end", "fp32", "denormals as zero", {"session.set_denormal_as_zero": "1"}, "all", None),
    ("onnxruntime", "int8", "fp32", "ours", {}, "all", None),
    ("openvino", "end2end", "fp32", "ours (LATENCY hint, INFERENCE_NUM_THREADS = cores)", {}, "all", "LATENCY"),
    ("openvino", "end2end", "fp32", "THROUGHPUT hint", {}, "all", "THROUGHPUT"),
    ("openvino", "end2end", "fp32", "CPU pinning", {"ENABLE_CPU_PINNING": True}, "all", "LATENCY"),
    ("openvino", "end2end", "fp32", "denormals optimization", {"CPU_DENORMALS_OPTIMIZATION": True}, "all", "LATENCY"),
    ("openvino", "end2end", "bf16", "ours", {}, "all", "LATENCY"),
    ("openvino", "end2end", "bf16", "CPU pinning", {"ENABLE_CPU_PINNING": True}, "all", "LATENCY"),
    ("openvino", "int8", "fp32", "ours (float parts in f32)", {}, "all", "LATENCY"),
    ("openvino", "int8", "bf16", "float parts in bf16", {}, "all", "LATENCY"),
)


def session_option_sweep(paths, images, threads, settings, workdir):
    """Latency of the end2end routes under alternative session settings, and session creation
    time without a cache, filling the cache, and from the cache."""
    from retinamask.runtime.backends import BackendUnavailable, create_session

    rows = []
    for backend, model_key, run_precision, label, options, variant_threads, hint in SWEEP:
        precision = "int8" if model_key == "int8" else run_precision
        try:
            session = create_session(
                paths[model_key],
                backend,
                "cpu",
                run_precision,
                threads=threads if variant_threads == "all" else variant_threads,
                performance_hint=hint or "LATENCY",
                runtime_options=options,
            )
        except BackendUnavailable as e:
            rows.append({"backend": backend, "precision": precision, "variant": label, "error": e.cause})
            continue
        logger.info("sweep: %s %s %s ...", backend, precision, label)
        times, _ = _times(lambda: session.run(images), min(1, settings["warmup"]), max(1, settings["repeats"] - 2))
        rows.append(
            {
                "backend": backend,
                "precision": precision,
                "variant": label,
                "median_s": statistics.median(times),
                "min_s": min(times),
            }
        )
        session = None  # free it before the next one is built
    loads = []
    for backend, model_key in (
        ("onnxruntime", "end2end"),
        ("openvino", "end2end"),
        ("onnxruntime", "int8"),
        ("openvino", "int8"),
    ):
        cache = Path(tempfile.mkdtemp(prefix=f"cache_{backend}_{model_key}-", dir=workdir))  # cold on every run
        entry = {"backend": backend, "model": model_key}
        for label, cache_dir in (("no_cache_s", None), ("cache_cold_s", cache), ("cache_warm_s", cache)):
            start = time.perf_counter()
            loaded = create_session(paths[model_key], backend, "cpu", threads=threads, cache_dir=cache_dir)
            loaded.run(images)  # the first run pays lazy initialisation too
            entry[label] = time.perf_counter() - start
            del loaded
        shutil.rmtree(cache, ignore_errors=True)
        loads.append(entry)
    return {"latency": rows, "session_creation": loads}


# ---------------------------------------------------------------------------------------------
# preprocessing throughput


def preprocessing_throughput(model_path, image_dir, worker_counts):
    """Images/s of JPEG -> tensor through infer's loader (its worker processes and shared-memory
    slots), each tensor copied into a batch buffer as infer does; pool start-up included."""
    from retinamask.formats.model_info import read_model_info
    from retinamask.runtime.infer import _load_inputs, collect_items

    info = read_model_info(model_path)
    items, _ = collect_items(image_dir, info.input_size)
    buffer = np.empty((1, 3, info.input_size, info.input_size), np.float32)
    rows = []
    for workers in worker_counts:
        start = time.perf_counter()
        count = 0
        for _, tensor, _, cause in _load_inputs(items, info, workers):
            if cause is not None:
                raise RuntimeError(cause)
            buffer[0] = tensor
            count += 1
        elapsed = time.perf_counter() - start
        rows.append({"workers": workers, "images": count, "seconds": elapsed, "images_per_s": count / elapsed})
    return rows


# ---------------------------------------------------------------------------------------------
# post-processing and COCO evaluation on synthetic data

EVAL_SIZES = ((480, 640), (640, 480), (427, 640), (640, 427), (375, 500), (500, 375), (612, 612))
EVAL_CATEGORIES = tuple(range(1, 91, 9))  # 10 non-contiguous COCO-like ids


def _ellipse_polygon(box, vertices=24):
    x0, y0, x1, y1 = box
    angle = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return np.stack([cx + rx * np.cos(angle), cy + ry * np.sin(angle)], 1).reshape(-1)


def synthetic_ground_truth(num_images, seed=0):
    """COCO dict: ``num_images`` images of COCO sizes, 1-12 ellipses each (polygon masks)."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = EVAL_SIZES[rng.integers(len(EVAL_SIZES))]
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "height": int(height), "width": int(width)})
        for _ in range(rng.integers(1, 13)):
            w = float(np.exp(rng.uniform(np.log(8), np.log(width * 0.8))))
            h = float(np.clip(w * np.exp(rng.normal(0, 0.4)), 6, height * 0.9))
            x0 = float(rng.uniform(0, width - w))
            y0 = float(rng.uniform(0, height - h))
            polygon = _ellipse_polygon((x0, y0, x0 + w, y0 + h))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(EVAL_CATEGORIES[rng.integers(len(EVAL_CATEGORIES))]),
                    "segmentation": [polygon.round(2).tolist()],
                    "area": float(np.pi * w * h / 4),
                    "bbox": [x0, y0, w, h],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "shape"} for c in EVAL_CATEGORIES]
    return {"images": images, "annotations": annotations, "categories": categories}


def _soft_ellipse_mask(resolution, sharpness, rng):
    """28x28 probabilities of an ellipse filling the box, with soft edges and noise."""
    yy, xx = (np.mgrid[0:resolution, 0:resolution] + 0.5) / resolution * 2 - 1
    radius = np.sqrt(xx**2 + yy**2)
    logits = sharpness * (1 - radius) + rng.normal(0, 0.5, size=radius.shape)
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def synthetic_outputs(image, annotations, category_ids, rng, rows=MAX_DETECTIONS, input_size=INPUT_SIZE):
    """end2end-layout model outputs for one image: each ground-truth object found once or twice
    (jittered box, score 0.3-1), the remaining rows false positives (score 0.05-0.4), sorted."""
    from retinamask.data.transforms import seed_resize_geometry

    height, width = image["height"], image["width"]
    (resized_h, resized_w), scale = seed_resize_geometry(height, width, input_size)
    contiguous = {c: i + 1 for i, c in enumerate(sorted(category_ids))}
    boxes, labels, scores = [], [], []
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        for _ in range(rng.integers(1, 3)):
            jitter = rng.normal(0, 0.05, 4) * [w, h, w, h]
            boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
            labels.append(
                contiguous[ann["category_id"]] if rng.random() < 0.9 else rng.integers(1, len(category_ids) + 1)
            )
            scores.append(rng.uniform(0.3, 1.0))
    while len(boxes) < rows:
        w, h = rng.uniform(8, width * 0.6), rng.uniform(8, height * 0.6)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        boxes.append([x, y, x + w, y + h])
        labels.append(rng.integers(1, len(category_ids) + 1))
        scores.append(rng.uniform(0.05, 0.4))
    order = np.argsort(-np.asarray(scores), kind="stable")[:rows]
    boxes = np.asarray(boxes, np.float32)[order] * np.float32(scale)
    boxes = np.clip(boxes, 0, input_size - 1)
    masks = np.stack([_soft_ellipse_mask(28, rng.uniform(4, 12), rng) for _ in order])[:, None]
    outputs = (boxes, np.asarray(labels, np.int32)[order], np.asarray(scores, np.float32)[order], masks)
    return outputs, (height, width), (resized_h, resized_w)


def _postprocess_chunk(job):
    """Worker: synthesise and post-process a chunk of images. Returns (results, seconds in
    ``outputs_to_coco_results``, seconds in the fused paste+RLE route, images where the two
    routes' RLE strings differ)."""
    from retinamask.decode.coco_results import outputs_to_coco_results
    from retinamask.decode.outputs import decode_outputs
    from retinamask.ops.masks import paste_and_encode_masks

    images, annotations_by_image, category_ids, seed = job
    rng = np.random.default_rng(seed)
    results, seconds, fused_seconds, mismatches = [], 0.0, 0.0, 0
    for image in images:
        outputs, original_hw, resized_hw = synthetic_outputs(
            image, annotations_by_image.get(image["id"], []), category_ids, rng
        )
        start = time.perf_counter()
        image_results = outputs_to_coco_results(outputs, "end2end", image["id"], original_hw, resized_hw, category_ids)
        seconds += time.perf_counter() - start
        start = time.perf_counter()
        detections = decode_outputs(
            outputs, "end2end", original_hw, resized_hw, num_classes=len(category_ids), paste=False
        )
        rles = paste_and_encode_masks(detections.mask_probs, detections.boxes, *original_hw)
        fused_seconds += time.perf_counter() - start
        mismatches += rles != [r["segmentation"] for r in image_results]
        results += image_results
    return results, seconds, fused_seconds, mismatches


def synthetic_jobs(num_images, chunk=50):
    """(ground truth dict, jobs): :func:`synthetic_ground_truth` split into chunks of ``chunk`` images,
    each job (images, their annotations by image id, sorted category ids, first index)."""
    dataset = synthetic_ground_truth(num_images)
    category_ids = sorted(c["id"] for c in dataset["categories"])
    by_image = {}
    for ann in dataset["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    jobs = [
        (
            dataset["images"][i : i + chunk],
            {im["id"]: by_image.get(im["id"], []) for im in dataset["images"][i : i + chunk]},
            category_ids,
            i,
        )
        for i in range(0, num_images, chunk)
    ]
    return dataset, jobs


def postprocess_and_evaluate(num_images, workers, chunk=50):
    """Synthetic ground truth and detections for ``num_images`` images -> post-processing
    (``outputs_to_coco_results``: paste + RLE) in ``workers`` processes -> COCO evaluation with
    each backend, stats compared."""
    import warnings

    from retinamask.evaluation.coco_eval import evaluate_coco

    dataset, jobs = synthetic_jobs(num_images, chunk)
    start = time.perf_counter()
    results, post_seconds, fused_seconds, mismatches = [], 0.0, 0.0, 0
    if workers > 1:
        context = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        with context.Pool(workers) as pool:
            outcomes = list(pool.imap(_postprocess_chunk, jobs))
    else:
        outcomes = [_postprocess_chunk(job) for job in jobs]
    for chunk_results, seconds, fused, differing in outcomes:
        results += chunk_results
        post_seconds += seconds
        fused_seconds += fused
        mismatches += differing
    wall = time.perf_counter() - start
    evaluations = {}
    for backend in ("pycocotools", "faster-coco-eval"):
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stats = evaluate_coco(dataset, results, backend=backend)
        except ImportError as e:
            evaluations[backend] = {"error": str(e)}
            continue
        evaluations[backend] = {"seconds": time.perf_counter() - start, "stats": stats}
    differences = None
    if all("stats" in e for e in evaluations.values()):
        a, b = (evaluations[k]["stats"] for k in ("pycocotools", "faster-coco-eval"))
        differences = max(abs(a[t][s] - b[t][s]) for t in ("bbox", "segm") for s in a[t])
    return {
        "images": num_images,
        "ground_truth": len(dataset["annotations"]),
        "detections": len(results),
        "workers": workers,
        "postprocess_wall_s": wall,
        "postprocess_ms_per_image": 1000 * post_seconds / num_images,
        "fused_ms_per_image": 1000 * fused_seconds / num_images,
        "fused_rle_mismatched_images": mismatches,
        "evaluation": evaluations,
        "max_stat_difference": differences,
    }


# ---------------------------------------------------------------------------------------------
# infer: streaming vs the seed's .bin route


def infer_routes(model_path, image_dir, workdir, threads):
    """``run_inference`` over the JPEG folder (preprocessing streamed in workers) vs
    ``preprocess_images`` to .bin + ``run_inference`` on the .info list; same session."""
    from retinamask.data.preprocess import preprocess_images
    from retinamask.formats.model_info import read_model_info
    from retinamask.runtime.backends import create_session
    from retinamask.runtime.infer import run_inference

    info = read_model_info(model_path)
    session = create_session(model_path, "onnxruntime", "cpu", threads=threads, model_info=info)
    session.run(np.zeros((1, 3, info.input_size, info.input_size), np.float32))  # warm-up
    count = len(list(Path(image_dir).iterdir()))

    fresh = Path(tempfile.mkdtemp(prefix="infer-", dir=workdir))  # never a resume of an earlier run's outputs
    start = time.perf_counter()
    run_inference(model_path, image_dir, output_dir=fresh, output_dirname="streaming", session=session, progress=False)
    streaming = time.perf_counter() - start

    start = time.perf_counter()
    preprocess_images(image_dir, fresh / "bins", fresh / "bins.info", input_size=info.input_size, progress=False)
    preprocess_seconds = time.perf_counter() - start
    run_inference(
        model_path, fresh / "bins.info", output_dir=fresh, output_dirname="from_bins", session=session, progress=False
    )
    bins_total = time.perf_counter() - start
    shutil.rmtree(fresh, ignore_errors=True)
    return {
        "images": count,
        "streaming_s": streaming,
        "bins_preprocess_s": preprocess_seconds,
        "bins_infer_s": bins_total - preprocess_seconds,
        "bins_total_s": bins_total,
    }


# ---------------------------------------------------------------------------------------------
# report


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report):
    env = report["environment"]
    lines = [
        f"# RetinaMask R-50-FPN, {report['input_size']}x{report['input_size']}, batch 1, CPU {env['cpu_class']} "
        f"— {env['date']}",
        "",
    ]
    load = report.get("load")
    if load:
        lines += [
            load["verdict"],
            "",
            "Other CPU-seconds per timed section: "
            + ", ".join(
                f"{name} {section['other_cpu_seconds']:.1f} of {section['elapsed_s']:.0f} s"
                for name, section in load["sections"].items()
            )
            + ".",
            "",
        ]
    busy = report.get("other_busy_processes") or []
    if busy:
        lines += [
            "**Warning: other processes used the CPU during this run, so these are not a quiet run's timings: "
            + "; ".join(f"{b['when']}: pid {b['pid']} {b['cpu_percent']:.0f}% `{b['command'][:60]}`" for b in busy)
            + "**",
            "",
        ]
    lines += [
        f"CPU: {env['cpu']} ({env['logical_cpus']} CPUs, {env['physical_cores']} physical cores; "
        f"{' '.join(env['cpu_flags'])}); threads {env['threads']}; load average (1, 5, 15 min) at start "
        f"{', '.join(f'{v:.2f}' for v in env['load_average_at_start'] or ())}, at end "
        f"{', '.join(f'{v:.2f}' for v in env.get('load_average_at_end') or ())}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"Command: `{env['command']}`",
        "",
        "## End-to-end latency per image (preprocessed tensor -> detections + 28x28 masks)",
        "",
        "| route | precision | median s | min s | x eager | detections | mask RoIs | GFLOP | GFLOP/s | % of matmul peak | agree w/ eager | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["latency"]:
        if "error" in row:
            lines.append(
                f"| {row['route']} | {row['precision']} | - | - | - | - | - | - | - | - | - | "
                f"unavailable: {row['error'].replace('|', '/')} |"
            )
            continue
        peak = f"{100 * row['peak_fraction']:.0f}%" if "peak_fraction" in row else "-"
        lines.append(
            f"| {row['route']} | {row['precision']} | {row['median_s']:.3f} | {row['min_s']:.3f} | "
            f"{row['speedup_vs_eager']:.2f} | {row['detections']:.0f} | {row['mask_rois']:.0f} | {row['gflop']:.0f} | "
            f"{row['gflops']:.0f} | {peak} | {100 * row['agreement_with_eager']:.0f}% | {row['note']} |"
        )
    flops = report["flops"]["end2end"]
    lines += [
        "",
        f"GFLOP counted on the ONNX graph (Conv/ConvTranspose/Gemm/MatMul, 2 x MACs): dense part "
        f"(backbone + FPN + RetinaNet head) {flops['dense_gflop']:.0f}, mask head {flops['mask_gflop_per_roi']:.3f} per RoI. "
        "'agree w/ eager': share of the eager model's detections found with the same label and box IoU >= 0.9 "
        "(random weights: many near-tied scores, so reduced precision reorders them; accuracy is judged by mAP "
        "on the trained model, see RESULTS.md).",
        "",
        "## Matmul peaks (same threads)",
        "",
        "| runtime | precision | GFLOP/s |",
        "|---|---|---:|",
    ]
    for rate in report["peaks"]["rates"]:
        lines.append(f"| {rate['runtime']} | {rate['precision']} | {rate['gflops']:.0f} |")
    lines += ["", f"Matrix {report['peaks']['size']}x{report['peaks']['size']}; best of the repeats.", ""]

    sweep = report.get("sweep")
    if sweep:
        lines += [
            "## Session options (model run only, batch 1)",
            "",
            "| backend | precision | variant | median s | min s |",
            "|---|---|---|---:|---:|",
        ]
        for row in sweep["latency"]:
            if "error" in row:
                lines.append(
                    f"| {row['backend']} | {row['precision']} | {row['variant']} | unavailable: {row['error']} | |"
                )
            else:
                lines.append(
                    f"| {row['backend']} | {row['precision']} | {row['variant']} | {row['median_s']:.3f} | "
                    f"{row['min_s']:.3f} |"
                )
        lines += [
            "",
            "Session creation + first run (s):",
            "",
            "| backend | model | no cache | filling the cache | from the cache |",
            "|---|---|---:|---:|---:|",
        ]
        for row in sweep["session_creation"]:
            lines.append(
                f"| {row['backend']} | {row['model']} | {row['no_cache_s']:.2f} | {row['cache_cold_s']:.2f} | "
                f"{row['cache_warm_s']:.2f} |"
            )
        lines.append("")
    lines += [
        f"## Preprocessing (JPEG 640x480 -> {report['input_size']}x{report['input_size']} tensor, "
        "infer's worker processes; pool start-up included)",
        "",
        "| workers | images | s | images/s |",
        "|---:|---:|---:|---:|",
    ]
    for row in report["preprocessing"]:
        lines.append(f"| {row['workers']} | {row['images']} | {row['seconds']:.2f} | {row['images_per_s']:.1f} |")
    post = report["postprocess_eval"]
    lines += [
        "",
        f"## Post-processing + COCO evaluation, {post['images']} synthetic images "
        f"({post['ground_truth']} objects, {post['detections']} detections)",
        "",
        f"Post-processing (paste + RLE, `outputs_to_coco_results`): {post['postprocess_ms_per_image']:.1f} ms "
        f"per image; the fused `paste_and_encode_masks` route: {post['fused_ms_per_image']:.1f} ms per image "
        f"(RLE strings differ on {post['fused_rle_mismatched_images']} images). Wall time of both plus the "
        f"synthesis: {post['postprocess_wall_s']:.1f} s with {post['workers']} worker(s).",
        "",
        "| evaluator | bbox+segm s | bbox AP | segm AP |",
        "|---|---:|---:|---:|",
    ]
    for backend, result in post["evaluation"].items():
        if "error" in result:
            lines.append(f"| {backend} | unavailable: {result['error']} | - | - |")
        else:
            lines.append(
                f"| {backend} | {result['seconds']:.2f} | {result['stats']['bbox']['AP']:.4f} | "
                f"{result['stats']['segm']['AP']:.4f} |"
            )
    lines += ["", f"Largest difference over the 24 stats: {_fmt(post['max_stat_difference'], 6)}.", ""]
    infer = report["infer"]
    lines += [
        f"## `infer` over {infer['images']} JPEGs (ONNX Runtime fp32 end2end)",
        "",
        "| route | s |",
        "|---|---:|",
        f"| streaming (images -> infer) | {infer['streaming_s']:.2f} |",
        f"| seed route: preprocess to .bin | {infer['bins_preprocess_s']:.2f} |",
        f"| seed route: infer on .bin | {infer['bins_infer_s']:.2f} |",
        f"| seed route total | {infer['bins_total_s']:.2f} |",
        "",
    ]
    prep = report["preparation_s"]
    if prep:
        lines.append("Preparation (not timed above): " + ", ".join(f"{k} {v:.0f} s" for k, v in prep.items()) + ".")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sets (smoke run)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write every number as JSON here")
    parser.add_argument("--workdir", default=None, help="keep exported models and data here (default: a temp dir)")
    parser.add_argument("--reuse-models", action="store_true", help="reuse models already in --workdir")
    parser.add_argument("--threads", type=int, default=None, help="threads everywhere (default: physical cores)")
    parser.add_argument(
        "--sweep", action="store_true", help="also time alternative session options and the compiled-model caches"
    )
    parser.add_argument("--input-size", type=int, default=INPUT_SIZE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[suite] %(message)s", stream=sys.stderr)

    from retinamask.runtime.backends import physical_cores

    settings = QUICK if args.quick else FULL
    threads = args.threads or physical_cores()
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="retinamask-suite-")))
        monitor = LoadMonitor()
        report = {
            "input_size": args.input_size,
            "quick": args.quick,
            "settings": settings,
            "environment": environment(threads),
            "other_busy_processes": other_busy_processes("start"),
        }
        if report["other_busy_processes"]:
            logger.warning("other processes are using the CPU: %s", report["other_busy_processes"])
        from retinamask.config import load_config

        model = benchmark_model()
        paths, report["preparation_s"] = prepare_models(
            workdir, model, load_config(CONFIG), args.input_size, settings, args.reuse_models
        )
        report["flops"] = {key: count_flops(paths[key]) for key in ("end2end", "seed")}
        with monitor.timed("matmul peaks"):
            report["peaks"] = matmul_peaks(workdir, threads, settings["peak_size"], settings["peak_repeats"])
        images = benchmark_input(args.input_size)
        with monitor.timed("latency table"):
            report["latency"] = latency_rows(paths, model, images, report["flops"], report["peaks"], threads, settings)
        report["other_busy_processes"] += other_busy_processes("after the latency table")
        if args.sweep:
            with monitor.timed("sweep"):
                report["sweep"] = session_option_sweep(paths, images, threads, settings, workdir)

        jpegs = workdir / "jpegs"
        write_jpegs(jpegs, settings["preprocess_images"])
        worker_counts = sorted({0, 1, threads})
        with monitor.timed("preprocessing"):
            report["preprocessing"] = preprocessing_throughput(paths["end2end"], jpegs, worker_counts)
        from retinamask.apps.evaluate import default_workers

        with monitor.timed("post-processing + evaluation"):
            report["postprocess_eval"] = postprocess_and_evaluate(settings["eval_images"], default_workers())
        infer_dir = workdir / "infer_jpegs"
        write_jpegs(infer_dir, settings["infer_images"], start_variant=500)
        with monitor.timed("infer routes"):
            report["infer"] = infer_routes(paths["end2end"], infer_dir, workdir, threads)
        report["load"] = {**monitor.summary(), "verdict": monitor.verdict()}
        if not report["load"]["fit_for_record"]:
            logger.warning(report["load"]["verdict"])
    report["other_busy_processes"] += other_busy_processes("end")
    report["environment"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    text = markdown(report)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=1, default=str))
        print(f"\n(written {args.json_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
