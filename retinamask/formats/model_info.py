"""What the runtime needs to know about an exported model, read from the ONNX file (no torch).

See docs/onnx_contract.md: one input ``[B, 3, S, S]`` float32 (the ``seed`` resize policy), or
``input`` [B, 3, H, W] with dynamic H/W plus ``image_sizes`` int64 [B, 2] (``original`` /
``buckets``); four outputs in the ``end2end`` or ``seed`` layout, and ``retinamask.*``
metadata_props. Models without the metadata (e.g. the seed's own ONNX) work when the layout
and the canvas side S are given (``--layout``, ``--input-size``).
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinamask.core.contract import (
    CANVAS_SIDE_METADATA_KEY,
    DEFAULT_MASK_RESOLUTION,
    DEFAULT_MAX_DETECTIONS,
    IMAGE_SIZES_INPUT,
    LAYOUTS,
    META_PREFIX,
    OUTPUT_NAMES,
    SEED_NUM_CANDIDATES,
)
from retinamask.core.contract import PIXEL_MEAN as DEFAULT_PIXEL_MEAN
from retinamask.core.contract import PIXEL_STD as DEFAULT_PIXEL_STD
from retinamask.core.errors import InputError
from retinamask.core.resize import POLICIES, ResizePolicy, SeedResize, policy_from_metadata, policy_named
from retinamask.formats.onnx_graph import (
    category_ids_meta,
    check_outputs,
    class_names_meta,
    elem_dtype,
    float_meta,
    floats_meta,
    format_dims,
    guess_layout,
    int_meta,
    load_onnx_graph,
    static_rows,
    value_dims,
)
from retinamask.formats.run_sidecar import CANVAS_SIDE_KEY

# Output index -> (name in the layout, dtype); the per-image shapes come from output_specs().
_OUTPUT_DTYPES = (np.dtype("<f4"), np.dtype("<i4"), np.dtype("<f4"), np.dtype("<f4"))
_CANVAS_SIDE_META = CANVAS_SIDE_METADATA_KEY.removeprefix(META_PREFIX)  # the key int_meta and ``supplied`` use


@dataclass(frozen=True)
class OutputSpec:
    """One output of one image (batch axis removed): what a per-image file holds."""

    index: int
    name: str
    dtype: np.dtype  # little-endian, as written to .bin files
    shape: tuple  # e.g. (K, 4); (K, 1, M, M) for masks

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def output_specs(layout, num_detections=None, mask_resolution=DEFAULT_MASK_RESOLUTION):
    """The 4 per-image outputs of a layout (batch axis removed), in output index order.

    ``num_detections``: rows K (end2end: max_detections, default 100; seed: always 1000).
    Returns a tuple of 4 :class:`OutputSpec`: boxes [K,4] f32, labels [K] i32,
    scores [K] f32, masks [K,1,M,M] f32.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if num_detections is None:
        num_detections = SEED_NUM_CANDIDATES if layout == "seed" else DEFAULT_MAX_DETECTIONS
    k, m = int(num_detections), int(mask_resolution)
    shapes = ((k, 4), (k,), (k,), (k, 1, m, m))
    return tuple(
        OutputSpec(i, name, dtype, shape)
        for i, (name, dtype, shape) in enumerate(zip(OUTPUT_NAMES[layout], _OUTPUT_DTYPES, shapes))
    )


