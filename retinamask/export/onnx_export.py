"""Checkpoint -> ONNX (docs/onnx_contract.md): export, metadata, simplification and contract
checks; the parity check against PyTorch lives in :mod:`.verify` (its names are re-exported here).

>>> report = export_onnx(cfg, "model_final.pth", "retinamask.onnx")          # end2end, batch 1
>>> report = export_onnx(cfg, "model_final.pth", "seed.onnx", layout="seed")
>>> report = export_onnx(cfg, "model_final.pth", "any_shape.onnx", resize="original")  # dynamic H/W

The resize policy (``retinamask.core.geometry``) decides the input: ``seed`` a fixed S x S canvas and
one input (the seed's graph); ``original`` / ``buckets`` a canvas of any size (dynamic H and W,
multiples of 32) plus an ``image_sizes`` input with each image's valid (h, w), to which the graph
clips boxes exactly as the original does. The policy goes into the metadata.
"""

import contextlib
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from retinamask import __version__
from retinamask.core.contract import LAYOUTS
from retinamask.core.errors import RetinaMaskError, one_line
from retinamask.core.fileio import atomic_write_bytes
from retinamask.core.geometry import ResizePolicy, SeedResize, policy_from_config
from retinamask.export.graphs import (
    END2END_OUTPUTS,
    SEED_NUM_CANDIDATES,
    SEED_OUTPUTS,
    End2EndGraph,
    SeedGraph,
    half_precision_copy,
)
from retinamask.export.verify import (
    sample_input,
    verify_export,
)
from retinamask.formats.model_info import IMAGE_SIZES_INPUT  # int64 [B, 2] (h, w) of each image's valid region

logger = logging.getLogger(__name__)

MAX_CANVAS_SIDE = 4096  # bound of the dynamic H/W axes (torch.export Dim)
MIN_OPSET = 18  # opset 17 gave a ReduceMax that onnxruntime rejects (shared/facts)
FORBIDDEN_OPS = ("If", "Loop", "Scan")
EMBED_LIMIT_BYTES = 1_900_000_000  # protobuf's 2 GB cap, with room for the graph itself


class ExportError(RetinaMaskError):
    """The exported graph breaks the contract (unexpected op, output shape or metadata)."""


def export_onnx(
    cfg,
    weights,
    save_path,
    layout="end2end",
    batch_size=1,
    dynamic_batch=False,
    fp16=False,
    opset=18,
    simplify=True,
    input_size=None,
    max_detections=None,
    verify=True,
    int8=False,
    calibration_dir=None,
    calibration_images=None,
    resize=None,
):
    """Build the model of ``cfg`` (a config or a config name/path), load ``weights`` (a checkpoint
    path; None keeps the random initialisation) and export it; see :func:`export_model`."""
    from retinamask.config import load_config
    from retinamask.modeling import build_model
    from retinamask.modeling.checkpoint import load_checkpoint

    if not hasattr(cfg, "MODEL"):
        cfg = load_config(cfg)
    policy = resolve_export_policy(cfg, resize, input_size, layout)
    max_detections = default_max_detections(cfg, policy) if max_detections is None else max_detections
    _check_arguments(layout, batch_size, opset, policy, max_detections)
    _check_int8_arguments(int8, fp16, calibration_dir)
    model = build_model(cfg)
    if weights is not None:
        load_checkpoint(model, weights)
    report = export_model(
        model,
        cfg,
        save_path,
        layout=layout,
        batch_size=batch_size,
        dynamic_batch=dynamic_batch,
        fp16=fp16,
        opset=opset,
        simplify=simplify,
        max_detections=max_detections,
        verify=verify,
        int8=int8,
        calibration_dir=calibration_dir,
        calibration_images=calibration_images,
        resize=policy,
    )
    report["weights"] = None if weights is None else str(weights)
    return report


