"""Loading images as RGB uint8 arrays with Pillow, and listing the images of a folder.

Decisions:

* EXIF orientation is IGNORED: pixels are returned in their stored orientation,
  because COCO annotations (and the original RetinaMask, which opens images with
  ``Image.open(...).convert("RGB")``) use the stored orientation.
* Colour modes become RGB: grayscale ("1", "L", "LA"), palette ("P", "PA",
  transparency dropped), RGBA (alpha dropped, no compositing), CMYK and YCbCr via
  Pillow's conversion; 16-bit and 32-bit integer grayscale ("I;16*", "I") are
  scaled to 8 bit as round(v / 257) after clipping to 0..65535 (Pillow's own
  ``convert`` would clip at 255 and turn most of such an image white); float
  images ("F") are clipped to 0..255. Multi-frame files give their first frame.
* Every failure is one :class:`~retinamask.core.errors.InputError` naming the file and
  the cause. The image is fully decoded inside this function, so truncated data is
  caught here (whatever ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` says), and images
  over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, warning
  level included) are refused.
"""

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from retinamask.core.contract import IMAGE_EXTENSIONS
from retinamask.core.errors import InputError
from retinamask.core.fileio import check_input_file

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image_rgb(path):
    """Read an image file as RGB.

    Returns ``np.ndarray`` uint8 of shape [H, W, 3] (stored orientation, EXIF
    ignored). Raises InputError(cause, path) for anything that is not a complete,
    decodable image of acceptable size.
    """
    path = Path(path)
    check_input_file(path, "an image file")
    return _decode(path, path)


class NotAnImage(InputError):
    """The bytes are no image format Pillow knows (an HTTP server answers 415, not 422)."""


def decode_image_bytes(data, source="request body", max_pixels=None):
    """Image file bytes (PNG, JPEG, ...) -> uint8 [H, W, 3] RGB, as :func:`load_image_rgb` decodes a file.

    ``source`` names the bytes in errors. ``max_pixels``: refuse (before decoding) an image of more
    pixels. Raises :class:`NotAnImage` for bytes of no known image format, InputError for empty,
    truncated or corrupt data, a decompression bomb or too many pixels.
    """
    import io

    if not data:
        raise InputError("empty image (0 bytes)", source)
    if max_pixels is not None:
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except UnidentifiedImageError:
            raise NotAnImage("not an image Pillow can decode (unrecognised file format)", source) from None
        except Exception:  # a header Pillow cannot even size: _decode gives the precise cause
            width = height = 0
        if width * height > max_pixels:
            raise InputError(f"{width}x{height} = {width * height} pixels, more than the limit {max_pixels}", source)
    return _decode(io.BytesIO(data), source)


def warm_decoders():
    """Load Pillow's common format plugins (BMP, GIF, JPEG, PPM, PNG: ``Image.preinit``), as a process's first
    ``Image.open`` would: a server would otherwise make its first request pay for the imports (a 308x265 PNG:
    decode 10-34 ms first, 1-2 ms after). Returns the seconds it took."""
    import time

    started = time.perf_counter()
    Image.preinit()
    return time.perf_counter() - started


def _decode(file, where):
    """Fully decode ``file`` (a path or a binary file object) -> uint8 [H, W, 3] RGB; one InputError naming
    ``where`` for every failure."""
    truncated_setting = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                img.load()
                return _to_rgb_array(img, where)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"refused as a possible decompression bomb: {e}", where) from None
    except UnidentifiedImageError:
        raise NotAnImage("not an image Pillow can decode (unrecognised file format)", where) from None
    except PermissionError:
        raise InputError("cannot read: permission denied", where) from None
    except MemoryError:
        raise InputError("not enough memory to decode this image", where) from None
    except Exception as e:  # Pillow reports corrupt data as OSError, SyntaxError, ValueError, zlib.error...
        text = str(e) or type(e).__name__
        if "truncated" in text.lower():
            raise InputError(f"truncated image data ({text})", where) from None
        raise InputError(f"corrupt or unreadable image data ({type(e).__name__}: {text})", where) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_setting


def _to_rgb_array(img, path):
    """A loaded PIL image of any mode -> uint8 [H, W, 3] RGB array."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.int64)
        gray = ((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        # via RGBA so that palette transparency is read (and then dropped) without a warning
        img = img.convert("RGBA")
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as e:
            raise InputError(f"unsupported colour mode {mode!r} ({e})", path) from None
    array = np.array(img, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise InputError(f"unexpected decoded shape {array.shape} for mode {mode!r}", path)
    return array


def list_images(directory):
    """Image files directly inside ``directory`` (not recursive), as a sorted list of Paths.

    Extensions .jpg .jpeg .png .bmp .webp, any letter case. Sorted by file name
    (Python string order), so the order is the same on every machine and file system.
    Raises InputError when ``directory`` is not a readable directory.
    """
    directory = Path(directory)
    if not directory.exists():
        raise InputError("image folder not found", directory)
    if not directory.is_dir():
        raise InputError("not a directory", directory)
    try:
        with os.scandir(directory) as entries:
            names = [
                e.name
                for e in entries
                # broken links are listed, so that they are reported rather than silently skipped
                if e.name.lower().endswith(IMAGE_EXTENSIONS) and (e.is_file() or (e.is_symlink() and not e.is_dir()))
            ]
    except OSError as e:
        raise InputError(f"cannot list the folder: {e.strerror or e}", directory) from None
    return [directory / name for name in sorted(names)]


def as_rgb_array(image):
    """A path, PIL image or uint8 array ([H, W, 3] RGB or [H, W] gray) -> uint8 [H, W, 3] RGB."""
    if isinstance(image, (str, os.PathLike)):
        return load_image_rgb(image)
    if hasattr(image, "convert"):  # PIL
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] RGB array, got shape {array.shape}")
    return array
