"""OpenVINO sessions on the CPU. They run float32 unless asked otherwise (the CPU plugin would
default to bf16 where the CPU has it); a precision OpenVINO would not run exactly as asked is an
error (:class:`~retinamask.runtime.session.BackendUnavailable`). Dynamic-H/W models: one dynamic
compile, or with ``static_shapes`` a static compile per canvas shape.

In bf16 and fp16 the in-graph post-processing stays float32 (:func:`keep_postprocessing_f32`):
the top-K / NMS index arithmetic, the box decoding and the mask head's RoI boxes and levels.
"""

import tempfile
import threading
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from retinamask.runtime.session import PERFORMANCE_HINTS, BackendUnavailable, Session

OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVinoSession(Session):
    """``compile_for_shape``: None, or a function (batch, H, W) -> compiled model (static copies of
    a dynamic-H/W model, one per canvas shape, kept). :meth:`replica`: another session on the same
    compiled model(s), with its own infer request."""

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
        self.info = info
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.applied_precision = applied_precision
        self.num_outputs = len(compiled.outputs)
        self.compile_for_shape = compile_for_shape
        self.compiled_shapes = {}  # canvas shape -> static compile; shared with the replicas
        self.shapes_lock = threading.Lock()
        self.requests = {}  # canvas shape -> this session's infer request on that compile
        self.kept_f32 = frozenset()  # names of the nodes kept float32 in a bf16 / fp16 run

    def replica(self):
        """A session on the same compiled model with its own infer request: N replicas of a model
        compiled with N streams (NUM_STREAMS) run N batches at once. (Models compiled separately in one
        process share one executor in OpenVINO: two of 1 thread each ran at one thread's speed.)"""
        twin = OpenVinoSession(self.compiled, self.info, self.precision, self.applied_precision, self.compile_for_shape)
        twin.compiled_shapes, twin.shapes_lock = self.compiled_shapes, self.shapes_lock
        twin.kept_f32, twin.choice = self.kept_f32, self.choice
        return twin

    def _request_for(self, batch):
        if self.compile_for_shape is None:
            return self.request
        shape = tuple(batch.shape)
        request = self.requests.get(shape)
        if request is None:
            with self.shapes_lock:
                compiled = self.compiled_shapes.get(shape)
                if compiled is None:
                    compiled = self.compiled_shapes[shape] = self.compile_for_shape(shape)
            request = self.requests[shape] = compiled.create_infer_request()
        return request

    def _run(self, batch, image_sizes=None):
        request = self._request_for(batch)
        inputs = {0: batch} if self.image_sizes_name is None else {0: batch, 1: image_sizes}
        request.infer(inputs, share_inputs=True)  # batch is a contiguous float32 array: no input copy
        # copy: the request reuses its output buffers on the next call
        return [np.array(request.get_output_tensor(i).data) for i in range(self.num_outputs)]


def openvino_streams(info, streams):
    """The streams to compile ``info``'s model with: ``streams``, but one for a quantized (INT8) model,
    whatever the hint: with two streams, 6 of 20 compiles of the shipped model's INT8 export gave wrong
    outputs (OpenVINO 2026.4 CPU; 0 of 10 with one stream; fp32 and bf16: 0 of 10 with two;
    benchmarks/RESULTS.md). Sessions sharing a one-stream compile take turns."""
    return 1 if info.quantized else streams


def openvino_capabilities():
    """OpenVINO CPU OPTIMIZATION_CAPABILITIES (e.g. FP32, BF16, INT8); empty when OpenVINO is absent."""
    try:
        import openvino as ov
    except ImportError:
        return ()
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def create_openvino_session(
    path, info, device, precision, threads, cache_dir, performance_hint, runtime_options, static_shapes=True, streams=1
):
    """threads: intra-op threads per stream; streams > 1: NUM_STREAMS (``threads x streams`` in all), for
    that many :meth:`OpenVinoSession.replica` sessions run at once."""
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailable("OpenVINO is not installed (pip install openvino)") from None
    # The binding's numpy bridge is set up on first use; two threads using it first at once can
    # deadlock (pybind11's one-time numpy API lookup under a static guard: seen as a hung
    # `infer --sessions 2`; a two-thread stress script hung in 3 of 54 runs, in 0 of 80 with this line).
    # Set it up here, in the thread that makes the sessions, before any run.
    ov.Type.f32.to_dtype()
    if device != "cpu":
        raise BackendUnavailable(f"the openvino backend runs on --device cpu here, not {device}")
    if performance_hint not in PERFORMANCE_HINTS:
        raise BackendUnavailable(f"performance hint must be one of {PERFORMANCE_HINTS}, got {performance_hint!r}")
    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    _check_precision_capability(precision, capabilities)
    config = {
        "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision],
        "PERFORMANCE_HINT": performance_hint,
        "INFERENCE_NUM_THREADS": threads * streams,
        **({"NUM_STREAMS": openvino_streams(info, streams)} if streams > 1 or info.quantized else {}),
        **runtime_options,
    }
    kept = frozenset()
    try:
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        if precision == "fp32" and cache_dir is not None:
            # compiling from the path lets a cache hit skip reading the model
            compiled = core.compile_model(str(path), "CPU", config)
        else:
            model, kept = read_openvino_model(core, path, precision)
            compiled = core.compile_model(model, "CPU", config)
    except Exception as e:
        raise BackendUnavailable(f"OpenVINO could not compile the model: {e}") from None
    applied = _element_type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if applied != OPENVINO_PRECISION[precision]:
        # e.g. f16 asked on a CPU without it: OpenVINO quietly runs bf16 instead
        raise BackendUnavailable(f"OpenVINO would run {applied} instead of the requested {precision} on this CPU")
    compile_for_shape = None
    if info.image_sizes_name is not None and static_shapes:

        def compile_for_shape(shape):
            model, _ = read_openvino_model(core, path, precision, shape)
            return core.compile_model(model, "CPU", config)

    session = OpenVinoSession(compiled, info, precision, applied, compile_for_shape)
    session.kept_f32 = kept
    return session


