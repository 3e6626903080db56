"""Image -> model input: the resize policies (no torch).

A :class:`ResizePolicy` decides, for an image of ``h x w`` pixels, the size it is resized to
and the zero-padded canvas the model sees (the image sits in the top-left corner):

* :class:`OriginalResize` (``original``) -- the original RetinaMask TEST transform: short
  side ``min_size``, long side capped at ``max_size`` (``upstream_test_size``), canvas padded
  bottom/right to multiples of ``size_divisibility`` (32). Exact to the original; one canvas
  per size class of image (e.g. 800 x 1088 for 640 x 480).
* :class:`SeedResize` (``seed``) -- the Ascend seed's: long side ``size`` (1344), canvas
  ``size x size`` (``seed_resize_geometry``). The route exported before resize policies.
* :class:`BucketResize` (``buckets``) -- the original's resize, padded to the smallest of a
  few fixed canvases that holds it (one per aspect class and orientation, see
  :func:`default_buckets`): fixed shapes for runtimes that compile per shape.

Each gives an :class:`~retinamask.core.geometry.ImageGeometry` per image (image, resized and canvas
sizes); :func:`~retinamask.core.geometry.boxes_to_image` maps boxes back. Policies round-trip through ONNX metadata
(:meth:`ResizePolicy.to_metadata` / :func:`policy_from_metadata`).
"""

import itertools
import json

from retinamask.core.contract import CANVAS_SIDE_METADATA_KEY, RESIZE_METADATA_KEY, SEED_CANVAS_SIDE
from retinamask.core.geometry import ImageGeometry, ceil_to, seed_resize_geometry, upstream_test_size

POLICIES = ("original", "seed", "buckets")
# Aspect-ratio breakpoints (long / short side) of the default buckets: square-ish to 4:3,
# 4:3 to 16:9, wider than 16:9 -- each with its landscape and portrait canvas.
BUCKET_ASPECT_BREAKS = (4 / 3, 16 / 9)


class ResizePolicy:
    """Base: ``geometry(h, w)`` -> :class:`ImageGeometry`; ``canvases`` (the fixed canvases, or
    None when any multiple of ``size_divisibility`` may occur); metadata round trip."""

    name = None
    size_divisibility = 32
    # Boxes mapped back to the image are clipped to it again: the seed's route does (its graph
    # clips to the canvas, not the image); the original clips in the resized image only.
    clip_to_image = False

    def resized_size(self, h, w):
        raise NotImplementedError

    def canvas_for(self, resized_hw):
        raise NotImplementedError

    def geometry(self, h, w):
        """The geometry of an ``h x w`` image under this policy."""
        h, w = int(h), int(w)
        if h <= 0 or w <= 0:
            raise ValueError(f"image size must be positive, got {h}x{w}")
        resized = tuple(int(v) for v in self.resized_size(h, w))
        return ImageGeometry((h, w), resized, tuple(int(v) for v in self.canvas_for(resized)))

    @property
    def canvases(self):
        return None

    @property
    def max_canvas_hw(self):
        """The largest canvas (H, W) an image can get (buffers are sized for it)."""
        raise NotImplementedError

    @property
    def square(self):
        """True when every canvas is the same S x S square (the seed's single-input graph)."""
        return False

    def to_dict(self):
        raise NotImplementedError

    def to_metadata(self):
        """{``retinamask.resize``: JSON} for an ONNX model's metadata_props."""
        return {RESIZE_METADATA_KEY: json.dumps(self.to_dict(), sort_keys=True)}

    def describe(self):
        """One line for logs and summaries."""
        raise NotImplementedError

    def __eq__(self, other):
        return isinstance(other, ResizePolicy) and self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self):
        return f"<{type(self).__name__} {self.describe()}>"


class SeedResize(ResizePolicy):
    """Long side to ``size``, canvas ``size x size`` (the Ascend seed's transform)."""

    name = "seed"
    clip_to_image = True

    def __init__(self, size=SEED_CANVAS_SIDE):
        size = int(size)
        if size <= 0:
            raise ValueError(f"seed canvas size must be positive, got {size}")
        self.size = size

    def resized_size(self, h, w):
        return seed_resize_geometry(h, w, self.size)[0]

    def canvas_for(self, resized_hw):
        return (self.size, self.size)

    @property
    def canvases(self):
        return ((self.size, self.size),)

    @property
    def max_canvas_hw(self):
        return (self.size, self.size)

    @property
    def square(self):
        return True

    def to_dict(self):
        return {"policy": "seed", "size": self.size}

    def describe(self):
        return f"seed: long side {self.size}, canvas {self.size}x{self.size}"


