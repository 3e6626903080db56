"""Suite section "End-to-end latency per image": every route on the same preprocessed input,
batch 1 (and batch 2 in full runs), preprocessed tensor in -> detections + 28x28 masks out.

Routes: PyTorch eager (the reference for speed-ups and agreement), ONNX Runtime end2end and
seed layout (+ host NMS), OpenVINO fp32 and bf16, INT8 in both runtimes, K = 50 and batch 2 in
full runs, and the GPU routes (a row saying why where they cannot run)."""

import logging
import statistics

import numpy as np

from benchmarks.r50 import MAX_DETECTIONS
from benchmarks.tables import table_head, table_row
from benchmarks.timing import repeat_times
from retinamask.core.contract import DEFAULT_NMS_THRESHOLD

logger = logging.getLogger("suite")

K50_NOTE = "K = 50: masks the top 50 like eager"
# (row name, model, backend, precision, note, batch)
CPU_ROUTES = (
    ("ONNX Runtime, end2end", "end2end", "onnxruntime", "fp32", "", 1),
    ("ONNX Runtime, seed layout + host NMS", "seed", "onnxruntime", "fp32", "mask head on all 1000 candidates", 1),
    ("OpenVINO, end2end", "end2end", "openvino", "fp32", "", 1),
    ("OpenVINO, end2end", "end2end", "openvino", "bf16", "", 1),
    ("ONNX Runtime, end2end INT8", "int8", "onnxruntime", "int8", "QDQ convs, float elsewhere", 1),
    ("OpenVINO, end2end INT8", "int8", "openvino", "int8", "QDQ convs, float elsewhere", 1),
)
K50_ROUTES = (
    ("ONNX Runtime, end2end K=50", "end2end_k50", "onnxruntime", "fp32", K50_NOTE, 1),
    ("OpenVINO, end2end K=50", "end2end_k50", "openvino", "bf16", K50_NOTE, 1),
    ("ONNX Runtime, end2end K=50 INT8", "int8_k50", "onnxruntime", "int8", K50_NOTE, 1),
    ("OpenVINO, end2end K=50 INT8", "int8_k50", "openvino", "int8", K50_NOTE, 1),
)
BATCH2_ROUTES = (
    ("ONNX Runtime, end2end, batch 2", "end2end_dynamic", "onnxruntime", "fp32", "per image", 2),
    ("OpenVINO, end2end, batch 2", "end2end_dynamic", "openvino", "bf16", "per image", 2),
)


def eager_route(model, images):
    """A call running the PyTorch model on ``images`` (float32 [B, 3, S, S]) -> detections per image."""
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


def seed_route(session, images, nms_threshold=DEFAULT_NMS_THRESHOLD, max_detections=MAX_DETECTIONS):
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


def mask_rois(result):
    """RoIs the mask head ran on over a batch's results (seed: every candidate; else each detection)."""
    return sum(r.get("mask_rois", len(r["scores"])) for r in result)


class LatencyTable:
    """The rows of the table; the first measured one (PyTorch eager) is the reference for
    agreement. ``flops``: :func:`benchmarks.flops.count_flops` per model; ``peaks``: the matmul peaks."""

    def __init__(self, flops, peaks, warmup, repeats):
        self.flops, self.peaks = flops, peaks
        self.warmup, self.repeats = warmup, repeats
        self.rows = []
        self.reference = None

    def measure(self, name, precision, run, note="", batch=1, model_key="end2end"):
        logger.info("timing %s ...", name)
        times, result = repeat_times(run, self.warmup, self.repeats)
        median = statistics.median(times) / batch
        rois = mask_rois(result)
        model_flops = self.flops[model_key]
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
        peak = self.peaks["peak"].get("int8" if precision.startswith("int8") else precision)
        if peak:
            row["peak_gflops"] = peak["gflops"]
            row["peak_fraction"] = row["gflops"] / peak["gflops"]
        if self.reference is None:
            self.reference = result
            row["agreement_with_eager"] = 1.0
        else:
            row["agreement_with_eager"] = agreement(self.reference[:1], result[:1])
        self.rows.append(row)
        return row

    def unavailable(self, name, precision, cause):
        self.rows.append({"route": name, "precision": precision, "batch": 1, "error": cause})

    def measure_sessions(self, routes, paths, images, threads):
        """One row per route of (name, model, backend, precision, note, batch), each in a session of its own."""
        from retinamask.runtime.backends import BackendUnavailable, create_session

        for name, path_key, backend, precision, note, batch in routes:
            try:
                session = create_session(
                    paths[path_key], backend, "cpu", "bf16" if precision == "bf16" else "fp32", threads=threads
                )
            except BackendUnavailable as e:
                self.unavailable(name, precision, e.cause)
                continue
            batch_images = np.repeat(images, batch, axis=0) if batch > 1 else images
            route = seed_route(session, batch_images) if path_key == "seed" else end2end_route(session, batch_images)
            model_key = "seed" if path_key == "seed" else "end2end"
            self.measure(name, precision, route, note=note, batch=batch, model_key=model_key)
            del session, route


