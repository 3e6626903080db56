"""Checkpoint -> ONNX (docs/onnx_contract.md): build the export graph, trace it, simplify it, write
it with its metadata once the contract checks pass. The options live in :mod:`.options`, the
metadata and checks in :mod:`.contract`, the parity check against PyTorch in :mod:`.verify`.

>>> report = export_onnx(cfg, "model_final.pth", "retinamask.onnx")          # end2end, batch 1
>>> report = export_onnx(cfg, "model_final.pth", "seed.onnx", layout="seed")
>>> report = export_onnx(cfg, "model_final.pth", "any_shape.onnx", resize="original")  # dynamic H/W

The resize policy (``retinamask.core.geometry``) decides the input: ``seed`` a fixed S x S canvas and
one input (the seed's graph); ``original`` / ``buckets`` a canvas of any size (dynamic H and W,
multiples of 32) plus an ``image_sizes`` input with each image's valid (h, w), to which the graph
clips boxes exactly as the original does. The policy goes into the metadata.
"""

import contextlib
import dataclasses
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from retinamask import __version__
from retinamask.core.contract import IMAGE_SIZES_INPUT, OUTPUT_NAMES
from retinamask.core.errors import one_line
from retinamask.export.contract import ExportError, check_contract, contract_metadata, set_metadata, value_dims
from retinamask.export.graphs import End2EndGraph, SeedGraph, half_precision_copy
from retinamask.export.options import (
    ExportOptions,
    default_input_size,
    default_max_detections,
    resolve_export_policy,
)
from retinamask.export.save import save_onnx
from retinamask.export.verify import sample_input, verify_export
from retinamask.formats.run_sidecar import CANVAS_SIDE_KEY

logger = logging.getLogger(__name__)

MAX_CANVAS_SIDE = 4096  # bound of the dynamic H/W axes (torch.export Dim)

__all__ = [
    "ExportError",
    "ExportOptions",
    "constant_fills_to_nodes",
    "default_input_size",
    "default_max_detections",
    "export_model",
    "export_onnx",
    "resolve_export_policy",
]


def export_onnx(cfg, weights, save_path, options=None, **overrides):
    """Build the model of ``cfg`` (a config or a config name/path), load ``weights`` (a checkpoint
    path; None keeps the random initialisation) and export it; see :func:`export_model` (the same
    ``options`` / keyword options). Bad arguments fail before the model is built."""
    from retinamask.config import load_config
    from retinamask.modeling import build_model
    from retinamask.modeling.checkpoint import load_checkpoint

    if not hasattr(cfg, "MODEL"):
        cfg = load_config(cfg)
    options = _options(options, overrides).resolve(cfg)
    model = build_model(cfg)
    if weights is not None:
        load_checkpoint(model, weights)
    report = export_model(model, cfg, save_path, options)
    report["weights"] = None if weights is None else str(weights)
    return report


