"""The Markdown of a ``benchmarks.gpu_check`` report (its JSON holds everything, tracebacks too)."""

from benchmarks.tables import number, table_head, table_row


def _environment(result):
    ops = result["torchvision_ops"]

    def op(check):
        if not check["runs"]:
            return f"fails ({check['error']})"
        return f"runs on {check['output_device']}, {'agrees with' if check['matches_cpu'] else 'DIFFERS from'} CPU"

    lines = [
        f"- device: {result['device']} ({result.get('device_name')})"
        + (f", capability {result['capability']}, {result['memory_gib']} GiB" if "capability" in result else ""),
        f"- torch {result['torch']}, torchvision {result['torchvision']}, "
        f"CUDA {result['cuda']}, cuDNN {result['cudnn']}",
        f"- CPU: {result['cpu']}, torch threads {result['torch_threads']}",
        f"- torchvision.ops.nms: {op(ops['nms'])}; roi_align: {op(ops['roi_align'])}",
    ]
    return lines


def _sci(value):
    return "-" if value is None else f"{value:.1e}"


def _parity(result):
    lines = [
        *table_head(
            "path", "reference", "ours", "matched", "max abs d score:", "min box IoU:", "max d mask prob:", "RLE same"
        )
    ]
    for path, label in (("direct", "model on the reference tensor"), ("e2e", "Predictor from the PNG")):
        r = result[path]
        rle = "-"
        if "identical_rle" in r:
            rle = f"{r['identical_rle']}/{r['matched']} ({number(r['identical_rle_share'], 3)})"
        lines.append(
            table_row(
                label,
                r["reference"],
                r["ours"],
                r["matched"],
                _sci(r["max_score_delta"]),
                number(r["min_box_iou"], 5),
                _sci(r["max_mask_prob_delta"]),
                rle,
            )
        )
    return lines


def _latency(result):
    lines = [
        f"{result['model']}; mask head on the top {result['masks_per_image']} detections; "
        f"cuDNN benchmark {result['cudnn_benchmark']}",
        "",
    ]
    lines += table_head("size", "batch:", "precision", "median ms:", "min ms:", "images/s:", "peak MiB:", "runs:")
    for r in result["rows"]:
        lines.append(
            table_row(
                r["size"],
                r["batch"],
                r["precision"],
                number(r["median_ms"], 1),
                number(r["min_ms"], 1),
                number(r["images_per_s"], 1),
                number(r["peak_mem_mib"], 0),
                r["repeats"],
            )
        )
    profile = result["profile"]
    stages = ", ".join(f"{k} {v:.1f} ms" for k, v in profile["stages_ms"].items())
    lines += ["", f"Profile of {profile['size']} {profile['precision']}, batch 1: stages (median) {stages}.", ""]
    lines += ["```", profile["table"].rstrip(), "```"]
    return lines


def _accuracy(result):
    rows = result["rows"]
    base = rows[0]
    lines = [
        f"Shipped shapes model, {result['images']} val images (seed {result['seed']}), batch {result['batch']}",
        "",
    ]
    lines += table_head("precision", "bbox mAP:", "d bbox:", "segm mAP:", "d segm:", "images/s:")
    for r in rows:
        lines.append(
            table_row(
                r["precision"],
                number(r["bbox_ap"], 4),
                f"{r['bbox_ap'] - base['bbox_ap']:+.4f}",
                number(r["segm_ap"], 4),
                f"{r['segm_ap'] - base['segm_ap']:+.4f}",
                number(r["images_per_s"], 1),
            )
        )
    return lines


def _training(result):
    first, last = result["first_loss"]["loss"], result["last_loss"]["loss"]
    return [
        f"- {result['iterations']} iterations of the Trainer, config {result['config']} {' '.join(result['opts'])}, "
        f"{result['images_per_batch']} images per batch",
        f"- loss {first:.4f} -> {last:.4f}; all finite: {result['all_finite']}",
        f"- {result['iterations_per_s']:.2f} iterations/s (after the first); peak memory "
        f"{number(result['peak_mem_mib'], 0)} MiB",
    ]


RENDERERS = {
    "environment": _environment,
    "parity": _parity,
    "latency": _latency,
    "accuracy": _accuracy,
    "training": _training,
}


def markdown(report):
    """The report as Markdown: its head, then one part per section (status, seconds, figures)."""
    lines = ["# GPU check: the PyTorch path on the device", "", f"{report['date']}: `{report['command']}`", ""]
    for name, record in report["sections"].items():
        seconds = record.get("seconds")
        took = f", {seconds:.1f} s" if seconds is not None else ""
        lines += [f"## {name} ({record['status']}{took})", ""]
        if record["status"] == "ok":
            lines += RENDERERS[name](record["result"])
        elif record["status"] == "skipped":
            lines.append(f"skipped: {record['reason']}")
        else:
            lines.append(f"FAILED: `{record['error']}` (traceback in the JSON)")
        lines.append("")
    if "total_seconds" in report:
        lines.append(f"Total {report['total_seconds']:.1f} s.")
    return "\n".join(lines) + "\n"
