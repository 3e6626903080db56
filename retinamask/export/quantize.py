"""INT8 static quantization of an exported model (ONNX Runtime ``quantize_static``, QDQ format).

>>> report = quantize_onnx("retinamask.onnx", "retinamask_int8.onnx", "calib_images/")

Only the dense part is quantized: every Conv / ConvTranspose (backbone, FPN, RetinaNet head,
mask head) and the Add / MaxPool / Resize / Relu nodes that sit between them (residual adds,
the FPN's top-down path). Everything after the convolutions -- sigmoid, top-k, box decoding,
NMS, RoIAlign, the output gathers -- stays float32, so the graph keeps the ONNX contract
(docs/onnx_contract.md) and both runtimes run it: ONNX Runtime fuses the QDQ pairs into
QLinearConv (u8 activations x s8 weights, VNNI where the CPU has it), OpenVINO into its int8
kernels.

Weights: per output channel, symmetric, in 7 bits (``reduce_range``): the same model then gives
the same detections on AVX2-only CPUs as on VNNI ones (see :func:`quantize_onnx`); on the shipped
model's 200 val images 7-bit weights changed mAP against fp32 by -0.0010 bbox / -0.0010 segm in
ONNX Runtime (8-bit: -0.0026 / -0.0010) and -0.0014 / -0.0024 in OpenVINO (8-bit: -0.0006 / -0.0035),
so nothing is lost. Activations: per tensor, asymmetric uint8, ranges
from min/max over calibration images taken through the seed transform (the model's own input
size, mean and std from its metadata). The fp32 model first goes through ONNX Runtime's
``quant_pre_process`` (shape inference and graph optimization: FrozenBatchNorm's Mul/Add fold
into the convolutions, so the folded weights are what gets quantized); it needs the weights
embedded in the file, which ``export_model`` does for models under 2 GB.

Measured on R-50 at 1344x1344 (2-core Zen 4, benchmarks/RESULTS.md): quantizing the convolutions
alone left float round trips around every residual add and upsampling (ONNX Runtime 3.3 s per
image instead of 1.3 s); int8 activations instead of uint8 are 4.5x slower in ONNX Runtime
(no u8 x s8 VNNI path) though faster in OpenVINO (1.4 s instead of 2.4 s). Calibrating R-50 at
1344 holds ~12 GB (ONNX Runtime keeps the augmented graph's activations).
"""

import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from retinamask import __version__
from retinamask.core.errors import InputError, RetinaMaskError, one_line
from retinamask.core.resize import SeedResize

logger = logging.getLogger(__name__)

QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose")
# Quantized only between quantized nodes, so that int8 tensors flow through the dense part
# without float round trips; the same op types in the box decoding stay float.
PASS_THROUGH_OP_TYPES = ("Add", "MaxPool", "Resize", "Relu")
DEFAULT_CALIBRATION_IMAGES = 32
QUANTIZATION_METADATA_KEY = "retinamask.quantization"


class QuantizationError(RetinaMaskError):
    """The model could not be quantized (bad calibration set, unsupported graph)."""


def calibration_images(calibration_dir, count=DEFAULT_CALIBRATION_IMAGES):
    """The first ``count`` images of ``calibration_dir`` in name order (an evenly spaced
    subset when there are more, so that a sorted dataset's variety is kept)."""
    from retinamask.formats.images import list_images

    images = list_images(calibration_dir)
    if not images:
        raise InputError("no calibration images found", calibration_dir)
    if int(count) < 1:
        raise InputError(f"the calibration image count must be >= 1, got {count}")
    if len(images) > count:
        picks = np.linspace(0, len(images) - 1, int(count)).round().astype(int)
        images = [images[i] for i in picks]
    return images


