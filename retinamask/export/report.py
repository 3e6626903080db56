"""Human-readable lines about an export report (``export_onnx``'s dict), for the CLI and the demo."""

from retinamask.formats.run_sidecar import CANVAS_SIDE_KEY


def format_report(report):
    """A few human-readable lines about an export report (see retinamask.export.export_onnx)."""
    s = report["simplification"]
    if s.get("tool"):
        simplified = f"simplified with {s['tool']}: {s['nodes_before']} -> {s['nodes_after']} nodes"
    elif s["requested"]:
        simplified = f"not simplified: {s.get('skipped')} ({s['nodes_after']} nodes)"
    else:
        simplified = f"not simplified ({s['nodes_after']} nodes)"
    outputs = ", ".join(f"{name} {dims}" for name, dims in report["outputs"].items())
    lines = [
        f"exported {report['path']} ({report['file_bytes'] / 1e6:.1f} MB) in {report['total_seconds']:.1f} s "
        f"(torch.onnx.export {report['export_seconds']:.1f} s): "
        f"layout {report['layout']}, batch {report['batch']}, "
        f"input {report[CANVAS_SIDE_KEY] or 'any HxW (dynamic) + image_sizes'}, resize {report['resize']['policy']}, "
        f"opset {report['opset']}, {report['precision']}",
        f"  {simplified}",
        f"  outputs: {outputs}",
    ]
    q = report.get("quantization")
    if q:
        lines.append(
            f"  INT8: {q['quantized_nodes']} nodes quantized (QDQ, per-channel int8 weights, uint8 activations), "
            f"calibrated on {q['calibration_images_used']} image(s) of {q['calibration_dir']} "
            f"in {q['total_seconds']:.1f} s"
        )
    if report.get("external_data"):
        lines.append(f"  weights in the side file {report['external_data']} (model over 2 GB)")
    v = report["verification"]
    if v is None:
        lines.append("  not verified (--no-verify)")
    else:
        lines.append(
            f"  onnxruntime vs {v['compared_with']} on {v['images']} sample image(s): "
            f"{v['matched']}/{v['reference']} reference detections matched ({v['exported']} exported, "
            f"{v['unmatched_at_cut']} unmatched at the top-K cut); max |d score| {v['max_score_diff']:.2g}, "
            f"min box IoU {v['min_box_iou']:.4f}, max |d mask prob| {v['max_mask_diff']:.2g} "
            f"-> {'PASSED' if v['passed'] else 'FAILED'}"
        )
        if v["reference"] == 0 and v["exported"] == 0:
            lines.append("  (nothing is detected on the synthetic sample: only the empty result was compared)")
    return "\n".join(lines)
