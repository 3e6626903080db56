"""Checkpoint -> ONNX (docs/onnx_contract.md): export, metadata, simplification, checks, and a
parity check of the exported model (ONNX Runtime) against PyTorch on a sample image.

>>> report = export_onnx(cfg, "model_final.pth", "retinamask.onnx")          # end2end, batch 1
>>> report = export_onnx(cfg, "model_final.pth", "seed.onnx", layout="seed")
>>> report = export_onnx(cfg, "model_final.pth", "any_shape.onnx", resize="original")  # dynamic H/W

The resize policy (``retinamask.geometry``) decides the input: ``seed`` a fixed S x S canvas and
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

from .. import __version__
from ..errors import RetinaMaskError
from ..geometry import ResizePolicy, SeedResize, policy_from_config
from ..fileio import atomic_write_bytes
from .graphs import END2END_OUTPUTS, SEED_NUM_CANDIDATES, SEED_OUTPUTS, End2EndGraph, SeedGraph, half_precision_copy

logger = logging.getLogger(__name__)

LAYOUTS = ("end2end", "seed")
IMAGE_SIZES_INPUT = "image_sizes"  # int64 [B, 2] (h, w) of the resized image in each canvas (dynamic H/W models)
MAX_CANVAS_SIDE = 4096  # bound of the dynamic H/W axes (torch.export Dim)
MIN_OPSET = 18  # opset 17 gave a ReduceMax that onnxruntime rejects (shared/facts)
FORBIDDEN_OPS = ("If", "Loop", "Scan")
EMBED_LIMIT_BYTES = 1_900_000_000  # protobuf's 2 GB cap, with room for the graph itself

# Parity tolerances against PyTorch (float32 eager). Detections are matched by label and box IoU.
# float16: the convolutions run in half precision, so scores move by ~1e-3 and a few
# detections near the top-K cut or an NMS decision swap places (see tests/test_export.py).
TOLERANCES = {
    "fp32": {"min_box_iou": 0.99, "max_score_diff": 1e-4, "max_mask_diff": 1e-3, "min_matched_fraction": 1.0},
    "fp16": {"min_box_iou": 0.95, "max_score_diff": 5e-3, "max_mask_diff": 5e-2, "min_matched_fraction": 0.9},
    # int8: a sanity check that quantization kept the detections (accuracy itself is judged by
    # COCO mAP on a validation set; see benchmarks/RESULTS.md).
    "int8": {"min_box_iou": 0.5, "max_score_diff": 0.25, "max_mask_diff": 1.0, "min_matched_fraction": 0.5},
}


class ExportError(RetinaMaskError):
    """The exported graph breaks the contract (unexpected op, output shape or metadata)."""


def export_onnx(cfg, weights, save_path, layout="end2end", batch_size=1, dynamic_batch=False, fp16=False,
                opset=18, simplify=True, input_size=None, max_detections=None, verify=True, int8=False,
                calibration_dir=None, calibration_images=None, resize=None):
    """Build the model of ``cfg`` (a config or a config name/path), load ``weights`` (a checkpoint
    path; None keeps the random initialisation) and export it; see :func:`export_model`."""
    from ..checkpoint import load_checkpoint
    from ..config import load_config
    from ..modeling import build_model

    if not hasattr(cfg, "MODEL"):
        cfg = load_config(cfg)
    policy = resolve_export_policy(cfg, resize, input_size, layout)
    max_detections = default_max_detections(cfg, policy) if max_detections is None else max_detections
    _check_arguments(layout, batch_size, opset, policy, max_detections)
    _check_int8_arguments(int8, fp16, calibration_dir)
    model = build_model(cfg)
    if weights is not None:
        load_checkpoint(model, weights)
    report = export_model(model, cfg, save_path, layout=layout, batch_size=batch_size, dynamic_batch=dynamic_batch,
                          fp16=fp16, opset=opset, simplify=simplify, max_detections=max_detections, verify=verify,
                          int8=int8, calibration_dir=calibration_dir, calibration_images=calibration_images,
                          resize=policy)
    report["weights"] = None if weights is None else str(weights)
    return report


def export_model(model, cfg, save_path, layout="end2end", batch_size=1, dynamic_batch=False, fp16=False,
                 opset=18, simplify=True, input_size=None, max_detections=None, verify=True, int8=False,
                 calibration_dir=None, calibration_images=None, resize=None):
    """Export a built RetinaMask (eval mode, float32) to ``save_path`` in one ONNX file.

    ``resize``: the resize policy (a :class:`~retinamask.geometry.ResizePolicy` or its name,
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

    metadata = contract_metadata(cfg, model, layout, policy, max_detections,
                                 "dynamic" if dynamic_batch else batch_size)
    _set_metadata(proto, metadata)
    proto.producer_name = "retinamask"
    proto.producer_version = __version__
    proto.doc_string = f"RetinaMask, layout {layout} (docs/onnx_contract.md)"

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected the exported graph: {_one_line(e)}", path=save_path) from None
    check_contract(proto, layout, None if dynamic_batch else batch_size, input_size,
                   max_detections if layout == "end2end" else SEED_NUM_CANDIDATES,
                   int(metadata["retinamask.mask_resolution"]), path=save_path)
    quantization = None
    if int8:
        external, quantization = _save_quantized(proto, save_path, calibration_dir, calibration_images, layout,
                                                 None if dynamic_batch else batch_size, input_size, max_detections,
                                                 int(metadata["retinamask.mask_resolution"]))
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
        report["verification"] = verify_export(model, graph, cfg, save_path, layout, policy, max_detections,
                                               batch=example_batch, precision=report["precision"])
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
            raise RetinaMaskError(f"--input-size sets the seed policy's square canvas; --resize {resize} takes the "
                                  "config's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (change them with --opts)")
        if input_size is not None and (int(input_size) <= 0 or int(input_size) % 32):
            raise RetinaMaskError(f"input size must be a positive multiple of 32, got {input_size}")
        try:
            policy = policy_from_config(cfg, resize, input_size=input_size or default_input_size(cfg))
        except ValueError as e:
            raise RetinaMaskError(str(e)) from None
    if layout == "seed" and not isinstance(policy, SeedResize):
        raise RetinaMaskError(f"the seed layout is the Ascend seed's fixed square graph: it takes --resize seed, "
                              f"not {policy.name} (use --layout end2end)")
    return policy


def _check_arguments(layout, batch_size, opset, policy, max_detections):
    input_size = policy.size if isinstance(policy, SeedResize) else 32
    if layout not in LAYOUTS:
        raise RetinaMaskError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if int(batch_size) < 1:
        raise RetinaMaskError(f"batch size must be >= 1, got {batch_size}")
    if int(opset) < MIN_OPSET:
        raise RetinaMaskError(f"opset {opset} is not supported: use {MIN_OPSET} or later "
                              "(with opset 17 the exporter emits a ReduceMax that onnxruntime rejects)")
    if int(input_size) <= 0 or int(input_size) % 32:
        raise RetinaMaskError(f"input size must be a positive multiple of 32, got {input_size}")
    if policy.size_divisibility % 32:
        raise RetinaMaskError(f"canvases must be multiples of 32 (the FPN), got SIZE_DIVISIBILITY "
                              f"{policy.size_divisibility}")
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
        raise RetinaMaskError("--int8 needs calibration images: --calib DIR (a few dozen images like the data "
                              "the model will see)")
    if not Path(calibration_dir).is_dir():
        raise RetinaMaskError("calibration folder not found", calibration_dir)


def _save_quantized(proto, save_path, calibration_dir, calibration_images, layout, batch_size, input_size,
                    max_detections, mask_resolution):
    """Quantize the float32 ``proto`` to INT8 at ``save_path`` (the float32 model only lives in a
    temporary file next to it). Returns (external data file or None, quantization report)."""
    import tempfile

    import onnx

    from .quantize import DEFAULT_CALIBRATION_IMAGES, quantize_onnx

    save_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".retinamask-fp32-", dir=save_path.parent) as tmp:
        float_path = Path(tmp) / "float32.onnx"
        if _save(proto, float_path) is not None:
            raise ExportError("the float32 model is over 2 GB: INT8 quantization needs the weights in one file",
                              path=save_path)
        report = quantize_onnx(float_path, save_path, calibration_dir,
                               calibration_images or DEFAULT_CALIBRATION_IMAGES)
    check_contract(onnx.load(str(save_path), load_external_data=False), layout, batch_size, input_size,
                   max_detections if layout == "end2end" else SEED_NUM_CANDIDATES, mask_resolution, path=save_path)
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
        program = torch.onnx.export(graph, args, dynamo=True, opset_version=int(opset), verbose=False,
                                    input_names=input_names, output_names=output_names,
                                    dynamic_shapes=dynamic_shapes)
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
        simplification["skipped"] = f"onnxslim failed ({type(e).__name__}: {_one_line(e)})"
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
        node = helper.make_node("ConstantOfShape", [shape.name], [tensor.name], name=f"{tensor.name}__fill",
                                value=fill)
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
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in value_info.type.tensor_type.shape.dim]


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
            raise ExportError(f"{value.name!r} is {onnx.helper.tensor_dtype_to_np_dtype(got_type)} {dims}, "
                              f"the contract says {name!r} {onnx.helper.tensor_dtype_to_np_dtype(elem_type)} "
                              f"{expected}", path=path)

    inputs = list(proto.graph.input)
    if input_size is None:  # dynamic H/W: input [B, 3, H, W] and image_sizes [B, 2]
        if [i.name for i in inputs] != ["input", IMAGE_SIZES_INPUT]:
            raise ExportError(f"expected inputs ['input', '{IMAGE_SIZES_INPUT}'], found {[i.name for i in inputs]}",
                              path=path)
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


