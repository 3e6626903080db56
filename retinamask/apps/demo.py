"""The embedded default end to end, offline: synthetic val data -> ONNX export of the shipped
model -> streaming inference -> COCO evaluation -> benchmark -> overlays -> tracked video clips.

The export makes the model the package ships (``SHIPPED_ONNX_COMMAND``: end2end, ``--resize original``,
dynamic batch), and without torch that shipped ONNX runs: the figures do not depend on torch being installed.

Every step is the same library code the COCO flow uses (export_onnx, run_inference,
evaluate_outputs, run_benchmark, OnnxPredictor); finished steps are reused on a rerun.
"""

import json
import time
from pathlib import Path

from retinamask.config.shipped import SHIPPED_CONFIG, SHIPPED_ONNX_OPTIONS, SHIPPED_WEIGHTS

# The demo's val split uses a seed the shipped model was never trained or tuned on.
DEMO_VAL_SEED = 7


def run_demo(
    output_dir="runs/demo", num_images=200, backend="auto", num_overlays=8, bench_loops=30, video_clips=3, log=print
):
    """Run every step; returns a dict with the mAPs, fps and paths. Prints progress through ``log``.
    ``video_clips``: generated clips tracked after the images (0: no video step)."""
    from retinamask.apps.evaluate import evaluate_outputs
    from retinamask.config import load_config
    from retinamask.data.shapes import generate_shapes_dataset
    from retinamask.runtime.bench import run_benchmark
    from retinamask.runtime.infer import run_inference

    out = Path(output_dir)
    timings = {}
    backend = _resolved_backend(backend, log)
    cfg = load_config(SHIPPED_CONFIG)

    start = time.perf_counter()
    data = generate_shapes_dataset(out / "data", num_train=0, num_val=num_images, seed=DEMO_VAL_SEED)
    images_dir, ann_file = data["val_images"], data["val_annotations"]
    timings["data"] = time.perf_counter() - start
    log(f"[1/5] data: {num_images} synthetic val images (seed {DEMO_VAL_SEED}) in {images_dir}")

    start = time.perf_counter()
    model_path = _export_if_stale(cfg, out / "retinamask_shapes_small.onnx", log)
    timings["export"] = time.perf_counter() - start

    start = time.perf_counter()
    infer_summary = run_inference(
        model_path, images_dir, output_dir=out, output_dirname="infer", batch_size=1, backend=backend, progress=True
    )
    timings["infer"] = time.perf_counter() - start
    log(f"[3/5] infer: {infer_summary['count']} images inferred, {infer_summary['skipped']} kept from an earlier run")

    start = time.perf_counter()
    eval_summary = evaluate_outputs(
        out / "infer", ann_file, layout="end2end", output_path=out / "evaluation_results.txt", progress=True
    )
    stats = eval_summary["stats"]
    # the same masks pasted sub-pixel: the original's integer-box paste caps segm on these small shapes
    sharp = evaluate_outputs(
        out / "infer",
        ann_file,
        layout="end2end",
        output_path=out / "evaluation_results_subpixel.txt",
        iou_types=("segm",),
        convention="subpixel",
        progress=False,
    )
    timings["evaluate"] = time.perf_counter() - start
    segm_subpixel = sharp["stats"]["segm"]["AP"]
    log(
        f"[4/5] evaluate: bbox mAP {stats['bbox']['AP']:.3f}, segm mAP {stats['segm']['AP']:.3f} "
        f"(COCO mAP@[.5:.95], {num_images} images) -> {out / 'evaluation_results.txt'}; "
        f"segm {segm_subpixel:.3f} with the masks pasted sub-pixel (--convention subpixel)"
    )

    start = time.perf_counter()
    bench = run_benchmark(model_path, backend=backend, batch_size=1, loop=bench_loops, warmup=3)
    timings["bench"] = time.perf_counter() - start
    log(
        f"[5/5] bench: {backend} {bench['precision']}: {bench['throughput']:.1f} fps, "
        f"latency mean {bench['mean_ms']:.1f} ms, p99 {bench['p99_ms']:.1f} ms"
    )

    _draw_overlays(model_path, backend, images_dir, num_overlays, out / "overlays", log)

    video = None
    if video_clips:
        from retinamask.apps.demo_video import run_video_demo

        start = time.perf_counter()
        video = run_video_demo(model_path, backend, out, DEMO_VAL_SEED, log=log, clips=video_clips)
        timings["video"] = time.perf_counter() - start

    result = {
        "bbox_mAP": stats["bbox"]["AP"],
        "segm_mAP": stats["segm"]["AP"],
        "segm_mAP_subpixel": segm_subpixel,
        "fps": bench["throughput"],
        "latency_ms": bench["mean_ms"],
        "backend": backend,
        "num_images": num_images,
        "resize": _model_resize(model_path),
        "model": str(model_path),
        "overlays": str(out / "overlays"),
        "video": video,
        "seconds": timings,
    }
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _resolved_backend(backend, log):
    """``backend``, or for "auto" the runtime chosen for fp32 on this CPU (logged): resolved once, so that
    every step runs (and reports) the same runtime."""
    if backend == "auto":
        from retinamask.runtime.auto_backend import choose_backend

        choice = choose_backend("fp32", "cpu")
        log(f"[INFO] {choice.line('fp32', 'cpu')}")
        backend = choice.backend
    return backend


def _export_if_stale(cfg, model_path, log):
    """Export the shipped model to ``model_path`` as the shipped ONNX is made (``SHIPPED_ONNX_OPTIONS``, verified)
    unless an export of that kind newer than the shipped weights is there; returns the model to run. Without
    torch (absent, or failing to import) the export is skipped and the shipped model's own ONNX runs instead,
    and a line says so."""
    from retinamask.apps.torch_probe import torch_unavailable
    from retinamask.config.shipped import shipped_onnx_path

    no_torch = torch_unavailable()
    if no_torch:
        shipped = shipped_onnx_path()
        log(
            f"[2/5] export: skipped ({no_torch}: pip install 'retinamask[torch]' to export); running the shipped "
            f"model's ONNX {shipped.name} (original resize)"
        )
        return shipped
    from retinamask.export.onnx_export import export_onnx

    if _is_current(model_path):
        log(f"[2/5] export: {model_path} is current (kept)")
        return model_path
    report = export_onnx(cfg, SHIPPED_WEIGHTS, model_path, verify=True, **SHIPPED_ONNX_OPTIONS)
    from retinamask.export.report import format_report

    log("[2/5] " + format_report(report))
    return model_path


def _is_current(model_path):
    """An export newer than the shipped weights, of the shipped ONNX's resize (not an earlier demo's 448² one)."""
    if not model_path.exists() or model_path.stat().st_mtime < SHIPPED_WEIGHTS.stat().st_mtime:
        return False
    return _model_resize(model_path).startswith(f"{SHIPPED_ONNX_OPTIONS['resize']}:")


def _model_resize(model_path):
    """The model's resize policy in words, e.g. 'original: short side 448, long side <= 448, padded to /32'."""
    from retinamask.formats.model_info import read_model_info

    return read_model_info(model_path).resize.describe()


def _draw_overlays(model_path, backend, images_dir, num_overlays, overlays_dir, log):
    """Predict the first ``num_overlays`` images (by name) and write their overlays (PNG + JSON)."""
    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.apps.predict_images import predict_images

    predictor = OnnxPredictor(model_path, backend=backend)
    images = sorted(Path(images_dir).iterdir())[:num_overlays]
    predict_images(predictor, images, overlays_dir, progress=False)
    log(f"overlays: {len(images)} PNGs (+ JSON) in {overlays_dir}")
