"""What every inference session is: the :class:`Session` interface (a batch in, the model's 4
outputs out, fixed batches padded), the names a backend, device and precision go by, and
:class:`BackendUnavailable`. The sessions themselves: onnxruntime_session.py and
openvino_session.py; ``create_session`` (backends.py) picks one.
"""

import numpy as np

from retinamask.core.errors import RetinaMaskError

BACKENDS = ("onnxruntime", "openvino")
BACKEND_CHOICES = ("auto",) + BACKENDS  # what --backend accepts; auto: see auto_backend.py
DEVICES = ("cpu", "cuda", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
_PRECISION_ALIASES = {
    "f32": "fp32",
    "float32": "fp32",
    "fp32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "f16": "fp16",
    "fp16": "fp16",
    "float16": "fp16",
}


class BackendUnavailable(RetinaMaskError):
    """The requested backend / device / precision cannot run on this machine or installation."""


def normalize_precision(precision):
    """'f32' / 'float32' / 'fp32' -> 'fp32' (likewise bf16, fp16); ValueError otherwise."""
    try:
        return _PRECISION_ALIASES[str(precision).lower()]
    except KeyError:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}") from None


class Session:
    """A compiled model. ``run(batch)`` -> list of 4 numpy arrays, each with batch rows first.

    ``name``: e.g. "onnxruntime-cpu-fp32". ``batch_size``: the model's fixed batch or
    None (dynamic). ``canvas_side``: S. Subclasses implement ``_run`` for exactly one
    batch the model accepts.
    """

    def __init__(self, name, backend, device, precision, input_name, canvas_side, batch_size, image_sizes_name=None):
        self.name = name
        self.backend = backend
        self.device = device
        self.precision = precision
        self.input_name = input_name
        self.canvas_side = canvas_side  # S of a square model; None for dynamic H/W
        self.batch_size = batch_size
        self.choice = None  # the auto_backend.BackendChoice when --backend auto picked this session
        self.image_sizes_name = image_sizes_name

    @property
    def dynamic_hw(self):
        return self.image_sizes_name is not None

    def run(self, batch, image_sizes=None):
        """batch: float32 [B, 3, S, S], any B >= 1 (dynamic-H/W models: [B, 3, H, W] and
        ``image_sizes`` [B, 2] (h, w) of each image's valid region; None: the whole canvas).
        Returns the 4 outputs, each [B, ...]."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.dynamic_hw:
            if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[0] < 1:
                raise ValueError(f"expected a batch [B, 3, H, W], got {list(batch.shape)}")
            if image_sizes is None:
                image_sizes = np.tile(np.asarray(batch.shape[2:], np.int64), (batch.shape[0], 1))
            image_sizes = np.ascontiguousarray(image_sizes, dtype=np.int64).reshape(-1, 2)
            if image_sizes.shape[0] != batch.shape[0]:
                raise ValueError(f"image_sizes has {image_sizes.shape[0]} rows for a batch of {batch.shape[0]}")
        else:
            expected = (3, self.canvas_side, self.canvas_side)
            if batch.ndim != 4 or batch.shape[1:] != expected or batch.shape[0] < 1:
                raise ValueError(f"expected a batch [B, {', '.join(map(str, expected))}], got {list(batch.shape)}")
        fixed = self.batch_size
        if fixed is None or batch.shape[0] == fixed:
            return list(self._run(batch, image_sizes))
        parts = []
        for start in range(0, batch.shape[0], fixed):
            chunk = batch[start : start + fixed]
            sizes = None if image_sizes is None else image_sizes[start : start + fixed]
            rows = chunk.shape[0]
            if rows < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - rows,) + chunk.shape[1:], np.float32)])
                if sizes is not None:
                    sizes = np.concatenate([sizes, np.tile(np.asarray(chunk.shape[2:], np.int64), (fixed - rows, 1))])
            parts.append([out[:rows] for out in self._run(chunk, sizes)])
        return [np.concatenate(outs) for outs in zip(*parts)]

    def _run(self, batch, image_sizes=None):
        raise NotImplementedError

    def __repr__(self):
        canvas = "HxW dynamic" if self.dynamic_hw else f"S={self.canvas_side}"
        return f"<{type(self).__name__} {self.name} batch={self.batch_size or 'dynamic'} {canvas}>"