def export_model(
    model,
    cfg,
    save_path,
    layout="end2end",
    batch_size=1,
    dynamic_batch=False,
    fp16=False,
    opset=18,
    simplify=True,
    input_size=None,
    max_detections=None,
    verify=True,
    int8=False,
    calibration_dir=None,
    calibration_images=None,
    resize=None,
):
    """Export a built RetinaMask (eval mode, float32) to ``save_path`` in one ONNX file.

    ``resize``: the resize policy (a :class:`~retinamask.core.geometry.ResizePolicy` or its name,
    None = ``seed``; see :func:`resolve_export_policy`). ``seed``: input [B,3,S,S] with S =
    ``input_size`` (None takes :func:`default_input_size`). ``original`` / ``buckets``: inputs
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
    import onnx

    policy = resolve_export_policy(cfg, resize, input_size, layout)
    max_detections = default_max_detections(cfg, policy) if max_detections is None else max_detections
    dynamic_hw = not isinstance(policy, SeedResize)
    input_size = None if dynamic_hw else policy.size
    _check_arguments(layout, batch_size, opset, policy, max_detections)
    _check_int8_arguments(int8, fp16, calibration_dir)
    save_path = Path(save_path)
    model = model.eval()
    graph_model = half_precision_copy(model) if fp16 else model
    graph = _make_graph(graph_model, layout, input_size, max_detections).eval()
    example_batch = 2 if dynamic_batch else batch_size  # batch 1 would be specialised into the graph
    example = sample_input(cfg, policy, example_batch)

    start = time.perf_counter()
    proto = _torch_export(graph, example, layout, dynamic_batch, opset, dynamic_hw, policy.size_divisibility)
    export_seconds = time.perf_counter() - start
    nodes_exported = len(proto.graph.node)

    simplification = {"requested": bool(simplify), "tool": None, "nodes_before": nodes_exported}
    if simplify:
        proto, simplification = _simplify(proto, simplification)
    simplification["constant_fills"] = constant_fills_to_nodes(proto)
    simplification["nodes_after"] = len(proto.graph.node)

    metadata = contract_metadata(cfg, model, layout, policy, max_detections, "dynamic" if dynamic_batch else batch_size)
    _set_metadata(proto, metadata)
    proto.producer_name = "retinamask"
    proto.producer_version = __version__
    proto.doc_string = f"RetinaMask, layout {layout} (docs/onnx_contract.md)"

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected the exported graph: {one_line(e, 300)}", path=save_path) from None
    check_contract(
        proto,
        layout,
        None if dynamic_batch else batch_size,
        input_size,
        max_detections if layout == "end2end" else SEED_NUM_CANDIDATES,
        int(metadata["retinamask.mask_resolution"]),
        path=save_path,
    )
    quantization = None
    if int8:
        external, quantization = _save_quantized(
            proto,
            save_path,
            calibration_dir,
            calibration_images,
            layout,
            None if dynamic_batch else batch_size,
            input_size,
            max_detections,
            int(metadata["retinamask.mask_resolution"]),
        )
    else:
        external = _save(proto, save_path)
    total_seconds = time.perf_counter() - start

    report = {
        "path": str(save_path),
        "layout": layout,
        "batch": "dynamic" if dynamic_batch else batch_size,
        "input_size": input_size,
        "resize": policy.to_dict(),
        "max_detections": max_detections,
        "opset": opset,
        "precision": "int8" if int8 else "fp16" if fp16 else "fp32",
        "export_seconds": round(export_seconds, 2),
        "total_seconds": round(total_seconds, 2),
        "file_bytes": save_path.stat().st_size,
        "external_data": external,
        "simplification": simplification,
        "metadata": metadata,
        "outputs": {o.name: _dims(o) for o in proto.graph.output},
        "verification": None,
        "quantization": quantization,
    }
    if verify:
        report["verification"] = verify_export(
            model,
            graph,
            cfg,
            save_path,
            layout,
            policy,
            max_detections,
            batch=example_batch,
            precision=report["precision"],
        )
    return report


def default_input_size(cfg):
    """The config's INPUT.MAX_SIZE_TEST rounded up to a multiple of 32: the canvas the model was
    trained to see (1333 -> 1344, the seed's size, for the upstream configs)."""
    return -(-int(cfg.INPUT.MAX_SIZE_TEST) // 32) * 32


def default_max_detections(cfg, policy):
    """Rows K of an end2end export: under the original's resize (``original``, ``buckets``) the
    original's own output, its top RETINANET.NUM_MASKS_TEST (50) detections with masks; under
    the seed's square canvas the seed's 100 (its host-side NMS keeps 100)."""
    return 100 if isinstance(policy, SeedResize) else int(cfg.RETINANET.NUM_MASKS_TEST)


def resolve_export_policy(cfg, resize, input_size, layout="end2end"):
    """The policy an export uses: ``resize`` a ResizePolicy or a name (``seed`` / ``original`` /
    ``buckets``, sizes from the config; None = ``seed``); ``input_size`` is the seed canvas
    (None: :func:`default_input_size`) and only goes with ``seed``."""
    if resize is None:
        resize = "seed"
    if isinstance(resize, ResizePolicy):
        policy = resize
    else:
        if resize != "seed" and input_size is not None:
            raise RetinaMaskError(
                f"--input-size sets the seed policy's square canvas; --resize {resize} takes the "
                "config's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (change them with --opts)"
            )
        if input_size is not None and (int(input_size) <= 0 or int(input_size) % 32):
            raise RetinaMaskError(f"input size must be a positive multiple of 32, got {input_size}")
        try:
            policy = policy_from_config(cfg, resize, input_size=input_size or default_input_size(cfg))
        except ValueError as e:
            raise RetinaMaskError(str(e)) from None
    if layout == "seed" and not isinstance(policy, SeedResize):
        raise RetinaMaskError(
            f"the seed layout is the Ascend seed's fixed square graph: it takes --resize seed, "
            f"not {policy.name} (use --layout end2end)"
        )
    return policy


def _check_arguments(layout, batch_size, opset, policy, max_detections):
    input_size = policy.size if isinstance(policy, SeedResize) else 32
    if layout not in LAYOUTS:
        raise RetinaMaskError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if int(batch_size) < 1:
        raise RetinaMaskError(f"batch size must be >= 1, got {batch_size}")
    if int(opset) < MIN_OPSET:
        raise RetinaMaskError(
            f"opset {opset} is not supported: use {MIN_OPSET} or later "
            "(with opset 17 the exporter emits a ReduceMax that onnxruntime rejects)"
        )
    if int(input_size) <= 0 or int(input_size) % 32:
        raise RetinaMaskError(f"input size must be a positive multiple of 32, got {input_size}")
    if policy.size_divisibility % 32:
        raise RetinaMaskError(
            f"canvases must be multiples of 32 (the FPN), got SIZE_DIVISIBILITY {policy.size_divisibility}"
        )
    if int(max_detections) < 1:
        raise RetinaMaskError(f"max detections must be >= 1, got {max_detections}")


def _check_int8_arguments(int8, fp16, calibration_dir):
    if not int8:
        if calibration_dir is not None:
            raise RetinaMaskError("a calibration folder is only used with --int8")
        return
    if fp16:
        raise RetinaMaskError("--int8 and --fp16 exclude each other (the INT8 model is quantized from float32)")
    if calibration_dir is None:
        raise RetinaMaskError(
            "--int8 needs calibration images: --calib DIR (a few dozen images like the data the model will see)"
        )
    if not Path(calibration_dir).is_dir():
        raise RetinaMaskError("calibration folder not found", calibration_dir)


def _save_quantized(
    proto,
    save_path,
    calibration_dir,
    calibration_images,
    layout,
    batch_size,
    input_size,
    max_detections,
    mask_resolution,
):
    """Quantize the float32 ``proto`` to INT8 at ``save_path`` (the float32 model only lives in a
    temporary file next to it). Returns (external data file or None, quantization report)."""
    import tempfile

    import onnx

    from retinamask.export.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_onnx

    save_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".retinamask-fp32-", dir=save_path.parent) as tmp:
        float_path = Path(tmp) / "float32.onnx"
        if _save(proto, float_path) is not None:
            raise ExportError(
                "the float32 model is over 2 GB: INT8 quantization needs the weights in one file", path=save_path
            )
        report = quantize_onnx(float_path, save_path, calibration_dir, calibration_images or DEFAULT_CALIBRATION_IMAGES)
    check_contract(
        onnx.load(str(save_path), load_external_data=False),
        layout,
        batch_size,
        input_size,
        max_detections if layout == "end2end" else SEED_NUM_CANDIDATES,
        mask_resolution,
        path=save_path,
    )
    report.pop("source", None)
    return None, report


def _make_graph(model, layout, input_size, max_detections):
    if layout == "seed":
        return SeedGraph(model, input_size)
    return End2EndGraph(model, input_size, max_detections)


def _torch_export(graph, example, layout, dynamic_batch, opset, dynamic_hw=False, divisibility=32):
    """torch.onnx.export(dynamo=True) -> onnx.ModelProto with the weights in memory.

    ``example``: the images [B,3,S,S], or (images, image_sizes) with ``dynamic_hw``: H and W are
    then ``divisibility * Dim`` (a multiple of 32 makes the FPN's top-down sizes provably equal),
    from 2 * divisibility to MAX_CANVAS_SIDE."""
    Dim = torch.export.Dim
    output_names = list(SEED_OUTPUTS if layout == "seed" else END2END_OUTPUTS)
    batch = {0: Dim("batch", min=1, max=4096)} if dynamic_batch else {}
    if dynamic_hw:
        d = int(divisibility)
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
            opset_version=int(opset),
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


def contract_metadata(cfg, model, layout, policy, max_detections, batch):
    """The ``retinamask.*`` metadata_props of docs/onnx_contract.md (all values strings).
    ``policy``: a ResizePolicy (or, as before resize policies, the seed canvas side S)."""
    if not isinstance(policy, ResizePolicy):
        policy = SeedResize(policy)
    postprocessor = model.rpn.postprocessor
    pooler = model.mask.feature_extractor.pooler
    size = {"retinamask.input_size": str(policy.size)} if isinstance(policy, SeedResize) else {}
    return {
        "retinamask.layout": layout,
        **size,
        **policy.to_metadata(),
        "retinamask.pixel_mean": json.dumps([float(v) for v in cfg.INPUT.PIXEL_MEAN]),
        "retinamask.pixel_std": json.dumps([float(v) for v in cfg.INPUT.PIXEL_STD]),
        "retinamask.class_names": json.dumps(list(model.class_names)),
        "retinamask.score_threshold": str(float(postprocessor.score_threshold)),
        "retinamask.nms_threshold": str(float(postprocessor.nms_threshold)),
        "retinamask.max_detections": str(int(max_detections)),
        "retinamask.mask_resolution": str(2 * int(pooler.output_size)),
        "retinamask.batch": str(batch),
        "retinamask.version": __version__,
    }


def _set_metadata(proto, metadata):
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _dims(value_info):
    return [
        d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
        for d in value_info.type.tensor_type.shape.dim
    ]


def _all_nodes(proto):
    """Every node of the model: main graph, subgraphs, and local functions."""

    def walk(nodes):
        for node in nodes:
            yield node
            for attr in node.attribute:
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from walk(g.node)

    yield from walk(proto.graph.node)
    for function in proto.functions:
        yield from walk(function.node)


def check_contract(proto, layout, batch_size, input_size, rows, mask_resolution=28, path=None):
    """Raise ExportError unless the graph has no If/Loop/Scan, and its input and outputs have the
    contract's names, dtypes and shapes (``batch_size`` None = a symbolic batch axis)."""
    import onnx

    control_flow = sorted({n.op_type for n in _all_nodes(proto) if n.op_type in FORBIDDEN_OPS})
    if control_flow:
        raise ExportError(f"the graph contains control flow ({', '.join(control_flow)})", path=path)
    batch = "symbolic" if batch_size is None else int(batch_size)

    def check(value, name, elem_type, shape):
        dims = _dims(value)
        got_type = value.type.tensor_type.elem_type
        expected = [batch] + list(shape)
        ok = value.name == name and got_type == elem_type and len(dims) == len(expected)
        # (a "symbolic" expectation takes a named dim; with a static batch the exporter may name none)
        ok = ok and all((isinstance(d, str) if e == "symbolic" else d == e) for d, e in zip(dims, expected))
        if not ok:
            raise ExportError(
                f"{value.name!r} is {onnx.helper.tensor_dtype_to_np_dtype(got_type)} {dims}, "
                f"the contract says {name!r} {onnx.helper.tensor_dtype_to_np_dtype(elem_type)} "
                f"{expected}",
                path=path,
            )

    inputs = list(proto.graph.input)
    if input_size is None:  # dynamic H/W: input [B, 3, H, W] and image_sizes [B, 2]
        if [i.name for i in inputs] != ["input", IMAGE_SIZES_INPUT]:
            raise ExportError(
                f"expected inputs ['input', '{IMAGE_SIZES_INPUT}'], found {[i.name for i in inputs]}", path=path
            )
        check(inputs[0], "input", onnx.TensorProto.FLOAT, (3, "symbolic", "symbolic"))
        check(inputs[1], IMAGE_SIZES_INPUT, onnx.TensorProto.INT64, (2,))
    else:
        if len(inputs) != 1:
            raise ExportError(f"expected one input, found {[i.name for i in inputs]}", path=path)
        check(inputs[0], "input", onnx.TensorProto.FLOAT, (3, input_size, input_size))
    names = SEED_OUTPUTS if layout == "seed" else END2END_OUTPUTS
    if [o.name for o in proto.graph.output] != list(names):
        raise ExportError(f"outputs {[o.name for o in proto.graph.output]}, the contract says {list(names)}", path=path)
    outputs = proto.graph.output
    float32, int32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    check(outputs[0], names[0], float32, (rows, 4))
    check(outputs[1], names[1], int32, (rows,))
    check(outputs[2], names[2], float32, (rows,))
    check(outputs[3], names[3], float32, (rows, 1, mask_resolution, mask_resolution))


def _save(proto, path):
    """Write the model at ``path`` atomically; returns the external data file name or None."""
    import onnx

    weight_bytes = sum(len(t.raw_data) for t in proto.graph.initializer)
    if weight_bytes < EMBED_LIMIT_BYTES:
        atomic_write_bytes(path, proto.SerializeToString())
        return None
    # Over protobuf's 2 GB cap the weights must go to a side file: written first, then the
    # graph is renamed into place.
    location = f"{path.name}.data"
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save_model(proto, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=location)
    tmp.replace(path)
    return location


# ---------------------------------------------------------------------------------------------
# Verification: the exported model in ONNX Runtime against PyTorch on a sample image
