"""What an export is asked for (:class:`ExportOptions`) and the defaults and checks that turn the
flags into a resolved export: the resize policy, the rows K, the argument checks."""

import dataclasses
import warnings
from pathlib import Path

from retinamask.core.contract import LAYOUTS, SEED_NUM_CANDIDATES
from retinamask.core.errors import RetinaMaskError
from retinamask.core.resize import ResizePolicy, SeedResize, policy_from_config

MIN_OPSET = 18  # opset 17 gave a ReduceMax that onnxruntime rejects (shared/facts)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """The options of one export (``retinamask export``'s flags); see
    :func:`~retinamask.export.onnx_export.export_model` for their meaning.

    ``resize``: a ResizePolicy or its name (None = ``seed``); ``canvas_side`` (``--input-size``):
    the seed policy's square side S (None: :func:`default_input_size`), only with ``seed``.
    :meth:`resolve` turns both into one policy (``canvas_side`` then its S, None for a dynamic-H/W
    export) and fills ``max_detections``.
    """

    layout: str = "end2end"
    batch_size: int = 1
    dynamic_batch: bool = False
    fp16: bool = False
    opset: int = 18
    simplify: bool = True
    canvas_side: int | None = None
    max_detections: int | None = None
    verify: bool = True
    int8: bool = False
    calibration_dir: str | Path | None = None
    calibration_images: int | None = None
    resize: ResizePolicy | str | None = None
    input_size: dataclasses.InitVar[int | None] = None  # canvas_side's deprecated name (export_onnx's keyword)

    def __post_init__(self, deprecated_side):
        if deprecated_side is not None:
            warnings.warn("ExportOptions: the seed's S is canvas_side= now", DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "canvas_side", deprecated_side)

    def resolve(self, cfg):
        """These options with ``resize`` a ResizePolicy (the seed side S folded into it; ``canvas_side``
        its S, None for a dynamic-H/W export) and ``max_detections`` set; raises RetinaMaskError for
        bad arguments."""
        policy = resolve_export_policy(cfg, self.resize, self.canvas_side, self.layout)
        max_detections = default_max_detections(cfg, policy) if self.max_detections is None else self.max_detections
        canvas_side = policy.size if isinstance(policy, SeedResize) else None
        resolved = dataclasses.replace(self, resize=policy, canvas_side=canvas_side, max_detections=max_detections)
        resolved.check()
        return resolved

    def check(self):
        """Raise RetinaMaskError for options that cannot export (on resolved options)."""
        _check_arguments(self.layout, self.batch_size, self.opset, self.resize, self.max_detections)
        _check_int8_arguments(self.int8, self.fp16, self.calibration_dir)

    @property
    def dynamic_hw(self):
        """True for a canvas of any size (``original`` / ``buckets``) plus the image_sizes input."""
        return not isinstance(self.resize, SeedResize)

    @property
    def fixed_batch(self):
        """The batch axis B, None when dynamic."""
        return None if self.dynamic_batch else self.batch_size

    @property
    def batch(self):
        """The batch as the metadata and the report write it: B or "dynamic"."""
        return "dynamic" if self.dynamic_batch else self.batch_size

    @property
    def example_batch(self):
        """The batch of the tracing example (batch 1 would be specialised into a dynamic graph)."""
        return 2 if self.dynamic_batch else self.batch_size

    @property
    def rows(self):
        """Rows K of every output: max_detections (end2end) or the seed's 1000 candidates."""
        return self.max_detections if self.layout == "end2end" else SEED_NUM_CANDIDATES

    @property
    def precision(self):
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"


def default_input_size(cfg):
    """The config's INPUT.MAX_SIZE_TEST rounded up to a multiple of 32: the seed canvas side S the
    model was trained to see (1333 -> 1344, the seed's size, for the upstream configs)."""
    return -(-int(cfg.INPUT.MAX_SIZE_TEST) // 32) * 32


def default_max_detections(cfg, policy):
    """Rows K of an end2end export: under the original's resize (``original``, ``buckets``) the
    original's own output, its top RETINANET.NUM_MASKS_TEST (50) detections with masks; under
    the seed's square canvas the seed's 100 (its host-side NMS keeps 100)."""
    return 100 if isinstance(policy, SeedResize) else int(cfg.RETINANET.NUM_MASKS_TEST)


def resolve_export_policy(cfg, resize, canvas_side, layout="end2end"):
    """The policy an export uses: ``resize`` a ResizePolicy or a name (``seed`` / ``original`` /
    ``buckets``, sizes from the config; None = ``seed``); ``canvas_side`` is the seed canvas
    side S (``--input-size``; None: :func:`default_input_size`) and only goes with ``seed``."""
    if resize is None:
        resize = "seed"
    if isinstance(resize, ResizePolicy):
        policy = resize
    else:
        if resize != "seed" and canvas_side is not None:
            raise RetinaMaskError(
                f"--input-size sets the seed policy's square canvas; --resize {resize} takes the "
                "config's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (change them with --opts)"
            )
        if canvas_side is not None and (int(canvas_side) <= 0 or int(canvas_side) % 32):
            raise RetinaMaskError(f"input size must be a positive multiple of 32, got {canvas_side}")
        try:
            policy = policy_from_config(cfg, resize, canvas_side=canvas_side or default_input_size(cfg))
        except ValueError as e:
            raise RetinaMaskError(str(e)) from None
    if layout == "seed" and not isinstance(policy, SeedResize):
        raise RetinaMaskError(
            f"the seed layout is the Ascend seed's fixed square graph: it takes --resize seed, "
            f"not {policy.name} (use --layout end2end)"
        )
    return policy


def _check_arguments(layout, batch_size, opset, policy, max_detections):
    canvas_side = policy.size if isinstance(policy, SeedResize) else 32
    if layout not in LAYOUTS:
        raise RetinaMaskError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if int(batch_size) < 1:
        raise RetinaMaskError(f"batch size must be >= 1, got {batch_size}")
    if int(opset) < MIN_OPSET:
        raise RetinaMaskError(
            f"opset {opset} is not supported: use {MIN_OPSET} or later "
            "(with opset 17 the exporter emits a ReduceMax that onnxruntime rejects)"
        )
    if int(canvas_side) <= 0 or int(canvas_side) % 32:
        raise RetinaMaskError(f"input size must be a positive multiple of 32, got {canvas_side}")
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
