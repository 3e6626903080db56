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

import hashlib
import logging
import os
import platform
from pathlib import Path

import numpy as np

from retinamask.core.errors import RetinaMaskError

logger = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "openvino")
BACKEND_CHOICES = ("auto",) + BACKENDS  # what --backend accepts; auto: see auto_backend.py
# Dynamic-H/W models in OpenVINO: a static compile per canvas shape (True) or one dynamic compile
# (False, as fast on R-50: benchmarks/RESULTS.md, "Resize policies").
OPENVINO_STATIC_SHAPES = False
DEVICES = ("cpu", "cuda", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
_PRECISION_ALIASES = {
    "f32": "fp32",
    "float32": "fp32",
    "fp32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "f16": "fp16",
    "fp16": "fp16",
    "float16": "fp16",
}
_OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_ORT_PROVIDER = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class BackendUnavailable(RetinaMaskError):
    """The requested backend / device / precision cannot run on this machine or installation."""


def normalize_precision(precision):
    """'f32' / 'float32' / 'fp32' -> 'fp32' (likewise bf16, fp16); ValueError otherwise."""
    try:
        return _PRECISION_ALIASES[str(precision).lower()]
    except KeyError:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}") from None


def physical_cores():
    """Physical cores among the CPUs this process may run on (SMT siblings counted once).

    Read from /sys topology (core_id, physical_package_id); falls back to the CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                (
                    topology.joinpath("physical_package_id").read_text().strip(),
                    topology.joinpath("core_id").read_text().strip(),
                )
            )
        except OSError:
            return len(cpus)
    return max(1, len(cores))


class Session:
    """A compiled model. ``run(batch)`` -> list of 4 numpy arrays, each with batch rows first.

    ``name``: e.g. "onnxruntime-cpu-fp32". ``batch_size``: the model's fixed batch or
    None (dynamic). ``input_size``: S. Subclasses implement ``_run`` for exactly one
    batch the model accepts.
    """

    def __init__(self, name, backend, device, precision, input_name, input_size, batch_size, image_sizes_name=None):
        self.name = name
        self.backend = backend
        self.device = device
        self.precision = precision
        self.input_name = input_name
        self.input_size = input_size  # S of a square model; None for dynamic H/W
        self.batch_size = batch_size
        self.choice = None  # the auto_backend.BackendChoice when --backend auto picked this session
        self.image_sizes_name = image_sizes_name

    @property
    def dynamic_hw(self):
        return self.image_sizes_name is not None

    def run(self, batch, image_sizes=None):
        """batch: float32 [B, 3, S, S], any B >= 1 (dynamic-H/W models: [B, 3, H, W] and
        ``image_sizes`` [B, 2] (h, w) of each image's valid region; None: the whole canvas).
        Returns the 4 outputs, each [B, ...]."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.dynamic_hw:
            if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[0] < 1:
                raise ValueError(f"expected a batch [B, 3, H, W], got {list(batch.shape)}")
            if image_sizes is None:
                image_sizes = np.tile(np.asarray(batch.shape[2:], np.int64), (batch.shape[0], 1))
            image_sizes = np.ascontiguousarray(image_sizes, dtype=np.int64).reshape(-1, 2)
            if image_sizes.shape[0] != batch.shape[0]:
                raise ValueError(f"image_sizes has {image_sizes.shape[0]} rows for a batch of {batch.shape[0]}")
        else:
            expected = (3, self.input_size, self.input_size)
            if batch.ndim != 4 or batch.shape[1:] != expected or batch.shape[0] < 1:
                raise ValueError(f"expected a batch [B, {', '.join(map(str, expected))}], got {list(batch.shape)}")
        fixed = self.batch_size
        if fixed is None or batch.shape[0] == fixed:
            return list(self._run(batch, image_sizes))
        parts = []
        for start in range(0, batch.shape[0], fixed):
            chunk = batch[start : start + fixed]
            sizes = None if image_sizes is None else image_sizes[start : start + fixed]
            rows = chunk.shape[0]
            if rows < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - rows,) + chunk.shape[1:], np.float32)])
                if sizes is not None:
                    sizes = np.concatenate([sizes, np.tile(np.asarray(chunk.shape[2:], np.int64), (fixed - rows, 1))])
            parts.append([out[:rows] for out in self._run(chunk, sizes)])
        return [np.concatenate(outs) for outs in zip(*parts)]

    def _run(self, batch, image_sizes=None):
        raise NotImplementedError

    def __repr__(self):
        canvas = "HxW dynamic" if self.dynamic_hw else f"S={self.input_size}"
        return f"<{type(self).__name__} {self.name} batch={self.batch_size or 'dynamic'} {canvas}>"


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
):
    """Compile ``model_path`` for a backend and device.

    backend: "onnxruntime" (device "cpu", "cuda", "tensorrt"), "openvino" (device "cpu") or
    "auto": the fastest installed one for this CPU, device and precision (auto_backend.py),
    logged in one line and kept as ``session.choice``.
    precision: "fp32" everywhere; "bf16" (and "fp16" where the CPU has it) with OpenVINO;
    "fp16" with TensorRT. threads: intra-op threads (default: physical cores).
    cache_dir: ONNX Runtime CPU keeps its optimized model there, TensorRT its
    engines, OpenVINO its compiled blobs (CACHE_DIR). performance_hint: OpenVINO's
    LATENCY or THROUGHPUT. model_info: a :class:`~.model_info.ModelInfo` (read from
    the file when None). runtime_options: extra settings passed through as they are:
    ONNX Runtime session config entries (e.g. {"session.intra_op.allow_spinning": "0"}),
    OpenVINO compile properties (e.g. {"ENABLE_CPU_PINNING": True}); they override ours.
    static_shapes: for dynamic-H/W models, compile a static copy per canvas shape (None: what
    was measured faster for the backend, see the module docstring).
    Raises BackendUnavailable when the combination cannot run here, InputError for a bad model.
    """
    from retinamask.formats.model_info import read_model_info

    if backend not in BACKEND_CHOICES:
        raise BackendUnavailable(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
    if device not in DEVICES:
        raise BackendUnavailable(f"device must be one of {DEVICES}, got {device!r}")
    try:
        precision = normalize_precision(precision)
    except ValueError as e:
        raise BackendUnavailable(str(e)) from None
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
        session = _create_onnxruntime(Path(model_path), info, device, precision, threads, cache_dir, runtime_options)
    else:
        session = _create_openvino(
            Path(model_path),
            info,
            device,
            precision,
            threads,
            cache_dir,
            performance_hint,
            runtime_options,
            OPENVINO_STATIC_SHAPES if static_shapes is None else static_shapes,
        )
    session.choice = choice
    return session


# ---------------------------------------------------------------------------
# ONNX Runtime


class OnnxRuntimeSession(Session):
    def __init__(self, session, info, device, precision):
        super().__init__(
            f"onnxruntime-{device}-{precision}",
            "onnxruntime",
            device,
            precision,
            info.input_name,
            info.input_size,
            info.batch_size,
            info.image_sizes_name,
        )
        self.session = session
        self.providers = tuple(session.get_providers())

    def _run(self, batch, image_sizes=None):
        feed = {self.input_name: batch}
        if self.image_sizes_name is not None:
            feed[self.image_sizes_name] = image_sizes
        return self.session.run(None, feed)


def _create_onnxruntime(path, info, device, precision, threads, cache_dir, runtime_options):
    import onnxruntime as ort

    allowed = {"cpu": ("fp32",), "cuda": ("fp32",), "tensorrt": ("fp32", "fp16")}[device]
    if precision not in allowed:
        hint = " (for bf16 on the CPU use --backend openvino)" if precision == "bf16" else ""
        raise BackendUnavailable(f"onnxruntime on {device} runs {', '.join(allowed)}, not {precision}{hint}")
    available = ort.get_available_providers()
    wanted = _ORT_PROVIDER[device]
    if wanted not in available:
        gpu_hint = ""
        if device in ("cuda", "tensorrt"):
            gpu_hint = (
                "; install onnxruntime-gpu instead of onnxruntime (never both: they are the same module)"
                if "CUDAExecutionProvider" not in available
                else "; this onnxruntime-gpu build has no TensorRT EP"
            )
        raise BackendUnavailable(
            f"onnxruntime {ort.__version__} has no {wanted} (available: {', '.join(available)}){gpu_hint}"
        )

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only; provider fall-backs are checked below
    for key, value in runtime_options.items():
        try:
            options.add_session_config_entry(str(key), str(value))
        except Exception as e:
            raise BackendUnavailable(f"onnxruntime refused the session option {key}={value}: {e}") from None
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif device == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        trt_options = {"trt_fp16_enable": precision == "fp16"}
        if cache_dir is not None:
            trt_dir = cache_dir / "tensorrt"
            trt_dir.mkdir(parents=True, exist_ok=True)
            trt_options.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(trt_dir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(trt_dir),
            )
        # Nodes TensorRT cannot take run on CUDA, not on the CPU.
        providers = [("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"]

    model_to_load, save_to = str(path), None
    if cache_dir is not None and device == "cpu":
        cached = cache_dir / f"{path.stem}.{_ort_cache_key(path, runtime_options)}.ort.onnx"
        if cached.is_file():
            model_to_load = str(cached)
            # The cached graph is already optimized (for this machine and version).
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        else:
            cache_dir.mkdir(parents=True, exist_ok=True)
            save_to = cached
            options.optimized_model_filepath = str(cached.with_name(f".{cached.name}.{os.getpid()}.tmp"))
    try:
        session = ort.InferenceSession(model_to_load, options, providers=providers)
    except Exception as e:
        raise BackendUnavailable(f"onnxruntime could not load the model on {device}: {e}") from None
    if save_to is not None:
        tmp = Path(options.optimized_model_filepath)
        if tmp.is_file():
            os.replace(tmp, save_to)
    active = session.get_providers()
    if active[0] != wanted:
        raise BackendUnavailable(
            f"onnxruntime could not start {wanted} (no usable GPU, or CUDA/cuDNN/TensorRT libraries missing?); "
            f"it would have run on {active[0]}, which was not asked for"
        )
    return OnnxRuntimeSession(session, info, device, precision)


def _ort_cache_key(path, runtime_options=None):
    """Names the optimized graph: it is specific to the model file, the onnxruntime version, the CPU
    and the session options that can change graph transformations."""
    import onnxruntime as ort

    stat = path.stat()
    values = [path.resolve(), stat.st_size, stat.st_mtime_ns, ort.__version__, _cpu_model()]
    if runtime_options:
        values.append(sorted((str(k), str(v)) for k, v in runtime_options.items()))
    text = "|".join(str(v) for v in values)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------------------
# OpenVINO


class OpenVinoSession(Session):
    """``compile_for_shape``: None, or a function (batch, H, W) -> compiled model (static copies of
    a dynamic-H/W model, one per canvas shape, kept)."""

    def __init__(self, compiled, info, precision, applied_precision, compile_for_shape=None):
        super().__init__(
            f"openvino-cpu-{precision}",
            "openvino",
            "cpu",
            precision,
            info.input_name,
            info.input_size,
            info.batch_size,
            info.image_sizes_name,
        )
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.applied_precision = applied_precision
        self.num_outputs = len(compiled.outputs)
        self.compile_for_shape = compile_for_shape
        self.requests = {}  # canvas shape -> infer request of its static compile

    def _request_for(self, batch):
        if self.compile_for_shape is None:
            return self.request
        shape = tuple(batch.shape)
        request = self.requests.get(shape)
        if request is None:
            request = self.requests[shape] = self.compile_for_shape(shape).create_infer_request()
        return request

    def _run(self, batch, image_sizes=None):
        request = self._request_for(batch)
        inputs = {0: batch} if self.image_sizes_name is None else {0: batch, 1: image_sizes}
        request.infer(inputs, share_inputs=True)  # batch is a contiguous float32 array: no input copy
        # copy: the request reuses its output buffers on the next call
        return [np.array(request.get_output_tensor(i).data) for i in range(self.num_outputs)]


def openvino_capabilities():
    """OpenVINO CPU OPTIMIZATION_CAPABILITIES (e.g. FP32, BF16, INT8); empty when OpenVINO is absent."""
    try:
        import openvino as ov
    except ImportError:
        return ()
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _create_openvino(
    path, info, device, precision, threads, cache_dir, performance_hint, runtime_options, static_shapes=True
):
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailable("OpenVINO is not installed (pip install openvino)") from None
    if device != "cpu":
        raise BackendUnavailable(f"the openvino backend runs on --device cpu here, not {device}")
    if performance_hint not in PERFORMANCE_HINTS:
        raise BackendUnavailable(f"performance hint must be one of {PERFORMANCE_HINTS}, got {performance_hint!r}")
    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision != "fp32" and precision.upper() not in capabilities:
        raise BackendUnavailable(
            f"this CPU cannot run {precision} in OpenVINO (its capabilities: {', '.join(capabilities)})"
        )
    config = {
        "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[precision],
        "PERFORMANCE_HINT": performance_hint,
        "INFERENCE_NUM_THREADS": threads,
        **runtime_options,
    }
    try:
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
            # compiling from the path lets a cache hit skip reading the model
            compiled = core.compile_model(str(path), "CPU", config)
        else:
            compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as e:
        raise BackendUnavailable(f"OpenVINO could not compile the model: {e}") from None
    applied = _element_type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if applied != _OPENVINO_PRECISION[precision]:
        # e.g. f16 asked on a CPU without it: OpenVINO quietly runs bf16 instead
        raise BackendUnavailable(f"OpenVINO would run {applied} instead of the requested {precision} on this CPU")
    compile_for_shape = None
    if info.image_sizes_name is not None and static_shapes:

        def compile_for_shape(shape):
            model = core.read_model(str(path))
            model.reshape({0: ov.PartialShape(list(shape)), 1: ov.PartialShape([shape[0], 2])})
            return core.compile_model(model, "CPU", config)

    return OpenVinoSession(compiled, info, precision, applied, compile_for_shape)


def _element_type_name(value):
    """'f32' / 'bf16' / 'f16' from an OpenVINO element Type (or its string)."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


# ---------------------------------------------------------------------------
# what can run here


def candidate_configurations():
    """Every (backend, device, precision) worth benchmarking, each with None or the
    reason it cannot run here: ORT CPU fp32; OpenVINO fp32 and bf16 (if the CPU has
    bf16); ORT CUDA fp32 and TensorRT fp32/fp16 (if onnxruntime-gpu has them)."""
    import onnxruntime as ort

    rows = [("onnxruntime", "cpu", "fp32", None)]
    try:
        import openvino  # noqa: F401

        capabilities = openvino_capabilities()
        rows.append(("openvino", "cpu", "fp32", None))
        rows.append(("openvino", "cpu", "bf16", None if "BF16" in capabilities else "no bf16 on this CPU"))
    except ImportError:
        rows.append(("openvino", "cpu", "fp32", "openvino not installed"))
    available = ort.get_available_providers()
    for device, precisions in (("cuda", ("fp32",)), ("tensorrt", ("fp32", "fp16"))):
        reason = None
        if _ORT_PROVIDER[device] not in available:
            reason = (
                f"this onnxruntime {ort.__version__} is a CPU build (the {device} route needs onnxruntime-gpu "
                "and an NVIDIA GPU)"
                if "CUDAExecutionProvider" not in available
                else "this onnxruntime-gpu build has no TensorRT EP"
            )
        for precision in precisions:
            rows.append(("onnxruntime", device, precision, reason))
    return rows
