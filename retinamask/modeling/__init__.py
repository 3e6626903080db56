"""The PyTorch RetinaMask (needs torch + torchvision)."""

from retinamask.modeling.retinamask import RetinaMask, build_model

__all__ = ["RetinaMask", "build_model"]