def _check_precision_capability(precision, capabilities):
    """One line, as a BackendUnavailable, where this CPU has no kernels for ``precision``."""
    if precision == "fp32" or precision.upper() in capabilities:
        return
    needs = {"bf16": "avx512_bf16 (or AMX)", "fp16": "avx512_fp16 (or AMX-FP16)"}[precision]
    raise BackendUnavailable(
        f"{precision} is unavailable on this CPU: OpenVINO runs it with {needs}; its capabilities here: "
        f"{', '.join(capabilities)} (use --precision fp32)"
    )


def read_openvino_model(core, path, precision, shape=None):
    """(the model of ``path`` as OpenVINO will compile it, the names of the nodes kept float32).

    shape: a static input shape (B, 3, H, W) for a dynamic-H/W model, else None. For bf16 / fp16
    the post-processing is kept float32 (:func:`keep_postprocessing_f32`); fp32 is read as it is.
    """
    import openvino as ov

    model = core.read_model(str(path))
    if shape is not None:
        model.reshape({0: ov.PartialShape(list(shape)), 1: ov.PartialShape([shape[0], 2])})
    if precision == "fp32":
        return model, frozenset()
    return keep_postprocessing_f32(core, model)


# Ops whose float32 arithmetic the post-processing must keep: the dense convolutions stop it.
_HEAVY_OPS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul"}
_POSTPROCESSING_SEEDS = {"TopK", "NonMaxSuppression"}
_GRAPH_EDGES = {"Parameter", "Constant", "Result"}
# OpenVINO's runtime attribute that keeps a node's original (f32) precision in a reduced-precision
# compile; the CPU plugin reads it for bf16 and f16 alike. Python cannot construct it, so the model
# takes a round trip through IR, where it is written as an attribute.
_KEEP_PRECISION_ATTRIBUTE = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16,bf16"}


def postprocessing_node_names(model):
    """Friendly names of the post-processing nodes of an OpenVINO ``model``: everything downstream
    of a TopK / NonMaxSuppression up to the next convolution (the index arithmetic, gathers, box
    decoding, NMS, the mask head's RoI boxes, levels and RoIAlign), plus the shape / anchor
    arithmetic feeding them that no convolution feeds."""
    ops = model.get_ordered_ops()

    def consumers(node):
        return [target.get_node() for output in node.outputs() for target in output.get_target_inputs()]

    def producers(node):
        return [source.get_source_output().get_node() for source in node.inputs()]

    def closure(start, step, stop):
        seen, stack = set(), list(start)
        while stack:
            node = stack.pop()
            name = node.get_friendly_name()
            if name not in seen and not stop(node):
                seen.add(name)
                stack.extend(step(node))
        return seen

    after_heavy = closure(
        [c for op in ops if op.get_type_name() in _HEAVY_OPS for c in consumers(op)], consumers, _never
    )
    seeds = [op for op in ops if op.get_type_name() in _POSTPROCESSING_SEEDS]
    post = closure(seeds, consumers, lambda node: node.get_type_name() in _HEAVY_OPS | _GRAPH_EDGES)
    by_name = {op.get_friendly_name(): op for op in ops}
    feeding = closure(
        [p for name in post for p in producers(by_name[name])],
        producers,
        lambda node: node.get_type_name() in _GRAPH_EDGES or node.get_friendly_name() in after_heavy,
    )
    return frozenset(post | feeding)


def _never(_node):
    return False


def keep_postprocessing_f32(core, model):
    """(``model`` with its :func:`postprocessing_node_names` marked to keep float32 in a bf16 / fp16
    compile, those names). Without the mark, the CPU plugin runs the mask head's RoI index and level
    arithmetic in bf16, and in f16 the top-K index arithmetic overflows (GatherElements: "indices
    values exceed data size")."""
    import openvino as ov

    names = postprocessing_node_names(model)
    if not names:
        return model, names
    with tempfile.TemporaryDirectory() as folder:
        xml_path = Path(folder) / "model.xml"
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
        tree = ElementTree.parse(xml_path)
        for layer in tree.iter("layer"):
            if layer.get("name") in names:
                rt_info = layer.find("rt_info")
                if rt_info is None:
                    rt_info = ElementTree.SubElement(layer, "rt_info")
                ElementTree.SubElement(rt_info, "attribute", _KEEP_PRECISION_ATTRIBUTE)
        tree.write(xml_path)
        # the weights are read into memory here, before the folder goes
        marked = core.read_model(str(xml_path), str(xml_path.with_suffix(".bin")), {"ENABLE_MMAP": False})
    return marked, names


def _element_type_name(value):
    """'f32' / 'bf16' / 'f16' from an OpenVINO element Type (or its string)."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)