@dataclass(frozen=True)
class ModelInfo:
    """The exported model's interface.

    ``batch_size``: the fixed batch B, or None for a dynamic batch axis.
    ``outputs``: per-image :class:`OutputSpec` (batch axis removed) from the layout
    contract, checked against the graph's declared output shapes where static.
    ``max_detections``: detections kept per image (end2end: the rows K; seed: what the
    host-side NMS keeps). ``metadata``: the raw ``metadata_props``; ``supplied``: keys that came from the
    caller (flags) or from the graph because the metadata lacked them.
    """

    path: Path
    layout: str
    input_name: str
    canvas_side: int | None  # the square canvas side S (seed policy), None for dynamic H/W models
    batch_size: int | None
    output_names: tuple
    outputs: tuple
    pixel_mean: tuple = DEFAULT_PIXEL_MEAN
    pixel_std: tuple = DEFAULT_PIXEL_STD
    class_names: tuple | None = None
    stored_category_ids: tuple | None = None  # metadata retinamask.category_ids (exports since serving)
    score_threshold: float | None = None
    nms_threshold: float = 0.4
    max_detections: int = DEFAULT_MAX_DETECTIONS
    mask_resolution: int = DEFAULT_MASK_RESOLUTION
    version: str | None = None
    metadata: dict = field(default_factory=dict)
    supplied: tuple = ()
    resize: ResizePolicy | None = None  # the policy runs use (the metadata's, or the one asked for)
    image_sizes_name: str | None = None  # the second input of dynamic H/W models

    def __post_init__(self):
        if self.resize is None and self.canvas_side:
            object.__setattr__(self, "resize", SeedResize(self.canvas_side))

    @property
    def category_ids(self):
        """The category id of each label 1..K: the metadata's, else COCO's ids for COCO's 80 class names,
        else 1..K (K: the class names', else the largest label the outputs may hold is unknown: ())."""
        if self.stored_category_ids is not None:
            return self.stored_category_ids
        from retinamask.formats.coco_classes import default_category_ids

        return default_category_ids(self.class_names or ())

    @property
    def dynamic_hw(self):
        """True for models that take any canvas (plus image_sizes)."""
        return self.image_sizes_name is not None

    @property
    def dynamic_batch(self):
        return self.batch_size is None

    @property
    def quantized(self):
        """An INT8 (QDQ) export (``retinamask export --int8``): its metadata names the quantization."""
        return f"{META_PREFIX}quantization" in self.metadata

    @property
    def num_rows(self):
        """Rows K of every output (detections for end2end, candidates for seed)."""
        return self.outputs[0].shape[0]

    def summary(self):
        """JSON-friendly description (written into run sidecars and summaries)."""
        return {
            "path": str(self.path),
            "layout": self.layout,
            "input_name": self.input_name,
            CANVAS_SIDE_KEY: self.canvas_side,
            "resize": None if self.resize is None else self.resize.to_dict(),
            "image_sizes_input": self.image_sizes_name,
            "batch": "dynamic" if self.batch_size is None else self.batch_size,
            "outputs": [
                {"index": o.index, "name": n, "dtype": o.dtype.name, "shape": list(o.shape)}
                for o, n in zip(self.outputs, self.output_names)
            ],
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
            "max_detections": self.max_detections,
            "mask_resolution": self.mask_resolution,
            "nms_threshold": self.nms_threshold,
            "version": self.version,
        }


def read_model_info(model_path, layout=None, canvas_side=None, resize=None):
    """Read an exported model's inputs, outputs and ``retinamask.*`` metadata.

    ``layout`` / ``canvas_side`` (the square canvas side S, ``--input-size``): used where the metadata lacks them
    (and checked against it where it has them). ``resize``: the policy to run (a name or a
    ResizePolicy; None: the metadata's): a dynamic-H/W model runs any policy (the
    test sizes come from its metadata), a square model only ``seed``.
    The weights are not loaded (only the graph).
    Raises InputError naming the file for: a missing file or one that is not ONNX,
    a graph that does not follow the contract, missing metadata that no argument
    supplies (naming the keys and the flags), or disagreements between them.
    """
    path = Path(model_path)
    model = load_onnx_graph(path)
    metadata = {p.key: p.value for p in model.metadata_props}
    input_value, in_dims, dynamic_hw = _read_inputs(model.graph, path)
    model_info = _dynamic_model_info if dynamic_hw else _square_model_info
    return model_info(path, model, metadata, input_value, in_dims, layout, canvas_side, resize)


def _read_inputs(graph, path):
    """The graph's image input checked against the contract: (its ValueInfo, its dims, True when
    an ``image_sizes`` input [B, 2] makes it a dynamic-H/W model)."""
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    dynamic_hw = len(inputs) == 2 and inputs[1].name == IMAGE_SIZES_INPUT
    if dynamic_hw:
        size_dims = value_dims(inputs[1])
        if size_dims is not None and (len(size_dims) != 2 or size_dims[1] not in (2, None)):
            raise InputError(
                f"expected input {IMAGE_SIZES_INPUT!r} of shape [B, 2], found {format_dims(size_dims)}", path
            )
    elif len(inputs) != 1:
        raise InputError(
            f"expected one input [B, 3, S, S] (or input + {IMAGE_SIZES_INPUT}), the model has {len(inputs)}: "
            f"{[i.name for i in inputs]}",
            path,
        )
    input_value = inputs[0]
    in_dims = value_dims(input_value)
    in_dtype = elem_dtype(input_value)
    if in_dims is None or len(in_dims) != 4 or in_dims[1] not in (3, None):
        raise InputError(
            f"expected input {input_value.name!r} of shape [B, 3, S, S], found {format_dims(in_dims)}", path
        )
    if in_dtype is not None and in_dtype != np.float32:
        raise InputError(f"expected a float32 input, {input_value.name!r} is {in_dtype}", path)
    return input_value, in_dims, dynamic_hw