class SeedTransformReader:
    """ONNX Runtime CalibrationDataReader: images through ``seed_preprocess`` in batches of the
    model's batch size (1 when dynamic). Unreadable images are skipped with a warning.

    ``policy``: the model's resize policy: the seed's S x S canvas (``SeedResize``), or for
    models that take any canvas another ResizePolicy: one image per batch (canvases differ;
    repeated to a fixed batch), with its ``image_sizes``."""

    def __init__(self, images, input_name, policy, mean, std, batch_size=1):
        self.images = list(images)
        self.input_name = input_name
        self.policy = policy
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = int(batch_size)
        self.used = 0
        self.skipped = []
        self._batches = None

    def _generate(self):
        from retinamask.data.transforms import seed_preprocess
        from retinamask.formats.images import load_image_rgb

        if not isinstance(self.policy, SeedResize):
            yield from self._generate_any_canvas()
            return
        pending = []
        for path in self.images:
            try:
                tensor = seed_preprocess(load_image_rgb(path), self.policy.size, self.mean, self.std)[0]
            except InputError as e:
                logger.warning("%s: %s (not used for calibration)", path, e.cause)
                self.skipped.append(str(path))
                continue
            pending.append(tensor)
            if len(pending) == self.batch_size:
                self.used += len(pending)
                yield {self.input_name: np.stack(pending)}
                pending = []
        if pending:  # a fixed-batch model's last, partial batch is padded with repeats
            self.used += len(pending)
            pending += [pending[-1]] * (self.batch_size - len(pending))
            yield {self.input_name: np.stack(pending)}

    def _generate_any_canvas(self):
        from retinamask.data.transforms import policy_preprocess
        from retinamask.formats.images import load_image_rgb

        for path in self.images:
            try:
                tensor, geometry = policy_preprocess(load_image_rgb(path), self.policy, self.mean, self.std)
            except InputError as e:
                logger.warning("%s: %s (not used for calibration)", path, e.cause)
                self.skipped.append(str(path))
                continue
            self.used += 1
            b = self.batch_size  # a fixed batch B > 1: the image B times
            yield {
                self.input_name: np.repeat(tensor[None], b, axis=0),
                "image_sizes": np.asarray([geometry.resized_hw] * b, np.int64),
            }

    def get_next(self):
        if self._batches is None:
            self._batches = self._generate()
        return next(self._batches, None)

    def rewind(self):
        self._batches = None


def dense_nodes(proto):
    """Names of the nodes to quantize: every Conv / ConvTranspose, plus each Add / MaxPool /
    Resize / Relu whose non-constant inputs all come from nodes already chosen (graph order is
    topological, so one pass suffices)."""
    constants = {t.name for t in proto.graph.initializer}
    producer_chosen = {}
    chosen = []
    for node in proto.graph.node:
        if node.op_type in QUANTIZED_OP_TYPES:
            take = True
        elif node.op_type in PASS_THROUGH_OP_TYPES:
            activations = [name for name in node.input if name and name not in constants]
            take = bool(activations) and all(producer_chosen.get(name, False) for name in activations)
            if node.op_type == "Resize":  # only its data input matters; scales/sizes are shape inputs
                take = producer_chosen.get(node.input[0], False)
        else:
            take = False
        for output in node.output:
            producer_chosen[output] = take
        if take:
            chosen.append(node.name)
    return chosen


