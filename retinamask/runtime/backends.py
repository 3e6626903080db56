"""Inference sessions over an exported model: ONNX Runtime (CPU / CUDA / TensorRT EPs) and OpenVINO (CPU).

``create_session(...)`` returns a :class:`Session` whose ``run(batch)`` takes
float32 ``[B, 3, S, S]`` for any B (a dynamic-H/W model: ``run(batch [B, 3, H, W],
image_sizes [B, 2])``) and returns the model's 4 outputs with B rows:
a fixed-batch model gets its last chunk zero-padded and the padding rows dropped.

Dynamic-H/W models run as one dynamic compile in both runtimes: on R-50 at 800 x 1088 the
static alternatives (ONNX Runtime free-dimension overrides; OpenVINO ``reshape`` +
``compile_model`` per canvas) were no faster (benchmarks/RESULTS.md, "Resize policies") and
cost a compile per canvas. ``static_shapes=True`` selects OpenVINO's static compiles anyway.

A requested accelerator that is not there is an error (:class:`BackendUnavailable`),
never a silent fall-back to the CPU. OpenVINO runs float32 unless asked otherwise,
because its CPU plugin defaults to bf16 where the CPU has it (see
../shared/facts: bf16 moved most boxes by more than 0.1 px).
"""

import logging
from pathlib import Path

from retinamask.core.cpu import physical_cores
from retinamask.runtime.onnxruntime_session import ORT_PROVIDER, create_onnxruntime_session
from retinamask.runtime.openvino_session import create_openvino_session, openvino_capabilities
from retinamask.runtime.session import (
    BACKEND_CHOICES,
    BACKENDS,
    DEVICES,
    PERFORMANCE_HINTS,
    PRECISIONS,
    BackendUnavailable,
    Session,
    normalize_precision,
)

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "DEVICES",
    "OPENVINO_STATIC_SHAPES",
    "PERFORMANCE_HINTS",
    "PRECISIONS",
    "BackendUnavailable",
    "Session",
    "candidate_configurations",
    "create_session",
    "create_sessions",
    "normalize_precision",
    "openvino_capabilities",
    "physical_cores",
]

logger = logging.getLogger(__name__)

# Dynamic-H/W models in OpenVINO: a static compile per canvas shape (True) or one dynamic compile
# (False, as fast on R-50: benchmarks/RESULTS.md, "Resize policies").
OPENVINO_STATIC_SHAPES = False