def _square_model_info(path, model, metadata, input_value, in_dims, layout, given_side, resize):
    """ModelInfo of a square model (one input [B, 3, S, S], the seed policy): the layout and S
    from the metadata, else the graph, else the arguments (``given_side``: S as asked for)."""
    graph = model.graph
    if resize is not None and getattr(resize, "name", resize) != "seed":
        raise InputError(
            f"--resize {getattr(resize, 'name', resize)}: this model takes only a fixed square canvas "
            "(exported with --resize seed); export with --resize original or buckets for other "
            "canvases",
            path,
        )
    meta_layout, resolved_layout = _resolve_layout(metadata, layout, path)
    meta_side, canvas_side = _resolve_canvas_side(metadata, in_dims, given_side, path)
    _require_layout_and_side(graph, resolved_layout, canvas_side, path)
    supplied = ([_CANVAS_SIDE_META] if meta_side is None else []) + (["layout"] if meta_layout is None else [])
    batch_dim = _batch_axis(in_dims, metadata, path)

    if len(graph.output) != 4:
        raise InputError(
            f"expected 4 outputs (boxes, labels, scores, masks: docs/onnx_contract.md), found {len(graph.output)}: "
            f"{[o.name for o in graph.output]}",
            path,
        )
    specs, max_detections, mask_resolution = _read_outputs(graph, metadata, resolved_layout, path, True)
    if resize is not None and isinstance(resize, ResizePolicy) and resize != SeedResize(canvas_side):
        raise InputError(
            f"--resize {resize.describe()} disagrees with the model's {canvas_side}x{canvas_side} canvas", path
        )
    return ModelInfo(
        path=path,
        layout=resolved_layout,
        input_name=input_value.name,
        canvas_side=int(canvas_side),
        batch_size=batch_dim,
        output_names=tuple(o.name for o in graph.output),
        outputs=specs,
        **_described_fields(metadata, path),
        max_detections=max_detections,
        mask_resolution=mask_resolution,
        version=_version(metadata),
        metadata=metadata,
        supplied=tuple(supplied),
    )


def _read_outputs(graph, metadata, layout, path, mask_resolution_from_graph):
    """The 4 outputs of ``layout``: (per-image OutputSpecs checked against the graph,
    max_detections, mask resolution M). Rows K: the seed's 1000, else the graph's static rows,
    else retinamask.max_detections; M from the graph's static mask shape where
    ``mask_resolution_from_graph`` (square models), else from the metadata."""
    mask_resolution = int_meta(metadata, "mask_resolution", path) or DEFAULT_MASK_RESOLUTION
    max_detections = int_meta(metadata, "max_detections", path) or DEFAULT_MAX_DETECTIONS
    out_dims = [value_dims(o) for o in graph.output]
    # the seed layout always has 1000 rows; a graph with other static rows fails the check below
    num_rows = SEED_NUM_CANDIDATES if layout == "seed" else (static_rows(out_dims) or max_detections)
    mask_dims = out_dims[3]
    if mask_resolution_from_graph and mask_dims is not None and len(mask_dims) == 5 and mask_dims[-1] is not None:
        mask_resolution = mask_dims[-1]
    specs = output_specs(layout, num_rows, mask_resolution)
    check_outputs(graph.output, out_dims, specs, layout, path)
    return specs, max_detections, int(mask_resolution)


def _resolve_layout(metadata, layout, path):
    """(the metadata's layout or None, the layout to use: the metadata's, else ``layout``)."""
    meta_layout = metadata.get(META_PREFIX + "layout")
    if meta_layout is not None and meta_layout not in LAYOUTS:
        raise InputError(f"metadata retinamask.layout={meta_layout!r} is not one of {LAYOUTS}", path)
    if layout is not None and layout not in LAYOUTS:
        raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if meta_layout and layout and meta_layout != layout:
        raise InputError(f"--layout {layout} disagrees with the model's metadata retinamask.layout={meta_layout}", path)
    return meta_layout, meta_layout or layout


def _resolve_canvas_side(metadata, in_dims, given_side, path):
    """(the metadata's S or None, the square canvas side S: the metadata's, else the static
    input shape's, else ``given_side``; None when none knows it). They must agree."""
    static_sides = {d for d in in_dims[2:] if d is not None}
    if len(static_sides) > 1:
        raise InputError(f"the input must be square [B, 3, S, S], found {format_dims(in_dims)}", path)
    graph_side = static_sides.pop() if static_sides else None
    meta_side = int_meta(metadata, _CANVAS_SIDE_META, path)
    candidates = {
        f"metadata {CANVAS_SIDE_METADATA_KEY}": meta_side,
        "the input shape": graph_side,
        "--input-size": given_side,
    }
    known = {k: v for k, v in candidates.items() if v is not None}
    if len(set(known.values())) > 1:
        raise InputError("input size disagreement: " + ", ".join(f"{k} says {v}" for k, v in known.items()), path)
    return meta_side, next(iter(known.values()), None)


