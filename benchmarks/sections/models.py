"""Suite preparation: the R-50 exports every section times (end2end, seed; for full runs a
dynamic batch and K = 50) and their INT8 copies. Not timed in the report, only noted."""

import logging
import time

from benchmarks.r50 import MAX_DETECTIONS, write_jpegs

logger = logging.getLogger("suite")


def prepare_models(workdir, model, cfg, canvas_side, settings, reuse):
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
            model,
            cfg,
            paths[name],
            canvas_side=canvas_side,
            verify=False,
            **{"max_detections": MAX_DETECTIONS, **options},
        )
        seconds[name] = time.perf_counter() - start
    calibration = workdir / "calibration"
    write_jpegs(
        calibration, settings["calibration_images"], height=canvas_side * 3 // 4, width=canvas_side, start_variant=1000
    )
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
