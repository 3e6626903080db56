"""Test-time image transforms (numpy + Pillow, no torch).

Two pipelines (and ``policy_preprocess``, either one or the buckets' padding through a
resize policy of ``retinamask.core.geometry``):

* ``upstream_preprocess``: the original RetinaMask / maskrcnn-benchmark TEST
  transform: short side to ``min_size`` with the long side capped at
  ``max_size`` (``Resize.get_size``), PIL bilinear, BGR 0..255 minus PIXEL_MEAN
  divided by PIXEL_STD, zero padding bottom/right to a multiple of 32.
* ``seed_preprocess``: the Ascend seed's fixed-size transform: long side to the
  square canvas side S (1344), PIL bilinear, the same normalisation, zero padding
  bottom/right to S x S.

Arrays: images are uint8 [H, W, 3] RGB; model inputs are float32 [3, H, W] BGR.
"""

import numpy as np
from PIL import Image

from retinamask.core.contract import PIXEL_MEAN, PIXEL_STD, SEED_CANVAS_SIDE
from retinamask.core.geometry import ImageGeometry, seed_resize_geometry, upstream_test_size
from retinamask.core.resize import SeedResize


def resize_rgb(img, size_hw):
    """Resize uint8 [H, W, 3] RGB to [size_hw[0], size_hw[1], 3] with PIL BILINEAR
    (what torchvision's F.resize does on a PIL image; Pillow antialiases when
    downscaling and returns an unchanged copy when the size is already right)."""
    new_h, new_w = int(size_hw[0]), int(size_hw[1])
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got shape {img.shape}")
    pil = Image.fromarray(img)
    return np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))


def normalize_bgr(img_rgb_uint8, mean=PIXEL_MEAN, std=PIXEL_STD):
    """uint8 [H, W, 3] RGB -> float32 [3, H, W] BGR: (float32(pixel) - mean) / std,
    per BGR channel, all arithmetic in float32 (as torch does it on a float32 tensor)."""
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    bgr_chw = np.ascontiguousarray(np.asarray(img_rgb_uint8)[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)
    bgr_chw -= mean
    if np.any(std != 1):
        bgr_chw /= std
    return bgr_chw


def pad_to(tensor, size_hw):
    """Zero-pad the last two axes of ``tensor`` [..., H, W] at the bottom/right to
    [..., size_hw[0], size_hw[1]] (same dtype). Raises ValueError if it is larger."""
    h, w = tensor.shape[-2:]
    out_h, out_w = int(size_hw[0]), int(size_hw[1])
    if h > out_h or w > out_w:
        raise ValueError(f"cannot pad {h}x{w} to the smaller {out_h}x{out_w}")
    if (h, w) == (out_h, out_w):
        return tensor
    out = np.zeros(tensor.shape[:-2] + (out_h, out_w), dtype=tensor.dtype)
    out[..., :h, :w] = tensor
    return out


def pad_divisible(tensor, size_divisible=32):
    """Zero-pad [..., H, W] bottom/right so that H and W are multiples of ``size_divisible``
    (as maskrcnn-benchmark's ``to_image_list``); ``size_divisible <= 0`` pads nothing."""
    if size_divisible <= 0:
        return tensor
    h, w = tensor.shape[-2:]
    d = int(size_divisible)
    return pad_to(tensor, (-(-h // d) * d, -(-w // d) * d))


def upstream_preprocess(img_rgb, min_size=800, max_size=1333, mean=PIXEL_MEAN, std=PIXEL_STD, size_divisible=32):
    """The original TEST-time input for one image.

    ``img_rgb``: uint8 [H, W, 3] RGB. Returns (float32 [3, Hp, Wp] BGR, normalised,
    zero-padded to multiples of ``size_divisible``; (resized_h, resized_w), the valid
    region, i.e. the model's ``image_sizes``). Add a batch axis for the model.
    """
    h, w = img_rgb.shape[:2]
    resized_hw = upstream_test_size(h, w, min_size, max_size)
    resized = resize_rgb(img_rgb, resized_hw)
    return pad_divisible(normalize_bgr(resized, mean, std), size_divisible), resized_hw


def seed_preprocess(img_rgb, canvas_side=SEED_CANVAS_SIDE, mean=PIXEL_MEAN, std=PIXEL_STD):
    """The seed's fixed-size input for one image.

    ``img_rgb``: uint8 [H, W, 3] RGB. Returns (float32 [3, S, S] BGR with S =
    ``canvas_side``: the image resized so its long side is S (see
    :func:`seed_resize_geometry` for rounding), normalised, zero-padded
    bottom/right; ``scale`` = S / max(H, W), which postprocessing divides boxes by;
    (resized_h, resized_w), the valid region).
    """
    h, w = img_rgb.shape[:2]
    resized_hw, scale = seed_resize_geometry(h, w, canvas_side)
    resized = resize_rgb(img_rgb, resized_hw)
    return pad_to(normalize_bgr(resized, mean, std), (canvas_side, canvas_side)), scale, resized_hw


def policy_preprocess(img_rgb, policy, mean=PIXEL_MEAN, std=PIXEL_STD):
    """One image through a resize policy (``retinamask.core.geometry``): uint8 [H, W, 3] RGB ->
    (float32 [3, Hc, Wc] BGR, normalised, zero-padded bottom/right to the policy's canvas;
    the image's :class:`~retinamask.core.geometry.ImageGeometry`). The ``seed`` policy gives exactly
    :func:`seed_preprocess`'s tensor, ``original`` exactly :func:`upstream_preprocess`'s."""
    h, w = img_rgb.shape[:2]
    if isinstance(policy, SeedResize):  # the seed's route, literally
        tensor, _, resized_hw = seed_preprocess(img_rgb, policy.size, mean, std)
        return tensor, ImageGeometry((h, w), tuple(resized_hw), (policy.size, policy.size))
    geometry = policy.geometry(h, w)
    resized = resize_rgb(img_rgb, geometry.resized_hw)
    return pad_to(normalize_bgr(resized, mean, std), geometry.canvas_hw), geometry
