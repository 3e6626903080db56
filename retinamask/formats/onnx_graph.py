"""An ONNX file read without torch: the graph (weights not loaded), its inputs' and outputs' dims
and dtypes, and the ``retinamask.*`` metadata values parsed (numbers, lists, class names).
Errors are InputErrors naming the file."""

import json

import numpy as np

from retinamask.core.contract import META_PREFIX, OUTPUT_NAMES
from retinamask.core.errors import InputError

_ONNX_ELEM_TYPES = {
    1: np.dtype("float32"),
    6: np.dtype("int32"),
    7: np.dtype("int64"),
    10: np.dtype("float16"),
    11: np.dtype("float64"),
    9: np.dtype("bool"),
    3: np.dtype("int8"),
    2: np.dtype("uint8"),
}


def load_onnx_graph(path):
    import onnx
    from google.protobuf.message import DecodeError

    if not path.exists():
        raise InputError("model file not found", path)
    if path.is_dir():
        raise InputError("is a directory, not an ONNX model file", path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as e:
        raise InputError(f"not an ONNX model (protobuf parse failed: {e})", path) from None
    except OSError as e:
        raise InputError(f"cannot read the model: {e.strerror or e}", path) from None
    except Exception as e:  # onnx raises various errors for garbage input
        raise InputError(f"not an ONNX model ({type(e).__name__}: {e})", path) from None
    if not model.HasField("graph") or not model.graph.output:
        raise InputError("not an ONNX model (no graph or no outputs)", path)
    return model


def value_dims(value_info):
    """Static dims of a graph input/output (None for symbolic ones), or None when the rank is unknown."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def elem_dtype(value_info):
    return _ONNX_ELEM_TYPES.get(value_info.type.tensor_type.elem_type)


def format_dims(dims):
    if dims is None:
        return "an unknown shape"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def static_rows(out_dims):
    """K from the outputs' second axis where it is static (None if none is)."""
    for dims in out_dims:
        if dims is not None and len(dims) >= 2 and dims[1] is not None:
            return dims[1]
    return None


def check_outputs(outputs, out_dims, specs, layout, path):
    """Raise InputError for the first graph output whose static dims or dtype break its OutputSpec."""
    for value, dims, spec in zip(outputs, out_dims, specs):
        expected = [None] + list(spec.shape)
        dtype = elem_dtype(value)
        problem = None
        if dims is not None and (
            len(dims) != len(expected)
            or any(d is not None and e is not None and d != e for d, e in zip(dims, expected))
        ):
            problem = f"shape {format_dims(dims)}, expected [B, {', '.join(str(e) for e in spec.shape)}]"
        elif dtype is not None and dtype != spec.dtype:
            problem = f"dtype {dtype}, expected {spec.dtype.name}"
        if problem:
            raise InputError(
                f"output {spec.index} ({value.name!r}) has {problem} for the {layout} layout "
                "(docs/onnx_contract.md); wrong --layout?",
                path,
            )


def guess_layout(graph):
    """The layout whose output names the graph has, or None."""
    names = tuple(o.name for o in graph.output)
    for layout, expected in OUTPUT_NAMES.items():
        if names == expected:
            return layout
    return None


def int_meta(metadata, key, path):
    value = metadata.get(META_PREFIX + key)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise InputError(f"metadata retinamask.{key}={value!r} is not an integer", path) from None
    if number <= 0:
        raise InputError(f"metadata retinamask.{key}={value!r} must be positive", path)
    return number


def float_meta(metadata, key, path):
    value = metadata.get(META_PREFIX + key)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise InputError(f"metadata retinamask.{key}={value!r} is not a number", path) from None


def floats_meta(metadata, key, path):
    value = metadata.get(META_PREFIX + key)
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in json.loads(value))
    except (ValueError, TypeError):
        raise InputError(f"metadata retinamask.{key}={value!r} is not a JSON list of numbers", path) from None
    if len(numbers) != 3:
        raise InputError(f"metadata retinamask.{key} needs 3 values, has {len(numbers)}", path)
    return numbers


def category_ids_meta(metadata, path):
    """metadata retinamask.category_ids: the category id of each label 1..K, or None (older exports)."""
    return _json_list_meta(metadata, "category_ids", path, "integers", _is_int)


def class_names_meta(metadata, path):
    """metadata retinamask.class_names: the name of each label 1..K, or None."""
    return _json_list_meta(metadata, "class_names", path, "strings", lambda item: isinstance(item, str))


def _is_int(item):
    return isinstance(item, int) and not isinstance(item, bool)


def _json_list_meta(metadata, key, path, items_what, is_item):
    """metadata retinamask.<key> as a tuple of items that pass ``is_item``, or None when absent."""
    value = metadata.get(META_PREFIX + key)
    if value is None:
        return None
    try:
        items = json.loads(value)
    except ValueError:
        items = None
    if not isinstance(items, list) or not all(is_item(item) for item in items):
        raise InputError(f"metadata retinamask.{key} is not a JSON list of {items_what}", path)
    return tuple(items)