def create_session(
    model_path,
    backend="auto",
    device="cpu",
    precision="fp32",
    threads=None,
    cache_dir=None,
    performance_hint="LATENCY",
    model_info=None,
    runtime_options=None,
    static_shapes=None,
    streams=1,
    advise=True,
):
    """Compile ``model_path`` for a backend and device.

    backend: "onnxruntime" (device "cpu", "cuda", "tensorrt"), "openvino" (device "cpu") or
    "auto": the fastest installed one for this CPU, device and precision (auto_backend.py),
    logged in one line and kept as ``session.choice``.
    precision: "fp32" everywhere; "bf16" (and "fp16" where the CPU has it) with OpenVINO;
    "fp16" with TensorRT; "fastest": the fastest measured here within an accuracy budget
    (auto_backend.choose_precision), logged in one line. threads: intra-op threads (default: physical cores).
    cache_dir: ONNX Runtime CPU keeps its optimized model there, TensorRT its
    engines, OpenVINO its compiled blobs (CACHE_DIR). performance_hint: OpenVINO's
    LATENCY or THROUGHPUT. model_info: a :class:`~.model_info.ModelInfo` (read from
    the file when None). runtime_options: extra settings passed through as they are:
    ONNX Runtime session config entries (e.g. {"session.intra_op.allow_spinning": "0"}),
    OpenVINO compile properties (e.g. {"ENABLE_CPU_PINNING": True}); they override ours.
    static_shapes: for dynamic-H/W models, compile a static copy per canvas shape (None: what
    was measured faster for the backend, see the module docstring). streams: OpenVINO's NUM_STREAMS
    (``threads`` each), for :func:`create_sessions`; ONNX Runtime ignores it. advise: log the one line on
    this CPU's precisions (a faster one offered at fp32; a reduced one measured slower, or unmeasured), once
    a process.
    Raises BackendUnavailable when the combination cannot run here, InputError for a bad model.
    """
    from retinamask.formats.model_info import read_model_info

    if backend not in BACKEND_CHOICES:
        raise BackendUnavailable(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
    if device not in DEVICES:
        raise BackendUnavailable(f"device must be one of {DEVICES}, got {device!r}")
    from retinamask.runtime.auto_backend import choose_precision

    try:
        precision_choice = choose_precision(precision, device, backend)
    except ValueError as e:
        raise BackendUnavailable(str(e)) from None
    precision = precision_choice.precision
    if precision_choice.reason and advise:
        logger.info(precision_choice.line())
    if threads is not None and int(threads) <= 0:
        raise BackendUnavailable(f"threads must be a positive integer, got {threads}")
    info = model_info or read_model_info(model_path)
    choice = None
    if backend == "auto":
        from retinamask.runtime.auto_backend import choose_backend

        choice = choose_backend(precision, device, quantized=info.quantized)
        logger.info(choice.line(precision, device))
        backend = choice.backend
    threads = int(threads) if threads else physical_cores()
    cache_dir = Path(cache_dir) if cache_dir else None
    runtime_options = dict(runtime_options or {})
    if backend == "onnxruntime":
        session = create_onnxruntime_session(
            Path(model_path), info, device, precision, threads, cache_dir, runtime_options
        )
    else:
        session = create_openvino_session(
            Path(model_path),
            info,
            device,
            precision,
            threads,
            cache_dir,
            performance_hint,
            runtime_options,
            OPENVINO_STATIC_SHAPES if static_shapes is None else static_shapes,
            streams=max(1, int(streams)),
        )
    session.choice = choice
    if device == "cpu" and advise and not precision_choice.reason:  # "fastest" said its line already
        _advise_precision(precision)
    return session


_ADVISED = set()  # the precision lines this process has said (a command making many sessions says each once)


def _advise_precision(precision):
    """One line, once a process, on the precision this CPU runs: a faster one offered at fp32 where measured so;
    bf16 / fp16 measured slower than fp32 here, never measured, or measured faster at an accuracy cost."""
    from retinamask.runtime.auto_backend import faster_precision_offer, reduced_precision_note

    if precision == "fp32":
        line, level = faster_precision_offer(), logging.INFO
    else:
        line, level = reduced_precision_note(precision), logging.WARNING
    if line is not None and line not in _ADVISED:
        _ADVISED.add(line)
        logger.log(level, line)


def create_sessions(model_path, count, backend="auto", device="cpu", precision="fp32", threads=None, **options):
    """``count`` sessions of one model that run ``count`` batches at once (``infer --sessions``, the
    server's worker threads), each with ``threads`` intra-op threads; ``options`` as :func:`create_session`.

    ONNX Runtime: ``count`` independent sessions. OpenVINO: one compile with ``count`` streams and a
    :meth:`~.openvino_session.OpenVinoSession.replica` per session (separately compiled models share
    one executor in an OpenVINO process: 2 sessions x 1 thread ran R-50 at 0.53x one session's speed,
    benchmarks/RESULTS.md); an INT8 model gets one stream (:func:`~.openvino_session.openvino_streams`),
    which its sessions share. "auto" decides (and logs) once.
    """
    first = create_session(model_path, backend, device, precision, threads=threads, streams=count, **options)
    if first.backend == "openvino":
        if count > 1 and first.info.quantized:
            logger.info("OpenVINO runs INT8 on one stream (two gave wrong outputs): %d sessions take turns", count)
        return [first] + [first.replica() for _ in range(count - 1)]
    rest = [
        create_session(model_path, first.backend, device, first.precision, threads=threads, **options)
        for _ in range(count - 1)
    ]
    return [first] + rest


# ---------------------------------------------------------------------------
# what can run here


def candidate_configurations():
    """Every (backend, device, precision) worth benchmarking, each with None or the
    reason it cannot run here: ORT CPU fp32; OpenVINO fp32, bf16 and fp16 (where the CPU has
    their kernels); ORT CUDA fp32 and TensorRT fp32/fp16 (if onnxruntime-gpu has them)."""
    import onnxruntime as ort

    rows = [("onnxruntime", "cpu", "fp32", None)]
    try:
        import openvino  # noqa: F401

        capabilities = openvino_capabilities()
        rows.append(("openvino", "cpu", "fp32", None))
        rows.append(("openvino", "cpu", "bf16", None if "BF16" in capabilities else "no bf16 kernels on this CPU"))
        fp16 = None if "FP16" in capabilities else "no fp16 kernels on this CPU (needs avx512_fp16)"
        rows.append(("openvino", "cpu", "fp16", fp16))
    except ImportError:
        rows.append(("openvino", "cpu", "fp32", "openvino not installed"))
    available = ort.get_available_providers()
    for device, precisions in (("cuda", ("fp32",)), ("tensorrt", ("fp32", "fp16"))):
        reason = None
        if ORT_PROVIDER[device] not in available:
            reason = (
                f"this onnxruntime {ort.__version__} is a CPU build (the {device} route needs onnxruntime-gpu "
                "and an NVIDIA GPU)"
                if "CUDAExecutionProvider" not in available
                else "this onnxruntime-gpu build has no TensorRT EP"
            )
        for precision in precisions:
            rows.append(("onnxruntime", device, precision, reason))
    return rows
