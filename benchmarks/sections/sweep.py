"""Suite section "Session options" (``--sweep``): the end2end routes under alternative session
settings (threads, spinning, denormals, hints, pinning), and session creation time without a
cache, filling the cache, and from the cache."""

import functools
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.tables import table_head, table_row
from benchmarks.timing import repeat_times

logger = logging.getLogger("suite")

CACHED_MODELS = (("onnxruntime", "end2end"), ("openvino", "end2end"), ("onnxruntime", "int8"), ("openvino", "int8"))

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
    """{"latency": a row per :data:`SWEEP` variant, "session_creation": a row per cached model}."""
    return {
        "latency": sweep_latency(paths, images, threads, settings),
        "session_creation": session_creation_times(paths, images, threads, workdir),
    }


def sweep_latency(paths, images, threads, settings):
    """Median and minimum seconds of each :data:`SWEEP` variant (or why it cannot run)."""
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
        times, _ = repeat_times(
            functools.partial(session.run, images), min(1, settings["warmup"]), max(1, settings["repeats"] - 2)
        )
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
    return rows


def session_creation_times(paths, images, threads, workdir):
    """Seconds to create a session and run it once: no cache, filling a fresh cache, from it."""
    from retinamask.runtime.backends import create_session

    loads = []
    for backend, model_key in CACHED_MODELS:
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
    return loads


def markdown(sweep):
    """The section's lines."""
    lines = [
        "## Session options (model run only, batch 1)",
        "",
        *table_head("backend", "precision", "variant", "median s:", "min s:"),
    ]
    for row in sweep["latency"]:
        if "error" in row:
            lines.append(
                f"| {row['backend']} | {row['precision']} | {row['variant']} | unavailable: {row['error']} | |"
            )
        else:
            lines.append(
                table_row(
                    row["backend"], row["precision"], row["variant"], f"{row['median_s']:.3f}", f"{row['min_s']:.3f}"
                )
            )
    lines += [
        "",
        "Session creation + first run (s):",
        "",
        *table_head("backend", "model", "no cache:", "filling the cache:", "from the cache:"),
    ]
    for row in sweep["session_creation"]:
        lines.append(
            table_row(
                row["backend"],
                row["model"],
                f"{row['no_cache_s']:.2f}",
                f"{row['cache_cold_s']:.2f}",
                f"{row['cache_warm_s']:.2f}",
            )
        )
    lines.append("")
    return lines