class OriginalResize(ResizePolicy):
    """The original's test resize (short side ``min_size``, long side <= ``max_size``), canvas
    padded to multiples of ``size_divisibility``."""

    name = "original"

    def __init__(self, min_size=800, max_size=1333, size_divisibility=32):
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.size_divisibility = int(size_divisibility)
        if self.min_size <= 0 or self.max_size < self.min_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")

    def resized_size(self, h, w):
        return upstream_test_size(h, w, self.min_size, self.max_size)

    def canvas_for(self, resized_hw):
        return tuple(ceil_to(v, self.size_divisibility) for v in resized_hw)

    @property
    def max_canvas_hw(self):
        """The largest canvas of images up to 20:1 (the original's rounding can push the long side
        of more elongated ones past max_size)."""
        side = ceil_to(self.max_size, self.size_divisibility)
        return (side, side)

    def to_dict(self):
        return {
            "policy": "original",
            "min_size": self.min_size,
            "max_size": self.max_size,
            "size_divisibility": self.size_divisibility,
        }

    def describe(self):
        return (
            f"original: short side {self.min_size}, long side <= {self.max_size}, padded to /{self.size_divisibility}"
        )


def default_buckets(min_size=800, max_size=1333, size_divisibility=32, breaks=BUCKET_ASPECT_BREAKS):
    """Canvases (H, W) covering every aspect ratio under the original resize: for each range of
    long/short ratio between ``breaks`` (1 .. 4/3 .. 16/9 .. inf), the landscape canvas
    (short side at the range's lowest ratio, long side at its highest) and its portrait mirror,
    rounded up to ``size_divisibility``; duplicates removed. 800/1333 gives 800x1088,
    800x1344, 768x1344 and their mirrors."""

    def short_side(ratio):  # the resized short side at this long/short ratio (a bound)
        return min(float(min_size), max_size / ratio)

    def long_side(ratio):
        return min(min_size * ratio, float(max_size))

    edges = (1.0,) + tuple(breaks) + (float("inf"),)
    canvases = []
    for low, high in itertools.pairwise(edges):
        h = ceil_to(int(-(-short_side(low) // 1)), size_divisibility)
        w = ceil_to(int(-(-long_side(high) // 1)), size_divisibility)
        for canvas in ((h, w), (w, h)):
            if canvas not in canvases:
                canvases.append(canvas)
    return tuple(canvases)


class BucketResize(OriginalResize):
    """The original's resize, padded to the smallest (by area) of ``canvases`` that holds it.

    The original's rounding lets the long side of very elongated images (aspect beyond ~20:1)
    pass ``max_size`` (e.g. 2000 x 52 -> 1346 x 35); an image no bucket holds gets its exact
    canvas, as under ``original`` (the dynamic-H/W model takes it)."""

    name = "buckets"

    def __init__(self, min_size=800, max_size=1333, size_divisibility=32, canvases=None):
        super().__init__(min_size, max_size, size_divisibility)
        if canvases is None:
            canvases = default_buckets(self.min_size, self.max_size, self.size_divisibility)
        canvases = tuple(tuple(int(v) for v in c) for c in canvases)
        if not canvases or any(len(c) != 2 or min(c) <= 0 for c in canvases):
            raise ValueError(f"buckets need (H, W) canvases with positive sides, got {canvases}")
        if any(self.size_divisibility > 0 and v % self.size_divisibility for c in canvases for v in c):
            raise ValueError(f"bucket canvases must be multiples of {self.size_divisibility}, got {canvases}")
        self._canvases = tuple(sorted(set(canvases), key=lambda c: (c[0] * c[1], c)))

    def canvas_for(self, resized_hw):
        rh, rw = resized_hw
        for canvas in self._canvases:  # by increasing area
            if canvas[0] >= rh and canvas[1] >= rw:
                return canvas
        return super().canvas_for(resized_hw)

    @property
    def canvases(self):
        return self._canvases

    @property
    def max_canvas_hw(self):
        return (max(c[0] for c in self._canvases), max(c[1] for c in self._canvases))

    def to_dict(self):
        return {**super().to_dict(), "policy": "buckets", "canvases": [list(c) for c in self._canvases]}

    def describe(self):
        shapes = ", ".join(f"{h}x{w}" for h, w in self._canvases)
        return f"buckets: original resize (short {self.min_size}, long <= {self.max_size}) into {shapes}"


def policy_from_dict(data):
    """The policy a :meth:`ResizePolicy.to_dict` describes; ValueError when it is not one."""
    if not isinstance(data, dict) or data.get("policy") not in POLICIES:
        raise ValueError(f"not a resize policy (needs 'policy' one of {POLICIES}): {data!r}")
    kind = data["policy"]
    try:
        if kind == "seed":
            return SeedResize(data["size"])
        args = (data["min_size"], data["max_size"], data.get("size_divisibility", 32))
        if kind == "original":
            return OriginalResize(*args)
        return BucketResize(*args, canvases=data.get("canvases"))
    except (KeyError, TypeError) as e:
        raise ValueError(f"incomplete {kind} resize policy {data!r}: {e}") from None


def policy_from_metadata(metadata):
    """The policy in ONNX ``metadata_props`` (a dict): ``retinamask.resize``, else the square
    models' ``retinamask.input_size`` (the seed policy), else None."""
    text = metadata.get(RESIZE_METADATA_KEY)
    if text is not None:
        try:
            return policy_from_dict(json.loads(text))
        except (ValueError, TypeError) as e:
            raise ValueError(f"metadata {RESIZE_METADATA_KEY}={text!r} is not a resize policy ({e})") from None
    size = metadata.get(CANVAS_SIDE_METADATA_KEY)
    return SeedResize(int(size)) if size is not None else None


def make_policy(name, min_size=800, max_size=1333, size_divisibility=32, canvas_side=None, canvases=None):
    """A policy by name: ``original`` / ``buckets`` from the test sizes (a config's INPUT.MIN/
    MAX_SIZE_TEST), ``seed`` with canvas ``canvas_side`` (default: max_size rounded up to
    ``size_divisibility``, 1344 for the upstream configs)."""
    if name == "seed":
        return SeedResize(canvas_side or ceil_to(max_size, size_divisibility or 32))
    if name == "original":
        return OriginalResize(min_size, max_size, size_divisibility)
    if name == "buckets":
        return BucketResize(min_size, max_size, size_divisibility, canvases)
    raise ValueError(f"resize policy must be one of {', '.join(POLICIES)}, got {name!r}")


def policy_from_config(cfg, name, canvas_side=None, canvases=None):
    """:func:`make_policy` with the config's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST and
    DATALOADER.SIZE_DIVISIBILITY (32 where it says 0: the FPN needs it)."""
    divisibility = int(cfg.DATALOADER.SIZE_DIVISIBILITY) or 32
    return make_policy(
        name,
        int(cfg.INPUT.MIN_SIZE_TEST),
        int(cfg.INPUT.MAX_SIZE_TEST),
        divisibility,
        canvas_side=canvas_side,
        canvases=canvases,
    )


def parse_canvases(text):
    """'800x1088,1088x800' -> ((800, 1088), (1088, 800)) (H x W); ValueError on bad input."""
    canvases = []
    for part in str(text).split(","):
        try:
            h, w = (int(v) for v in part.lower().strip().split("x"))
        except ValueError:
            raise ValueError(f"bucket canvas {part!r} is not HxW (e.g. 800x1088)") from None
        canvases.append((h, w))
    return tuple(canvases)


def policy_named(base, name):
    """``base`` (a model's policy) as the policy ``name``, with the same test sizes: how a
    dynamic-H/W model exported as ``original`` runs ``buckets`` (or ``seed``: the square canvas
    ceil(max_size / 32) * 32), and vice versa. ``name`` equal to base's name gives ``base``."""
    if name is None or name == base.name:
        return base
    if isinstance(base, SeedResize):
        raise ValueError(f"a {base.name} policy has no test sizes to derive {name!r} from")
    if name == "seed":
        return SeedResize(ceil_to(base.max_size, base.size_divisibility or 32))
    return make_policy(name, base.min_size, base.max_size, base.size_divisibility)
