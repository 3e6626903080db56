"""Suite section "``infer`` over JPEGs": ``run_inference`` over a folder of JPEGs (preprocessing
streamed in workers) vs the seed's route (``preprocess`` to .bin files, then ``infer`` on them),
on the same session."""

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.tables import table_head


def infer_routes(model_path, image_dir, workdir, threads):
    """``run_inference`` over the JPEG folder (preprocessing streamed in workers) vs
    ``preprocess_images`` to .bin + ``run_inference`` on the .info list; same session."""
    from retinamask.data.preprocess import preprocess_images
    from retinamask.formats.model_info import read_model_info
    from retinamask.runtime.backends import create_session
    from retinamask.runtime.infer import run_inference

    info = read_model_info(model_path)
    session = create_session(model_path, "onnxruntime", "cpu", threads=threads, model_info=info)
    session.run(np.zeros((1, 3, info.canvas_side, info.canvas_side), np.float32))  # warm-up
    count = len(list(Path(image_dir).iterdir()))

    fresh = Path(tempfile.mkdtemp(prefix="infer-", dir=workdir))  # never a resume of an earlier run's outputs
    start = time.perf_counter()
    run_inference(model_path, image_dir, output_dir=fresh, output_dirname="streaming", session=session, progress=False)
    streaming = time.perf_counter() - start

    start = time.perf_counter()
    preprocess_images(image_dir, fresh / "bins", fresh / "bins.info", resize=info.resize, progress=False)
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


def markdown(infer):
    """The section's lines."""
    return [
        f"## `infer` over {infer['images']} JPEGs (ONNX Runtime fp32 end2end)",
        "",
        *table_head("route", "s:"),
        f"| streaming (images -> infer) | {infer['streaming_s']:.2f} |",
        f"| seed route: preprocess to .bin | {infer['bins_preprocess_s']:.2f} |",
        f"| seed route: infer on .bin | {infer['bins_infer_s']:.2f} |",
        f"| seed route total | {infer['bins_total_s']:.2f} |",
        "",
    ]
