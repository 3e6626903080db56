"""The model behind the server: one OnnxPredictor (one runtime session) per worker thread, the
shipped model by default, and a warm-up that makes readiness mean "warm"."""

import logging
import time

import numpy as np

from retinamask.apps.onnx_predictor import OnnxPredictor
from retinamask.config.shipped import shipped_onnx_path
from retinamask.runtime.backends import create_sessions

logger = logging.getLogger(__name__)


class ServedModel:
    """``settings.sessions`` predictors of one exported model, with the batching limits the model allows.

    Each predictor's ``prepare`` (image -> canvas tensor), ``run`` (a batch of prepared images -> raw
    outputs per image) and ``finish`` (raw outputs -> Detections) are the same code ``predict --model``
    runs, so a response's detections equal the CLI's.
    """

    def __init__(self, settings, log=logger.info):
        path = settings.model
        if path is None:
            path = shipped_onnx_path()
            log(f"no model named: serving the shipped model {path.name} (retinamask/assets/README.md)")
        self.path = path
        threads = settings.session_threads
        sessions = create_sessions(
            path, settings.sessions, settings.backend, settings.device, settings.precision, threads=threads
        )
        self.mask_paste = settings.mask_paste
        self.predictors = [OnnxPredictor(path, session=session, mask_paste=self.mask_paste) for session in sessions]
        first = self.predictors[0]
        self.info = first.info
        self.backend = first.session.backend
        self.precision = first.session.precision
        self.max_batch = int(settings.max_batch)
        if self.max_batch > 1 and not self.info.dynamic_batch:
            log(f"batching off: {path.name} has a fixed batch of 1 (export it with --dynamic-batch to batch)")
            self.max_batch = 1
        log(
            f"model {path.name}: {self.info.layout} layout, {self.info.resize.describe()}, {self.backend} "
            f"{self.precision}, {len(self.predictors)} session(s) x {threads} thread(s), "
            f"batch <= {self.max_batch}"
        )

    @property
    def name(self):
        return self.path.stem

    @property
    def category_ids(self):
        """COCO category id of each label 1..C (label - 1 indexes it)."""
        return self.info.category_ids

    def runners(self):
        """One ``run(prepared list) -> outputs list`` per session, for the batcher's worker threads."""
        return [predictor.run for predictor in self.predictors]

    def prepare(self, rgb):
        return self.predictors[0].prepare(rgb)

    def finish(self, outputs, prepared, paste=True):
        return self.predictors[0].finish(outputs, prepared, paste)

    @property
    def mask_threshold(self):
        return self.predictors[0].mask_threshold

    def warm_up(self):
        """One inference on every session (a small synthetic image): the first run of a session is slow
        (memory planning, kernel selection); readiness waits for it. Returns seconds per session."""
        rgb = tiny_image()
        seconds = []
        for predictor in self.predictors:
            started = time.perf_counter()
            prepared = predictor.prepare(rgb)
            predictor.finish(predictor.run([prepared])[0], prepared)
            seconds.append(time.perf_counter() - started)
        return seconds

    def describe(self):
        """The /v1/models entry."""
        info = self.info
        if info.dynamic_hw:
            contract = {"input": "float32 [B, 3, H, W] (any canvas)", "image_sizes": "int64 [B, 2]"}
        else:
            h, w = info.resize.max_canvas_hw()
            contract = {"input": f"float32 [B, 3, {h}, {w}]"}
        return {
            "name": self.name,
            "classes": list(info.class_names or ()),
            "category_ids": list(self.category_ids),
            "layout": info.layout,
            "resize": info.resize.describe(),
            "backend": self.backend,
            "precision": self.precision,
            "max_batch": self.max_batch,
            "sessions": len(self.predictors),
            "mask_paste": self.mask_paste,
            "input_contract": {**contract, "outputs": [spec.name for spec in info.outputs]},
        }


def tiny_image():
    """A 64x64 synthetic RGB image (a red square on grey): the warm-up's and Ray's health check's input."""
    rgb = np.full((64, 64, 3), 127, np.uint8)
    rgb[16:48, 16:48] = (200, 40, 40)
    return rgb
