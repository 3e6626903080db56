"""FLOPs of an exported model, counted on its ONNX graph (Conv / ConvTranspose / Gemm / MatMul)."""

import math

COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def count_flops(model_path):
    """Multiply-adds x 2 of the Conv / ConvTranspose / Gemm / MatMul nodes of an exported model.

    Shapes come from ONNX shape inference on the fixed input. Nodes at or after a RoiAlign are
    the mask head: their count is divided by their RoI axis (symbolic for end2end, 1000 for
    seed) to give a per-RoI figure. Returns {"dense_gflop", "mask_gflop_per_roi", "by_op"}.
    """
    import onnx

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)), data_prop=True)
    graph = proto.graph
    shapes = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        shapes[value.name] = [
            d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
        ]
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)

    after_roi_align = set()
    dense = per_roi = 0.0
    by_op = {}
    for node in graph.node:
        in_mask_head = node.op_type == "RoiAlign" or any(name in after_roi_align for name in node.input)
        if in_mask_head:
            after_roi_align.update(node.output)
        if node.op_type not in COUNTED_OPS:
            continue
        flops, rows = _node_flops(node, shapes)
        if in_mask_head:
            per_roi += flops
        else:
            dense += flops * rows
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 1
    return {"dense_gflop": dense / 1e9, "mask_gflop_per_roi": per_roi / 1e9, "by_op": by_op}


def _node_flops(node, shapes):
    """(FLOPs for one index of the leading axis (image or RoI), that axis' size or 1 when symbolic)."""

    def dims(name):
        found = shapes.get(name)
        if found is None:
            raise ValueError(f"no shape for {name!r} (input of {node.op_type} {node.name!r})")
        return found

    attrs = {a.name: onnx_attr(a) for a in node.attribute}
    if node.op_type in ("Conv", "ConvTranspose"):
        x, w, y = dims(node.input[0]), dims(node.input[1]), dims(node.output[0])
        kernel = math.prod(w[2:])
        # Conv: w [Cout, Cin/g, k..], Cin/g * k MACs per output element;
        # ConvTranspose: w [Cin, Cout/g, k..], Cout/g * k MACs per input element
        elements = math.prod(y[1:]) if node.op_type == "Conv" else math.prod(x[1:])
        return 2.0 * (elements * w[1] * kernel), x[0] or 1
    a, y = dims(node.input[0]), dims(node.output[0])
    inner = a[0] if node.op_type == "Gemm" and attrs.get("transA", 0) else a[-1]
    return 2.0 * math.prod(d or 1 for d in y[1:]) * inner, y[0] or 1


def onnx_attr(attribute):
    import onnx

    return onnx.helper.get_attribute_value(attribute)