def quantize_onnx(
    model_path,
    save_path,
    calibration_dir,
    calibration_count=DEFAULT_CALIBRATION_IMAGES,
    per_channel=True,
    calibration_cache=None,
    reduce_range=True,
):
    """Quantize the float32 model at ``model_path`` to INT8 at ``save_path`` (see the module docstring).

    ``reduce_range`` (default): weights in 7 bits (symmetric: |w| <= 64), so that the AVX2 u8 x s8 kernels
    (``vpmaddubsw``, which adds two u8*s8 products in a saturating int16) cannot saturate:
    255 * 64 * 2 = 32640 < 32767. Every CPU then computes the same exact int32 dot products
    that VNNI computes, and the model gives the same detections on both CPU classes of
    ../shared/facts/cpu-classes.md. ``reduce_range=False`` keeps 8-bit weights: slightly finer
    on VNNI CPUs (AVX-512 VNNI / AVX-VNNI / AMX), wrong by saturation on AVX2-only ones.

    ``calibration_cache``: a JSON file of tensor ranges (ONNX Runtime's calibration cache): used
    instead of calibrating when it exists, written after calibrating when it does not. It fits
    models whose convolutions are the same, e.g. the same checkpoint exported with another K.

    Returns a report dict: calibration images used, quantized node counts by op type, timings,
    file size. Raises InputError for a missing calibration set, QuantizationError when ONNX
    Runtime's quantization fails or no convolution got quantized.
    """
    from retinamask.export.save import save_onnx
    from retinamask.formats.model_info import read_model_info

    model_path, save_path = Path(model_path), Path(save_path)
    info = read_model_info(model_path)
    images = calibration_images(calibration_dir, calibration_count)
    reader = SeedTransformReader(
        images, info.input_name, info.resize, info.pixel_mean, info.pixel_std, info.batch_size or 1
    )
    from_cache = calibration_cache is not None and Path(calibration_cache).is_file()
    started = time.perf_counter()
    settings = {"per_channel": per_channel, "reduce_range": reduce_range, "calibration_cache": calibration_cache}
    proto, nodes, prepare_seconds = _quantize_dense_nodes(model_path, save_path, reader, settings, calibration_dir)

    counts = {}
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts.get("DequantizeLinear"):
        raise QuantizationError("no convolution was quantized", model_path)
    quantization = {
        "method": "onnxruntime.quantize_static",
        "format": "QDQ",
        "weights": ("int8 in 7 bits (reduce_range) " if reduce_range else "int8 ")
        + "symmetric "
        + ("per channel" if per_channel else "per tensor"),
        "activations": "uint8 asymmetric per tensor",
        "calibration": "minmax" + (f" (ranges from {Path(calibration_cache).name})" if from_cache else ""),
        "calibration_images": None if from_cache else reader.used,
        "quantized_nodes": len(nodes),
    }
    _stamp(proto, quantization)
    save_onnx(proto, save_path)
    return {
        "path": str(save_path),
        "source": str(model_path),
        "calibration_dir": str(calibration_dir),
        "calibration_images_used": reader.used,
        "calibration_images_skipped": reader.skipped,
        "quantized_nodes": len(nodes),
        "qdq_nodes": counts,
        "prepare_seconds": round(prepare_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "file_bytes": save_path.stat().st_size,
        "quantization": quantization,
    }


def _quantize_dense_nodes(model_path, save_path, reader, settings, calibration_dir):
    """ONNX Runtime's pre-processing, then ``quantize_static`` of :func:`dense_nodes` calibrated on
    ``reader`` (in a temporary folder next to ``save_path``). ``settings``: per_channel,
    reduce_range, calibration_cache. Returns (the quantized ModelProto, the quantized node names,
    seconds spent preparing)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration_cache = settings["calibration_cache"]
    from_cache = calibration_cache is not None and Path(calibration_cache).is_file()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="retinamask-quant-", dir=save_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "quantized.onnx"
        try:
            quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        except Exception as e:
            raise QuantizationError(
                f"ONNX Runtime's quantization pre-processing failed: {one_line(e, 300)}", model_path
            ) from None
        prepared_proto = onnx.load(str(prepared))
        nodes = dense_nodes(prepared_proto)
        del prepared_proto
        prepare_seconds = time.perf_counter() - started
        try:
            with _root_logger_at_least(logging.WARNING):  # ONNX Runtime logs each bias copy at INFO on the root
                quantize_static(
                    str(prepared),
                    str(quantized),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=settings["per_channel"],
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_quantize=nodes,
                    calibrate_method=CalibrationMethod.MinMax,
                    reduce_range=settings["reduce_range"],
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                    calibration_cache_path=None if calibration_cache is None else str(calibration_cache),
                )
        except InputError:
            raise
        except Exception as e:
            if reader.used == 0 and not from_cache:
                raise InputError("none of the calibration images could be read", calibration_dir) from None
            raise QuantizationError(
                f"ONNX Runtime's static quantization failed: {one_line(e, 300)}", model_path
            ) from None
        return onnx.load(str(quantized)), nodes, prepare_seconds


def _stamp(proto, quantization):
    """Write the quantization settings into the metadata and retinamask as the producer."""
    entry = next((p for p in proto.metadata_props if p.key == QUANTIZATION_METADATA_KEY), None)
    if entry is None:
        entry = proto.metadata_props.add()
        entry.key = QUANTIZATION_METADATA_KEY
    entry.value = json.dumps(quantization)
    proto.producer_name, proto.producer_version = "retinamask", __version__


@contextlib.contextmanager
def _root_logger_at_least(level):
    root = logging.getLogger()
    saved = root.level
    root.setLevel(max(level, saved))
    try:
        yield
    finally:
        root.setLevel(saved)