def latency_rows(paths, model, images, flops, peaks, threads, settings):
    """Every route on the same input; the first row (PyTorch eager) is the reference for ratios."""
    import torch

    from retinamask.runtime.backends import candidate_configurations

    table = LatencyTable(flops, peaks, settings["warmup"], settings["repeats"])
    torch.set_num_threads(threads)
    table.measure(
        "PyTorch eager (ours)",
        "fp32",
        eager_route(model, images),
        note=f"masks its top {model.num_masks_test} (NUM_MASKS_TEST); the ONNX routes mask all {MAX_DETECTIONS}",
    )
    routes = list(CPU_ROUTES)
    if "end2end_k50" in paths:
        routes += K50_ROUTES
    if "end2end_dynamic" in paths:
        routes += BATCH2_ROUTES
    table.measure_sessions(routes, paths, images, threads)
    for backend, device, precision, reason in candidate_configurations():
        if device != "cpu":
            name = f"ONNX Runtime {'CUDA' if device == 'cuda' else 'TensorRT'}"
            if reason is not None:
                table.unavailable(name, precision, reason)
            else:
                table.measure_sessions([(name, "end2end", backend, precision, "", 1)], paths, images, threads)
    rows = table.rows
    eager_median = rows[0]["median_s"]
    for row in rows:
        if "median_s" in row:
            row["speedup_vs_eager"] = eager_median / row["median_s"]
    return rows


def markdown(rows, flops):
    """The section's lines: the table and how GFLOP and agreement are counted."""
    lines = [
        "## End-to-end latency per image (preprocessed tensor -> detections + 28x28 masks)",
        "",
        *table_head(
            "route",
            "precision",
            "median s:",
            "min s:",
            "x eager:",
            "detections:",
            "mask RoIs:",
            "GFLOP:",
            "GFLOP/s:",
            "% of matmul peak:",
            "agree w/ eager:",
            "note",
        ),
    ]
    for row in rows:
        if "error" in row:
            lines.append(
                table_row(row["route"], row["precision"], *["-"] * 9, f"unavailable: {row['error'].replace('|', '/')}")
            )
            continue
        peak = f"{100 * row['peak_fraction']:.0f}%" if "peak_fraction" in row else "-"
        lines.append(
            f"| {row['route']} | {row['precision']} | {row['median_s']:.3f} | {row['min_s']:.3f} | "
            f"{row['speedup_vs_eager']:.2f} | {row['detections']:.0f} | {row['mask_rois']:.0f} | {row['gflop']:.0f} | "
            f"{row['gflops']:.0f} | {peak} | {100 * row['agreement_with_eager']:.0f}% | {row['note']} |"
        )
    return lines + [
        "",
        f"GFLOP counted on the ONNX graph (Conv/ConvTranspose/Gemm/MatMul, 2 x MACs): dense part "
        f"(backbone + FPN + RetinaNet head) {flops['dense_gflop']:.0f}, mask head "
        f"{flops['mask_gflop_per_roi']:.3f} per RoI. "
        "'agree w/ eager': share of the eager model's detections found with the same label and box IoU >= 0.9 "
        "(random weights: many near-tied scores, so reduced precision reorders them; accuracy is judged by mAP "
        "on the trained model, see RESULTS.md).",
        "",
    ]
