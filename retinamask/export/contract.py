"""The ONNX contract (docs/onnx_contract.md) on the export side: the ``retinamask.*`` metadata an
export writes, and the checks an exported graph must pass before it is written."""

import json

from retinamask import __version__
from retinamask.config.classes import category_ids_from_config
from retinamask.core.contract import CANVAS_SIDE_METADATA_KEY, IMAGE_SIZES_INPUT, OUTPUT_NAMES
from retinamask.core.errors import RetinaMaskError
from retinamask.core.resize import ResizePolicy, SeedResize

FORBIDDEN_OPS = ("If", "Loop", "Scan")


class ExportError(RetinaMaskError):
    """The exported graph breaks the contract (unexpected op, output shape or metadata)."""


def contract_metadata(cfg, model, layout, policy, max_detections, batch):
    """The ``retinamask.*`` metadata_props of docs/onnx_contract.md (all values strings).
    ``policy``: a ResizePolicy (or, as before resize policies, the seed canvas side S)."""
    if not isinstance(policy, ResizePolicy):
        policy = SeedResize(policy)
    postprocessor = model.rpn.postprocessor
    pooler = model.mask.feature_extractor.pooler
    size = {CANVAS_SIDE_METADATA_KEY: str(policy.size)} if isinstance(policy, SeedResize) else {}
    return {
        "retinamask.layout": layout,
        **size,
        **policy.to_metadata(),
        "retinamask.pixel_mean": json.dumps([float(v) for v in cfg.INPUT.PIXEL_MEAN]),
        "retinamask.pixel_std": json.dumps([float(v) for v in cfg.INPUT.PIXEL_STD]),
        "retinamask.class_names": json.dumps(list(model.class_names)),
        "retinamask.category_ids": json.dumps([int(i) for i in category_ids_from_config(cfg)]),
        "retinamask.score_threshold": str(float(postprocessor.score_threshold)),
        "retinamask.nms_threshold": str(float(postprocessor.nms_threshold)),
        "retinamask.max_detections": str(int(max_detections)),
        "retinamask.mask_resolution": str(2 * int(pooler.output_size)),
        "retinamask.batch": str(batch),
        "retinamask.version": __version__,
    }


def set_metadata(proto, metadata):
    """Replace ``proto``'s metadata_props of the keys in ``metadata`` (others are kept)."""
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def value_dims(value_info):
    """Dims of a graph input/output: an int (static), a str (named symbolic) or None."""
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


def check_contract(proto, layout, batch_size, canvas_side, rows, mask_resolution=28, path=None):
    """Raise ExportError unless the graph has no If/Loop/Scan, and its input and outputs have the
    contract's names, dtypes and shapes. ``batch_size`` None: a symbolic batch axis;
    ``canvas_side``: the seed policy's square side S, None for a dynamic-H/W model (input
    [B, 3, H, W] plus image_sizes [B, 2]); ``rows``: K of every output."""
    import onnx

    control_flow = sorted({n.op_type for n in _all_nodes(proto) if n.op_type in FORBIDDEN_OPS})
    if control_flow:
        raise ExportError(f"the graph contains control flow ({', '.join(control_flow)})", path=path)
    batch = "symbolic" if batch_size is None else int(batch_size)

    def check(value, name, elem_type, shape):
        dims = value_dims(value)
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
    if canvas_side is None:  # dynamic H/W: input [B, 3, H, W] and image_sizes [B, 2]
        if [i.name for i in inputs] != ["input", IMAGE_SIZES_INPUT]:
            raise ExportError(
                f"expected inputs ['input', '{IMAGE_SIZES_INPUT}'], found {[i.name for i in inputs]}", path=path
            )
        check(inputs[0], "input", onnx.TensorProto.FLOAT, (3, "symbolic", "symbolic"))
        check(inputs[1], IMAGE_SIZES_INPUT, onnx.TensorProto.INT64, (2,))
    else:
        if len(inputs) != 1:
            raise ExportError(f"expected one input, found {[i.name for i in inputs]}", path=path)
        check(inputs[0], "input", onnx.TensorProto.FLOAT, (3, canvas_side, canvas_side))
    names = OUTPUT_NAMES[layout]
    if [o.name for o in proto.graph.output] != list(names):
        raise ExportError(f"outputs {[o.name for o in proto.graph.output]}, the contract says {list(names)}", path=path)
    outputs = proto.graph.output
    float32, int32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    check(outputs[0], names[0], float32, (rows, 4))
    check(outputs[1], names[1], int32, (rows,))
    check(outputs[2], names[2], float32, (rows,))
    check(outputs[3], names[3], float32, (rows, 1, mask_resolution, mask_resolution))