def synthetic_image(height=640, width=640, variant=0):
    """A deterministic uint8 [H, W, 3] RGB test picture: gradients, a few rectangles and discs, and
    a noise texture; ``variant`` moves the shapes.

    Square and textured on purpose: flat regions (and the zero padding of a non-square image)
    give many anchors exactly equal scores, and which of those ties a top-k keeps is up to the
    runtime, so a comparison could not tell a tie from an error.
    """
    rng = np.random.default_rng(20261125 + variant)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack((255 * xx / width, 255 * yy / height, 128 + 100 * np.sin((xx + yy) / 37.0)), axis=-1)
    for _ in range(8):
        color = rng.integers(0, 256, size=3)
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(10, height // 3), rng.integers(10, width // 3)
        if rng.random() < 0.5:
            image[max(0, cy - ry):cy + ry, max(0, cx - rx):cx + rx] = color
        else:
            image[(yy - cy) ** 2 / ry ** 2 + (xx - cx) ** 2 / rx ** 2 <= 1] = color
    image += rng.normal(0.0, 12.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def sample_input(cfg, input_size, batch=1):
    """``synthetic_image`` variants for tracing and verifying an export.

    ``input_size``: a ResizePolicy, or the seed canvas side S. Returns float32 [B, 3, S, S] (the
    square pictures through the seed transform) for the seed policy; otherwise (float32
    [B, 3, H, W] pictures of exactly :func:`example_canvas`'s size, int64 image_sizes [B, 2])."""
    from ..data.transforms import normalize_bgr, policy_preprocess

    policy = input_size if isinstance(input_size, ResizePolicy) else SeedResize(input_size)
    if isinstance(policy, SeedResize):
        tensors = [policy_preprocess(synthetic_image(variant=i), policy, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)[0]
                   for i in range(batch)]
        return torch.from_numpy(np.stack(tensors))
    height, width = example_canvas(policy)
    tensors = [normalize_bgr(synthetic_image(height, width, variant=i), cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
               for i in range(batch)]
    return torch.from_numpy(np.stack(tensors)), torch.tensor([(height, width)] * batch, dtype=torch.int64)


def example_canvas(policy):
    """(H, W) of the image a dynamic-H/W graph is traced and verified on: the canvas the policy gives
    a 640 x 480 image, at least 288 x 352 and never square. Filled by the image (no padding, whose
    flat zeros give tied scores), with every pyramid level at least 3 cells and H != W, so that the
    exporter derives no size that could be mistaken for a constant (P7 = 1 on a small canvas made
    ONNX Runtime reuse a buffer of the wrong shape)."""
    h, w = policy.geometry(480, 640).canvas_hw
    h, w = max(h, 288), max(w, 352)
    return (h, w + 32) if h == w else (h, w)


@contextlib.contextmanager
def eager_limits(model, max_detections):
    """The eager model set to keep (and mask) the top ``max_detections`` like the end2end graph:
    NUM_MASKS_TEST = K, and at least K detections per image."""
    postprocessor = model.rpn.postprocessor
    saved = model.num_masks_test, postprocessor.detections_per_image
    model.num_masks_test = max_detections
    postprocessor.detections_per_image = max(max_detections, saved[1])
    try:
        yield model
    finally:
        model.num_masks_test, postprocessor.detections_per_image = saved


def eager_detections(model, images, max_detections, image_sizes=None):
    """The eager model on ``images`` [B, 3, H, W] with ``image_sizes`` (None: the canvas, i.e.
    clipping to it) and NUM_MASKS_TEST = K. Returns per image a dict of numpy
    boxes/labels/scores/masks [D, M, M]."""
    if image_sizes is None:
        image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
    image_sizes = [tuple(int(v) for v in hw) for hw in image_sizes]
    with torch.no_grad(), eager_limits(model, max_detections):
        results = model(images, image_sizes)
    return [{"boxes": r["boxes"].numpy(), "labels": r["labels"].numpy(), "scores": r["scores"].numpy(),
             "masks": r["mask_probs"].numpy()} for r in results]


def output_detections(outputs, layout):
    """ONNX outputs (4 arrays with a batch axis) -> per image a dict of numpy boxes/labels/scores/masks
    [D, M, M]; end2end padding rows (label -1) are dropped."""
    boxes, labels, scores, masks = outputs
    results = []
    for i in range(boxes.shape[0]):
        keep = labels[i] >= 1 if layout == "end2end" else np.ones(labels.shape[1], dtype=bool)
        results.append({"boxes": boxes[i][keep], "labels": labels[i][keep], "scores": scores[i][keep],
                        "masks": masks[i][keep][:, 0]})
    return results


def box_iou_matrix(a, b, plus_one=False):
    """IoU of xyxy boxes a [N, 4] vs b [M, 4] -> [N, M] float64. Plain areas, or with ``plus_one``
    the original's (``boxlist_iou``, TO_REMOVE = 1: inclusive pixels, so that boxes clipped to
    zero width at the image border still compare by how well they overlap)."""
    a = np.asarray(a, dtype=np.float64)[:, None]
    b = np.asarray(b, dtype=np.float64)[None]
    one = 1.0 if plus_one else 0.0
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one, 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one, 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one)
    area_b = (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)
    union = area_a + area_b - inter
    same = (a == b).all(-1)  # degenerate identical boxes (zero area) count as a perfect match
    return np.where(same, 1.0, inter / np.where(union > 0, union, 1.0))


def compare_detections(reference, test, min_box_iou=0.99, cut=None, cut_tolerance=1e-4):
    """Match ``test`` detections to ``reference`` ones (dicts of numpy boxes/labels/scores/masks).

    Greedy in reference score order: the unmatched test detection of the same label with the
    highest box IoU >= ``min_box_iou`` (the original's IoU, +1 areas). ``cut``: the number of rows the producer keeps; where
    the reference reached it, unmatched detections scoring at most the last kept score
    + ``cut_tolerance`` are attributed to the top-K cut (ties / near-ties) and counted apart.
    Returns counts and, over matched pairs, max |d score|, min box IoU, max |d box| (px),
    max |d mask prob| and min mask IoU (at 0.5).
    """
    ref_n, test_n = len(reference["scores"]), len(test["scores"])
    iou = (box_iou_matrix(reference["boxes"], test["boxes"], plus_one=True) if ref_n and test_n
           else np.zeros((ref_n, test_n)))
    iou = np.where(reference["labels"][:, None] == test["labels"][None], iou, -1.0)
    used = np.zeros(test_n, dtype=bool)
    pairs = []
    for r in np.argsort(-reference["scores"], kind="stable"):
        candidates = np.where(used, -1.0, iou[r])
        if test_n and candidates.max() >= min_box_iou:
            t = int(candidates.argmax())
            used[t] = True
            pairs.append((int(r), t))
    matched_ref = np.zeros(ref_n, dtype=bool)
    for r, _ in pairs:
        matched_ref[r] = True
    at_cut = 0
    if cut is not None and ref_n >= cut:
        last_kept = np.sort(reference["scores"])[::-1][cut - 1]
        at_cut = int((reference["scores"][~matched_ref] <= last_kept + cut_tolerance).sum()
                     + (test["scores"][~used] <= last_kept + cut_tolerance).sum())
    stats = {"reference": ref_n, "exported": test_n, "matched": len(pairs),
             "unmatched": int((~matched_ref).sum() + (~used).sum()), "unmatched_at_cut": at_cut,
             "max_score_diff": 0.0, "min_box_iou": 1.0, "max_box_diff": 0.0, "max_mask_diff": 0.0,
             "min_mask_iou": 1.0}
    if pairs:
        r, t = (np.array(v) for v in zip(*pairs))
        stats["max_score_diff"] = float(np.abs(reference["scores"][r] - test["scores"][t]).max())
        stats["min_box_iou"] = float(iou[r, t].min())
        stats["max_box_diff"] = float(np.abs(reference["boxes"][r] - test["boxes"][t]).max())
        ref_masks, test_masks = reference["masks"][r], test["masks"][t]
        stats["max_mask_diff"] = float(np.abs(ref_masks - test_masks).max())
        ref_bin, test_bin = ref_masks > 0.5, test_masks > 0.5
        inter = (ref_bin & test_bin).sum((1, 2))
        union = (ref_bin | test_bin).sum((1, 2))
        stats["min_mask_iou"] = float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).min())
    return stats


