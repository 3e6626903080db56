"""RetinaMask instance segmentation: PyTorch model, ONNX export, runtime inference, COCO evaluation.

Importing the package does not import torch: the runtime half (``retinamask.runtime``,
``retinamask.evaluation``, ``retinamask.data``) works in an environment without it.
"""

__version__ = "0.1.0"
