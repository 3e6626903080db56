"""OpenVINO sessions on the CPU. They run float32 unless asked otherwise (the CPU plugin would
default to bf16 where the CPU has it); a precision OpenVINO would not run exactly as asked is an
error (:class:`~retinamask.runtime.session.BackendUnavailable`). Dynamic-H/W models: one dynamic
compile, or with ``static_shapes`` a static compile per canvas shape."""

import numpy as np

from retinamask.runtime.session import PERFORMANCE_HINTS, BackendUnavailable, Session

OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


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
            info.canvas_side,
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


def create_openvino_session(
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
        "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision],
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
    if applied != OPENVINO_PRECISION[precision]:
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