def merge_stats(per_image):
    """Sum the counts and take the worst of the differences over images."""
    total = {}
    for stats in per_image:
        for key, value in stats.items():
            if key.startswith(("max_", "min_")):
                pick = max if key.startswith("max_") else min
                total[key] = pick(total.get(key, value), value)
            else:
                total[key] = total.get(key, 0) + value
    return total


def judge(stats, precision):
    """True when ``stats`` (from compare_detections/merge_stats) are within TOLERANCES[precision]."""
    tol = TOLERANCES[precision]
    explained = stats["matched"] + stats["unmatched_at_cut"]
    fraction = explained / max(1, max(stats["reference"], stats["exported"]))
    if precision == "fp32":
        fraction = 1.0 if stats["unmatched"] == stats["unmatched_at_cut"] else 0.0
    return bool(fraction >= tol["min_matched_fraction"] and stats["min_box_iou"] >= tol["min_box_iou"]
                and stats["max_score_diff"] <= tol["max_score_diff"]
                and stats["max_mask_diff"] <= tol["max_mask_diff"])


def run_onnxruntime(path, images, image_sizes=None):
    """The model at ``path`` on ``images`` (numpy [B, 3, H, W]; with ``image_sizes`` [B, 2] for
    dynamic H/W models) with ONNX Runtime on CPU -> 4 arrays."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)}
    if image_sizes is not None:
        feed[IMAGE_SIZES_INPUT] = np.asarray(image_sizes, dtype=np.int64)
    return session.run(None, feed)


def verify_export(model, graph, cfg, path, layout, input_size, max_detections, batch=1, precision="fp32"):
    """One ONNX Runtime run of the exported file on the sample input, compared with PyTorch:
    end2end against the eager model (image_sizes: the canvas for the seed policy, else the
    images' true sizes; NUM_MASKS_TEST = K), seed against the float32 SeedGraph run eagerly.
    ``input_size``: the ResizePolicy (or the seed canvas side S)."""
    policy = input_size if isinstance(input_size, ResizePolicy) else SeedResize(input_size)
    images, image_sizes = sample_input(cfg, policy, batch), None
    if not isinstance(policy, SeedResize):
        images, image_sizes = images
    input_size = getattr(policy, "size", None)
    start = time.perf_counter()
    outputs = run_onnxruntime(path, images.numpy(), None if image_sizes is None else image_sizes.numpy())
    ort_seconds = time.perf_counter() - start
    if layout == "end2end":
        reference = eager_detections(model, images, max_detections, image_sizes)
        where = (f"({input_size}, {input_size})" if image_sizes is None
                 else "the images' sizes " + ", ".join(f"{h}x{w}" for h, w in image_sizes.tolist()))
        reference_kind = f"eager model, image_sizes {where}, NUM_MASKS_TEST {max_detections}"
        cut = max_detections
    else:
        seed_graph = graph if precision == "fp32" else SeedGraph(model, input_size)
        with torch.no_grad():
            reference = output_detections([t.numpy() for t in seed_graph(images)], layout)
        reference_kind = "SeedGraph in PyTorch (float32)"
        cut = SEED_NUM_CANDIDATES
    tolerances = TOLERANCES[precision]
    stats = merge_stats([compare_detections(r, t, tolerances["min_box_iou"], cut, tolerances["max_score_diff"])
                         for r, t in zip(reference, output_detections(outputs, layout))])
    return {"compared_with": reference_kind, "images": batch, "onnxruntime_seconds": round(ort_seconds, 3),
            "output_shapes": [list(o.shape) for o in outputs], **stats,
            "tolerances": tolerances, "passed": judge(stats, precision)}


def _one_line(e):
    return " ".join(str(e).split())[:300]
