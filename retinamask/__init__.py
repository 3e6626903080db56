"""RetinaMask instance segmentation: PyTorch model, ONNX export, runtime inference, COCO evaluation.

Importing the package does not import torch: the runtime half (``retinamask.runtime``,
``retinamask.evaluation``, ``retinamask.data``) works in an environment without it.

>>> import retinamask
>>> cfg = retinamask.load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms")
>>> model = retinamask.build_model(cfg)                 # needs torch
>>> retinamask.load_checkpoint(model, "model_final.pth")
>>> predictor = retinamask.Predictor(model, cfg)
>>> predictor("image.jpg").boxes
>>> for frame in retinamask.predict_video(predictor, "clip.mp4", track=True):   # any source, one frame at a time
...     frame.index, frame.seconds, frame.detections.boxes, frame.track_ids
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY = {
    "load_config": "retinamask.config",
    "build_model": "retinamask.modeling",
    "load_checkpoint": "retinamask.modeling.checkpoint",
    "save_checkpoint": "retinamask.modeling.checkpoint",
    "Predictor": "retinamask.engine.predictor",
    "Detections": "retinamask.core.detections",
    "Prediction": "retinamask.core.detections",  # the same type as Detections
    "OnnxPredictor": "retinamask.apps.onnx_predictor",  # the exported model, torch-free
    "predict_video": "retinamask.apps.predict_video",  # frames of a video, stream or camera -> FrameResult
    "FrameResult": "retinamask.apps.predict_video",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retinamask' has no attribute {name!r}")
