"""ONNX Runtime sessions: CPU, CUDA and TensorRT execution providers; the CPU's optimized graph
and TensorRT's engines cached in ``cache_dir``. A provider that does not start is an error
(:class:`~retinamask.runtime.session.BackendUnavailable`), never a silent CPU run."""

import hashlib
import os
import platform
from pathlib import Path

from retinamask.core.cpu import this_cpu
from retinamask.runtime.session import BackendUnavailable, Session

ORT_PROVIDER = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OnnxRuntimeSession(Session):
    def __init__(self, session, info, device, precision):
        super().__init__(
            f"onnxruntime-{device}-{precision}",
            "onnxruntime",
            device,
            precision,
            info.input_name,
            info.canvas_side,
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


def create_onnxruntime_session(path, info, device, precision, threads, cache_dir, runtime_options):
    import onnxruntime as ort

    allowed = {"cpu": ("fp32",), "cuda": ("fp32",), "tensorrt": ("fp32", "fp16")}[device]
    if precision not in allowed:
        hint = " (for bf16 on the CPU use --backend openvino)" if precision == "bf16" else ""
        raise BackendUnavailable(f"onnxruntime on {device} runs {', '.join(allowed)}, not {precision}{hint}")
    available = ort.get_available_providers()
    wanted = ORT_PROVIDER[device]
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
    return this_cpu().model_name or platform.processor()