def _require_layout_and_side(graph, layout, canvas_side, path):
    """Raise InputError naming the metadata keys (and the flags that supply them) still unknown."""
    missing = []
    if layout is None:
        missing.append(("retinamask.layout", "--layout end2end|seed", guess_layout(graph)))
    if canvas_side is None:
        missing.append((CANVAS_SIDE_METADATA_KEY, "--input-size S", None))
    if missing:
        parts = []
        for key, flag, hint in missing:
            parts.append(f"{key} (pass {flag}{'; the output names suggest ' + hint if hint else ''})")
        raise InputError("the model's metadata lacks " + "; ".join(parts), path)


def _batch_axis(in_dims, metadata, path):
    """The input's fixed batch B (checked against retinamask.batch), None when dynamic."""
    batch_dim = in_dims[0]
    meta_batch = metadata.get(META_PREFIX + "batch")
    if meta_batch not in (None, "dynamic"):
        try:
            meta_batch_value = int(meta_batch)
        except ValueError:
            raise InputError(
                f"metadata retinamask.batch={meta_batch!r} is neither 'dynamic' nor an integer", path
            ) from None
        if batch_dim is not None and batch_dim != meta_batch_value:
            raise InputError(f"metadata retinamask.batch={meta_batch} but the input's batch axis is {batch_dim}", path)
    if batch_dim is not None and batch_dim <= 0:
        batch_dim = None
    return batch_dim


def _described_fields(metadata, path):
    """The ModelInfo fields that only the metadata describes (the defaults where it lacks them)."""
    return {
        "pixel_mean": floats_meta(metadata, "pixel_mean", path) or DEFAULT_PIXEL_MEAN,
        "pixel_std": floats_meta(metadata, "pixel_std", path) or DEFAULT_PIXEL_STD,
        "class_names": class_names_meta(metadata, path),
        "stored_category_ids": category_ids_meta(metadata, path),
        "score_threshold": float_meta(metadata, "score_threshold", path),
        "nms_threshold": float_meta(metadata, "nms_threshold", path) or 0.4,
    }


def _version(metadata):
    return metadata.get(META_PREFIX + "version")


def _dynamic_model_info(path, model, metadata, input_value, in_dims, layout, given_side, resize):
    """ModelInfo of a dynamic-H/W model (input + image_sizes): end2end layout, a policy in the
    metadata (or ``resize`` given as a policy)."""
    graph = model.graph
    if given_side is not None:
        raise InputError("--input-size is for square models; this one takes any canvas (pass --resize)", path)
    meta_layout = metadata.get(META_PREFIX + "layout", "end2end")
    if meta_layout != "end2end" or (layout is not None and layout != "end2end"):
        raise InputError(f"a model with {IMAGE_SIZES_INPUT} has the end2end layout, not {layout or meta_layout}", path)
    policy, supplied = _dynamic_policy(metadata, resize, path)
    if len(graph.output) != 4:
        raise InputError(f"expected 4 outputs (boxes, labels, scores, masks), found {len(graph.output)}", path)
    specs, max_detections, mask_resolution = _read_outputs(graph, metadata, "end2end", path, False)
    batch_dim = in_dims[0] if in_dims[0] and in_dims[0] > 0 else None
    return ModelInfo(
        path=path,
        layout="end2end",
        input_name=input_value.name,
        canvas_side=None,
        batch_size=batch_dim,
        output_names=tuple(o.name for o in graph.output),
        outputs=specs,
        **_described_fields(metadata, path),
        max_detections=max_detections,
        mask_resolution=mask_resolution,
        version=_version(metadata),
        metadata=metadata,
        supplied=tuple(supplied),
        resize=policy,
        image_sizes_name=IMAGE_SIZES_INPUT,
    )


def _dynamic_policy(metadata, resize, path):
    """(the policy a dynamic-H/W model runs, supplied keys): ``resize`` as a ResizePolicy, or the
    metadata's policy (renamed to ``resize`` when that is a name)."""
    try:
        policy = policy_from_metadata(metadata)
    except ValueError as e:
        raise InputError(str(e), path) from None
    supplied = []
    if isinstance(resize, ResizePolicy):
        policy = resize
    elif resize is not None:
        if resize not in POLICIES:
            raise InputError(f"--resize must be one of {', '.join(POLICIES)}, got {resize!r}")
        if policy is None or isinstance(policy, SeedResize):
            raise InputError(
                f"the model's metadata lacks its test sizes (retinamask.resize); --resize {resize} "
                "needs them: re-export, or pass a policy",
                path,
            )
        policy = policy_named(policy, resize)
        supplied.append("resize")
    if policy is None:
        raise InputError("the model's metadata lacks retinamask.resize (its resize policy); re-export it", path)
    return policy, supplied
