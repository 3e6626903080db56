"""The PyTorch RetinaMask (needs torch + torchvision)."""

from .retinamask import RetinaMask, build_model

__all__ = ["RetinaMask", "build_model"]