def export_model(model, cfg, save_path, options=None, **overrides):
    """Export a built RetinaMask (eval mode, float32) to ``save_path`` in one ONNX file.

    ``options``: an :class:`~retinamask.export.options.ExportOptions`; keyword ``overrides`` (its
    field names: ``layout=``, ``batch_size=``, ``resize=``, ...) replace its fields.

    ``resize``: the resize policy (a :class:`~retinamask.core.resize.ResizePolicy` or its name,
    None = ``seed``; see :func:`resolve_export_policy`). ``seed``: input [B,3,S,S] with S =
    ``canvas_side`` (None takes :func:`default_input_size`). ``original`` / ``buckets``: inputs
    ``input`` [B,3,H,W] (H, W dynamic multiples of 32) and ``image_sizes`` int64 [B,2]; end2end
    layout only.

    ``layout``: "end2end" (NMS and top-K in the graph, K = ``max_detections`` rows; None:
    :func:`default_max_detections`) or "seed"
    (the Ascend seed's 1000 candidates). ``batch_size`` fixes B unless ``dynamic_batch``.
    ``fp16``: convolutions in float16, input/outputs/NMS/RoIAlign float32. The weights are
    embedded (no ``.onnx.data`` side file) for models under 2 GB; the file is written
    atomically after ``onnx.checker`` and the contract checks (no If/Loop, output names,
    dtypes and shapes) pass. ``verify`` then runs it once in ONNX Runtime on a sample image
    and compares with PyTorch.

    ``int8``: the float32 export is then statically quantized to INT8 (the dense convolutions;
    see :mod:`.quantize`) with ``calibration_images`` (default 32) images of ``calibration_dir``
    through the seed transform; only the INT8 model is written to ``save_path``.

    Returns a report dict (path, sizes, timings, node counts, simplification, metadata,
    verification); raises RetinaMaskError subclasses for bad arguments and contract breaks.
    """
    options = _options(options, overrides).resolve(cfg)
    save_path = Path(save_path)
    model = model.eval()
    graph_model = half_precision_copy(model) if options.fp16 else model
    graph = _make_graph(graph_model, options).eval()
    example = sample_input(cfg, options.resize, options.example_batch)

    start = time.perf_counter()
    proto = _torch_export(graph, example, options)
    export_seconds = time.perf_counter() - start
    proto, simplification = _simplify_graph(proto, options.simplify)
    metadata = contract_metadata(cfg, model, options.layout, options.resize, options.max_detections, options.batch)
    _finish_proto(proto, metadata, options, save_path)
    mask_resolution = int(metadata["retinamask.mask_resolution"])
    if options.int8:
        external, quantization = _save_quantized(proto, save_path, options, mask_resolution)
    else:
        external, quantization = save_onnx(proto, save_path), None
    total_seconds = time.perf_counter() - start

    timings = {"export_seconds": round(export_seconds, 2), "total_seconds": round(total_seconds, 2)}
    report = _report(proto, save_path, options, timings, simplification, metadata, external, quantization)
    if options.verify:
        report["verification"] = verify_export(
            model,
            graph,
            cfg,
            save_path,
            options.layout,
            options.resize,
            options.max_detections,
            batch=options.example_batch,
            precision=options.precision,
        )
    return report


def _report(proto, save_path, options, timings, simplification, metadata, external, quantization):
    """export_model's report dict (``verification`` None: filled in afterwards)."""
    return {
        "path": str(save_path),
        "layout": options.layout,
        "batch": options.batch,
        CANVAS_SIDE_KEY: options.canvas_side,
        "resize": options.resize.to_dict(),
        "max_detections": options.max_detections,
        "opset": options.opset,
        "precision": options.precision,
        **timings,
        "file_bytes": save_path.stat().st_size,
        "external_data": external,
        "simplification": simplification,
        "metadata": metadata,
        "outputs": {o.name: value_dims(o) for o in proto.graph.output},
        "verification": None,
        "quantization": quantization,
    }


def _options(options, overrides):
    """``options`` (None: the defaults) with the keyword ``overrides`` replacing its fields."""
    if options is None:
        return ExportOptions(**overrides)
    return dataclasses.replace(options, **overrides) if overrides else options


def _simplify_graph(proto, simplify):
    """onnxslim (when asked for) and the constant fills; returns (proto, simplification report)."""
    simplification = {"requested": bool(simplify), "tool": None, "nodes_before": len(proto.graph.node)}
    if simplify:
        proto, simplification = _simplify(proto, simplification)
    simplification["constant_fills"] = constant_fills_to_nodes(proto)
    simplification["nodes_after"] = len(proto.graph.node)
    return proto, simplification


def _finish_proto(proto, metadata, options, save_path):
    """Set the metadata and producer of ``proto``, then run ``onnx.checker`` and the contract
    checks (raises ExportError naming ``save_path``)."""
    import onnx

    set_metadata(proto, metadata)
    proto.producer_name = "retinamask"
    proto.producer_version = __version__
    proto.doc_string = f"RetinaMask, layout {options.layout} (docs/onnx_contract.md)"
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected the exported graph: {one_line(e, 300)}", path=save_path) from None
    mask_resolution = int(metadata["retinamask.mask_resolution"])
    check_contract(
        proto, options.layout, options.fixed_batch, options.canvas_side, options.rows, mask_resolution, path=save_path
    )


def _save_quantized(proto, save_path, options, mask_resolution):
    """Quantize the float32 ``proto`` to INT8 at ``save_path`` (the float32 model only lives in a
    temporary file next to it). Returns (external data file or None, quantization report)."""
    import tempfile

    import onnx

    from retinamask.export.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_onnx

    save_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".retinamask-fp32-", dir=save_path.parent) as tmp:
        float_path = Path(tmp) / "float32.onnx"
        if save_onnx(proto, float_path) is not None:
            raise ExportError(
                "the float32 model is over 2 GB: INT8 quantization needs the weights in one file", path=save_path
            )
        count = options.calibration_images or DEFAULT_CALIBRATION_IMAGES
        report = quantize_onnx(float_path, save_path, options.calibration_dir, count)
    check_contract(
        onnx.load(str(save_path), load_external_data=False),
        options.layout,
        options.fixed_batch,
        options.canvas_side,
        options.rows,
        mask_resolution,
        path=save_path,
    )
    report.pop("source", None)
    return None, report


def _make_graph(model, options):
    if options.layout == "seed":
        return SeedGraph(model, options.canvas_side)
    return End2EndGraph(model, options.canvas_side, options.max_detections)


def _torch_export(graph, example, options):
    """torch.onnx.export(dynamo=True) -> onnx.ModelProto with the weights in memory.

    ``example``: the images [B,3,S,S], or (images, image_sizes) for a dynamic-H/W export: H and W
    are then ``size_divisibility * Dim`` (a multiple of 32 makes the FPN's top-down sizes provably
    equal), from 2 * size_divisibility to MAX_CANVAS_SIDE."""
    Dim = torch.export.Dim
    output_names = list(OUTPUT_NAMES[options.layout])
    dynamic_batch = options.dynamic_batch
    batch = {0: Dim("batch", min=1, max=4096)} if dynamic_batch else {}
    if options.dynamic_hw:
        d = int(options.resize.size_divisibility)
        h, w = (Dim(name, min=2, max=MAX_CANVAS_SIDE // d) for name in ("h", "w"))
        dynamic_shapes = {"images": {**batch, 2: d * h, 3: d * w}, "image_sizes": dict(batch)}
        args, input_names = tuple(example), ["input", IMAGE_SIZES_INPUT]
    else:
        dynamic_shapes = {"images": batch} if dynamic_batch else None
        args, input_names = (example,), ["input"]
    with warnings.catch_warnings(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):
        warnings.filterwarnings("ignore", message=".*create_unbacked_symint.*")
        # input and image_sizes share the batch Dim on purpose
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis.*")
        program = torch.onnx.export(
            graph,
            args,
            dynamo=True,
            opset_version=int(options.opset),
            verbose=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
        )
    return program.model_proto


@contextlib.contextmanager
def _quiet_loggers(*names):
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _simplify(proto, simplification):
    try:
        import onnxslim
    except ImportError:
        simplification["skipped"] = "onnxslim is not installed (pip install onnxslim)"
        logger.warning("not simplified: %s", simplification["skipped"])
        return proto, simplification
    try:
        with _quiet_loggers("onnxslim"):
            slim = onnxslim.slim(proto)
    except Exception as e:  # a simplifier bug must not cost the export
        simplification["skipped"] = f"onnxslim failed ({type(e).__name__}: {one_line(e, 300)})"
        logger.warning("not simplified: %s", simplification["skipped"])
        return proto, simplification
    simplification["tool"] = f"onnxslim {getattr(onnxslim, '__version__', '')}".strip()
    return slim, simplification


def constant_fills_to_nodes(proto, min_bytes=1 << 20):
    """Replace large initializers that hold one repeated value by ConstantOfShape nodes.

    With a static RoI count (the seed layout) the exporter folds the pooler's zero-filled
    output buffer into a weight: 1000 x C x 14 x 14 zeros, 200 MB for R-50. Returns how many
    initializers were replaced.
    """
    from onnx import helper, numpy_helper

    replaced = []
    for tensor in proto.graph.initializer:
        size = int(np.prod(tensor.dims, dtype=np.int64))
        if size == 0 or size * 4 < min_bytes:
            continue
        values = numpy_helper.to_array(tensor)
        first = values.reshape(-1)[:1]
        if not (values == first).all():
            continue
        shape = numpy_helper.from_array(np.array(values.shape, dtype=np.int64), f"{tensor.name}__shape")
        fill = numpy_helper.from_array(first.astype(values.dtype))
        node = helper.make_node("ConstantOfShape", [shape.name], [tensor.name], name=f"{tensor.name}__fill", value=fill)
        replaced.append((tensor, shape, node))
    for tensor, shape, node in replaced:
        proto.graph.initializer.remove(tensor)
        proto.graph.initializer.append(shape)
        proto.graph.node.insert(0, node)
    return len(replaced)
